"""Gradient-free attacks: uniform noise and the Square-style random search stay in the eps ball and the range."""

from __future__ import annotations

import pytest
import torch
from tiny_models import disk_batch, trained_small_unet

from monai_advseg.attacks import random_search, true_class_probability, uniform_noise


def test_uniform_noise_fills_the_ball_within_the_range():
    image = torch.rand(2, 1, 16, 16)
    noisy = uniform_noise(image, 8 / 255, clip_range=(0, 1), generator=torch.Generator().manual_seed(0))
    delta = noisy - image
    assert float(delta.abs().max()) <= 8 / 255 + 1e-7 and float(noisy.min()) >= 0 and float(noisy.max()) <= 1
    assert float(delta.abs().mean()) > 2 / 255  # uniform in the ball, not a few voxels
    again = uniform_noise(image, 8 / 255, clip_range=(0, 1), generator=torch.Generator().manual_seed(0))
    assert torch.equal(noisy, again)


def test_random_search_lowers_the_score_within_the_ball():
    network = trained_small_unet()
    images, labels = disk_batch(2, seed=62)
    score = true_class_probability(labels)
    eps = 16 / 255
    found = random_search(
        network, images, labels, eps, queries=40, clip_range=(0, 1), generator=torch.Generator().manual_seed(1)
    )
    assert float((found - images).abs().max()) <= eps + 1e-7 and float(found.min()) >= 0
    with torch.no_grad():
        before = score(network(images), torch.arange(2))
        after = score(network(found), torch.arange(2))
        start = random_search(
            network, images, labels, eps, queries=0, clip_range=(0, 1), generator=torch.Generator().manual_seed(1)
        )
        at_start = score(network(start), torch.arange(2))
    assert bool((after <= at_start).all()) and bool((after < before).all())


@pytest.mark.parametrize("kwargs", [{"queries": -1}, {"p_init": 0.0}])
def test_random_search_bad_arguments(kwargs):
    images, labels = disk_batch(1, seed=0)
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        random_search(torch.nn.Conv2d(1, 2, 1), images, labels, 0.1, **kwargs)
