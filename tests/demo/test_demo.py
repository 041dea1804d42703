"""The main job end to end at the reduced size, as a user runs it."""

import json
import subprocess
import sys

import torch
from bundle_helpers import link_subset

from monai_advseg.demo import HU_WINDOW, synthetic_ct_slices, window
from monai_advseg.demo import main as demo_main


def test_synthetic_slices_are_ct_like_in_hounsfield_units():
    images, labels = synthetic_ct_slices(4, 32, seed=0)
    assert images.shape == labels.shape == (4, 1, 32, 32)
    lesion, tissue = images[labels == 1].mean(), images[labels == 0].mean()
    assert 100 < lesion < 160 and 10 < tissue < 70  # HU, not a [0, 1] range
    assert torch.equal(synthetic_ct_slices(4, 32, seed=0)[0], images)
    windowed = window(images, *HU_WINDOW)
    assert windowed.min() >= 0 and windowed.max() <= 1


def test_demo_quick_run_leaves_reports_and_figure(tmp_path):
    output = tmp_path / "demo_out"
    command = [sys.executable, "-m", "monai_advseg", "demo", "--output_dir", str(output), "--quick"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Dice under the targeted I-FGSM attack" in result.stdout
    assert "The honest table: paper's attack" in result.stdout and "worst case (first 2 cases" in result.stdout
    for name in ("unet", "unet_fgsm_inverse", "nlce_unet"):
        report = json.loads((output / name / "robustness.json").read_text())
        levels = [row["eps_levels"] for row in report["metrics"]]
        assert levels == [0.0, 0.5, 4.0, 16.0]
        assert (output / name / "robustness.png").stat().st_size > 0
        assert set(torch.load(output / name / "model.pt", weights_only=True))  # a readable state dict
        worst = json.loads((output / name / "worst_case" / "robustness.json").read_text())
        assert worst["attack"]["name"] == "worst_case" and set(worst["diagnostics"]) >= {"noise", "unbounded"}
        assert (output / name / "worst_case" / "robustness.md").read_text().startswith("# Robustness report")
    assert (output / "comparison.png").read_bytes()[:4] == b"\x89PNG"
    summary = json.loads((output / "summary.json").read_text())
    assert set(summary) == {"unet", "unet_fgsm_inverse", "nlce_unet"}
    assert set(summary["unet"]) == {"paper", "worst_case", "diagnostics"}
    again = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert (
        again.returncode == 1
        and again.stderr == f"error: {output}: exists and is not empty; pass --overwrite to replace it\n"
    )


def test_overwrite_replaces_only_an_earlier_demo_output(tmp_path, capsys):
    folder = tmp_path / "not_a_demo"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep me")
    (folder / "summary.json").write_text("{}")
    assert demo_main(["--output_dir", str(folder), "--overwrite"]) == 1
    assert "notes.txt" in capsys.readouterr().err
    assert (folder / "notes.txt").read_text() == "keep me" and (folder / "summary.json").exists()


def test_demo_on_real_slices_with_dataset_dir(shared_dataset, tmp_path, capsys):
    source = shared_dataset("ct_covid_medseg_infnet") / "train"
    data = link_subset(source, tmp_path / "data", [str(i) for i in range(12)])
    output = tmp_path / "out"
    assert demo_main(["--output_dir", str(output), "--dataset_dir", str(data), "--quick"]) == 0
    printed = capsys.readouterr().out
    assert f"data: {data}" in printed
    summary = json.loads((output / "summary.json").read_text())
    for name, runs in summary.items():
        report = json.loads((output / name / "robustness.json").read_text())
        assert report["config"]["data"] == str(data)
        assert [row["mean_dice"] for row in runs["paper"]] == [row["mean_dice"] for row in report["metrics"]]
