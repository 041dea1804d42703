"""RobustnessEvaluator(multi_label=True): independent sigmoid channels, scored and attacked channel by channel."""

from __future__ import annotations

import pytest
import torch
from monai.networks.nets import UNet
from tiny_models import disk_batch

from monai_advseg.attacks import iterative_fgsm, per_channel_binary_cross_entropy, pgd
from monai_advseg.data import InputError
from monai_advseg.engines import MultiLabelScorer, RobustnessEvaluator
from monai_advseg.engines.sweep_records import no_foreground


def _textbook_dice(prediction: torch.Tensor, label: torch.Tensor) -> float:
    p, y = prediction.bool(), label.bool()
    tp, fp, fn = (p & y).sum().double(), (p & ~y).sum().double(), (~p & y).sum().double()
    return float(2 * tp / (2 * tp + fp + fn))


def _multi_label_case() -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    """Three overlapping labels (a disk, its dilation-like square box, the empty-free complement of the disk)."""
    torch.manual_seed(0)
    network = UNet(2, 1, 3, channels=(4, 8), strides=(2,), num_res_units=0).eval()
    images, disks = disk_batch(2, size=16, seed=3)
    box = torch.zeros_like(disks)
    box[..., 4:12, 4:12] = 1
    labels = torch.cat([disks, torch.maximum(disks, box), 1 - disks], dim=1).float()  # overlapping channels
    return network, images, labels


def test_each_channel_is_thresholded_and_scored_on_its_own():
    network, images, labels = _multi_label_case()
    evaluator = RobustnessEvaluator(
        "cpu", [{"image": images, "label": labels}], network, epsilons=[2], multi_label=True, progress=False
    )
    with torch.no_grad():
        logits = network(images)
    scores = evaluator.scores(logits, labels, num_classes=3)
    prediction = torch.sigmoid(logits) >= 0.5
    for b in range(2):  # the mean over the three channels of each channel's own Dice (channel 0 included)
        expected = sum(_textbook_dice(prediction[b, c], labels[b, c]) for c in range(3)) / 3
        assert float(scores["dice"][b]) == pytest.approx(expected, abs=1e-6)
        assert float(scores["foreground"][b]) == pytest.approx(float(prediction[b].any(dim=0).float().mean()))
    # softmax scoring of the same logits (argmax over the channels) is a different number
    assert not torch.allclose(
        RobustnessEvaluator("cpu", [], network, progress=False).scores(logits, labels, 3)["dice"], scores["dice"]
    )


def test_the_paper_attack_aims_at_every_channels_inverse_with_the_per_channel_loss():
    network, images, labels = _multi_label_case()
    evaluator = RobustnessEvaluator(
        "cpu", [{"image": images, "label": labels}], network, epsilons=[3], multi_label=True, progress=False
    )
    assert evaluator.attack_spec.loss_fn is per_channel_binary_cross_entropy
    swept = evaluator.attack_sweep(images, labels, num_classes=3)
    single = iterative_fgsm(
        network,
        images,
        1 - labels,
        3 / 255,
        alpha=1 / 255,
        steps=4,
        targeted=True,
        loss_fn=per_channel_binary_cross_entropy,
        clip_range=(0, 1),
    )
    assert torch.equal(swept[0], single)
    evaluator.run()
    clean, attacked = evaluator.results["metrics"]
    assert attacked["mean_dice"] < clean["mean_dice"]


def test_pgd_follows_the_per_channel_loss():
    network, images, labels = _multi_label_case()
    evaluator = RobustnessEvaluator(
        "cpu", [], network, epsilons=[2], attack="pgd", steps=2, multi_label=True, progress=False
    )
    swept = evaluator.attack_sweep(images, labels, 3, torch.Generator().manual_seed(5))
    single = pgd(
        network,
        images,
        labels,
        2 / 255,
        alpha=1 / 255,
        steps=2,
        loss_fn=per_channel_binary_cross_entropy,
        clip_range=(0, 1),
        generator=torch.Generator().manual_seed(5),
    )
    assert torch.equal(swept[0], single)


def test_one_channel_multi_label_scores_as_the_binary_sigmoid_case():
    torch.manual_seed(1)
    network = UNet(2, 1, 1, channels=(4, 8), strides=(2,), num_res_units=0).eval()
    images, labels = disk_batch(2, size=16, seed=17)
    data = [{"image": images, "label": labels}]
    results = []
    for multi_label in (False, True):
        evaluator = RobustnessEvaluator("cpu", data, network, epsilons=[2], multi_label=multi_label, progress=False)
        evaluator.run()
        results.append([row[key] for row in evaluator.results["metrics"] for key in ("mean_dice", "mean_jaccard")])
    assert results[0] == pytest.approx(results[1], abs=1e-6)


@pytest.mark.parametrize("attack", ["segpgd", "worst_case", "random_search"])
def test_attacks_with_softmax_losses_are_refused_before_attacking(attack):
    network, images, labels = _multi_label_case()
    evaluator = RobustnessEvaluator(
        "cpu",
        [{"image": images, "label": labels}],
        network,
        epsilons=[2],
        attack=attack,
        multi_label=True,
        progress=False,
        diagnostics=False,
    )
    with pytest.raises(InputError, match=f"multi_label: attack '{attack}' follows a softmax loss over the 3 channels"):
        evaluator.run()


def test_a_label_without_one_channel_per_output_is_refused():
    network, images, labels = _multi_label_case()
    evaluator = RobustnessEvaluator("cpu", [], network, epsilons=[2], multi_label=True, progress=False)
    with pytest.raises(ValueError, match="multi_label: label has 1 channels; expected one binary channel per output"):
        evaluator.scores(network(images), labels[:, :1], 3)


def test_a_case_with_only_the_first_label_is_not_empty_and_the_report_says_multi_label():
    """One-hot reading would drop channel 0 as background; in a multi-label truth it is a label like the others."""
    network, images, labels = _multi_label_case()
    labels[1] = 0
    labels[1, 0, 5:9, 5:9] = 1  # case 1: only the first label
    evaluator = RobustnessEvaluator(
        "cpu", [{"image": images, "label": labels}], network, epsilons=[1], multi_label=True, progress=False
    )
    assert isinstance(evaluator.scorer, MultiLabelScorer)
    evaluator.run()
    assert evaluator.results["config"]["multi_label"] is True
    assert evaluator.results["config"]["scorer"] == "MultiLabelScorer"
    assert no_foreground(labels, 3).tolist() == [False, True]  # the one-hot reading
    assert MultiLabelScorer.no_foreground(labels, 3).tolist() == [False, False]
    assert [row["n_empty_cases"] for row in evaluator.results["metrics"]] == [0, 0]


def test_a_built_multi_label_component_with_its_own_loss_keeps_the_per_channel_targets():
    """What the any-bundle overlay hands the evaluator for ``--attack_loss bundle`` on a multi-label bundle."""
    from monai.losses import DiceLoss

    from monai_advseg.attacks import build_attack_spec, per_sample_loss

    network, images, labels = _multi_label_case()
    loss = per_sample_loss(DiceLoss(sigmoid=True))
    spec = build_attack_spec("ifgsm_targeted", loss_fn=loss, multi_label=True)
    evaluator = RobustnessEvaluator("cpu", [], network, epsilons=[2], attack=spec, multi_label=True, progress=False)
    assert evaluator.attack_spec is spec and spec.loss_fn is loss
    swept = evaluator.attack_sweep(images, labels, num_classes=3)
    single = iterative_fgsm(
        network, images, 1 - labels, 2 / 255, alpha=1 / 255, steps=3, targeted=True, loss_fn=loss, clip_range=(0, 1)
    )
    assert torch.equal(swept[0], single)


def test_the_gallery_draws_the_channels_the_scorer_counts_not_an_argmax():
    network, images, labels = _multi_label_case()
    evaluator = RobustnessEvaluator(
        "cpu", [{"image": images, "label": labels}], network, epsilons=[2, 4], multi_label=True, progress=False
    )
    evaluator.run()
    gallery = evaluator.state.robustness_gallery
    assert len(gallery) == 2
    with torch.no_grad():
        on = torch.sigmoid(network(images)) >= 0.5
    for b, case in enumerate(gallery):
        # 1 + the last label that is on: the disk is 2 (channel 1 covers it), everything else 3 (its complement)
        expected_truth = torch.where(labels[b, 2] > 0, 3, torch.where(labels[b, 1] > 0, 2, (labels[b, 0] > 0).long()))
        assert torch.equal(torch.as_tensor(case["label"]), expected_truth)
        last_on = torch.where(on[b, 2], 3, torch.where(on[b, 1], 2, on[b, 0].long()))
        assert torch.equal(torch.as_tensor(case["clean_prediction"]), last_on)
        # voxels with no label on are 0; an argmax would give every voxel a channel
        assert torch.equal(torch.as_tensor(case["clean_prediction"]) == 0, ~on[b].any(dim=0))
