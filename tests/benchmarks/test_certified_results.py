"""benchmarks/certified_results.py on a tiny trained U-Net: the attacks stay in their L2 balls, the certified curve
falls with the radius, the check counts what it says, and the page states the check's outcome first."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from tiny_models import disk_batch, trained_small_unet

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT / "benchmarks"))

import certified_results  # noqa: E402  (benchmarks/ is not a package)


def test_evaluate_and_render_on_a_tiny_model(tmp_path):
    network = trained_small_unet()
    images, labels = disk_batch(2, seed=4)
    pairs = enumerate(zip(images, labels, strict=True))
    data = [{"image": image, "label": label.float(), "name": f"case{k}"} for k, (image, label) in pairs]
    args = argparse.Namespace(
        seed=0, n0=5, n=40, alpha=0.01, batch_size=16, radii=[0.0, 0.1, 0.3, 1.0], attack_radii=[0.3, 1.0],
        pgd_steps=3, eot_samples=2, sigmas=[0.25], work=tmp_path / "work", results_dir=tmp_path / "results",
        epochs=1,
    )  # fmt: skip
    record = certified_results.evaluate(0.25, network, data, args)
    certified = torch.tensor(record["certified_dice"])
    assert bool((certified[:, 1:] <= certified[:, :-1] + 1e-12).all()), "certified Dice must not grow with r"
    for row in record["attack"]:
        assert row["max_perturbation_norm"] <= row["radius"] * (1 + 1e-5)
        assert row["eot_max_perturbation_norm"] <= row["radius"] * (1 + 1e-5)
        above = sum(c > s + 1e-12 for c, s in zip(row["certified_dice"], row["smoothed_dice"], strict=True))
        assert row["violations"] == above
    record["train"] = {"clean_test": {"dice": 0.9}, "train_seconds": 1.0, "epochs": 1, "seed": 0, "parameters": 1}
    record["settings"] = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    record["command"] = "test"
    (args.work / "unet_gaussian_0.25").mkdir(parents=True)
    (args.work / "unet_gaussian_0.25" / "certified.json").write_text(json.dumps(record))
    certified_results.render(args, "test --render-only", certified_results.machine())
    summary = json.loads((args.results_dir / "certified.json").read_text())
    total = sum(r["violations"] + r["eot_violations"] for r in record["attack"])
    assert summary["violations_certified_above_smoothed"] == total
    page = (args.results_dir / "certified.md").read_text().splitlines()
    assert page[2].startswith("**The check holds" if total == 0 else "**The check FAILS")
    assert (args.results_dir / "certified.png").stat().st_size > 1000
    args.seed_runs = [args.work]  # the same run shown as "another seed": its paragraph and its own check
    certified_results.render(args, "test --render-only", certified_results.machine())
    page = (args.results_dir / "certified.md").read_text()
    assert "Another training seed (0, sigma 0.25, the same 2 cases" in page
    assert ("the check holds in all 8 of its comparisons" if total == 0 else "the check FAILS") in page
