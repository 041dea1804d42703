"""RobustnessEvaluator: the batched epsilon sweep against per-epsilon attacks, metrics, reports, 3D, bad input."""

from __future__ import annotations

import csv
import json
import math

import pytest
import torch
from monai.inferers import SlidingWindowInferer
from monai.networks.nets import UNet
from tiny_models import disk_batch, small_unet, trained_small_unet
from torch import nn

from monai_advseg.attacks import fgsm, inverse_mask, iterative_fgsm, kurakin_steps, levels_to_epsilon
from monai_advseg.engines import RobustnessEvaluator, load_network_weights


@pytest.fixture(scope="module")
def trained() -> nn.Module:
    return trained_small_unet()


def _loader(images: torch.Tensor, labels: torch.Tensor, batch: int) -> list[dict]:
    return [{"image": images[i : i + batch], "label": labels[i : i + batch]} for i in range(0, len(images), batch)]


def _dice_jaccard(prediction: torch.Tensor, label: torch.Tensor) -> tuple[list[float], list[float]]:
    """Textbook per-case foreground Dice 2TP / (2TP + FP + FN) and Jaccard TP / (TP + FP + FN), in float64."""
    dice, jaccard = [], []
    for p, y in zip(prediction.bool(), label.bool(), strict=True):
        tp, fp, fn = (p & y).sum().double(), (p & ~y).sum().double(), (~p & y).sum().double()
        dice.append(float(2 * tp / (2 * tp + fp + fn)))
        jaccard.append(float(tp / (tp + fp + fn)))
    return dice, jaccard


def _column_of(results: dict, levels: float | None, key: str) -> list[float]:
    setting = "clean" if levels is None else "attack"
    return [c[key] for c in results["cases"] if c["setting"] == setting and c["eps_levels"] == (levels or 0)]


def _column(evaluator: RobustnessEvaluator, levels: float | None, key: str) -> list[float]:
    return _column_of(evaluator.results, levels, key)


def test_clean_row_is_textbook_dice_and_eps_zero_row_equals_it(trained):
    images, labels = disk_batch(6, seed=11)
    evaluator = RobustnessEvaluator("cpu", _loader(images, labels, 4), trained, epsilons=[4, 0], progress=False)
    evaluator.run()
    rows = evaluator.results["metrics"]
    assert [r["setting"] for r in rows] == ["clean", "attack", "attack"]
    assert [r["eps_levels"] for r in rows] == [0.0, 0.0, 4.0]
    dice, jaccard = _dice_jaccard(trained(images).argmax(1), labels[:, 0])
    assert _column(evaluator, None, "dice") == pytest.approx(dice, abs=1e-6)
    assert _column(evaluator, None, "jaccard") == pytest.approx(jaccard, abs=1e-6)
    assert rows[0]["mean_dice"] == pytest.approx(sum(dice) / len(dice), abs=1e-6)
    assert rows[0]["n_cases"] == len(images)
    # eps = 0 goes through the sweep (zero steps) and must reproduce the clean evaluation exactly
    for key in ("dice", "jaccard"):
        assert _column(evaluator, 0.0, key) == _column(evaluator, None, key)
    assert evaluator.state.metrics["dice"] == rows[0]["mean_dice"]
    assert evaluator.state.metrics["dice_eps4"] == rows[2]["mean_dice"]


@pytest.mark.parametrize("max_batch", [None, 3])
def test_batched_sweep_is_bit_identical_to_per_epsilon_attacks(trained, max_batch):
    images, labels = disk_batch(2, seed=12)
    levels = [8, 0.5, 4, 2]
    evaluator = RobustnessEvaluator(
        "cpu", _loader(images, labels, 2), trained, epsilons=levels, max_batch=max_batch, progress=False
    )
    swept = evaluator.attack_sweep(images, labels, num_classes=2)
    target = inverse_mask(labels, 2)
    for index, level in enumerate(sorted(levels)):
        single = iterative_fgsm(
            trained,
            images,
            target,
            levels_to_epsilon(level, (0, 1)),
            alpha=1 / 255,
            steps=kurakin_steps(level),
            targeted=True,
            clip_range=(0, 1),
        )
        assert torch.equal(swept[index], single), f"eps {level} levels differs from its own attack"
        assert not torch.equal(single, images)
    # the per-case scores of a full run equal those of the per-epsilon adversarial images
    evaluator.run()
    for index, level in enumerate(sorted(levels)):
        with torch.no_grad():
            dice, _ = _dice_jaccard(trained(swept[index]).argmax(1), labels[:, 0])
        assert _column(evaluator, float(level), "dice") == pytest.approx(dice, abs=1e-6)


def test_batched_fgsm_sweep_matches_per_epsilon_fgsm(trained):
    images, labels = disk_batch(2, seed=13)
    evaluator = RobustnessEvaluator("cpu", [], trained, epsilons=[1, 8], attack="fgsm", progress=False)
    swept = evaluator.attack_sweep(images, labels, num_classes=2)
    assert evaluator.step_counts() == [1, 1]
    for index, level in enumerate([1, 8]):
        single = fgsm(trained, images, labels, levels_to_epsilon(level, (0, 1)), clip_range=(0, 1))
        assert torch.equal(swept[index], single)


def test_dice_under_attack_falls_with_epsilon(trained):
    images, labels = disk_batch(6, seed=14)
    levels = [1, 4, 16, 32]
    evaluator = RobustnessEvaluator("cpu", _loader(images, labels, 3), trained, epsilons=levels, progress=False)
    evaluator.run()
    means = [r["mean_dice"] for r in evaluator.results["metrics"]]
    # A one-level perturbation can flip a few boundary pixels either way (here +0.001 Dice), hence the tolerance.
    assert all(later <= earlier + 5e-3 for earlier, later in zip(means, means[1:], strict=False)), means
    # At 1 and 4 levels the change is a few boundary pixels (either sign, thread-count dependent): no strict order.
    # At 16 and 32 levels the targeted attack has room to act, so the drops must be clear ones.
    assert means[3] < means[0] - 0.01 and means[4] < means[3] - 0.02, means
    jaccard = [r["mean_jaccard"] for r in evaluator.results["metrics"]]
    assert jaccard[-1] < jaccard[0]


def test_network_modes_are_restored_and_parameters_untouched():
    network = small_unet()
    network.train()
    network.model[0].eval()  # a deliberately frozen submodule must stay frozen
    before = {k: v.clone() for k, v in network.state_dict().items()}
    images, labels = disk_batch(2, seed=15)
    RobustnessEvaluator("cpu", _loader(images, labels, 2), network, epsilons=[2], progress=False).run()
    assert network.training and not network.model[0].training
    assert all(torch.equal(before[k], v) for k, v in network.state_dict().items())
    assert all(p.grad is None for p in network.parameters())


def test_empty_ground_truth_is_nan_and_excluded(trained):
    images, labels = disk_batch(3, seed=16)
    labels[1] = 0
    evaluator = RobustnessEvaluator("cpu", _loader(images, labels, 3), trained, epsilons=[2], progress=False)
    evaluator.run()
    clean = evaluator.results["metrics"][0]
    assert clean["n_cases"] == 2
    assert math.isnan(_column(evaluator, None, "dice")[1])
    finite = [v for v in _column(evaluator, None, "dice") if not math.isnan(v)]
    assert clean["mean_dice"] == pytest.approx(sum(finite) / 2)
    scored = RobustnessEvaluator(
        "cpu", _loader(images, labels, 3), trained, epsilons=[2], ignore_empty=False, progress=False
    )
    scored.run()
    assert scored.results["metrics"][0]["n_cases"] == 3


def test_empty_cases_are_counted_and_their_predicted_foreground_reported(trained):
    # A targeted attack paints an empty case foreground; Dice skips the case, these fields must not.
    images, labels = disk_batch(3, seed=16)
    labels[1] = 0
    evaluator = RobustnessEvaluator("cpu", _loader(images, labels, 3), trained, epsilons=[2, 32], progress=False)
    evaluator.run()
    with torch.no_grad():
        clean_share = float((trained(images[1:2]).argmax(1) > 0).float().mean())
    rows = evaluator.results["metrics"]
    assert [r["n_empty_cases"] for r in rows] == [1, 1, 1]
    assert rows[0]["empty_case_foreground_fraction"] == pytest.approx(clean_share, abs=1e-6)
    target = inverse_mask(labels[1:2], 2)  # all foreground for the empty case
    adversarial = iterative_fgsm(
        trained, images[1:2], target, 32 / 255, alpha=1 / 255, steps=36, targeted=True, clip_range=(0, 1)
    )
    with torch.no_grad():
        attacked_share = float((trained(adversarial).argmax(1) > 0).float().mean())
    assert rows[2]["empty_case_foreground_fraction"] == pytest.approx(attacked_share, abs=1e-6)
    assert attacked_share > clean_share
    cases = [c for c in evaluator.results["cases"] if c["eps_levels"] == 32]
    assert cases[1]["foreground_fraction"] == pytest.approx(attacked_share, abs=1e-6)
    none_empty = RobustnessEvaluator("cpu", _loader(images[:1], labels[:1], 1), trained, epsilons=[2], progress=False)
    none_empty.run()
    assert none_empty.results["metrics"][0]["n_empty_cases"] == 0
    assert none_empty.results["metrics"][0]["empty_case_foreground_fraction"] is None


def test_step_counts_follow_alpha_levels():
    # alpha_levels 0.5 halves the step: kurakin_steps(eps / alpha), so the attack can reach the ball's edge (the
    # schedule used to ignore alpha and took kurakin_steps(eps) half steps: 5 at 1 level, at most half way there).
    evaluator = RobustnessEvaluator("cpu", [], small_unet(), epsilons=[1, 4, 32], alpha_levels=0.5)
    assert evaluator.step_counts() == [kurakin_steps(2), kurakin_steps(8), kurakin_steps(64)]
    assert evaluator.results is None
    fixed = RobustnessEvaluator("cpu", [], small_unet(), epsilons=[1, 4], alpha_levels=0.5, steps=3)
    assert fixed.step_counts() == [3, 3]


@pytest.mark.parametrize("kwargs", [{"alpha_levels": 0.5}, {"steps": 3}])
def test_fgsm_refuses_a_step_schedule(kwargs):
    with pytest.raises(ValueError, match="fgsm"):
        RobustnessEvaluator("cpu", [], small_unet(), attack="fgsm", **kwargs)


def test_a_user_attack_component_from_a_bundle_config(trained, tmp_path):
    from monai.bundle import ConfigParser

    images, labels = disk_batch(2, seed=40)
    parser = ConfigParser(
        {
            "attack": {"_target_": "attack_components.RandomSignAttack"},
            "evaluator": {
                "_target_": "monai_advseg.engines.RobustnessEvaluator",
                "device": "cpu",
                "val_data_loader": "$@data",
                "network": "$@net",
                "epsilons": [4, 16],
                "attack": "@attack",
                "seed": 5,
                "progress": False,
                "output_dir": str(tmp_path / "report"),
            },
        }
    )
    parser["data"] = _loader(images, labels, 2)
    parser["net"] = trained
    evaluator = parser.get_parsed_content("evaluator")
    evaluator.run()
    assert evaluator.results["attack"] == {"name": "random_sign", "targeted": False, "seed": 5}
    assert [r["steps"] for r in evaluator.results["metrics"]] == [0, 0, 0]
    swept = evaluator.attack_sweep(images, labels, 2, torch.Generator().manual_seed(5))
    bound = torch.tensor(16 / 255, dtype=images.dtype)
    assert bool(((swept[1] - images).abs() <= bound).all()) and not torch.equal(swept[1], images)
    report = json.loads((tmp_path / "report" / "robustness.json").read_text())
    assert report["attack"]["name"] == "random_sign"
    with pytest.raises(ValueError, match="neither a name"):
        RobustnessEvaluator("cpu", [], trained, attack=object())


def test_a_user_scorer_scores_the_report(trained):
    from monai_advseg.engines import SegmentationScorer

    images, labels = disk_batch(3, seed=41)
    default = SegmentationScorer()

    def background_is_what_counts(logits, label, num_classes):  # a different metric: the background's Dice
        scores = SegmentationScorer(include_background=True)(logits, label, num_classes)
        return {**scores, "dice": 2 * scores["dice"] - default(logits, label, num_classes)["dice"]}

    runs = {}
    for name, scorer in (("default", None), ("user", background_is_what_counts)):
        evaluator = RobustnessEvaluator(
            "cpu", _loader(images, labels, 3), trained, epsilons=[8], scorer=scorer, progress=False
        )
        evaluator.run()
        runs[name] = evaluator.results
    logits = trained(images)
    expected = background_is_what_counts(logits, labels, 2)["dice"]
    assert _column_of(runs["user"], None, "dice") == pytest.approx(expected.tolist(), abs=1e-6)
    assert _column_of(runs["user"], None, "dice") != pytest.approx(_column_of(runs["default"], None, "dice"))
    assert runs["user"]["config"]["scorer"] == "function"
    assert runs["default"]["config"]["scorer"] == "SegmentationScorer"


def test_sigmoid_single_channel_network():
    torch.manual_seed(1)
    network = UNet(2, 1, 1, channels=(4, 8), strides=(2,), num_res_units=0).eval()
    images, labels = disk_batch(2, seed=17)
    evaluator = RobustnessEvaluator("cpu", _loader(images, labels, 2), network, epsilons=[4], progress=False)
    evaluator.run()
    with torch.no_grad():
        dice, _ = _dice_jaccard(torch.sigmoid(network(images))[:, 0] > 0.5, labels[:, 0])
    assert _column(evaluator, None, "dice") == pytest.approx(dice, abs=1e-6)
    swept = evaluator.attack_sweep(images, labels, num_classes=2)
    single = iterative_fgsm(
        network, images, 1 - labels, 4 / 255, alpha=1 / 255, steps=5, targeted=True, clip_range=(0, 1)
    )
    assert torch.equal(swept[0], single)


class _Windowed(nn.Module):
    def __init__(self, network: nn.Module, inferer: SlidingWindowInferer) -> None:
        super().__init__()
        self.network, self.inferer = network, inferer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inferer(x, self.network)


def test_3d_sweep_through_sliding_window_inference():
    torch.manual_seed(2)
    network = small_unet(spatial_dims=3).eval()
    images, labels = disk_batch(1, size=32, seed=18, spatial_dims=3)
    # overlapping windows batched in pairs: the gradient has to flow through the blending of the inferer. MONAI's
    # inferer differentiated as given, like the reference below: the streamed gradient (the default) recomputes one
    # window at a time and so differs from it in float32 rounding (its equality is the float64 test below).
    inferer = SlidingWindowInferer(roi_size=(16, 16, 16), sw_batch_size=2, overlap=0.25)
    evaluator = RobustnessEvaluator(
        "cpu",
        _loader(images, labels, 1),
        network,
        epsilons=[1, 2],
        inferer=inferer,
        streamed_gradient=False,
        progress=False,
    )
    evaluator.run()
    assert evaluator.results["n_cases"] == 1
    assert [r["eps_levels"] for r in evaluator.results["metrics"]] == [0.0, 1.0, 2.0]
    assert evaluator.results["config"]["inferer"] == "SlidingWindowInferer"
    swept = evaluator.attack_sweep(images[:1], labels[:1], num_classes=2)
    reference = _Windowed(network, inferer)
    for index, level in enumerate([1, 2]):
        eps = levels_to_epsilon(level, (0, 1))
        single = iterative_fgsm(
            reference, images[:1], 1 - labels[:1], eps, alpha=1 / 255, steps=None, targeted=True, clip_range=(0, 1)
        )
        assert torch.equal(swept[index], single)
        assert (swept[index] - images[:1]).abs().max() <= eps + 1e-6
        assert (swept[index] != images[:1]).float().mean() > 0.5, "the gradient must flow through the windows"


def test_pgd_is_reproducible_and_segpgd_runs(trained):
    images, labels = disk_batch(2, seed=19)
    results = []
    for _ in range(2):
        evaluator = RobustnessEvaluator(
            "cpu", _loader(images, labels, 2), trained, epsilons=[8], attack="pgd", seed=3, progress=False
        )
        evaluator.run()
        results.append(_column(evaluator, 8.0, "dice"))
    assert results[0] == results[1]
    other = RobustnessEvaluator("cpu", [], trained, epsilons=[8], attack="pgd", seed=4, progress=False)
    first = RobustnessEvaluator("cpu", [], trained, epsilons=[8], attack="pgd", seed=3, progress=False)
    g3, g4 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(4)
    assert not torch.equal(first.attack_sweep(images, labels, 2, g3), other.attack_sweep(images, labels, 2, g4))
    segpgd = RobustnessEvaluator(
        "cpu", _loader(images, labels, 2), trained, epsilons=[8], attack="segpgd", steps=5, progress=False
    )
    segpgd.run()
    assert segpgd.results["attack"] == {
        "name": "segpgd",
        "targeted": False,
        "target": "ground truth",
        "alpha_levels": 1.0,
        "alpha": 1 / 255,
        "steps": 5,
        "seed": 0,
    }
    assert segpgd.results["metrics"][1]["steps"] == 5


def test_reports_are_written_and_parse(trained, tmp_path):
    images, labels = disk_batch(3, seed=20)
    levels = [2, 8]
    out = tmp_path / "report"
    evaluator = RobustnessEvaluator(
        "cpu", _loader(images, labels, 2), trained, epsilons=levels, intensity_range=(-1, 1), output_dir=out
    )
    evaluator.run()
    with open(out / "robustness.csv", newline="") as stream:
        rows = list(csv.DictReader(stream))
    assert [float(r["eps_levels"]) for r in rows] == [0.0, 2.0, 8.0]
    assert rows[0]["setting"] == "clean"
    assert float(rows[2]["eps"]) == pytest.approx(8 / 255 * 2)
    assert [int(r["steps"]) for r in rows] == [0, 3, 10]
    assert all(int(r["n_cases"]) == 3 and float(r["seconds"]) >= 0 for r in rows)
    assert float(rows[1]["mean_dice"]) == pytest.approx(evaluator.results["metrics"][1]["mean_dice"])
    with open(out / "robustness_cases.csv", newline="") as stream:
        cases = list(csv.DictReader(stream))
    assert len(cases) == 3 * 3 and {c["case"] for c in cases} == {"case_00000", "case_00001", "case_00002"}

    def _refuse(constant: str) -> None:
        raise AssertionError(f"non-standard JSON constant {constant}")

    report = json.loads((out / "robustness.json").read_text(), parse_constant=_refuse)
    assert report["epsilons"] == {"levels": [2.0, 8.0], "input_units": pytest.approx([4 / 255, 16 / 255])}
    assert report["attack"]["name"] == "ifgsm_targeted" and report["attack"]["steps"] == "kurakin"
    assert report["config"]["intensity_range"] == [-1.0, 1.0]
    assert {"torch", "monai"} <= set(report["versions"]) and report["timings"]["total_seconds"] > 0
    png = (out / "robustness.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 1000
    assert not [p for p in out.iterdir() if p.name.startswith(".")], "temporary files must not be left behind"
    with pytest.raises(FileExistsError, match=str(out)):
        RobustnessEvaluator("cpu", [], trained, epsilons=levels, output_dir=out)
    again = RobustnessEvaluator(
        "cpu", _loader(images, labels, 3), trained, epsilons=[1], output_dir=out, overwrite=True, progress=False
    )
    again.run()
    assert json.loads((out / "robustness.json").read_text())["epsilons"]["levels"] == [1.0]


def test_progress_bar_counts_epsilons_times_batches(trained, capsys):
    images, labels = disk_batch(4, seed=21)
    evaluator = RobustnessEvaluator(
        "cpu", _loader(images, labels, 2), trained, epsilons=[1, 2, 4], max_batch=4, progress=True
    )
    evaluator.run()
    assert "6/6" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"epsilons": []}, "must not be empty"),
        ({"epsilons": [1, -2]}, "finite and >= 0"),
        ({"epsilons": [1, float("nan")]}, "finite and >= 0"),
        ({"epsilons": [2, 2]}, "repeat"),
        ({"epsilons": ["a"]}, "sequence of numbers"),
        ({"attack": "cw"}, "unknown attack 'cw'.*ifgsm_targeted"),
        ({"attack": "PGD"}, "unknown attack"),
        ({"alpha_levels": 0}, "alpha_levels"),
        ({"steps": 0}, "steps"),
        ({"max_batch": 0}, "max_batch"),
        ({"intensity_range": (1, 0)}, "lo < hi"),
    ],
)
def test_bad_configuration_fails_at_construction(kwargs, message):
    with pytest.raises(ValueError, match=message):
        RobustnessEvaluator("cpu", [], small_unet(), **kwargs)


def test_unsorted_epsilons_are_accepted_and_sorted():
    evaluator = RobustnessEvaluator("cpu", [], small_unet(), epsilons=[8, 0.5, 2])
    assert evaluator.epsilon_levels == [0.5, 2.0, 8.0]
    assert evaluator.step_counts() == [1, 3, 10]


def test_segpgd_on_single_channel_network_fails_clearly():
    network = UNet(2, 1, 1, channels=(4, 8), strides=(2,), num_res_units=0)
    images, labels = disk_batch(1, seed=22)
    evaluator = RobustnessEvaluator("cpu", _loader(images, labels, 1), network, attack="segpgd", epsilons=[1])
    with pytest.raises(ValueError, match="multi-channel"):
        evaluator.run()


def test_checkpoints_load_in_monai_layouts_and_mismatches_fail(tmp_path):
    source, target = small_unet(), small_unet()
    for name, content in (
        ("raw.pt", source.state_dict()),
        ("saver.pt", {"network": source.state_dict()}),
        ("model.pt", {"model": source.state_dict(), "epoch": 3}),
    ):
        torch.save(content, tmp_path / name)
        load_network_weights(target, tmp_path / name)
        assert all(torch.equal(v, source.state_dict()[k]) for k, v in target.state_dict().items())
    wider = UNet(2, 1, 2, channels=(8, 16, 64), strides=(2, 2), num_res_units=1)
    torch.save(wider.state_dict(), tmp_path / "wider.pt")
    with pytest.raises(ValueError, match=r"wider\.pt does not match the network UNet.*mismatched keys"):
        load_network_weights(target, tmp_path / "wider.pt")
    deeper = UNet(2, 1, 2, channels=(8, 16, 32, 64), strides=(2, 2, 2), num_res_units=1)
    torch.save(deeper.state_dict(), tmp_path / "deeper.pt")
    with pytest.raises(ValueError, match=r"deeper\.pt.*(missing|unexpected) keys"):
        load_network_weights(target, tmp_path / "deeper.pt")
    with pytest.raises(ValueError, match="does not match"):
        RobustnessEvaluator("cpu", [], small_unet(), checkpoint=tmp_path / "deeper.pt")
    with pytest.raises(FileNotFoundError, match="absent.pt"):
        load_network_weights(target, tmp_path / "absent.pt")


def test_pickled_checkpoint_is_refused(tmp_path):
    torch.save(small_unet(), tmp_path / "whole_module.pt")
    with pytest.raises(ValueError, match=r"refusing to load .*whole_module\.pt.*pickled"):
        load_network_weights(small_unet(), tmp_path / "whole_module.pt")


def test_single_process_group_gathers_and_writes(trained, tmp_path):
    images, labels = disk_batch(2, seed=23)
    torch.distributed.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        evaluator = RobustnessEvaluator(
            "cpu", _loader(images, labels, 1), trained, epsilons=[2], output_dir=tmp_path / "out", progress=False
        )
        evaluator.run()
    finally:
        torch.distributed.destroy_process_group()
    assert evaluator.results["n_cases"] == 2
    assert (tmp_path / "out" / "robustness.json").is_file()


def _float64_volume_case() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(3)
    network = UNet(3, 1, 2, channels=(4, 8), strides=(2,), num_res_units=1).double().eval()
    images, labels = disk_batch(2, size=24, seed=19, spatial_dims=3)
    return network, images[:, :, :, :, :20].double(), labels[:, :, :, :, :20]  # 24 x 24 x 20: not a roi multiple


@pytest.mark.parametrize("mode", ["constant", "gaussian"])
def test_the_streamed_sliding_window_gradient_gives_the_naive_attack(mode):
    """The evaluator streams a SlidingWindowInferer's input gradient by default; the I-FGSM images it makes equal the
    naive ones (the streamed gradient is the naive one bit for bit here, float64 on the CPU, so every sign agrees)."""
    network, images, labels = _float64_volume_case()
    inferer = SlidingWindowInferer(roi_size=(16, 16, 16), sw_batch_size=3, overlap=0.5, mode=mode)
    attacked = {}
    for streamed in (True, False):
        evaluator = RobustnessEvaluator(
            "cpu",
            _loader(images, labels, 2),
            network,
            epsilons=[2, 4],
            attack="ifgsm_targeted",
            inferer=inferer,
            streamed_gradient=streamed,
            progress=False,
        )
        evaluator.run()
        assert evaluator.results["config"]["streamed_gradient"] is streamed
        assert evaluator.results["config"]["inferer"] == "SlidingWindowInferer"
        assert evaluator.inferer is inferer  # scoring goes through the user's inferer either way
        assert type(evaluator.attacked.inferer).__name__ == (
            "StreamedSlidingWindowInferer" if streamed else "SlidingWindowInferer"
        )
        attacked[streamed] = (evaluator.attack_sweep(images, labels, num_classes=2), evaluator.state.metrics)
    assert (attacked[True][0] != images).float().mean() > 0.5, "the gradient must flow through the windows"
    assert torch.equal(attacked[True][0], attacked[False][0])
    assert attacked[True][1] == attacked[False][1]
    # the naive reference, outside the evaluator: MONAI's inferer differentiated directly
    single = iterative_fgsm(
        _Windowed(network, inferer),
        images,
        1 - labels,
        4 / 255,
        alpha=1 / 255,
        steps=None,
        targeted=True,
        clip_range=(0, 1),
    )
    assert torch.equal(attacked[True][0][1], single)


def test_other_inferers_are_differentiated_as_given():
    network, images, labels = _float64_volume_case()
    evaluator = RobustnessEvaluator("cpu", _loader(images, labels, 2), network, epsilons=[2], progress=False)
    assert evaluator.attacked.inferer is evaluator.inferer and not evaluator.streamed_gradient  # SimpleInferer
