"""Gradient-masking diagnostics: a model with shattered gradients fails them, a trained U-Net passes; the report card.

The shattered model is the trained U-Net behind an 8-bit rounding of its input: its decisions are (almost) the
U-Net's, but its input gradient is exactly zero everywhere, so every gradient attack stands still.
"""

from __future__ import annotations

import csv
import json

import pytest
import torch
from matplotlib.image import imread
from monai.networks.nets import UNet
from tiny_models import disk_batch, small_unet, trained_small_unet
from torch import nn

from monai_advseg.attacks import WorstCaseSpec
from monai_advseg.engines import GradientMaskingDiagnostics, RobustnessEvaluator
from monai_advseg.handlers import DIAGNOSTICS, REPORT_FILES, build_diagnostics, load_robustness_report

LEVELS = [8, 32]
MEMBERS = ["ifgsm_targeted", "apgd_masked_ce", "segpgd"]


class Rounded(nn.Module):
    """``network(round(255 x) / 255)``: the gradient of the rounding is zero, so the input gradient is zero."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.network(torch.round(image * 255) / 255)


@pytest.fixture(scope="module")
def trained() -> nn.Module:
    return trained_small_unet()


@pytest.fixture(scope="module")
def data():
    images, labels = disk_batch(4, seed=61)
    return [{"image": images[i : i + 2], "label": labels[i : i + 2]} for i in (0, 2)]


def _evaluate(network, data, surrogate=None, **kwargs):
    evaluator = RobustnessEvaluator(
        "cpu",
        data,
        network,
        epsilons=LEVELS,
        attack=WorstCaseSpec(members=MEMBERS, apgd_steps=5, segpgd_steps=5),
        diagnostics=GradientMaskingDiagnostics(surrogate=surrogate, black_box_cases=2, black_box_queries=60),
        progress=False,
        **kwargs,
    )
    evaluator.run()
    return evaluator


@pytest.fixture(scope="module")
def plain(trained, data, tmp_path_factory):
    out = tmp_path_factory.mktemp("card")
    return _evaluate(trained, data, output_dir=out), out


def test_the_worst_case_asks_for_the_diagnostics_and_a_plain_attack_does_not(trained):
    assert isinstance(
        RobustnessEvaluator("cpu", [], trained, attack="worst_case").diagnostics, GradientMaskingDiagnostics
    )
    assert RobustnessEvaluator("cpu", [], trained, attack="ifgsm_targeted").diagnostics is None
    assert RobustnessEvaluator("cpu", [], trained, attack="pgd", diagnostics=True).diagnostics is not None


def test_a_trained_unet_passes_unbounded_and_noise(plain):
    diagnostics = plain[0].results["diagnostics"]
    assert list(diagnostics) == list(DIAGNOSTICS)
    assert diagnostics["unbounded"]["passed"] and diagnostics["unbounded"]["attack_dice"] <= 0.05
    assert diagnostics["noise"]["passed"]
    noise, attack = diagnostics["noise"]["noise_dice"], diagnostics["noise"]["attack_dice"]
    assert noise[-1] > attack[-1] + 0.2, "at eps 32 the attack must be far stronger than noise on a plain U-Net"
    assert diagnostics["transfer"]["passed"] is None and "surrogate" in diagnostics["transfer"]["skipped"]


def test_shattered_gradients_fail_a_diagnostic(trained, data):
    diagnostics = _evaluate(Rounded(trained), data, surrogate=trained).results["diagnostics"]
    failed = [name for name, entry in diagnostics.items() if entry["passed"] is False]
    assert failed, diagnostics
    # the U-Net's own adversarial images pass through the rounding: far stronger than the stalled gradient attacks
    assert "transfer" in failed and diagnostics["transfer"]["largest_advantage"] > 0.2


def test_report_card_files_read_back(plain):
    evaluator, out = plain
    assert sorted(p.name for p in out.iterdir()) == sorted(REPORT_FILES)
    report = load_robustness_report(out / "robustness.json")
    assert {name: report["diagnostics"][name]["passed"] for name in ("unbounded", "noise")} == {
        "unbounded": True,
        "noise": True,
    }
    with open(out / "robustness.csv", newline="") as stream:
        rows = list(csv.DictReader(stream))
    assert {"noise_dice", "black_box_dice", "mean_dice_apgd_masked_ce", "wins_segpgd"} <= set(rows[0])
    assert float(rows[-1]["noise_dice"]) == pytest.approx(report["diagnostics"]["noise"]["noise_dice"][-1])
    card = (out / "robustness.md").read_text().splitlines()
    assert card[2].startswith("**Verdict:**") and "Dice" in card[2]
    assert any(line.startswith("- **unbounded: PASS**") for line in card)
    assert any(line.startswith("- **transfer: skipped**") for line in card)
    gallery = imread(out / "robustness_gallery.png")
    kept = evaluator.state.robustness_gallery
    assert len(kept) == 3 and kept[0]["eps_levels"] == [8.0, 32.0]  # first 3 cases, the gallery's eps
    assert gallery.shape[0] > gallery.shape[1] > 500  # 3 cases x 2 eps rows of 5 panels
    assert json.loads((out / "robustness.json").read_text())["timings"]["diagnostics_seconds"] > 0


def test_surrogate_with_another_output_shape_is_refused_before_any_work(trained, data, tmp_path):
    other = UNet(2, 1, 3, channels=(4, 8), strides=(2,), num_res_units=0)
    with pytest.raises(ValueError, match=r"surrogate output shape \(3, 32, 32\).*\(2, 32, 32\)"):
        _evaluate(trained, data, surrogate=other, output_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("levels", [[8, 256], [300]])
def test_eps_above_the_whole_range_is_refused(levels, tmp_path):
    with pytest.raises(ValueError, match=f"epsilons \\[{float(levels[-1])}\\] exceed the whole intensity range"):
        RobustnessEvaluator("cpu", [], small_unet(), epsilons=levels, output_dir=tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_black_box_levels_must_be_sweep_strengths():
    with pytest.raises(ValueError, match=r"black_box_levels \[4.0\]"):
        RobustnessEvaluator(
            "cpu", [], small_unet(), epsilons=[8], diagnostics=GradientMaskingDiagnostics(black_box_levels=[4])
        )


def test_build_diagnostics_judges_from_the_arrays():
    clean = [0.9, 0.9]
    rising = [[0.5, 0.8], [0.5, 0.8]]  # Dice at eps 16 above eps 8: more budget made the attack weaker
    result = build_diagnostics([8, 16], clean, rising, noise_dice=[[0.9, 0.3], [0.9, 0.3]], tolerance=0.02)
    assert result["monotone"]["passed"] is False and result["monotone"]["largest_rise"] == pytest.approx(0.3)
    assert result["monotone"]["at_eps_levels"] == 16.0
    assert result["noise"]["passed"] is False and result["noise"]["at_eps_levels"] == 16.0
    assert result["noise"]["largest_advantage"] == pytest.approx(0.5)
    assert result["unbounded"] == {"passed": None, "skipped": "not run"}


def test_gallery_shows_a_3d_case_through_its_structures_centre():
    import numpy as np

    from monai_advseg.handlers import centre_slice

    label = np.zeros((8, 8, 10), dtype=np.int64)
    label[2:5, 2:5, 6:9] = 1  # foreground slices 6, 7, 8 along the last axis: centre 7
    image = np.arange(8 * 8 * 10, dtype=np.float32).reshape(1, 8, 8, 10)
    view, index = centre_slice(image, label)
    assert index == 7 and view.shape == (8, 8) and np.array_equal(view, image[0, :, :, 7])
    assert centre_slice(image, np.zeros_like(label))[1] == 5  # no foreground: the middle slice
