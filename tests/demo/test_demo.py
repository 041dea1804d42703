"""The main job end to end at the reduced size, as a user runs it."""

import json
import subprocess
import sys

import torch

from monai_advseg.demo import HU_WINDOW, synthetic_ct_slices, window


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
    for name in ("unet", "unet_fgsm_inverse", "nlce_unet"):
        report = json.loads((output / name / "robustness.json").read_text())
        levels = [row["eps_levels"] for row in report["metrics"]]
        assert levels == [0.0, 0.5, 4.0, 16.0]
        assert (output / name / "robustness.png").stat().st_size > 0
        assert set(torch.load(output / name / "model.pt", weights_only=True))  # a readable state dict
    assert (output / "comparison.png").read_bytes()[:4] == b"\x89PNG"
    summary = json.loads((output / "summary.json").read_text())
    assert set(summary) == {"unet", "unet_fgsm_inverse", "nlce_unet"}
    again = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert again.returncode == 2 and "exists and is not empty" in again.stderr
