"""The loop's best-iterate tracking (``score_fn``): the lowest-scoring iterate, each distinct iterate scored once."""

from __future__ import annotations

import pytest
import torch
from tiny_models import disk_batch, trained_small_unet
from torch import nn

from monai_advseg.attacks import apgd, inverse_mask, levels_to_epsilon, repeat_for_sweep
from monai_advseg.attacks.iterative import _iterate
from monai_advseg.attacks.scoring import case_scores

LEVELS = [1.0, 3.0, 6.0, 12.0]


@pytest.fixture(scope="module")
def trained() -> nn.Module:
    return trained_small_unet()


class _Recording(nn.Module):
    """Every iterate the network sees (one row per forward sample), to compare with the iterates scored."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network
        self.seen: list[torch.Tensor] = []

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        self.seen.extend(image.detach().clone())
        return self.network(image)


def _sweep(network, share: bool, image, label):
    """The paper's attack over LEVELS on one trajectory per image (share) or each strength alone, best by Dice."""
    images, labels, epsilon, source = repeat_for_sweep(image, label, levels_to_epsilon(LEVELS, (0, 1)))
    target = inverse_mask(labels, 2)
    scored: list[tuple[int, float]] = []

    def score(logits, rows):
        dice = case_scores(logits, labels[rows], 2)["dice"].double()
        scored.extend(zip(rows.tolist(), dice.tolist(), strict=True))
        return dice

    steps = torch.tensor([int(1.25 * e) for e in LEVELS]).repeat_interleave(image.shape[0])
    result = _iterate(
        network,
        images,
        target,
        epsilon,
        alpha=1 / 255,
        steps=steps,
        targeted=True,
        loss_fn=None,
        clip_range=(0, 1),
        share=source if share else None,
        score_fn=score,
    )
    return result, scored, images, steps


def test_shared_trajectories_score_each_distinct_iterate_once_and_keep_the_same_best(trained):
    image, label = disk_batch(2, seed=21)
    recording = _Recording(trained).eval()
    shared, scored, images, steps = _sweep(recording, True, image, label)
    alone, scored_alone, _, _ = _sweep(trained, False, image, label)
    assert torch.equal(shared, alone)  # the same best iterates as attacking every strength on its own
    # without sharing, every sample's T + 1 iterates are scored (T steps from x_0, then x_T) ...
    assert len(scored_alone) == int((steps + 1).sum())
    # ... with sharing, only what the network saw: one score per forward sample, far fewer
    assert len(scored) == len(recording.seen) < len(scored_alone)
    # and the returned iterate is each sample's lowest-scoring one (followers are scored through their leaders)
    lowest: dict[int, float] = {}
    for row, value in scored_alone:
        lowest[row] = min(lowest.get(row, value), value)
    with torch.no_grad():
        labels = repeat_for_sweep(image, label, levels_to_epsilon(LEVELS, (0, 1)))[1]
        returned = case_scores(trained(shared), labels, 2)["dice"].double()
    assert returned.tolist() == [lowest[row] for row in range(images.shape[0])]


def test_best_iterate_beats_or_equals_the_last_iterate(trained):
    image, label = disk_batch(2, seed=22)
    images, labels, epsilon, source = repeat_for_sweep(image, label, levels_to_epsilon(LEVELS, (0, 1)))
    kwargs = dict(alpha=1 / 255, steps=8, targeted=False, loss_fn=None, clip_range=(0, 1), share=source)

    def dice(logits, rows):
        return case_scores(logits, labels[rows], 2)["dice"].double()

    last = _iterate(trained, images, labels, epsilon, **kwargs)
    best = _iterate(trained, images, labels, epsilon, **kwargs, score_fn=dice)
    with torch.no_grad():
        rows = torch.arange(images.shape[0])
        assert bool((dice(trained(best), rows) <= dice(trained(last), rows)).all())


@pytest.mark.parametrize("restarts", [1, 2])
def test_apgd_reports_the_score_of_the_iterate_it_returns(trained, restarts):
    # a caller (the worst case) takes these scores instead of forwarding the result again
    image, label = disk_batch(3, seed=23)
    epsilon = torch.tensor(levels_to_epsilon([2.0, 6.0, 12.0], (0, 1)))

    def dice(logits, rows):
        return case_scores(logits, label[rows], 2)["dice"].double()

    scores = torch.full((3,), -1.0, dtype=torch.float64)
    generator = torch.Generator().manual_seed(3)
    result = apgd(
        trained,
        image,
        label,
        epsilon,
        steps=5,
        loss="masked_ce",
        clip_range=(0, 1),
        generator=generator,
        n_restarts=restarts,
        score_fn=dice,
        best_scores=scores,
    )
    with torch.no_grad():
        assert scores.tolist() == dice(trained(result), torch.arange(3)).tolist()
