"""Step rules: how the one attack loop turns an input gradient into its next candidate point.

The loop (:func:`monai_advseg.attacks.iterative._iterate`) owns everything else — the active set, the gradient, the
clipping to the intensity range and the projection onto the epsilon ball — so a new iterative attack (an adaptive
step size, momentum, another norm's steepest-ascent direction) is a step rule plugged into it, never a second loop.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

__all__ = ["StepContext", "StepRule", "l2_step_rule", "signed_step_rule"]


@dataclass
class StepContext:
    """What the loop tells a step rule about the active samples at step ``step``.

    Attributes:
        step: the index ``t`` of the step being taken (0 for the first).
        samples: ``(n,)`` positions of the active samples in the attacked batch (CPU, long).
        total_steps: ``(n,)`` each active sample's own number of steps (CPU, long).
        step_size: ``(n, 1, ..., 1)`` signed step per sample: ``alpha`` when ascending the loss, ``-alpha`` when
            descending it (targeted attacks).
        epsilon: ``(n, 1, ..., 1)`` radius of each sample's ball (L-inf, or L2 over the sample's voxels and
            channels on the loop's L2 path).
        memory: a dict the rule may keep state in across steps (one per attack call; the rule indexes it with
            ``samples``). A rule that keeps state here must not be used with trajectory sharing.
        batch: the size of the whole attacked batch (for state tensors indexed by ``samples``).
        loss: ``(n,)`` per-sample loss at ``x_t`` from the same forward, for rules with ``needs_loss = True`` (the
            loss function must then return one value per sample); else None.
        project: projects a candidate of the active samples onto their balls and the intensity range, the loop's own
            projection (of its norm), for rules that project intermediate points.
    """

    step: int
    samples: torch.Tensor
    total_steps: torch.Tensor
    step_size: torch.Tensor
    epsilon: torch.Tensor
    memory: dict = field(default_factory=dict)
    batch: int = 0
    loss: torch.Tensor | None = None
    project: Callable[[torch.Tensor], torch.Tensor] | None = None


#: ``rule(x_t, gradient, context) -> candidate``: the point before clipping and projection.
StepRule = Callable[[torch.Tensor, torch.Tensor, StepContext], torch.Tensor]


def signed_step_rule(x_t: torch.Tensor, gradient: torch.Tensor, context: StepContext) -> torch.Tensor:
    """The sign step of FGSM / I-FGSM / PGD: ``x_t + step_size * sign(gradient)``.

    Args:
        x_t: the current iterates ``(n, C, *spatial)``.
        gradient: the loss gradient at ``x_t``.
        context: the active samples' step sizes (signed) and the rest of :class:`StepContext`.

    Returns:
        The unprojected candidate.
    """
    return x_t + context.step_size * gradient.sign()


def l2_step_rule(x_t: torch.Tensor, gradient: torch.Tensor, context: StepContext) -> torch.Tensor:
    """The L2 steepest-ascent step of L2 PGD: ``x_t + step_size * g / ||g||_2`` per sample.

    The norm is over all of a sample's voxels and channels; a sample whose gradient is zero takes no step (its
    direction is undefined, and any fixed choice would be a step no gradient asked for).

    Args:
        x_t: the current iterates ``(n, C, *spatial)``.
        gradient: the loss gradient at ``x_t``.
        context: the active samples' step sizes (signed: the L2 length of the step) and the rest of
            :class:`StepContext`.

    Returns:
        The unprojected candidate.
    """
    norms = gradient.flatten(1).double().norm(dim=1)
    inverse = torch.where(norms > 0, 1.0 / norms.clamp_min(torch.finfo(torch.float64).tiny), 0.0)
    # in float64: 1 / ||g|| of a tiny float32 gradient overflows float32
    direction = (gradient.double() * inverse.reshape(-1, *([1] * (gradient.ndim - 1)))).to(gradient.dtype)
    return x_t + context.step_size * direction
