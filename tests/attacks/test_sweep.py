"""Shared-trajectory sweeps: bit-identical to attacking every strength alone, at a fraction of the gradients."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from tiny_models import disk_batch, small_unet, trained_small_unet
from torch import nn

from monai_advseg.attacks import (
    PAPER_EPSILON_LEVELS,
    fgsm,
    inverse_mask,
    iterative_fgsm,
    kurakin_steps,
    levels_to_epsilon,
)
from monai_advseg.attacks.sweep import fgsm_sweep, iterative_fgsm_sweep

HU = (-1024.0, 3071.0)
UNIT = (0.0, 1.0)


class CountingNetwork(nn.Module):
    """Counts the samples of every forward (each attack forward is followed by one input backward)."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network
        self.samples = 0

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        self.samples += image.shape[0]
        return self.network(image)


@pytest.fixture(scope="module")
def trained() -> nn.Module:
    return trained_small_unet()


def _in_range(images: torch.Tensor, intensity_range: tuple[float, float]) -> torch.Tensor:
    """Images of [0, 1] mapped to ``intensity_range``, with rows of voxels at both edges of the range."""
    lo, hi = intensity_range
    scaled = lo + images * (hi - lo)
    scaled[..., :2, :] = lo
    scaled[..., -2:, :] = hi
    return scaled


def _per_epsilon(network, image, target, intensity_range, levels=PAPER_EPSILON_LEVELS, alpha_levels=1.0):
    alpha = levels_to_epsilon(alpha_levels, intensity_range)
    return [
        iterative_fgsm(
            network,
            image,
            target,
            levels_to_epsilon(level, intensity_range),
            alpha=alpha,
            steps=kurakin_steps(level / alpha_levels),
            targeted=True,
            clip_range=intensity_range,
        )
        for level in levels
    ]


_REFERENCES: dict = {}


def _reference(network, image, target, intensity_range, spatial_dims):
    """The per-epsilon attacks, computed once per data set (they cost 327 gradients per image)."""
    key = (spatial_dims, intensity_range, image.device.type)
    if key not in _REFERENCES:
        _REFERENCES[key] = _per_epsilon(network, image, target, intensity_range)
    return _REFERENCES[key]


@pytest.mark.parametrize("intensity_range", [UNIT, HU], ids=["unit", "hu"])
@pytest.mark.parametrize(("spatial_dims", "max_batch"), [(2, None), (2, 5), (3, None), (3, 7)])
def test_paper_sweep_is_bit_identical_to_per_epsilon_attacks(trained, intensity_range, spatial_dims, max_batch, device):
    if spatial_dims == 2:
        network, (images, labels) = copy.deepcopy(trained), disk_batch(3, seed=30)
    else:
        torch.manual_seed(3)
        network, (images, labels) = small_unet(spatial_dims=3).eval(), disk_batch(2, size=16, seed=31, spatial_dims=3)
    network = network.to(device)
    image = _in_range(images, intensity_range).to(device)
    target = inverse_mask(labels, 2).to(device)
    counting = CountingNetwork(network)
    levels = list(PAPER_EPSILON_LEVELS)
    swept = iterative_fgsm_sweep(
        counting,
        image,
        target,
        levels_to_epsilon(levels, intensity_range),
        alpha=levels_to_epsilon(1, intensity_range),
        steps=[kurakin_steps(level) for level in levels],
        targeted=True,
        clip_range=intensity_range,
        max_batch=max_batch,
    )
    for level, sweep_result, alone in zip(
        levels, swept, _reference(network, image, target, intensity_range, spatial_dims), strict=True
    ):
        assert torch.equal(sweep_result, alone), f"{level} levels differs from its own attack"
    per_image = counting.samples / image.shape[0]
    # 327 gradients per image attacked one strength at a time; the shared trunk needs about a quarter of them.
    assert per_image <= 90, per_image
    assert sum(kurakin_steps(level) for level in levels) == 327


def test_sweep_on_real_ct_patches_and_a_half_level_step(shared_dataset, trained):
    folder = shared_dataset("ct_msd_lung_tumour_patches")
    images = torch.from_numpy(np.load(folder / "val_images.npy")[:3]).float()[:, None]
    labels = torch.from_numpy(np.load(folder / "val_labels.npy")[:3]).long()[:, None]
    assert float(images.min()) >= 0 and float(images.max()) <= 1
    target = inverse_mask(labels, 2)
    levels = [0.5, 1, 4, 8, 16]
    swept = iterative_fgsm_sweep(
        trained,
        images,
        target,
        levels_to_epsilon(levels, UNIT),
        alpha=levels_to_epsilon(0.5, UNIT),
        steps=[kurakin_steps(level / 0.5) for level in levels],
        targeted=True,
        clip_range=UNIT,
        max_batch=4,
    )
    alone = _per_epsilon(trained, images, target, UNIT, levels=levels, alpha_levels=0.5)
    for level, sweep_result, single in zip(levels, swept, alone, strict=True):
        assert torch.equal(sweep_result, single), level
        assert not torch.equal(single, images)


def test_a_budget_leaves_the_trunk_when_clipping_alone_separates_it():
    # Voxels at the range's edge: the clip acts from the first step in every budget alike, so clipping never
    # separates budgets; their balls do. A sweep with a strength twice the step leaves after exactly two steps.
    network = CountingNetwork(small_unet().eval())
    image, label = disk_batch(1, size=16, seed=32)
    image = _in_range(image, UNIT)
    swept = iterative_fgsm_sweep(network, image, label, [2 / 255, 8 / 255], alpha=1 / 255, clip_range=UNIT)
    alone = [
        iterative_fgsm(network.network, image, label, e, alpha=1 / 255, clip_range=UNIT) for e in (2 / 255, 8 / 255)
    ]
    assert torch.equal(swept[0], alone[0]) and torch.equal(swept[1], alone[1])
    # kurakin: 3 and 10 steps; shared while the 2-level ball has not acted (2 steps, the third one branches)
    assert network.samples <= 10 + 3 - 2


def test_fgsm_sweep_takes_one_gradient_per_image(trained, device):
    images, labels = disk_batch(3, seed=33)
    image, labels = _in_range(images, HU).to(device), labels.to(device)
    trained = copy.deepcopy(trained).to(device)
    counting = CountingNetwork(trained)
    eps = levels_to_epsilon(list(PAPER_EPSILON_LEVELS), HU)
    swept = fgsm_sweep(counting, image, labels, eps, clip_range=HU)
    assert counting.samples == image.shape[0]
    for e, result in zip(eps, swept, strict=True):
        assert torch.equal(result, fgsm(trained, image, labels, e, clip_range=HU))


def test_samples_with_different_images_never_share(trained):
    # Group ids are a hint: the loop checks image and label bit for bit before sharing any gradient.
    from monai_advseg.attacks.iterative import _iterate

    images, labels = disk_batch(2, seed=34)
    counting = CountingNetwork(trained)
    together = _iterate(
        counting,
        images,
        labels,
        4 / 255,
        alpha=1 / 255,
        steps=5,
        targeted=False,
        loss_fn=None,
        clip_range=UNIT,
        share=torch.zeros(2, dtype=torch.long),
    )
    assert counting.samples == 2 * 5
    assert torch.equal(
        together, iterative_fgsm(trained, images, labels, 4 / 255, alpha=1 / 255, steps=5, clip_range=UNIT)
    )
