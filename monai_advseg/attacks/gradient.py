"""The one place where input gradients are computed, signed and projected.

Every attack, the augmentation transforms, the adversarial trainer and the robustness evaluator go through
:func:`input_gradient` and :func:`signed_step`, so the sign step, the L-infinity projection and the intensity clipping
exist exactly once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

from monai_advseg.attacks.losses import summed_cross_entropy

__all__ = ["LossFn", "attack_mode", "input_gradient", "network_logits", "plain_copy", "project", "signed_step"]

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _unwrap(network: nn.Module) -> nn.Module:
    # DistributedDataParallel's forward prepares a gradient all-reduce that an input-only backward never completes;
    # the wrapped module computes the same function without that bookkeeping.
    if isinstance(network, nn.parallel.DistributedDataParallel):
        return network.module
    return network


@contextmanager
def attack_mode(network: nn.Module) -> Iterator[nn.Module]:
    """Switch every submodule to eval mode and enable autograd; restore each submodule's own mode afterwards.

    Eval mode makes batch norm use its running statistics, so one image's adversarial example does not depend on its
    batch-mates. Autograd is re-enabled because evaluators run under ``no_grad`` / ``inference_mode``.

    Yields:
        The network to call (the inner module of a ``DistributedDataParallel`` wrapper).
    """
    module = _unwrap(network)
    modes = [(sub, sub.training) for sub in module.modules()]
    module.eval()
    try:
        with torch.inference_mode(False), torch.enable_grad():
            yield module
    finally:
        for sub, training in modes:
            sub.training = training


def network_logits(output: torch.Tensor | list | tuple | dict) -> torch.Tensor:
    """The main logits of a network output: the tensor itself, or the first item of a deep-supervision sequence."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (list, tuple)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise TypeError(f"the network must return a logits tensor (B, C, *spatial), got {type(output).__name__}")


def plain_copy(tensor: torch.Tensor) -> torch.Tensor:
    """A detached plain-``torch.Tensor`` copy, usable by autograd even if ``tensor`` is an inference-mode tensor."""
    with torch.inference_mode(False):
        return tensor.as_subclass(torch.Tensor).detach().clone()


def input_gradient(
    module: nn.Module, image: torch.Tensor, label: torch.Tensor, loss_fn: LossFn | None = None
) -> torch.Tensor:
    """Gradient of the attack loss with respect to the input only (parameter ``.grad`` is never touched).

    Call inside :func:`attack_mode`.

    Args:
        module: the network, already in attack mode.
        image: ``(B, C, *spatial)`` plain tensor.
        label: the label (or target) the loss compares the logits with.
        loss_fn: ``loss_fn(logits, label)``; a non-scalar result is summed. Default :func:`summed_cross_entropy`.

    Returns:
        ``dL/dimage``, same shape as ``image``.
    """
    loss_fn = summed_cross_entropy if loss_fn is None else loss_fn
    image = image.detach().requires_grad_(True)
    loss = loss_fn(network_logits(module(image)), label)
    if loss.ndim:
        loss = loss.sum()
    (gradient,) = torch.autograd.grad(loss, image)
    return gradient


def _exceeds(value: torch.Tensor, centre: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
    """Exactly where ``value > centre + offset`` in real arithmetic (no rounding of the sum).

    Works in float64 (exact for float16/bfloat16/float32 operands); the TwoSum error term then recovers what rounding
    ``centre + offset`` lost, so a float64 image is compared exactly as well.
    """
    value, centre, offset = value.double(), centre.double(), offset.double()
    total = centre + offset
    offset_part = total - centre
    error = (centre - (total - offset_part)) + (offset - offset_part)  # centre + offset == total + error exactly
    return (value > total) | ((value == total) & (error < 0))


def project(
    candidate: torch.Tensor,
    original: torch.Tensor,
    epsilon: torch.Tensor,
    clip_range: tuple[float, float] | None,
) -> torch.Tensor:
    """Clip ``candidate`` to ``clip_range`` and then to the L-inf ball of radius ``epsilon`` around ``original``.

    The ball comes last so that ``|x_adv - x| <= epsilon`` holds even for input voxels outside ``clip_range``; such
    voxels may stay outside the range (by at most their own distance to it). Inputs inside the range give results
    inside both.

    The bound holds exactly, in real arithmetic, for ``epsilon`` as given in the image's dtype (the attacks convert it
    first, so a float32 image is bounded by float32(0.1) = 0.10000000149...). ``x +- epsilon`` rounded to the image's
    dtype can land one unit in the last place outside the ball (for most voxels of a HU image at epsilon = 0.5
    levels, and for dark voxels of [0, 1] images); those voxels step back by one representable value towards
    ``original`` (``torch.nextafter``), which is then inside.
    """
    if clip_range is not None:
        candidate = candidate.clamp(clip_range[0], clip_range[1])
    result = torch.minimum(torch.maximum(candidate, original - epsilon), original + epsilon)
    epsilon = epsilon.to(result.dtype).expand_as(result)
    outside = _exceeds(result, original, epsilon) | _exceeds(-result, -original, epsilon)
    return torch.where(outside, torch.nextafter(result, original), result)


def signed_step(
    image: torch.Tensor,
    gradient: torch.Tensor,
    step: torch.Tensor | float,
    *,
    original: torch.Tensor | None = None,
    epsilon: torch.Tensor | None = None,
    clip_range: tuple[float, float] | None = None,
) -> torch.Tensor:
    """One signed-gradient step ``image + step * sign(gradient)``, projected and clipped.

    A positive ``step`` ascends the loss (FGSM); a negative one descends it (inverse FGSM, targeted attacks).

    Args:
        image: the current iterate.
        gradient: the loss gradient at ``image``.
        step: step size (scalar or ``(B, 1, ..., 1)``), signed.
        original: centre of the L-inf ball (default: ``image``).
        epsilon: ball radius (default: ``|step|``).
        clip_range: valid intensity range, or None for no clipping.

    Returns:
        A new tensor.
    """
    original = image if original is None else original
    step = torch.as_tensor(step, dtype=image.dtype, device=image.device)
    epsilon = step.abs() if epsilon is None else epsilon
    return project(image + step * gradient.sign(), original, epsilon, clip_range)
