"""certified_scores: hand-computed cases, the binary worst case, MONAI's DiceMetric / MeanIoU without abstentions."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from monai.metrics import DiceMetric, MeanIoU
from monai.networks.utils import one_hot

from monai_advseg.certify import ABSTAIN, certified_scores


def _row(values, dtype=torch.long) -> torch.Tensor:
    return torch.tensor(values, dtype=dtype).reshape(1, 1, 1, -1)


def test_binary_hand_computed():
    truth = _row([1, 1, 1, 0, 0, 0])
    labels = _row([1, 1, ABSTAIN, 0, 1, 0])
    radius = _row([0.5, 0.2, 0.0, 0.3, 0.4, 0.1], torch.float32)
    scores = certified_scores(labels, radius, truth, [0.0, 0.25, 1.0], num_classes=2)
    # r = 0: TP {0, 1}, FP {4}, FN {2 (abstained)}; r = 0.25: TP {0}, FP {4, 5 (uncertified)}, FN {1, 2}; r = 1: none
    torch.testing.assert_close(scores["dice"], torch.tensor([[2 / 3, 1 / 3, 0.0]], dtype=torch.float64))
    torch.testing.assert_close(scores["jaccard"], torch.tensor([[0.5, 0.2, 0.0]], dtype=torch.float64))
    torch.testing.assert_close(scores["certified_fraction"], torch.tensor([[5 / 6, 3 / 6, 0.0]], dtype=torch.float64))
    torch.testing.assert_close(scores["abstain_rate"], torch.tensor([1 / 6], dtype=torch.float64))
    assert all(value.device.type == "cpu" and value.dtype == torch.float64 for value in scores.values())


def test_multiclass_hand_computed_with_empty_classes():
    truth = torch.cat([_row([0, 1, 1, 2, 2, 0]), _row([0, 1, 1, 0, 0, 0])])
    labels = torch.cat([_row([0, 1, 2, ABSTAIN, 2, 1]), _row([0, 1, 1, 0, 2, 0])])
    radius = (labels != ABSTAIN).float()
    foreground = certified_scores(labels, radius, truth, [0.0], num_classes=3)
    # case 0: class 1 TP {1} FP {5, 3 (abstained, truth 2)} FN {2}: 0.4; class 2 TP {4} FP {2} FN {3}: 0.5
    # case 1: class 1 exact (1.0); class 2 absent from the truth: NaN, left out of the mean
    torch.testing.assert_close(foreground["dice"], torch.tensor([[0.45], [1.0]], dtype=torch.float64))
    torch.testing.assert_close(foreground["jaccard"], torch.tensor([[(1 / 4 + 1 / 3) / 2], [1.0]], dtype=torch.float64))
    everything = certified_scores(labels, radius, truth, [0.0], num_classes=3, include_background=True)
    # class 0: case 0 TP {0} FP {3} FN {5}: 0.5; case 1 TP {0, 3, 5} FN {4}: 6/7
    torch.testing.assert_close(
        everything["dice"], torch.tensor([[(0.5 + 0.4 + 0.5) / 3], [(6 / 7 + 1.0) / 2]], dtype=torch.float64)
    )
    nothing_scored = certified_scores(labels[1:], radius[1:], torch.zeros_like(truth[1:]), [0.0], num_classes=3)
    assert math.isnan(nothing_scored["dice"].item()) and math.isnan(nothing_scored["jaccard"].item())


def test_binary_certified_dice_is_the_worst_case_over_the_uncertified_voxels():
    generator = torch.Generator().manual_seed(0)
    truth = torch.randint(0, 2, (1, 1, 3, 3), generator=generator)
    labels = torch.randint(0, 2, (1, 1, 3, 3), generator=generator)
    radius = torch.rand(1, 1, 3, 3, generator=generator)
    labels.view(-1)[[1, 4]] = ABSTAIN
    radius.view(-1)[[1, 4]] = 0.0
    r = 0.5
    scores = certified_scores(labels, radius, truth, [r], num_classes=2)
    uncertified = ((labels == ABSTAIN) | (radius < r)).view(-1).nonzero().view(-1).tolist()
    worst_dice, worst_jaccard = math.inf, math.inf
    for outcome in itertools.product([0, 1], repeat=len(uncertified)):
        prediction = labels.clone().view(-1)
        prediction[uncertified] = torch.tensor(outcome)
        truth_1, predicted_1 = truth.view(-1) == 1, prediction == 1
        tp = int((truth_1 & predicted_1).sum())
        fp, fn = int((~truth_1 & predicted_1).sum()), int((truth_1 & ~predicted_1).sum())
        worst_dice = min(worst_dice, 2 * tp / (2 * tp + fp + fn))
        worst_jaccard = min(worst_jaccard, tp / (tp + fp + fn))
    assert len(uncertified) >= 3
    assert scores["dice"].item() == pytest.approx(worst_dice, abs=1e-12)
    assert scores["jaccard"].item() == pytest.approx(worst_jaccard, abs=1e-12)


@pytest.mark.parametrize("one_hot_truth", [False, True])
def test_without_abstentions_at_radius_zero_equals_monai_metrics(one_hot_truth):
    generator = torch.Generator().manual_seed(1)
    classes = 4
    prediction = torch.randint(0, classes, (3, 1, 9, 7), generator=generator)
    truth = torch.randint(0, classes, (3, 1, 9, 7), generator=generator)
    truth[1][truth[1] == 2] = 0  # class 2 absent from case 1: NaN per MONAI, left out of the mean
    radius = torch.rand(3, 1, 9, 7, generator=generator) + 0.1
    given_truth = one_hot(truth, classes) if one_hot_truth else truth
    for include_background in (False, True):
        scores = certified_scores(prediction, radius, given_truth, [0.0], classes, include_background)
        dice = DiceMetric(include_background=include_background, reduction="none", ignore_empty=True)
        iou = MeanIoU(include_background=include_background, reduction="none", ignore_empty=True)
        pred_1h, truth_1h = one_hot(prediction, classes), one_hot(truth, classes)
        expected_dice = dice(pred_1h, truth_1h).double().nanmean(dim=1, keepdim=True)
        expected_iou = iou(pred_1h, truth_1h).double().nanmean(dim=1, keepdim=True)
        torch.testing.assert_close(scores["dice"], expected_dice)
        torch.testing.assert_close(scores["jaccard"], expected_iou)
        torch.testing.assert_close(scores["abstain_rate"], torch.zeros(3, dtype=torch.float64))


def test_scores_do_not_increase_with_the_radius():
    generator = torch.Generator().manual_seed(2)
    truth = torch.randint(0, 3, (2, 1, 12, 12), generator=generator)
    labels = torch.where(torch.rand(2, 1, 12, 12, generator=generator) < 0.8, truth, ABSTAIN)
    radius = torch.where(labels == ABSTAIN, 0.0, torch.rand(2, 1, 12, 12, generator=generator))
    radii = torch.linspace(0, 1.1, 12)
    scores = certified_scores(labels, radius, truth, radii, num_classes=3)
    for key in ("dice", "jaccard", "certified_fraction"):
        assert scores[key].shape == (2, 12)
        assert bool((scores[key].diff(dim=1) <= 1e-12).all()), key
    assert bool((scores["dice"][:, 0] > 0.5).all()) and bool((scores["dice"][:, -1] == 0).all())


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"num_classes": 1}, "num_classes"),
        ({"radii": [-0.1]}, "radii"),
        ({"radii": []}, "radii"),
        ({"truth": torch.zeros(1, 3, 4, 4)}, "channels"),
        ({"truth": torch.zeros(1, 1, 4, 5)}, "truth"),
        ({"truth": torch.full((1, 1, 4, 4), 2)}, "truth classes"),
        ({"labels": torch.full((1, 1, 4, 4), 2)}, "labels"),
        ({"radius": torch.zeros(1, 1, 4)}, "radius"),
    ],
)
def test_bad_inputs_are_value_errors(overrides, message):
    arguments = {
        "labels": torch.zeros(1, 1, 4, 4, dtype=torch.long),
        "radius": torch.zeros(1, 1, 4, 4),
        "truth": torch.zeros(1, 1, 4, 4, dtype=torch.long),
        "radii": [0.0],
        "num_classes": 2,
        **overrides,
    }
    with pytest.raises(ValueError, match=message):
        certified_scores(**arguments)
