"""Iterative attacks: the basic iterative method (I-FGSM), PGD and SegPGD-weighted PGD.

All three share :func:`_iterate`, which runs each sample for its own number of steps and drops samples whose budget is
spent from the batch (active-set compaction). In eval mode every sample's trajectory depends on that sample only, so a
batch holding several strengths gives the same result as attacking each strength on its own.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from monai_advseg.attacks.gradient import (
    LossFn,
    attack_mode,
    ball_edges,
    input_gradient,
    plain_copy,
    project,
    signed_step,
)
from monai_advseg.attacks.losses import upcast_half
from monai_advseg.attacks.schedule import kurakin_steps
from monai_advseg.attacks.validation import as_sample_tensor, check_attack_inputs, check_clip_range

__all__ = ["iterative_fgsm", "pgd", "segpgd", "segpgd_loss"]

# Builds the loss for one step: (step index t, per-sample total steps T of the active samples) -> loss_fn.
StepLoss = Callable[[int, torch.Tensor], LossFn]


def _per_sample(value: torch.Tensor, batch: int, ndim: int) -> torch.Tensor:
    return value.reshape(-1, *([1] * (ndim - 1))).expand(batch, *([1] * (ndim - 1))) if value.ndim == 0 else value


def _step_counts(steps: int | torch.Tensor | None, eps: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    batch = eps.shape[0]
    if steps is None:
        if bool(((alpha <= 0) & (eps > 0)).any()):
            raise ValueError("alpha must be > 0 to derive the Kurakin number of steps from epsilon / alpha")
        # epsilon / alpha in levels; rounding absorbs float noise such as 15.999999 for 16 levels.
        ratios = (eps.flatten(1)[:, 0] / alpha.flatten(1)[:, 0].clamp_min(torch.finfo(alpha.dtype).tiny)).tolist()
        return torch.tensor([kurakin_steps(round(r, 6)) for r in ratios], dtype=torch.long)
    counts = torch.as_tensor(steps).long().flatten()
    if counts.numel() == 1:
        counts = counts.expand(batch).clone()
    if counts.numel() != batch or bool((counts < 0).any()):
        raise ValueError(f"steps must be a non-negative int or a ({batch},) tensor of them, got {steps!r}")
    return counts.cpu()


@torch.inference_mode(False)  # evaluators may call from inference mode; the iterates must be autograd tensors
def _iterate(
    network: nn.Module,
    image: torch.Tensor,
    label: torch.Tensor,
    epsilon: float | torch.Tensor,
    *,
    alpha: float | torch.Tensor,
    steps: int | torch.Tensor | None,
    targeted: bool,
    loss_fn: LossFn | None,
    clip_range: Sequence[float] | None,
    random_start: bool = False,
    generator: torch.Generator | None = None,
    step_loss: StepLoss | None = None,
) -> torch.Tensor:
    check_attack_inputs(image, label)
    clip = check_clip_range(clip_range)
    batch, ndim = image.shape[0], image.ndim
    eps = _per_sample(as_sample_tensor(epsilon, "epsilon", image), batch, ndim)
    step_size = _per_sample(as_sample_tensor(alpha, "alpha", image), batch, ndim)
    counts = _step_counts(steps, eps, step_size)
    counts[(eps.flatten(1)[:, 0] == 0).cpu()] = 0
    original = plain_copy(image)
    target = plain_copy(label)
    adversarial = original.clone()
    lower, upper = ball_edges(original, eps)  # once: every step's projection is then a clamp
    if random_start:
        device = generator.device if generator is not None else image.device
        noise = torch.rand(original.shape, generator=generator, device=device, dtype=original.dtype)
        start = original + (2 * noise.to(original.device) - 1) * eps
        adversarial = project(start, original, eps, clip, edges=(lower, upper))
        adversarial[counts == 0] = original[counts == 0]
    direction = -1.0 if targeted else 1.0
    with attack_mode(network) as module:
        for t in range(int(counts.max()) if batch else 0):
            active = torch.nonzero(counts > t).flatten()
            whole = active.numel() == batch
            index = slice(None) if whole else active.to(image.device)
            x_t = adversarial[index]
            step_fn = loss_fn if step_loss is None else step_loss(t, counts[active].to(image.device))
            gradient = input_gradient(module, x_t, target[index], step_fn)
            updated = signed_step(
                x_t,
                gradient,
                direction * step_size[index],
                original=original[index],
                epsilon=eps[index],
                clip_range=clip,
                edges=(lower[index], upper[index]),
            )
            if whole:
                adversarial = updated
            else:
                adversarial[index] = updated
    return adversarial


def iterative_fgsm(
    network: nn.Module,
    image: torch.Tensor,
    label: torch.Tensor,
    epsilon: float | torch.Tensor,
    *,
    alpha: float | torch.Tensor,
    steps: int | torch.Tensor | None = None,
    targeted: bool = False,
    loss_fn: LossFn | None = None,
    clip_range: Sequence[float] | None = None,
) -> torch.Tensor:
    """Basic iterative method (Kurakin et al.): repeated FGSM steps of size ``alpha`` kept within ``epsilon``.

    ``x_{t+1} = clip_{x, eps}(x_t + alpha * sign(grad L))`` from ``x_0 = x`` (minus the step when ``targeted``).

    Args:
        network: any module returning logits ``(B, C, *spatial)``; run in eval mode, modes restored afterwards.
        image: ``(B, C, *spatial)`` in the network's input units.
        label: true label, or the target when ``targeted`` (e.g. :func:`~monai_advseg.attacks.inverse_mask`).
        epsilon: L-inf bound in input units, scalar or per-sample ``(B,)``.
        alpha: step size in input units, scalar or per-sample ``(B,)``.
        steps: iterations, an int or a per-sample ``(B,)`` tensor; None means the Kurakin schedule
            ``kurakin_steps(epsilon / alpha)`` per sample (alpha = one level reproduces the paper).
        targeted: descend the loss towards ``label`` instead of ascending it.
        loss_fn: ``loss_fn(logits, label)``, default the summed per-voxel cross-entropy.
        clip_range: ``(lo, hi)`` valid intensity range, or None.

    Returns:
        The adversarial batch (a new tensor), with ``|x_adv - x| <= epsilon`` exactly for ``epsilon`` in the
        image's dtype (no float-rounding overshoot), inside ``clip_range`` where the input is.

    Raises:
        ValueError: on bad strengths, steps, shapes, values or ``clip_range``.
    """
    return _iterate(
        network,
        image,
        label,
        epsilon,
        alpha=alpha,
        steps=steps,
        targeted=targeted,
        loss_fn=loss_fn,
        clip_range=clip_range,
    )


def pgd(
    network: nn.Module,
    image: torch.Tensor,
    label: torch.Tensor,
    epsilon: float | torch.Tensor,
    *,
    alpha: float | torch.Tensor,
    steps: int | torch.Tensor,
    random_start: bool = True,
    generator: torch.Generator | None = None,
    loss_fn: LossFn | None = None,
    clip_range: Sequence[float] | None = None,
    targeted: bool = False,
) -> torch.Tensor:
    """Projected gradient descent (Madry et al.): I-FGSM from a uniform random start inside the epsilon ball.

    Args:
        generator: the random source for the start (pass one for reproducible results); its device is used to draw.
        Others as in :func:`iterative_fgsm` (``steps`` is required).

    Returns:
        The adversarial batch (a new tensor), with ``|x_adv - x| <= epsilon`` exactly for ``epsilon`` in the
        image's dtype (no float-rounding overshoot), inside ``clip_range`` where the input is.
    """
    return _iterate(
        network,
        image,
        label,
        epsilon,
        alpha=alpha,
        steps=steps,
        targeted=targeted,
        loss_fn=loss_fn,
        clip_range=clip_range,
        random_start=random_start,
        generator=generator,
    )


def segpgd_loss(logits: torch.Tensor, label: torch.Tensor, weight_wrong: torch.Tensor) -> torch.Tensor:
    """SegPGD's weighted cross-entropy (Gu et al. 2022), summed over voxels.

    Voxels the network still gets right weigh ``1 - lambda``, voxels it already gets wrong weigh ``lambda``, so early
    steps push the still-correct voxels and later steps balance both.

    Args:
        logits: ``(B, C, *spatial)`` with C > 1.
        label: class indices ``(B, 1, *spatial)``.
        weight_wrong: ``lambda`` per sample, shape ``(B,)``.

    Returns:
        A scalar.
    """
    if logits.shape[1] < 2 or label.shape[1] != 1:
        raise ValueError("segpgd_loss needs multi-channel logits (C > 1) and a class-index label (B, 1, *spatial)")
    indices = label[:, 0].long()
    per_voxel = F.cross_entropy(upcast_half(logits), indices, reduction="none")
    wrong = (logits.argmax(dim=1) != indices).to(per_voxel.dtype)
    lam = weight_wrong.to(per_voxel.dtype).reshape(-1, *([1] * (per_voxel.ndim - 1)))
    return ((1 - lam) * (1 - wrong) * per_voxel + lam * wrong * per_voxel).sum()


def segpgd(
    network: nn.Module,
    image: torch.Tensor,
    label: torch.Tensor,
    epsilon: float | torch.Tensor,
    *,
    alpha: float | torch.Tensor,
    steps: int | torch.Tensor,
    random_start: bool = True,
    generator: torch.Generator | None = None,
    clip_range: Sequence[float] | None = None,
    targeted: bool = False,
) -> torch.Tensor:
    """PGD with SegPGD's per-voxel loss weights, ``lambda_t = t / (2T)`` at step t of T.

    Arguments as in :func:`pgd`; the loss is :func:`segpgd_loss` (class-index labels, multi-channel logits).
    """

    def step_loss(t: int, totals: torch.Tensor) -> LossFn:
        lam = t / (2.0 * totals.clamp_min(1).double())
        return lambda logits, lbl: segpgd_loss(logits, lbl, lam)

    return _iterate(
        network,
        image,
        label,
        epsilon,
        alpha=alpha,
        steps=steps,
        targeted=targeted,
        loss_fn=None,
        clip_range=clip_range,
        random_start=random_start,
        generator=generator,
        step_loss=step_loss,
    )
