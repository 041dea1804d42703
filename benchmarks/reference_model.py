"""The reference model shared by the benchmarks: MONAI 2D UNet (16, 32, 64, 128, 256), strides 2, 2 residual units."""

from __future__ import annotations

import torch
from monai.networks.nets import UNet


def reference_unet() -> torch.nn.Module:
    return UNet(2, 1, 2, channels=(16, 32, 64, 128, 256), strides=(2, 2, 2, 2), num_res_units=2)


def reference_batch(batch: int = 8, size: int = 128, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    image = torch.rand(batch, 1, size, size, generator=generator)
    label = (torch.rand(batch, 1, size, size, generator=generator) > 0.5).long()
    return image, label
