"""Attacks without a gradient: uniform noise in the eps ball and a score-based random search (Square-attack style).

Both are the reference points of the gradient-masking diagnostics: a network whose gradient attacks are beaten by
noise or by a search that only reads its outputs has a gradient that misleads the attacks, not a robust decision.
They use the core's :func:`~monai_advseg.attacks.gradient.project` (clipping, then the eps ball), like every attack.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import nn

from monai_advseg.attacks.gradient import attack_mode, ball_edges, network_logits, plain_copy, project
from monai_advseg.attacks.iterative import _uniform_noise
from monai_advseg.attacks.validation import as_sample_tensor, check_attack_inputs, check_clip_range

__all__ = ["random_search", "true_class_probability", "uniform_noise"]

# (logits, positions of the samples in the batch) -> (n,), lower = stronger attack.
ScoreFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

# Square attack's halving points of the window area, for 10 000 queries (Andriushchenko et al. 2020, AutoAttack).
_SQUARE_CHECKPOINTS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)


def uniform_noise(
    image: torch.Tensor,
    epsilon: float | torch.Tensor,
    *,
    clip_range: Sequence[float] | None = None,
    generator: torch.Generator | Sequence[torch.Generator] | None = None,
) -> torch.Tensor:
    """``image + U(-eps, eps)`` per voxel, clipped and projected onto the eps ball.

    Args:
        image: ``(B, C, *spatial)`` in input units.
        epsilon: the ball's radius (scalar or ``(B,)``).
        clip_range: valid intensity range, or None.
        generator: one generator, or one per sample (a sample's draw then does not depend on its batch).

    Returns:
        A new tensor of ``image``'s shape.
    """
    if image.ndim < 3:
        raise ValueError(f"image must be (B, C, *spatial), got shape {tuple(image.shape)}")
    clip = check_clip_range(clip_range)
    original = plain_copy(image)
    eps = as_sample_tensor(epsilon, "epsilon", original)
    return project(original + (2 * _uniform_noise(original, generator) - 1) * eps, original, eps, clip)


def true_class_probability(label: torch.Tensor) -> ScoreFn:
    """Score of :func:`random_search` by default: each sample's mean softmax (sigmoid) probability of its true class.

    A smooth stand-in for Dice (which only changes when a voxel flips), read from the outputs alone.

    Args:
        label: class indices ``(B, 1, *spatial)`` or one-hot ``(B, C, *spatial)`` of the attacked batch.
    """

    def score(logits: torch.Tensor, samples: torch.Tensor) -> torch.Tensor:
        truth = label[samples.to(label.device)]
        if logits.shape[1] == 1:
            probability = torch.sigmoid(logits.float())
            foreground = (truth[:, :1] if truth.shape[1] == 1 else truth[:, 1:2]).float()
            true = torch.where(foreground > 0.5, probability, 1 - probability)
        else:
            probabilities = torch.softmax(logits.float(), dim=1)
            indices = truth.long() if truth.shape[1] == 1 else truth.argmax(dim=1, keepdim=True)
            true = probabilities.gather(1, indices)
        return true.flatten(1).mean(dim=1)

    return score


def _window_side(fraction: float, spatial: Sequence[int]) -> int:
    side = round((fraction * math.prod(spatial)) ** (1 / len(spatial)))
    return max(1, min(side, *spatial))


@torch.no_grad()
def random_search(
    network: nn.Module,
    image: torch.Tensor,
    label: torch.Tensor,
    epsilon: float | torch.Tensor,
    *,
    queries: int = 300,
    clip_range: Sequence[float] | None = None,
    generator: torch.Generator | None = None,
    score_fn: ScoreFn | None = None,
    p_init: float = 0.8,
    max_batch: int | None = None,
) -> torch.Tensor:
    """Square-attack-style L-inf random search: only forwards, no gradient (Andriushchenko et al., ECCV 2020).

    Start: vertical stripes of ``+-eps`` (one random sign per channel and column). Each query re-draws the signs of a
    random window (a square / cube covering ``p`` of the spatial size, ``p`` halving on Square's schedule scaled to
    ``queries``) and keeps the candidate when the score drops. Every candidate is clipped and projected by the core.

    Args:
        network: logits ``(B, C, *spatial)``.
        image: ``(B, C, *spatial)`` in input units.
        label: the ground truth the default score compares with (class indices or one-hot).
        epsilon: the ball's radius (scalar or ``(B,)``).
        queries: forwards per sample after the start (the start costs one more).
        clip_range: valid intensity range, or None.
        generator: random source of the stripes and windows.
        score_fn: lower = stronger; default :func:`true_class_probability` of ``label``.
        p_init: the first window's share of the spatial size.
        max_batch: at most this many samples per forward.

    Returns:
        Each sample's lowest-scoring point, a new tensor of ``image``'s shape.

    Raises:
        ValueError: on ``queries`` < 0 or ``p_init`` outside (0, 1], and on bad images, labels or ranges.
    """
    check_attack_inputs(image, label)
    clip = check_clip_range(clip_range)
    if isinstance(queries, bool) or not isinstance(queries, int) or queries < 0:
        raise ValueError(f"queries must be an int >= 0, got {queries!r}")
    if not 0 < float(p_init) <= 1:
        raise ValueError(f"p_init must be in (0, 1], got {p_init!r}")
    score_fn = true_class_probability(label) if score_fn is None else score_fn
    original = plain_copy(image)
    batch, channels, spatial = original.shape[0], original.shape[1], tuple(original.shape[2:])
    eps = as_sample_tensor(epsilon, "epsilon", original)
    eps = eps.expand(batch, *([1] * (original.ndim - 1))) if eps.ndim == 0 else eps
    edges = ball_edges(original, eps)
    device = original.device
    size = batch if max_batch is None else max_batch
    everyone = torch.arange(batch)

    def random_signs(shape: tuple[int, ...]) -> torch.Tensor:
        return (torch.randint(0, 2, shape, generator=generator) * 2 - 1).to(device=device, dtype=original.dtype)

    def evaluate(points: torch.Tensor) -> torch.Tensor:
        with attack_mode(network) as module:
            scores = [
                score_fn(network_logits(module(points[i : i + size])), everyone[i : i + size]).double().cpu()
                for i in range(0, batch, size)
            ]
        return torch.cat(scores) if scores else torch.empty(0, dtype=torch.float64)

    stripes = random_signs((batch, channels, *([1] * (len(spatial) - 1)), spatial[-1]))
    best = project(original + eps * stripes, original, eps, clip, edges=edges)
    best_score = evaluate(best)
    for query in range(queries):
        scaled = int(query / queries * 10000)
        fraction = float(p_init) / 2 ** sum(scaled > c for c in _SQUARE_CHECKPOINTS)
        side = _window_side(fraction, spatial)
        delta = best - original
        for sample in range(batch):
            corner = [int(torch.randint(0, n - side + 1, (1,), generator=generator)) for n in spatial]
            window = (sample, slice(None), *(slice(c, c + side) for c in corner))
            delta[window] = random_signs((channels, *([1] * len(spatial)))) * eps[sample]
        candidate = project(original + delta, original, eps, clip, edges=edges)
        scores = evaluate(candidate)
        better = scores < best_score
        if bool(better.any()):
            best[better.to(device)] = candidate[better.to(device)]
            best_score[better] = scores[better]
    return best
