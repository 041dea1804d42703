"""The one place where input gradients are computed, signed and projected.

Every attack, the augmentation transforms, the adversarial trainer and the robustness evaluator go through
:func:`input_gradient` and :func:`signed_step`, so the sign step, the L-infinity projection and the intensity clipping
exist exactly once; :func:`project_l2` is the L2 ball's projection, used by the loop's L2 path.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

from monai_advseg.attacks.losses import summed_cross_entropy

__all__ = [
    "LossFn",
    "attack_mode",
    "ball_edges",
    "eval_modes",
    "forward_in_chunks",
    "input_gradient",
    "network_logits",
    "plain_copy",
    "project",
    "project_l2",
    "signed_step",
    "unwrap_ddp",
]

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def unwrap_ddp(network: nn.Module) -> nn.Module:
    """The module inside a ``DistributedDataParallel`` wrapper (the network itself otherwise).

    DDP's forward prepares a gradient all-reduce that an input-only backward never completes; the wrapped module
    computes the same function without that bookkeeping.
    """
    if isinstance(network, nn.parallel.DistributedDataParallel):
        return network.module
    return network


@contextmanager
def eval_modes(module: nn.Module) -> Iterator[nn.Module]:
    """Switch every submodule to eval mode; afterwards restore each submodule's own ``training`` flag.

    Unlike ``module.train()`` afterwards, this keeps deliberately frozen submodules (a BN layer in eval mode inside a
    training network) as they were.

    Yields:
        ``module``.
    """
    modes = [(sub, sub.training) for sub in module.modules()]
    module.eval()
    try:
        yield module
    finally:
        for sub, training in modes:
            sub.training = training


@contextmanager
def attack_mode(network: nn.Module) -> Iterator[nn.Module]:
    """Switch every submodule to eval mode and enable autograd; restore each submodule's own mode afterwards.

    Eval mode makes batch norm use its running statistics, so one image's adversarial example does not depend on its
    batch-mates. Autograd is re-enabled because evaluators run under ``no_grad`` / ``inference_mode``.

    Yields:
        The network to call (the inner module of a ``DistributedDataParallel`` wrapper).
    """
    with eval_modes(unwrap_ddp(network)) as module, torch.inference_mode(False), torch.enable_grad():
        yield module


def network_logits(output: torch.Tensor | list | tuple | dict) -> torch.Tensor:
    """The main logits of a network output: the tensor itself, or the first item of a deep-supervision sequence."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (list, tuple)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise TypeError(f"the network must return a logits tensor (B, C, *spatial), got {type(output).__name__}")


def forward_in_chunks(module: nn.Module, images: torch.Tensor, max_batch: int | None = None) -> torch.Tensor:
    """The main logits of ``images`` without autograd, in forwards of at most ``max_batch`` samples (None: one).

    Args:
        module: the network (or an inferer wrapped as a module).
        images: ``(N, C, *spatial)``, N >= 1.
        max_batch: the largest forward.

    Returns:
        ``(N, classes, *spatial)`` logits.
    """
    size = images.shape[0] if max_batch is None else max_batch
    with torch.no_grad():
        return torch.cat([network_logits(module(images[i : i + size])) for i in range(0, images.shape[0], size)])


def plain_copy(tensor: torch.Tensor) -> torch.Tensor:
    """A detached plain-``torch.Tensor`` copy, usable by autograd even if ``tensor`` is an inference-mode tensor."""
    with torch.inference_mode(False):
        return tensor.as_subclass(torch.Tensor).detach().clone()


def input_gradient(
    module: nn.Module,
    image: torch.Tensor,
    label: torch.Tensor,
    loss_fn: LossFn | None = None,
    *,
    return_outputs: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Gradient of the attack loss with respect to the input only (parameter ``.grad`` is never touched).

    Call inside :func:`attack_mode`.

    Args:
        module: the network, already in attack mode.
        image: ``(B, C, *spatial)`` plain tensor.
        label: the label (or target) the loss compares the logits with.
        loss_fn: ``loss_fn(logits, label)``; a non-scalar result is summed. Default :func:`summed_cross_entropy`.
        return_outputs: also return the (detached) logits and the per-sample loss of the same forward.

    Returns:
        ``dL/dimage``, same shape as ``image``; with ``return_outputs``, ``(gradient, logits, loss)`` where ``loss``
        is ``(B,)`` when ``loss_fn`` returns one value per sample and None when it returns a scalar.
    """
    loss_fn = summed_cross_entropy if loss_fn is None else loss_fn
    image = image.detach().requires_grad_(True)
    logits = network_logits(module(image))
    loss = loss_fn(logits, label)
    per_sample = loss.detach() if loss.ndim == 1 and loss.shape[0] == image.shape[0] else None
    if loss.ndim:
        loss = loss.sum()
    if not return_outputs:
        # the graph keeps what the backward needs; a volume-sized tensor less while it runs (streamed windows)
        del logits
    (gradient,) = torch.autograd.grad(loss, image)
    if return_outputs:
        return gradient, logits.detach(), per_sample
    return gradient


def _exceeds(value: torch.Tensor, centre: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
    """Exactly where ``value > centre + offset`` in real arithmetic (no rounding of the sum).

    TwoSum (Knuth) recovers the rounding error of ``centre + offset``; it is exact in any IEEE binary format with
    round-to-nearest, so float32 and float64 are compared in their own dtype. Half-precision arithmetic may round
    twice (computed in float32, stored in half), so float16/bfloat16 are compared in float64, where their sums are
    exact.
    """
    if value.dtype not in (torch.float32, torch.float64):
        value, centre, offset = value.double(), centre.double(), offset.double()
    total = centre + offset
    offset_part = total - centre
    error = (centre - (total - offset_part)) + (offset - offset_part)  # centre + offset == total + error exactly
    return (value > total) | ((value == total) & (error < 0))


def ball_edges(original: torch.Tensor, epsilon: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The L-inf ball ``[x - epsilon, x + epsilon]`` as the closest values of the image's dtype *inside* it.

    ``x +- epsilon`` rounded to the image's dtype can land one unit in the last place outside the ball (for most
    voxels of a HU image at epsilon = 0.5 levels, and for dark voxels of [0, 1] images); such an edge steps back by
    one representable value (``torch.nextafter``). Computed once per attack, so the per-step projection stays a clamp.

    Args:
        original: the centre ``x``.
        epsilon: the radius in the image's dtype, broadcastable to ``original``.

    Returns:
        ``(lower, upper)``, tensors of ``original``'s shape and dtype with ``x - epsilon <= lower`` and
        ``upper <= x + epsilon`` exactly.
    """
    epsilon = epsilon.to(original.dtype).expand_as(original)
    upper = original + epsilon
    upper = torch.where(_exceeds(upper, original, epsilon), torch.nextafter(upper, original), upper)
    lower = original - epsilon
    lower = torch.where(_exceeds(-lower, -original, epsilon), torch.nextafter(lower, original), lower)
    return lower, upper


def project(
    candidate: torch.Tensor,
    original: torch.Tensor,
    epsilon: torch.Tensor,
    clip_range: tuple[float, float] | None,
    edges: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Clip ``candidate`` to ``clip_range`` and then to the L-inf ball of radius ``epsilon`` around ``original``.

    The ball comes last so that ``|x_adv - x| <= epsilon`` holds even for input voxels outside ``clip_range``; such
    voxels may stay outside the range (by at most their own distance to it). Inputs inside the range give results
    inside both.

    The bound holds exactly, in real arithmetic, for ``epsilon`` as given in the image's dtype (the attacks convert it
    first, so a float32 image is bounded by float32(0.1) = 0.10000000149...): the ball's edges are the values of
    :func:`ball_edges`.

    Args:
        candidate: the point to project.
        original: the ball's centre.
        epsilon: its radius, broadcastable to ``original``.
        clip_range: valid intensity range, or None.
        edges: ``ball_edges(original, epsilon)`` when the caller already has them (iterative attacks compute them
            once); computed here otherwise.

    Returns:
        A new tensor.
    """
    lower, upper = ball_edges(original, epsilon) if edges is None else edges
    if clip_range is not None:
        candidate = candidate.clamp(clip_range[0], clip_range[1])
    return torch.minimum(torch.maximum(candidate, lower), upper)


def project_l2(
    candidate: torch.Tensor,
    original: torch.Tensor,
    epsilon: torch.Tensor | float,
    clip_range: tuple[float, float] | None,
) -> torch.Tensor:
    """Project ``candidate`` onto the L2 ball of radius ``epsilon`` around ``original`` (per sample), then clip.

    The ball is over all of a sample's voxels and channels: ``||x_adv - x||_2 <= epsilon`` per sample.

    The order keeps both constraints. Clipping clamps each voxel into a box that contains the original voxel, so it
    only moves a voxel towards the original's value, never further from it: no voxel's ``|x_adv - x|`` grows, so
    the ball's bound survives the clip, and the result lies in the box. The box is ``clip_range`` widened per voxel
    to include the original (``[min(lo, x), max(hi, x)]``): for inputs inside the range that is ``clip_range``
    itself; a voxel that starts outside the range may stay there (never further out), as with :func:`project`.
    Clipping first and then scaling the difference would not do: scaling moves voxels towards the original too, but
    the ball's projection of an unclipped point can leave the range.

    The bound holds up to the rounding of ``x + delta`` in the image's dtype (the norms and the scale are computed in
    float64), an excess of about ``sqrt(voxels)`` half-units in the last place of the image's values at most.

    Args:
        candidate: ``(B, C, *spatial)``, the point to project.
        original: the ball's centre, same shape.
        epsilon: the radius per sample, a scalar or broadcastable ``(B, 1, ..., 1)``.
        clip_range: valid intensity range, or None.

    Returns:
        A new tensor.
    """
    batch = original.shape[0]
    radius = torch.as_tensor(epsilon, device=original.device).double().expand(batch, *([1] * (original.ndim - 1)))
    delta = candidate - original
    norms = delta.flatten(1).double().norm(dim=1).reshape_as(radius)
    scale = torch.where(norms > radius, radius / norms.clamp_min(torch.finfo(torch.float64).tiny), 1.0)
    projected = original + delta * scale.to(original.dtype)
    if clip_range is None:
        return projected
    low = torch.clamp(original, max=clip_range[0])  # min(lo, x): the box always holds the original
    high = torch.clamp(original, min=clip_range[1])
    return torch.minimum(torch.maximum(projected, low), high)


def signed_step(
    image: torch.Tensor,
    gradient: torch.Tensor,
    step: torch.Tensor | float,
    *,
    original: torch.Tensor | None = None,
    epsilon: torch.Tensor | None = None,
    clip_range: tuple[float, float] | None = None,
    edges: tuple[torch.Tensor, torch.Tensor] | None = None,
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
        edges: :func:`ball_edges` of ``original`` and ``epsilon``, if already computed.

    Returns:
        A new tensor.
    """
    original = image if original is None else original
    step = torch.as_tensor(step, dtype=image.dtype, device=image.device)
    epsilon = step.abs() if epsilon is None else epsilon
    return project(image + step * gradient.sign(), original, epsilon, clip_range, edges)
