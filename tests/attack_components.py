"""A user-defined attack component, as a bundle would name it with ``_target_`` (tests import it from here)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from monai_advseg.attacks import AttackSpec, levels_to_epsilon, project


class RandomSignAttack(AttackSpec):
    """``x + eps * s`` with a random sign ``s`` per voxel: a noise baseline, not a gradient attack.

    It uses the core's projection (the clipping and the ball), as any attack must.
    """

    name = "random_sign"
    random = True

    def step_counts(self, levels: Sequence[float]) -> list[int]:
        return [0 for _ in levels]

    def sweep(self, network, image, target, levels, *, intensity_range, max_batch=None, generator=None):
        results = []
        for eps in levels_to_epsilon(list(levels), tuple(intensity_range)):
            sign = torch.randint(0, 2, image.shape, generator=generator).to(image) * 2 - 1
            radius = torch.tensor(eps, dtype=image.dtype)
            results.append(project(image + radius * sign, image, radius, tuple(intensity_range)))
        return torch.stack(results)
