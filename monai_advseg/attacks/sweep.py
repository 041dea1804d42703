"""Epsilon sweeps: one batch attacked at several strengths, sharing the work that the strengths have in common.

With step size ``alpha`` and ``x_0 = x``, after t sign steps every voxel has moved at most ``t * alpha``, so a ball of
radius eps cannot act during the first ``floor(eps / alpha)`` steps: every budget follows the same trajectory until its
own projection (or the clipping) first changes an iterate. :func:`iterative_fgsm_sweep` therefore attacks all budgets
of an image as one group in the attack loop, which computes one gradient per step for the group and lets a budget
leave it at the step where its iterate first differs — checked bit for bit, not predicted. The results are exactly
those of attacking each strength on its own. :func:`fgsm_sweep` takes one input gradient per image for all strengths.
Attacks with a random start (PGD, SegPGD) cannot share: :func:`repeat_for_sweep` lays their samples out per budget.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from monai_advseg.attacks.gradient import LossFn
from monai_advseg.attacks.iterative import _iterate

__all__ = ["fgsm_sweep", "iterative_fgsm_sweep", "repeat_for_sweep"]


def repeat_for_sweep(
    image: torch.Tensor, label: torch.Tensor, epsilons: Sequence[float]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Lay a batch out once per strength: sample ``e * B + b`` is image ``b`` at ``epsilons[e]``.

    Args:
        image: ``(B, C, *spatial)``.
        label: its label (or target), same batch size.
        epsilons: the strengths in input units.

    Returns:
        ``(images, labels, epsilon, source)``: the repeated batch ``(E * B, ...)``, its label, the ``(E * B,)``
        float64 strengths, and the ``(E * B,)`` index of each sample's source image.

    Raises:
        ValueError: when ``epsilons`` is empty.
    """
    if len(epsilons) == 0:
        raise ValueError("epsilons must not be empty: give at least one attack strength")
    batch, count = image.shape[0], len(epsilons)
    source = torch.arange(batch).repeat(count)
    epsilon = torch.tensor([float(e) for e in epsilons], dtype=torch.float64).repeat_interleave(batch)
    rows = source.to(image.device)
    return image[rows], label[rows.to(label.device)], epsilon, source


def _as_sweep(result: torch.Tensor, count: int, image: torch.Tensor) -> torch.Tensor:
    return result.reshape(count, *image.shape)


def iterative_fgsm_sweep(
    network: nn.Module,
    image: torch.Tensor,
    label: torch.Tensor,
    epsilons: Sequence[float],
    *,
    alpha: float,
    steps: Sequence[int] | None = None,
    targeted: bool = False,
    loss_fn: LossFn | None = None,
    clip_range: Sequence[float] | None = None,
    max_batch: int | None = None,
) -> torch.Tensor:
    """:func:`~monai_advseg.attacks.iterative_fgsm` at every strength of ``epsilons``, on one shared trajectory.

    Bit-identical to ``iterative_fgsm(network, image, label, eps, alpha=alpha, steps=n, ...)`` for each ``eps`` and
    its ``n`` on its own (the network in eval mode, where a sample's gradient does not depend on its batch-mates).

    Examples::

        >>> from monai.networks.nets import UNet
        >>> net = UNet(2, 1, 2, channels=(4, 8), strides=(2,), num_res_units=0).eval()
        >>> image, label = torch.rand(2, 1, 16, 16), torch.randint(0, 2, (2, 1, 16, 16))
        >>> levels = [1, 4, 8]
        >>> eps = [level / 255 for level in levels]
        >>> adversarial = iterative_fgsm_sweep(net, image, label, eps, alpha=1 / 255, clip_range=(0, 1))
        >>> adversarial.shape  # (strengths, batch, C, H, W)
        torch.Size([3, 2, 1, 16, 16])

    Args:
        network: module returning logits ``(B, C, *spatial)``.
        image: ``(B, C, *spatial)`` in the network's input units.
        label: the label, or the target when ``targeted``.
        epsilons: the strengths in input units (E of them).
        alpha: the step size in input units, shared by all strengths.
        steps: iterations per strength (E ints); None: ``kurakin_steps(eps / alpha)`` each.
        targeted: descend the loss towards ``label``.
        loss_fn: ``loss_fn(logits, label)``, default the summed cross-entropy.
        clip_range: ``(lo, hi)`` valid intensity range, or None.
        max_batch: at most this many samples in one forward (a trunk and its live branches together); None: all.

    Returns:
        ``(E, B, C, *spatial)``: index ``e`` holds the batch attacked at ``epsilons[e]``.
    """
    counts = None if steps is None else _per_strength_steps(steps, len(epsilons), image.shape[0])
    return _shared_sweep(
        network,
        image,
        label,
        epsilons,
        alpha=alpha,
        steps=counts,
        targeted=targeted,
        loss_fn=loss_fn,
        clip_range=clip_range,
        max_batch=max_batch,
    )


def fgsm_sweep(
    network: nn.Module,
    image: torch.Tensor,
    label: torch.Tensor,
    epsilons: Sequence[float],
    *,
    targeted: bool = False,
    loss_fn: LossFn | None = None,
    clip_range: Sequence[float] | None = None,
    max_batch: int | None = None,
) -> torch.Tensor:
    """:func:`~monai_advseg.attacks.fgsm` at every strength of ``epsilons`` from one input gradient per image.

    Bit-identical to ``fgsm(network, image, label, eps, ...)`` for each ``eps`` on its own.

    Args:
        epsilons: the strengths in input units (E of them).
        max_batch: at most this many images in one forward; None: the whole batch.
        Others as in :func:`~monai_advseg.attacks.fgsm`.

    Returns:
        ``(E, B, C, *spatial)``: index ``e`` holds the batch attacked at ``epsilons[e]``.
    """
    # One step of size eps is FGSM: x + eps * sign(grad), projected onto its own ball (a no-op) and clipped.
    return _shared_sweep(
        network,
        image,
        label,
        epsilons,
        alpha=None,
        steps=1,
        targeted=targeted,
        loss_fn=loss_fn,
        clip_range=clip_range,
        max_batch=max_batch,
    )


def _shared_sweep(network, image, label, epsilons, *, alpha, **loop) -> torch.Tensor:
    """Every (eps, image) sample in the one loop, the strengths of an image sharing their trajectory;
    ``alpha=None``: each sample steps by its own eps."""
    images, labels, epsilon, source = repeat_for_sweep(image, label, epsilons)
    step = epsilon if alpha is None else alpha
    result = _iterate(network, images, labels, epsilon, alpha=step, share=source, **loop)
    return _as_sweep(result, len(epsilons), image)


def _per_strength_steps(steps: Sequence[int], count: int, batch: int) -> torch.Tensor:
    values = [int(s) for s in steps]
    if len(values) != count or any(s < 0 for s in values):
        raise ValueError(f"steps must give one non-negative int per strength ({count}), got {list(steps)!r}")
    return torch.tensor(values, dtype=torch.long).repeat_interleave(batch)
