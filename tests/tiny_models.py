"""Tiny real models shared by the attack tests (no mocks: real modules with known or trained weights)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from monai.networks.nets import UNet
from torch import nn


def linear_pixel_model(spatial_dims: int = 2, slope: float = 2.0) -> nn.Module:
    """A 1x1 convolution with logits ``(0, slope * x)``.

    Its cross-entropy gradient ``dCE/dx`` has sign -1 where y = 1 and +1 where y = 0.
    """
    conv = (nn.Conv2d if spatial_dims == 2 else nn.Conv3d)(1, 2, kernel_size=1)
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[1].fill_(slope)
        conv.bias.zero_()
    return conv


def disk_batch(batch: int, size: int = 32, seed: int = 0, spatial_dims: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """Bright blobs on a noisy background, with their masks: a task a small U-Net learns in a few dozen steps."""
    generator = torch.Generator().manual_seed(seed)
    grids = torch.meshgrid(*[torch.arange(size, dtype=torch.float32)] * spatial_dims, indexing="ij")
    images, labels = [], []
    for _ in range(batch):
        centre = torch.randint(size // 4, 3 * size // 4, (spatial_dims,), generator=generator).float()
        radius = float(torch.randint(size // 8, size // 4, (1,), generator=generator))
        mask = sum((g - c) ** 2 for g, c in zip(grids, centre, strict=True)) <= radius**2
        image = 0.3 + 0.4 * mask.float() + 0.1 * torch.randn(mask.shape, generator=generator)
        images.append(image.clamp(0, 1)[None])
        labels.append(mask.long()[None])
    return torch.stack(images), torch.stack(labels)


def small_unet(spatial_dims: int = 2, norm: str = "batch") -> nn.Module:
    return UNet(spatial_dims, 1, 2, channels=(8, 16, 32), strides=(2, 2), num_res_units=1, norm=norm)


@contextmanager
def single_thread() -> Iterator[None]:
    """Run torch on one intra-op thread, then restore the caller's count.

    Reductions split over threads sum in a different order, so a model trained with 2 threads differs in its last
    bits from one trained with 1; 60 Adam steps amplify that into a different model (Dice at eps 4 was 0.95696 with 2
    threads and below the clean 0.95647 with 1). Fixtures that must be the same model on every machine train here.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def trained_small_unet(steps: int = 60) -> nn.Module:
    """A small 2D U-Net trained on :func:`disk_batch` data until it segments the blobs (the same model whatever
    torch's thread count: trained on one thread)."""
    with single_thread():
        torch.manual_seed(0)
        network = small_unet()
        optimizer = torch.optim.Adam(network.parameters(), lr=1e-2)
        images, labels = disk_batch(16, seed=1)
        for _ in range(steps):
            optimizer.zero_grad()
            loss = nn.functional.cross_entropy(network(images), labels[:, 0])
            loss.backward()
            optimizer.step()
    return network.eval()
