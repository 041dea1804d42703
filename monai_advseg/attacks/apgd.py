"""APGD (Croce & Hein, ICML 2020): L-inf PGD with an adaptive step size and momentum, as a step rule of the one loop.

The loop (:func:`~monai_advseg.attacks.iterative._iterate`) keeps the active set, the clipping and the projection;
:class:`APGDStepRule` only decides the next candidate from the current iterate, its gradient and its loss:

- the step size starts at ``eta = 2 * eps``; ``z = P(x_k + eta * sign(g))`` and, after the first step,
  ``x_{k+1} = P(x_k + 0.75 (z - x_k) + 0.25 (x_k - x_{k-1}))`` (momentum 0.75);
- at the checkpoints ``w_j = ceil(p_j * N)`` with ``p_0 = 0``, ``p_1 = 0.22``,
  ``p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)``, the step size is halved and the iterate restarts from the best
  point so far (with its gradient) when (1) the loss rose in fewer than ``0.75 (w_j - w_{j-1})`` of the steps since
  the last checkpoint, or (2) neither the step size nor the best loss changed since the last checkpoint.

"Loss rose" means the attack's objective improved: the loss for untargeted attacks, minus the loss for targeted ones.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache

import torch
from torch import nn

from monai_advseg.attacks.gradient import LossFn
from monai_advseg.attacks.iterative import ScoreFn, _iterate, segpgd_step_loss
from monai_advseg.attacks.losses import (
    dice_loss,
    jensen_shannon_loss,
    masked_cross_entropy,
    masked_spherical_loss,
    per_sample_cross_entropy,
)
from monai_advseg.attacks.step_rules import StepContext

__all__ = ["APGD_LOSSES", "APGDStepRule", "apgd", "apgd_checkpoints"]

#: The per-sample losses APGD can use, by name (SEA's set plus Dice; ``"ce"`` is the plain cross-entropy;
#: ``"balanced_ce"``, SegPGD's weighting with ``lambda_t = t / 2T``, is resolved per step).
APGD_LOSSES: dict[str, LossFn | None] = {
    "balanced_ce": None,
    "ce": per_sample_cross_entropy,
    "masked_ce": masked_cross_entropy,
    "js": jensen_shannon_loss,
    "spherical": masked_spherical_loss,
    "dice": dice_loss,
}
_UNTARGETED_ONLY = ("masked_ce", "balanced_ce", "js", "spherical")

MOMENTUM = 0.75
RHO = 0.75


@lru_cache(maxsize=256)
def apgd_checkpoints(steps: int) -> tuple[int, ...]:
    """The checkpoint iterations ``w_1 < w_2 < ...`` (all ``< steps``) of APGD's step-size schedule for ``steps``.

    Args:
        steps: the number of iterations N (>= 1).

    Returns:
        The distinct ``ceil(p_j * N)`` for ``j >= 1`` that fall inside the run, ascending.
    """
    # p_j in hundredths, so that e.g. p = 0.70 gives w = 7 at N = 10 (0.57 + 0.13 is 0.7000000000000001 in floats)
    points, previous, current = [], 0, 22
    while True:
        w = -(-current * steps // 100)  # ceil(p_j * N) in integers
        if w >= steps:
            break
        if not points or w > points[-1]:
            points.append(w)
        previous, current = current, current + max(current - previous - 3, 6)
    return tuple(points)


class APGDStepRule:
    """APGD's step: adaptive step size, momentum and restarts from the best point, per sample.

    State lives in the loop's ``context.memory`` (full-batch tensors indexed by ``context.samples``), so one rule
    object serves one attack call at a time. Needs the per-sample loss (``needs_loss``), so not for shared
    trajectories.
    """

    needs_loss = True

    def __call__(self, x_t: torch.Tensor, gradient: torch.Tensor, context: StepContext) -> torch.Tensor:
        memory, samples, t = context.memory, context.samples, context.step
        device = x_t.device
        index = samples.to(device)
        ascent = torch.sign(context.step_size.flatten(1)[:, 0])  # +1 untargeted, -1 targeted
        objective = ascent.double() * context.loss.double()
        if t == 0:
            self._start(memory, x_t, gradient, objective, context)
        else:
            self._record(memory, index, x_t, gradient, objective)
            x_t, gradient = self._checkpoint(memory, index, samples, x_t, gradient, context)
        eta = memory["eta"][index].reshape(-1, *([1] * (x_t.ndim - 1))).to(x_t.dtype)
        z = context.project(x_t + ascent.reshape_as(eta) * eta * gradient.sign())
        if t == 0:
            candidate = z
        else:
            candidate = x_t + MOMENTUM * (z - x_t) + (1 - MOMENTUM) * (x_t - memory["previous"][index])
        memory["previous"][index] = x_t
        return candidate

    @staticmethod
    def _start(memory: dict, x_t: torch.Tensor, gradient: torch.Tensor, objective: torch.Tensor, context) -> None:
        batch, shape, device = context.batch, x_t.shape[1:], x_t.device
        index = context.samples.to(device)
        memory["eta"] = torch.zeros(batch, dtype=torch.float64, device=device)
        memory["eta"][index] = 2 * context.epsilon.flatten(1)[:, 0].double()
        for name in ("previous", "best_x", "best_gradient"):
            memory[name] = torch.zeros(batch, *shape, dtype=x_t.dtype, device=device)
        memory["previous"][index] = x_t
        memory["best_x"][index] = x_t
        memory["best_gradient"][index] = gradient
        for name in ("best", "last", "best_at_checkpoint"):
            memory[name] = torch.full((batch,), -math.inf, dtype=torch.float64, device=device)
            memory[name][index] = objective
        memory["eta_at_checkpoint"] = memory["eta"].clone()
        memory["rises"] = torch.zeros(batch, dtype=torch.long, device=device)
        memory["last_checkpoint"] = torch.zeros(batch, dtype=torch.long)
        memory["schedule"] = {}
        for sample, total in zip(context.samples.tolist(), context.total_steps.tolist(), strict=True):
            memory["schedule"][sample] = apgd_checkpoints(int(total))

    @staticmethod
    def _record(memory: dict, index, x_t, gradient, objective) -> None:
        memory["rises"][index] += (objective > memory["last"][index]).long()
        memory["last"][index] = objective
        improved = objective > memory["best"][index]
        if bool(improved.any()):
            rows = index[improved]
            memory["best"][rows] = objective[improved]
            memory["best_x"][rows] = x_t[improved]
            memory["best_gradient"][rows] = gradient[improved]

    @staticmethod
    def _checkpoint(memory, index, samples, x_t, gradient, context) -> tuple[torch.Tensor, torch.Tensor]:
        at = torch.tensor([context.step in memory["schedule"][s] for s in samples.tolist()], dtype=torch.bool)
        if not bool(at.any()):
            return x_t, gradient
        rows_cpu = samples[at]
        rows = rows_cpu.to(index.device)
        period = (context.step - memory["last_checkpoint"][rows_cpu]).to(index.device)
        too_few_rises = memory["rises"][rows].double() < RHO * period.double()
        stalled = (memory["eta_at_checkpoint"][rows] == memory["eta"][rows]) & (
            memory["best_at_checkpoint"][rows] == memory["best"][rows]
        )
        halve = too_few_rises | stalled
        memory["eta"][rows[halve]] /= 2
        memory["rises"][rows] = 0
        memory["last_checkpoint"][rows_cpu] = context.step
        memory["eta_at_checkpoint"][rows] = memory["eta"][rows]
        memory["best_at_checkpoint"][rows] = memory["best"][rows]
        if bool(halve.any()):  # restart from the best point, with its gradient
            local = torch.nonzero(at.to(index.device)).flatten()[halve]
            x_t, gradient = x_t.clone(), gradient.clone()
            x_t[local] = memory["best_x"][rows[halve]]
            gradient[local] = memory["best_gradient"][rows[halve]]
        return x_t, gradient


def apgd(
    network: nn.Module,
    image: torch.Tensor,
    label: torch.Tensor,
    epsilon: float | torch.Tensor,
    *,
    steps: int | torch.Tensor,
    loss: str | LossFn = "ce",
    targeted: bool = False,
    clip_range: Sequence[float] | None = None,
    generator: torch.Generator | Sequence[torch.Generator] | None = None,
    n_restarts: int = 1,
    random_start: bool = True,
    score_fn: ScoreFn | None = None,
    max_batch: int | None = None,
    best_scores: torch.Tensor | None = None,
) -> torch.Tensor:
    """L-inf APGD: adaptive step size (from ``2 * eps``, halved at checkpoints), momentum 0.75, restarts from the best.

    Examples::

        >>> from monai.networks.nets import UNet
        >>> net = UNet(2, 1, 2, channels=(4, 8), strides=(2,), num_res_units=0).eval()
        >>> image, label = torch.rand(2, 1, 16, 16), torch.randint(0, 2, (2, 1, 16, 16))
        >>> adversarial = apgd(net, image, label, 8 / 255, steps=10, loss="masked_ce", clip_range=(0, 1),
        ...                    generator=torch.Generator().manual_seed(0))
        >>> bool(((adversarial - image).abs() <= 8 / 255 + 1e-7).all())
        True

    Args:
        network: any module returning logits ``(B, C, *spatial)``; eval mode for the attack, modes restored.
        image: ``(B, C, *spatial)`` in input units (any range), 2D or 3D.
        label: the truth, or the target when ``targeted``.
        epsilon: L-inf bound in input units, scalar or ``(B,)``.
        steps: iterations per restart, an int or ``(B,)`` (>= 1).
        loss: a name of :data:`APGD_LOSSES` or a ``loss(logits, label) -> (B,)`` function.
        targeted: descend the loss towards ``label`` (only ``"ce"``, ``"dice"`` or your own loss).
        clip_range: ``(lo, hi)`` valid intensity range, or None.
        generator: random source of the starts (pass one for reproducible results), or one per sample.
        n_restarts: independent runs; each sample keeps its best result over them.
        random_start: start each run uniformly in the ball (else at the image).
        score_fn: ``score(logits, samples) -> (n,)``, lower is stronger; the returned iterate is each sample's best
            by this score over all iterates and restarts (e.g. its Dice). Default: the attack's own objective (the
            best loss, as in the paper).
        max_batch: at most this many samples in one forward.
        best_scores: a ``(B,)`` float64 CPU tensor that receives each sample's ``score_fn`` value of the returned
            iterate (its iterates were scored in the attack's own forwards: no forward again), or None.

    Returns:
        The adversarial batch, ``|x_adv - x| <= epsilon`` exactly (epsilon in the image's dtype), inside
        ``clip_range`` where the input is.

    Raises:
        ValueError: on an unknown loss name, a masked loss with ``targeted``, ``steps`` < 1 or ``n_restarts`` < 1.
    """
    loss_fn = _apgd_loss(loss, targeted)
    step_loss = segpgd_step_loss(per_sample=True) if loss == "balanced_ce" else None
    counts = torch.as_tensor(steps).long().flatten()
    if counts.numel() == 0 or bool((counts < 1).any()):
        raise ValueError(f"apgd: steps must be >= 1, got {steps!r}")
    if isinstance(n_restarts, bool) or not isinstance(n_restarts, int) or n_restarts < 1:
        raise ValueError(f"apgd: n_restarts must be an int >= 1, got {n_restarts!r}")
    if score_fn is None:
        if step_loss is not None:
            raise ValueError("apgd: loss 'balanced_ce' changes with the step; pass a score_fn (e.g. the Dice)")
        score_fn = _objective_score(network, loss_fn, label, targeted)
    best, lowest = None, None
    for _ in range(n_restarts):
        scores = torch.full((image.shape[0],), math.inf, dtype=torch.float64)
        result = _iterate(
            network,
            image,
            label,
            epsilon,
            alpha=epsilon,  # the rule takes only the sign of the step; its size is APGD's own eta
            steps=steps,
            targeted=targeted,
            loss_fn=loss_fn,
            clip_range=clip_range,
            random_start=random_start,
            generator=generator,
            step_loss=step_loss,
            step_rule=APGDStepRule(),
            max_batch=max_batch,
            score_fn=score_fn,
            best_scores=scores,
        )
        if best is None:
            best, lowest = result, scores
        else:
            better = scores < lowest
            best[better.to(best.device)] = result[better.to(best.device)]
            lowest = torch.minimum(lowest, scores)
    if best_scores is not None:
        best_scores.copy_(lowest)
    return best


def _apgd_loss(loss: str | LossFn, targeted: bool) -> LossFn:
    if callable(loss):
        return loss
    if not isinstance(loss, str) or loss not in APGD_LOSSES:
        raise ValueError(f"apgd: unknown loss {loss!r}; choose one of {sorted(APGD_LOSSES)} or pass a function")
    if targeted and loss in _UNTARGETED_ONLY:
        raise ValueError(f"apgd: loss {loss!r} masks voxels by the truth and is untargeted only; use 'ce' or 'dice'")
    return APGD_LOSSES[loss]


def _objective_score(network, loss_fn: LossFn, label: torch.Tensor, targeted: bool) -> ScoreFn:
    """Default score: minus the attack's objective (the loss, or minus the loss when targeted), per sample."""
    sign = 1.0 if targeted else -1.0

    def score(logits: torch.Tensor, samples: torch.Tensor) -> torch.Tensor:
        return sign * loss_fn(logits, label[samples.to(label.device)]).double()

    return score
