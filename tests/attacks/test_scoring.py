"""The attacks' per-case Dice equals MONAI's DiceMetric (the reported numbers) bit for bit, edge cases included."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from monai.metrics import DiceMetric
from monai.transforms import AsDiscrete

from monai_advseg.attacks.scoring import (
    argmax_classes,
    case_dice,
    case_scores,
    label_map,
    predicted_classes,
    predicted_label_map,
)


def _monai_dice(logits, label, num_classes, include_background, ignore_empty):
    """What RobustnessEvaluator.scores reports: AsDiscrete to one-hot, DiceMetric per case, nanmean over classes."""
    if logits.shape[1] == 1:
        indices = AsDiscrete(threshold=0.5)(torch.sigmoid(logits.float()))
    else:
        indices = AsDiscrete(argmax=True, dim=1)(logits)
    prediction = AsDiscrete(to_onehot=num_classes, dim=1)(indices).as_subclass(torch.Tensor)
    truth = label.float() if label.shape[1] == num_classes else AsDiscrete(to_onehot=num_classes, dim=1)(label)
    metric = DiceMetric(include_background=include_background, reduction="none", ignore_empty=ignore_empty)
    values = metric(y_pred=prediction, y=truth.as_subclass(torch.Tensor))
    foreground = 1 - prediction[:, 0].flatten(1).float().mean(dim=1)
    return torch.nanmean(values.float(), dim=1).as_subclass(torch.Tensor), foreground


def _assert_same(logits, label, num_classes, include_background=False, ignore_empty=True):
    ours = case_scores(logits, label, num_classes, include_background=include_background, ignore_empty=ignore_empty)
    dice, foreground = _monai_dice(logits, label, num_classes, include_background, ignore_empty)
    # bit for bit, NaN where MONAI has NaN
    assert torch.equal(torch.isnan(ours["dice"]), torch.isnan(dice))
    assert torch.equal(ours["dice"].nan_to_num(-7.0), dice.nan_to_num(-7.0))
    assert torch.equal(ours["foreground"], foreground)
    return ours["dice"]


@pytest.mark.parametrize("spatial", [(9, 11), (4, 5, 6)], ids=["2d", "3d"])
@pytest.mark.parametrize("classes", [2, 3, 5])
@pytest.mark.parametrize("include_background", [False, True])
@pytest.mark.parametrize("ignore_empty", [True, False])
def test_equals_dice_metric_on_random_logits(spatial, classes, include_background, ignore_empty):
    generator = torch.Generator().manual_seed(classes)
    logits = torch.randn(6, classes, *spatial, generator=generator)
    label = torch.randint(0, classes, (6, 1, *spatial), generator=generator)
    label[0] = 0  # a case with an empty truth
    logits[1, 0] = 10.0  # a case predicting background everywhere
    label[2][label[2] == classes - 1] = 0  # a case missing its last class
    logits[3] = 0.0  # ties everywhere: the first class wins, as in torch.argmax
    one_hot = F.one_hot(label[:, 0], classes).movedim(-1, 1).float()
    for truth in (label, one_hot):
        _assert_same(logits, truth, classes, include_background, ignore_empty)


def test_empty_truth_and_prediction_follow_ignore_empty():
    logits = torch.zeros(3, 2, 4, 4)
    logits[:, 0] = 1.0  # everything predicted as background
    logits[2, :, 0, 0] = torch.tensor([0.0, 1.0])  # case 2 predicts one foreground voxel
    label = torch.zeros(3, 1, 4, 4, dtype=torch.long)
    label[1, 0, 1, 1] = 1  # case 1 has foreground the prediction misses
    ignored = _assert_same(logits, label, 2, ignore_empty=True)
    assert torch.isnan(ignored[0]) and ignored[1] == 0 and torch.isnan(ignored[2])
    counted = _assert_same(logits, label, 2, ignore_empty=False)
    assert counted.tolist() == [1.0, 0.0, 0.0]


def test_one_channel_sigmoid_thresholds_the_sigmoid_not_the_logit():
    generator = torch.Generator().manual_seed(5)
    logits = torch.randn(4, 1, 8, 8, generator=generator)
    logits[0, 0, :2] = -1e-9  # sigmoid rounds to exactly 0.5: foreground, although the logit is negative
    label = (torch.rand(4, 1, 8, 8, generator=generator) > 0.5).long()
    assert bool((predicted_classes(logits)[0, :2] == 1).all())
    for include_background in (False, True):
        _assert_same(logits, label, 2, include_background)


def test_argmax_classes_matches_torch_argmax_with_ties_and_nan():
    generator = torch.Generator().manual_seed(1)
    for dtype in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
        logits = torch.randint(0, 3, (3, 4, 7, 5), generator=generator).to(dtype)  # many ties
        logits[0, 1, 0, 0] = float("nan")
        logits[1, :, 1, 1] = float("nan")
        logits[2, :, 2, 2] = float("inf")
        assert torch.equal(argmax_classes(logits), torch.argmax(logits, dim=1))
        assert torch.equal(argmax_classes(logits, keepdim=True), torch.argmax(logits, dim=1, keepdim=True))


def test_bad_labels_are_refused():
    logits = torch.zeros(2, 3, 4, 4)
    with pytest.raises(ValueError, match="class indices 3..3; expected 0..2"):
        case_dice(predicted_classes(logits), torch.full((2, 1, 4, 4), 3), 3)
    with pytest.raises(ValueError, match=r"label of shape \(2, 2, 4, 4\) does not fit"):
        case_dice(predicted_classes(logits), torch.zeros(2, 2, 4, 4), 3)


def test_label_map_is_one_plus_the_last_channel_that_is_on():
    channels = torch.tensor([[[1, 0, 1, 0], [1, 1, 0, 0], [0, 1, 1, 0]]])  # (1, 3, 4): overlapping, and one empty
    assert label_map(channels).tolist() == [[2, 3, 3, 0]]
    assert label_map(channels[:, :, None]).shape == (1, 1, 4)  # any spatial rank
    logits = torch.tensor([[[2.0, -1.0], [0.0, -3.0]]])  # sigmoid(0) = 0.5 counts as on, as the scorer's threshold
    assert predicted_label_map(logits, multi_label=True).tolist() == [[2, 0]]
    assert torch.equal(predicted_label_map(logits), predicted_classes(logits))  # softmax: the argmax
