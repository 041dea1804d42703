"""Single-step attacks: FGSM, inverse FGSM and both from one gradient."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from monai_advseg.attacks.gradient import LossFn, attack_mode, input_gradient, plain_copy, signed_step
from monai_advseg.attacks.validation import as_sample_tensor, check_attack_inputs, check_clip_range

__all__ = ["fgsm", "inverse_fgsm", "fgsm_pair"]


def _signed_copies(
    network: nn.Module,
    image: torch.Tensor,
    label: torch.Tensor,
    epsilon: float | torch.Tensor,
    directions: tuple[int, ...],
    loss_fn: LossFn | None,
    clip_range: Sequence[float] | None,
) -> tuple[torch.Tensor, ...]:
    check_attack_inputs(image, label)
    clip = check_clip_range(clip_range)
    eps = as_sample_tensor(epsilon, "epsilon", image)
    original = plain_copy(image)
    if not bool((eps > 0).any()):
        return tuple(original.clone() for _ in directions)
    with attack_mode(network) as module:
        gradient = input_gradient(module, original, plain_copy(label), loss_fn)
    return tuple(signed_step(original, gradient, direction * eps, clip_range=clip) for direction in directions)


def fgsm(
    network: nn.Module,
    image: torch.Tensor,
    label: torch.Tensor,
    epsilon: float | torch.Tensor,
    *,
    loss_fn: LossFn | None = None,
    clip_range: Sequence[float] | None = None,
    targeted: bool = False,
) -> torch.Tensor:
    """Fast gradient sign method: ``x + epsilon * sign(grad_x L(f(x), y))``.

    Args:
        network: any module returning logits ``(B, C, *spatial)`` (2D or 3D). It runs in eval mode for the attack and
            every submodule's mode is restored afterwards; parameter gradients are not touched.
        image: ``(B, C, *spatial)`` in the network's input units (HU, [0, 1], ...).
        label: class indices ``(B, 1, *spatial)`` or one-hot ``(B, C, *spatial)``. For ``targeted=True``, the target.
        epsilon: L-inf strength in input units, a scalar or a per-sample ``(B,)`` tensor; 0 returns the input.
        loss_fn: ``loss_fn(logits, label)``, default the summed per-voxel cross-entropy.
        clip_range: ``(lo, hi)`` valid intensity range, or None for no clipping.
        targeted: step *down* the loss towards ``label`` (``x - epsilon * sign(grad)``) instead of up.

    Returns:
        The adversarial batch, a new plain tensor of the image's shape and dtype, with ``|x_adv - x| <= epsilon``
        exactly for ``epsilon`` in the image's dtype (no float-rounding overshoot; see
        :func:`~monai_advseg.attacks.gradient.project`), inside ``clip_range`` where the input is.

    Raises:
        ValueError: negative or non-finite epsilon, mismatched label, non-finite image, ``clip_range`` with lo >= hi.
    """
    return _signed_copies(network, image, label, epsilon, (-1 if targeted else 1,), loss_fn, clip_range)[0]


def inverse_fgsm(
    network: nn.Module,
    image: torch.Tensor,
    label: torch.Tensor,
    epsilon: float | torch.Tensor,
    *,
    loss_fn: LossFn | None = None,
    clip_range: Sequence[float] | None = None,
) -> torch.Tensor:
    """Inverse FGSM: ``x - epsilon * sign(grad_x L(f(x), y))``, a step that *lowers* the loss on the true label.

    Same arguments and errors as :func:`fgsm`.
    """
    return _signed_copies(network, image, label, epsilon, (-1,), loss_fn, clip_range)[0]


def fgsm_pair(
    network: nn.Module,
    image: torch.Tensor,
    label: torch.Tensor,
    epsilon: float | torch.Tensor,
    *,
    loss_fn: LossFn | None = None,
    clip_range: Sequence[float] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """FGSM and inverse FGSM copies from ONE gradient computation.

    Same arguments and errors as :func:`fgsm`.

    Returns:
        ``(fgsm_image, inverse_fgsm_image)``.
    """
    adversarial, inverse = _signed_copies(network, image, label, epsilon, (1, -1), loss_fn, clip_range)
    return adversarial, inverse
