"""Iterative attacks: the basic iterative method (I-FGSM), PGD, SegPGD-weighted PGD and L2 PGD.

All of them share :func:`_iterate`, which runs each sample for its own number of steps and drops samples whose budget is
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
    forward_in_chunks,
    input_gradient,
    plain_copy,
    project,
    project_l2,
)
from monai_advseg.attacks.losses import upcast_half
from monai_advseg.attacks.schedule import kurakin_steps_for
from monai_advseg.attacks.scoring import argmax_classes
from monai_advseg.attacks.step_rules import StepContext, StepRule, l2_step_rule, signed_step_rule
from monai_advseg.attacks.validation import as_sample_tensor, check_attack_inputs, check_clip_range, check_max_batch

__all__ = ["balanced_cross_entropy", "iterative_fgsm", "pgd", "pgd_l2", "segpgd", "segpgd_loss", "segpgd_step_loss"]

# Builds the loss for one step: (step index t, per-sample total steps T of the active samples) -> loss_fn.
StepLoss = Callable[[int, torch.Tensor], LossFn]


def _per_sample(value: torch.Tensor, batch: int, ndim: int) -> torch.Tensor:
    return value.reshape(-1, *([1] * (ndim - 1))).expand(batch, *([1] * (ndim - 1))) if value.ndim == 0 else value


def _kurakin_counts(epsilon: float | torch.Tensor, alpha: float | torch.Tensor, batch: int) -> torch.Tensor:
    """:func:`~monai_advseg.attacks.schedule.kurakin_steps_for` per sample, from the values as the caller gave them.

    The ratio is taken in float64 before any conversion to the image's dtype; the snap tolerance is a few units of
    the precision the values came in (float64 for Python numbers, the tensor's dtype otherwise).
    """
    eps = torch.as_tensor(epsilon).detach().double().flatten().cpu()
    step = torch.as_tensor(alpha).detach().double().flatten().cpu()
    dtypes = [t.dtype for t in (torch.as_tensor(epsilon), torch.as_tensor(alpha)) if t.is_floating_point()]
    rtol = 8 * max((torch.finfo(d).eps for d in dtypes), default=torch.finfo(torch.float64).eps)
    eps, step = eps.expand(batch) if eps.numel() == 1 else eps, step.expand(batch) if step.numel() == 1 else step
    if bool(((step <= 0) & (eps > 0)).any()):
        raise ValueError("alpha must be > 0 to derive the Kurakin number of steps from epsilon / alpha")
    counts = [
        kurakin_steps_for(e, a, rtol=rtol) if e > 0 else 0 for e, a in zip(eps.tolist(), step.tolist(), strict=True)
    ]
    return torch.tensor(counts, dtype=torch.long)


def _step_counts(
    steps: int | torch.Tensor | None, epsilon: float | torch.Tensor, alpha: float | torch.Tensor, batch: int
) -> torch.Tensor:
    if steps is None:
        return _kurakin_counts(epsilon, alpha, batch)
    counts = torch.as_tensor(steps).long().flatten()
    if counts.numel() == 1:
        counts = counts.expand(batch).clone()
    if counts.numel() != batch or bool((counts < 0).any()):
        raise ValueError(f"steps must be a non-negative int or a ({batch},) tensor of them, got {steps!r}")
    return counts.cpu()


def _leaders(
    share: torch.Tensor | None, counts: torch.Tensor, original: torch.Tensor, target: torch.Tensor, by_count: bool
) -> torch.Tensor:
    """Each sample's leader: the sample whose iterate (and so whose gradient) it shares; itself when none.

    Samples that the caller put in one group (``share`` ids) follow the group's member with the most steps, provided
    they have the same image and label bit for bit (checked here, not assumed), and the same step count when the
    loss depends on it (``by_count``). The leader has the most steps so that it stays active as long as any follower.
    """
    batch = counts.shape[0]
    leader = torch.arange(batch)
    if share is None:
        return leader
    groups = torch.as_tensor(share).long().flatten().cpu()
    if groups.numel() != batch:
        raise ValueError(f"share must hold one group id per sample ({batch}), got {groups.numel()}")
    keys = torch.stack([groups, counts if by_count else torch.zeros_like(counts)], dim=1)
    for key in torch.unique(keys, dim=0):
        members = torch.nonzero((keys == key).all(dim=1)).flatten()
        head = members[torch.argmax(counts[members])]  # first of the members with the most steps
        head_image, head_target = original[head], target[head]
        for member in members.tolist():
            if torch.equal(original[member], head_image) and torch.equal(target[member], head_target):
                leader[member] = head
    return leader


class _LinfBall:
    """The loop's L-inf threat model: the box ``[x - eps, x + eps]`` and the sign step.

    The ball's edges are computed once (:func:`~monai_advseg.attacks.gradient.ball_edges`), so that every step's
    projection is a clamp.
    """

    step_rule: StepRule = staticmethod(signed_step_rule)

    def __init__(self, original: torch.Tensor, epsilon: torch.Tensor, clip: tuple[float, float] | None) -> None:
        self.original, self.epsilon, self.clip = original, epsilon, clip
        self.lower, self.upper = ball_edges(original, epsilon)

    def projector(self, index: slice | torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
        """The projection of the samples ``index`` (their centres and edges gathered once per step)."""
        centre, radius, edges = self.original[index], self.epsilon[index], (self.lower[index], self.upper[index])
        return lambda candidate: project(candidate, centre, radius, self.clip, edges=edges)

    def random_start(self, generator: torch.Generator | Sequence[torch.Generator] | None) -> torch.Tensor:
        """A uniform draw in the box (per voxel), projected."""
        start = self.original + (2 * _uniform_noise(self.original, generator) - 1) * self.epsilon
        return project(start, self.original, self.epsilon, self.clip, edges=(self.lower, self.upper))


class _L2Ball:
    """The loop's L2 threat model: ``||x_adv - x||_2 <= eps`` per sample (all voxels and channels), the normalized
    gradient step (:func:`~monai_advseg.attacks.step_rules.l2_step_rule`) and
    :func:`~monai_advseg.attacks.gradient.project_l2`."""

    step_rule: StepRule = staticmethod(l2_step_rule)

    def __init__(self, original: torch.Tensor, epsilon: torch.Tensor, clip: tuple[float, float] | None) -> None:
        self.original, self.epsilon, self.clip = original, epsilon, clip

    def projector(self, index: slice | torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
        centre, radius = self.original[index], self.epsilon[index]
        return lambda candidate: project_l2(candidate, centre, radius, self.clip)

    def random_start(self, generator: torch.Generator | Sequence[torch.Generator] | None) -> torch.Tensor:
        """A uniform draw in the L2 ball: a Gaussian direction, radius ``eps * U^(1/d)`` (d voxels x channels)."""
        start = self.original + _unit_l2_ball_noise(self.original, generator) * self.epsilon
        return project_l2(start, self.original, self.epsilon, self.clip)


#: The threat models of the loop by ``norm``.
_BALLS = {"linf": _LinfBall, "l2": _L2Ball}


# Scores an iterate from its logits: (logits, positions of the samples in the batch) -> (n,), lower = stronger attack.
ScoreFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


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
    generator: torch.Generator | Sequence[torch.Generator] | None = None,
    step_loss: StepLoss | None = None,
    step_rule: StepRule | None = None,
    share: torch.Tensor | None = None,
    max_batch: int | None = None,
    score_fn: ScoreFn | None = None,
    norm: str = "linf",
    best_scores: torch.Tensor | None = None,
) -> torch.Tensor:
    """The one attack loop: per-sample steps, active-set compaction, shared trajectories, projection and clipping.

    At step t the samples with more than t steps are active. Each active sample's gradient comes from one forward +
    input backward, except that samples sharing a trajectory (same ``share`` id, same image and label, same iterate
    bit for bit) use their leader's: after every step a follower whose new iterate differs from its leader's — its
    own ball or the clipping acted where the leader's did not — leaves the group and is attacked on its own. So the
    result equals attacking every sample alone, while a sweep over epsilons of one image costs one gradient per step
    until the budgets part.

    Args:
        step_rule: the candidate before clipping and projection (default: the norm's steepest-ascent step, the sign
            step for L-inf, the normalized gradient for L2); see :mod:`monai_advseg.attacks.step_rules`. A rule with
            ``needs_loss = True`` gets the per-sample loss.
        share: ``(B,)`` group ids of samples that may share a trajectory (e.g. the index of the source image in a
            repeated batch), or None. Only for deterministic, stateless step rules without a random start.
        max_batch: at most this many samples per forward (None: all active leaders at once).
        score_fn: when given, return each sample's best iterate by this score (lowest wins) among all iterates
            ``x_0 .. x_T``, not the last; the final iterates cost one more forward (no backward). Each distinct
            iterate is scored once: samples sharing a trajectory take their leader's score.
        norm: the threat model, chosen once for the whole call: ``"linf"`` (the box ``|x_adv - x| <= eps``) or
            ``"l2"`` (``||x_adv - x||_2 <= eps`` per sample, :func:`pgd_l2`). It picks the projection, the random
            start and the default step rule; the active set, the compaction and the clipping are the same loop.
            No trajectory sharing with ``"l2"``.
        best_scores: with ``score_fn``, a ``(B,)`` float64 CPU tensor that receives each sample's score of the
            returned iterate (inf for a sample without steps), so that callers need not forward it again.
        Others as in :func:`iterative_fgsm` / :func:`pgd`.
    """
    check_attack_inputs(image, label)
    clip = check_clip_range(clip_range)
    check_max_batch(max_batch)
    if norm not in _BALLS:
        raise ValueError(f"norm must be one of {sorted(_BALLS)}, got {norm!r}")
    if share is not None and random_start:
        raise ValueError("share: samples with random starts do not share trajectories")
    if share is not None and norm != "linf":
        raise ValueError(f"share: trajectory sharing is for the L-inf ball only, not norm={norm!r}")
    batch, ndim = image.shape[0], image.ndim
    eps = _per_sample(as_sample_tensor(epsilon, "epsilon", image), batch, ndim)
    step_size = _per_sample(as_sample_tensor(alpha, "alpha", image), batch, ndim)
    counts = _step_counts(steps, epsilon, alpha, batch)
    counts[(eps.flatten(1)[:, 0] == 0).cpu()] = 0
    original = plain_copy(image)
    target = plain_copy(label)
    adversarial = original.clone()
    ball = _BALLS[norm](original, eps, clip)
    step_rule = ball.step_rule if step_rule is None else step_rule
    if random_start:
        adversarial = ball.random_start(generator)
        adversarial[counts == 0] = original[counts == 0]
    leader = _leaders(share, counts, original, target, by_count=step_loss is not None)
    needs_loss = bool(getattr(step_rule, "needs_loss", False))
    best = _BestIterates(adversarial, score_fn) if score_fn is not None else None
    direction = -1.0 if targeted else 1.0
    memory: dict = {}
    with attack_mode(network) as module:
        for t in range(int(counts.max()) if batch else 0):
            active = torch.nonzero(counts > t).flatten()
            whole = active.numel() == batch
            index = slice(None) if whole else active.to(image.device)
            x_t = adversarial[index]
            heads = active[leader[active] == active]  # leaders have the most steps: active while any follower is
            shared = heads.numel() != active.numel()
            outputs = _leader_gradients(
                module, adversarial, target, heads, counts, t, loss_fn, step_loss, max_batch, needs_loss or best
            )
            # scored at the leaders only: a follower's iterate and label are its leader's, bit for bit
            head_scores = None if best is None else best.score(outputs[1], heads)
            position = torch.full((batch,), -1, dtype=torch.long)
            position[heads] = torch.arange(heads.numel())
            if shared:  # followers take their leader's gradient (and outputs)
                gather = position[leader[active]]
                outputs = tuple(None if o is None else o[gather.to(image.device)] for o in outputs)
            gradient, losses = outputs[0], outputs[2]
            if best is not None:
                best.update(x_t, head_scores[gather] if shared else head_scores, active)
                if share is not None and t > 0:  # followers whose steps ended at t hold their leader's x_t
                    ended = torch.nonzero((counts == t) & (leader != torch.arange(batch))).flatten()
                    ended = ended[counts[leader[ended]] > t]
                    if ended.numel():
                        best.update(adversarial[ended.to(image.device)], head_scores[position[leader[ended]]], ended)
            if needs_loss and losses is None:
                raise ValueError("this step rule needs a loss that returns one value per sample, shape (B,)")
            project_active = ball.projector(index)
            context = StepContext(
                t,
                active,
                counts[active],
                direction * step_size[index],
                eps[index],
                memory,
                batch,
                losses,
                project_active,
            )
            updated = project_active(step_rule(x_t, gradient, context))
            if shared:
                _split_diverged(leader, active, updated)
            if whole:
                adversarial = updated
            else:
                adversarial[index] = updated
        if best is not None:
            _score_final_iterates(best, module, adversarial, counts, leader, max_batch)
            adversarial = best.iterates
            if best_scores is not None:
                best_scores.copy_(best.scores)
    return adversarial


# Draws noise for ``count`` samples: (generator or None, device, count) -> (count, *sample shape).
_Draw = Callable[[torch.Generator | None, torch.device, int], torch.Tensor]


def _per_sample_noise(
    like: torch.Tensor, generator: torch.Generator | Sequence[torch.Generator] | None, draw: _Draw
) -> torch.Tensor:
    """``draw``'s noise for ``like``'s batch, from one generator, or one generator per sample (so that a sample's
    start does not depend on its batch-mates); drawn on the generator's device, returned on ``like``'s."""
    if generator is None or isinstance(generator, torch.Generator):
        device = generator.device if generator is not None else like.device
        return draw(generator, device, like.shape[0]).to(like.device)
    if len(generator) != like.shape[0]:
        raise ValueError(f"got {len(generator)} generators for {like.shape[0]} samples")
    return torch.cat([draw(g, g.device, 1) for g in generator]).to(like.device)


def _uniform_noise(like: torch.Tensor, generator: torch.Generator | Sequence[torch.Generator] | None) -> torch.Tensor:
    """U(0, 1) noise of ``like``'s shape (see :func:`_per_sample_noise` for ``generator``)."""

    def draw(source, device, count):
        return torch.rand((count, *like.shape[1:]), generator=source, device=device, dtype=like.dtype)

    return _per_sample_noise(like, generator, draw)


def _unit_l2_ball_noise(
    like: torch.Tensor, generator: torch.Generator | Sequence[torch.Generator] | None
) -> torch.Tensor:
    """Uniform noise in each sample's unit L2 ball: a standard Gaussian direction (isotropic, so uniform on the
    sphere) scaled to radius ``U^(1/d)``, ``d`` the sample's number of values (the ball's volume grows as ``r^d``)."""
    values = like[0].numel()

    def draw(source, device, count):
        gaussian = torch.randn((count, *like.shape[1:]), generator=source, device=device, dtype=torch.float64)
        radius = torch.rand((count,), generator=source, device=device, dtype=torch.float64) ** (1.0 / values)
        norms = gaussian.flatten(1).norm(dim=1).clamp_min(torch.finfo(torch.float64).tiny)
        return (gaussian * (radius / norms).reshape(-1, *([1] * (like.ndim - 1)))).to(like.dtype)

    return _per_sample_noise(like, generator, draw)


class _BestIterates:
    """Each sample's lowest-scoring iterate so far (its starting point until a step scores lower)."""

    def __init__(self, start: torch.Tensor, score_fn: ScoreFn) -> None:
        self.iterates = start.clone()
        self.scores = torch.full((start.shape[0],), float("inf"), dtype=torch.float64)
        self.score_fn = score_fn

    def score(self, logits: torch.Tensor, samples: torch.Tensor) -> torch.Tensor:
        """``score_fn`` of the ``samples``' logits, ``(n,)`` float64 on the CPU."""
        return self.score_fn(logits, samples).detach().double().cpu()

    def update(self, iterates: torch.Tensor, scores: torch.Tensor, samples: torch.Tensor) -> None:
        """Keep ``iterates`` (of ``samples``) where their ``scores`` are lower than the best so far."""
        better = scores < self.scores[samples]
        if bool(better.any()):
            rows = samples[better]
            self.scores[rows] = scores[better]
            self.iterates[rows.to(iterates.device)] = iterates[better.to(iterates.device)]


def _score_final_iterates(
    best: _BestIterates,
    module: nn.Module,
    adversarial: torch.Tensor,
    counts: torch.Tensor,
    leader: torch.Tensor,
    max_batch: int | None,
) -> None:
    """Score the final iterates not scored in the loop, with one forward per distinct iterate.

    A follower that stopped before its leader was scored at its last step (its iterate was the leader's); one that
    stopped with its leader shares the leader's final iterate, so only the leaders of the rest are forwarded.
    """
    stepped = torch.nonzero(counts > 0).flatten()
    rest = stepped[(leader[stepped] == stepped) | (counts[leader[stepped]] == counts[stepped])]
    own = rest[leader[rest] == rest]  # a leader has the most steps of its group: every rest's leader is in own
    if own.numel() == 0:
        return
    device = adversarial.device
    own_scores = best.score(forward_in_chunks(module, adversarial[own.to(device)], max_batch), own)
    position = torch.full((leader.shape[0],), -1, dtype=torch.long)
    position[own] = torch.arange(own.numel())
    best.update(adversarial[rest.to(device)], own_scores[position[leader[rest]]], rest)


def _leader_gradients(
    module: nn.Module,
    adversarial: torch.Tensor,
    target: torch.Tensor,
    heads: torch.Tensor,
    counts: torch.Tensor,
    t: int,
    loss_fn: LossFn | None,
    step_loss: StepLoss | None,
    max_batch: int | None,
    with_outputs: bool | object,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """``(gradient, logits, per-sample loss)`` at the leaders ``heads`` at step ``t``, in forwards of at most
    ``max_batch`` samples; logits and loss are None unless ``with_outputs``."""
    size = heads.numel() if max_batch is None else max_batch
    parts = []
    for start in range(0, heads.numel(), size):
        rows = heads[start : start + size]
        index = slice(None) if rows.numel() == adversarial.shape[0] else rows.to(adversarial.device)
        step_fn = loss_fn if step_loss is None else step_loss(t, counts[rows].to(adversarial.device))
        if with_outputs:
            parts.append(input_gradient(module, adversarial[index], target[index], step_fn, return_outputs=True))
        else:
            parts.append((input_gradient(module, adversarial[index], target[index], step_fn), None, None))
    if len(parts) == 1:
        return parts[0]
    return tuple(None if part[0] is None else torch.cat(part) for part in zip(*parts, strict=True))  # type: ignore


def _split_diverged(leader: torch.Tensor, active: torch.Tensor, updated: torch.Tensor) -> None:
    """Followers whose new iterate differs from their leader's lead themselves from now on (``leader`` in place)."""
    local = torch.full((leader.shape[0],), -1, dtype=torch.long)
    local[active] = torch.arange(active.numel())
    followers = active[leader[active] != active]
    mine = local[followers].to(updated.device)
    theirs = local[leader[followers]].to(updated.device)
    same = (updated[mine] == updated[theirs]).flatten(1).all(dim=1).cpu()
    leader[followers[~same]] = followers[~same]


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
        clip_range=clip_range,
        loss_fn=loss_fn,
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
        The adversarial batch, as in :func:`iterative_fgsm`.
    """
    return _iterate(
        network,
        image,
        label,
        epsilon,
        alpha=alpha,
        steps=steps,
        targeted=targeted,
        clip_range=clip_range,
        loss_fn=loss_fn,
        random_start=random_start,
        generator=generator,
    )


def _check_l2_steps(alpha: float | torch.Tensor, steps: int | torch.Tensor) -> None:
    """:func:`pgd_l2`'s own checks: at least one step, and a step length (no sign step bounds it) > 0."""
    if isinstance(steps, bool) or not isinstance(steps, (int, torch.Tensor)):
        raise ValueError(f"pgd_l2: steps must be an int >= 1 or a (B,) tensor of counts, got {steps!r}")
    if isinstance(steps, int) and steps < 1:
        raise ValueError(f"pgd_l2: steps must be >= 1, got {steps!r}")
    length = torch.as_tensor(alpha, dtype=torch.float64)
    if not bool(torch.isfinite(length).all()) or bool((length <= 0).any()):
        raise ValueError(f"pgd_l2: alpha (the L2 step length) must be finite and > 0, got {alpha!r}")


def pgd_l2(
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
    """L2 projected gradient descent (Madry et al.): normalized-gradient steps kept in the L2 ball of radius epsilon.

    ``x_{t+1} = clip(P_eps(x_t + alpha * g / ||g||_2))`` per sample, from a uniform random start in the ball; the
    norms are over all of a sample's voxels and channels. It is the threat model of randomized smoothing's
    certificates (:mod:`monai_advseg.certify`), so an attack and a certificate can be compared at the same radius.

    Args:
        epsilon: the L2 radius per sample in input units, a scalar or a ``(B,)`` tensor; 0 returns the input.
        alpha: the L2 length of a step in input units (> 0), scalar or ``(B,)``; ``2.5 * epsilon / steps`` is
            the usual choice.
        steps: iterations (an int >= 1, or a per-sample ``(B,)`` tensor of counts >= 0).
        random_start: start uniformly in the ball (a Gaussian direction, radius ``eps * U^(1/d)``).
        generator: the random source for the start (pass one for reproducible results), or one per sample.
        Others as in :func:`pgd` (``network`` 2D or 3D).

    Returns:
        The adversarial batch (a new tensor) with ``||x_adv - x||_2 <= epsilon`` per sample (up to the rounding of
        ``x + delta`` in the image's dtype, see :func:`~monai_advseg.attacks.gradient.project_l2`), inside
        ``clip_range`` where the input is.

    Raises:
        ValueError: on a negative or non-finite epsilon, ``alpha`` <= 0, ``steps`` < 1, bad shapes or values, or a
            bad ``clip_range``.
    """
    _check_l2_steps(alpha, steps)
    return _iterate(
        network,
        image,
        label,
        epsilon,
        alpha=alpha,
        steps=steps,
        targeted=targeted,
        clip_range=clip_range,
        loss_fn=loss_fn,
        random_start=random_start,
        generator=generator,
        norm="l2",
    )


def balanced_cross_entropy(
    logits: torch.Tensor, label: torch.Tensor, weight_wrong: torch.Tensor, targeted: bool = False
) -> torch.Tensor:
    """SegPGD's weighted cross-entropy per sample, ``(B,)``: see :func:`segpgd_loss` (its batch sum)."""
    if logits.shape[1] < 2 or label.shape[1] != 1:
        raise ValueError("segpgd_loss needs multi-channel logits (C > 1) and a class-index label (B, 1, *spatial)")
    indices = label[:, 0].long()
    per_voxel = F.cross_entropy(upcast_half(logits), indices, reduction="none")
    agrees = argmax_classes(logits) == indices
    fooled = (agrees if targeted else ~agrees).to(per_voxel.dtype)
    lam = weight_wrong.to(per_voxel.dtype).reshape(-1, *([1] * (per_voxel.ndim - 1)))
    return ((1 - lam) * (1 - fooled) * per_voxel + lam * fooled * per_voxel).flatten(1).sum(dim=1)


def segpgd_loss(
    logits: torch.Tensor, label: torch.Tensor, weight_wrong: torch.Tensor, targeted: bool = False
) -> torch.Tensor:
    """SegPGD's weighted cross-entropy (Gu et al. 2022), summed over voxels.

    Voxels the attack has not fooled yet weigh ``1 - lambda``, voxels already fooled weigh ``lambda``, so early steps
    push the voxels still to be fooled and later steps balance both. Untargeted, a voxel is fooled when the network
    gets it wrong (``pred != label``); targeted, when it already predicts the target (``pred == label``).

    Args:
        logits: ``(B, C, *spatial)`` with C > 1.
        label: class indices ``(B, 1, *spatial)``: the truth, or the target when ``targeted``.
        weight_wrong: ``lambda`` per sample, shape ``(B,)``: the weight of the voxels already fooled.
        targeted: ``label`` is the attack's target.

    Returns:
        A scalar.
    """
    return balanced_cross_entropy(logits, label, weight_wrong, targeted).sum()


def segpgd_step_loss(targeted: bool = False, per_sample: bool = False) -> StepLoss:
    """SegPGD's per-step loss for the attack loop: :func:`segpgd_loss` with ``lambda_t = t / (2T)`` per sample.

    Args:
        targeted: the label is the attack's target.
        per_sample: return :func:`balanced_cross_entropy`'s ``(B,)`` values (for step rules that compare losses).
    """
    loss = balanced_cross_entropy if per_sample else segpgd_loss

    def step_loss(t: int, totals: torch.Tensor) -> LossFn:
        lam = t / (2.0 * totals.clamp_min(1).double())
        return lambda logits, lbl: loss(logits, lbl, lam, targeted=targeted)

    return step_loss


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

    return _iterate(
        network,
        image,
        label,
        epsilon,
        alpha=alpha,
        steps=steps,
        targeted=targeted,
        clip_range=clip_range,
        loss_fn=None,
        random_start=random_start,
        generator=generator,
        step_loss=segpgd_step_loss(targeted),
    )
