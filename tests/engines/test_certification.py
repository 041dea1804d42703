"""CertificationEvaluator: certified Dice vs radius on tiny real networks, its report files, determinism, bad input."""

from __future__ import annotations

import csv
import json
import math

import pytest
import torch
from monai.inferers import SlidingWindowInferer
from scipy.stats import beta, norm
from tiny_models import disk_batch, trained_small_unet
from torch import nn

from monai_advseg.engines import CertificationEvaluator, default_radii
from monai_advseg.handlers import CERTIFY_FILES, load_certification_report

SIGMA, N0, N, ALPHA = 0.25, 2, 32, 0.01


def constant_network(spatial_dims: int = 2, foreground: bool = True) -> nn.Module:
    """A 1x1 convolution whose logits ignore the input: class 1 (or 0) everywhere, whatever the noise."""
    conv = (nn.Conv2d if spatial_dims == 2 else nn.Conv3d)(1, 2, kernel_size=1)
    with torch.no_grad():
        conv.weight.zero_()
        conv.bias.copy_(torch.tensor([0.0, 5.0] if foreground else [5.0, 0.0]))
    return conv


def _disks(batches: int = 2, batch: int = 2, size: int = 16, spatial_dims: int = 2) -> list[dict]:
    return [
        dict(zip(("image", "label"), disk_batch(batch, size=size, seed=b, spatial_dims=spatial_dims), strict=True))
        for b in range(batches)
    ]


def _dice_of_all_foreground(label: torch.Tensor) -> torch.Tensor:
    """Per-case Dice of predicting class 1 everywhere: 2|T| / (|T| + voxels)."""
    truth = label.flatten(1).float().sum(dim=1)
    return 2 * truth / (truth + label[0].numel())


@pytest.fixture(scope="module")
def unet():
    return trained_small_unet()


def test_constant_network_is_certified_to_the_closed_form_radius_and_not_beyond():
    data = _disks()
    voxels = 16 * 16
    # n of n votes: Clopper-Pearson lower bound at alpha / voxels is (alpha / voxels)^(1 / n); radius sigma Phi^-1
    bound = beta.ppf(ALPHA / voxels, N, 1)
    radius = SIGMA * norm.ppf(bound)
    assert bound == pytest.approx((ALPHA / voxels) ** (1 / N))
    radii = [0.0, radius * 0.5, radius * 0.999, radius * 1.001, 2 * radius]
    evaluator = CertificationEvaluator(
        "cpu", data, constant_network(), sigma=SIGMA, n0=N0, n=N, alpha=ALPHA, radii=radii, progress=False
    )
    evaluator.run()
    rows = evaluator.results["metrics"]
    expected = float(torch.cat([_dice_of_all_foreground(d["label"]) for d in data]).mean())
    assert evaluator.results["base"]["dice"] == pytest.approx(expected)
    assert [r["certified_dice"] for r in rows] == pytest.approx([expected] * 3 + [0.0] * 2)
    assert [r["certified_fraction"] for r in rows] == pytest.approx([1, 1, 1, 0, 0])
    assert all(r["abstain_rate"] == 0 for r in rows)
    gallery = evaluator.state.certification_gallery
    assert len(gallery) == 3  # GALLERY_CASES of the four
    assert float(gallery[0]["radius"].min()) == pytest.approx(radius, rel=1e-5)
    assert (gallery[0]["certified"] == 1).all()
    metrics = evaluator.state.metrics
    assert metrics["certified_dice_r0"] == pytest.approx(expected) and metrics["certified_fraction_r0"] == 1
    assert metrics[f"certified_dice_r{2 * radius:g}"] == 0 and metrics["abstain_rate"] == 0


def test_certified_scores_fall_with_the_radius_and_stay_below_the_clean_certified_voxels(unet):
    evaluator = CertificationEvaluator("cpu", _disks(size=32), unet, sigma=0.12, n0=N0, n=N, progress=False)
    evaluator.run()
    report = evaluator.results
    assert report["radii"] == pytest.approx(default_radii(0.12))
    cases = report["cases"]
    by_case: dict[str, list[dict]] = {}
    for row in cases:
        by_case.setdefault(row["case"], []).append(row)
    assert len(by_case) == 4 and all(len(rows) == len(report["radii"]) for rows in by_case.values())
    for rows in by_case.values():
        for key in ("certified_dice", "certified_jaccard", "certified_fraction"):
            values = [r[key] for r in rows]
            assert all(b <= a + 1e-12 for a, b in zip(values, values[1:], strict=False)), (key, values)
        # at radius 0 every voxel that did not abstain counts
        assert rows[0]["certified_fraction"] == pytest.approx(1 - rows[0]["abstain_rate"])
        dice, jaccard = rows[0]["certified_dice"], rows[0]["certified_jaccard"]
        assert jaccard <= dice + 1e-12
    # the trained U-Net: most voxels are certified at radius 0 and something survives a positive radius
    assert report["metrics"][0]["certified_fraction"] > 0.9
    assert report["metrics"][1]["certified_dice"] > 0.5
    assert report["metrics"][-1]["certified_dice"] <= report["metrics"][0]["certified_dice"]


def test_same_seed_same_report_other_seed_other_noise(unet):
    def run(seed):
        evaluator = CertificationEvaluator(
            "cpu", _disks(1, size=32), unet, sigma=0.25, n0=N0, n=16, alpha=0.1, seed=seed, progress=False
        )
        evaluator.run()
        evaluator.run()  # the generator is seeded afresh at every run
        return evaluator.results["cases"], evaluator.state.certification_gallery[0]["radius"]

    first, again, other = run(0), run(0), run(1)
    assert first[0] == again[0] and (first[1] == again[1]).all()
    assert not (first[1] == other[1]).all()


def test_3d_volume_through_a_sliding_window_and_the_gallery_slice(tmp_path):
    data = _disks(1, batch=1, size=8, spatial_dims=3)
    evaluator = CertificationEvaluator(
        "cpu",
        data,
        constant_network(3),
        sigma=SIGMA,
        n0=N0,
        n=N,
        alpha=ALPHA,
        radii=[0.0, 0.1],
        inferer=SlidingWindowInferer(roi_size=(4, 4, 4), sw_batch_size=2),
        output_dir=tmp_path,
        progress=False,
    )
    evaluator.run()
    rows = evaluator.results["metrics"]
    expected = float(_dice_of_all_foreground(data[0]["label"])[0])
    assert [r["certified_dice"] for r in rows] == pytest.approx([expected, expected])
    assert evaluator.results["config"]["inferer"] == "SlidingWindowInferer"
    assert evaluator.state.certification_gallery[0]["certified"].shape == (8, 8, 8)
    assert (tmp_path / "certify_gallery.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_files_read_back(unet, tmp_path):
    radii = [0.0, 0.05, 0.1]
    evaluator = CertificationEvaluator(
        "cpu", _disks(1, size=32), unet, sigma=0.12, n0=N0, n=N, radii=radii, output_dir=tmp_path, progress=False
    )
    evaluator.run()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(CERTIFY_FILES)
    report = load_certification_report(tmp_path / "certify.json")
    assert report == json.loads(json.dumps(evaluator.results))  # what was written is the run's report
    assert report["format"] == "monai_advseg.certify/1" and report["n_cases"] == 2
    certification = report["certification"]
    assert certification["sigma"] == 0.12 and certification["n0"] == N0 and certification["n"] == N
    assert certification["alpha"] == 0.001 and certification["tau"] is None
    assert certification["correction"] == "bonferroni"
    assert set(report["timings"]) >= {"total_seconds", "certify_seconds", "base_seconds"}
    assert set(report["versions"]) == {"monai_advseg", "torch", "monai", "python"}
    assert report["attack"] is None and report["check"]["passed"] is None
    with (tmp_path / "certify.csv").open() as stream:
        rows = list(csv.DictReader(stream))
    assert [float(r["radius"]) for r in rows] == radii
    assert [float(r["certified_dice"]) for r in rows] == pytest.approx([r["certified_dice"] for r in report["metrics"]])
    assert rows[0]["attack_dice_smoothed"] == ""
    with (tmp_path / "certify_cases.csv").open() as stream:
        cases = list(csv.DictReader(stream))
    assert len(cases) == 2 * len(radii)
    assert {c["case"] for c in cases} == {"case_00000", "case_00001"}
    for name in ("certify.png", "certify_gallery.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_existing_report_is_refused_before_any_forward(tmp_path):
    (tmp_path / "certify.json").write_text("{}")
    network = constant_network()
    calls = []
    network.register_forward_hook(lambda *_: calls.append(1))
    with pytest.raises(FileExistsError, match="certify.json"):
        CertificationEvaluator("cpu", _disks(), network, sigma=SIGMA, output_dir=tmp_path, progress=False)
    assert calls == [] and (tmp_path / "certify.json").read_text() == "{}"
    # the sweep's own files do not block a certification report, and overwrite replaces it
    evaluator = CertificationEvaluator(
        "cpu", _disks(1), network, sigma=SIGMA, n0=1, n=2, output_dir=tmp_path, overwrite=True, progress=False
    )
    evaluator.run()
    assert load_certification_report(tmp_path / "certify.json")["n_cases"] == 2


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"sigma": 0.0}, "sigma must be a finite number > 0"),
        ({"sigma": -0.1}, "sigma must be a finite number > 0"),
        ({"sigma": math.inf}, "sigma must be a finite number > 0"),
        ({"n": 0}, "n must be an int >= 1"),
        ({"n0": 0}, "n0 must be an int >= 1"),
        ({"n": 2.5}, "n must be an int >= 1"),
        ({"alpha": 1.0}, r"alpha must be in \(0, 1\)"),
        ({"tau": 0.4}, r"tau must be None or in \[0.5, 1\)"),
        ({"radii": [0.1, -0.2]}, r"radii must be finite and >= 0 .* got \[-0.2\]"),
        ({"radii": [0.1, 0.1]}, "radii must not repeat"),
        ({"attack_radii": [0.0]}, "attack_radii must be > 0"),
        ({"attack_steps": 0}, "attack_steps must be an int >= 1"),
        ({"batch_size": 0}, "batch_size must be an int >= 1"),
    ],
)
def test_bad_input_is_a_clear_error_before_any_forward(kwargs, message, tmp_path):
    network = constant_network()
    calls = []
    network.register_forward_hook(lambda *_: calls.append(1))
    settings = {"sigma": SIGMA, **kwargs}
    with pytest.raises(ValueError, match=message):
        CertificationEvaluator("cpu", _disks(), network, output_dir=tmp_path / "out", progress=False, **settings)
    assert calls == [] and not (tmp_path / "out").exists()


def test_an_attack_cannot_move_a_constant_network_and_the_check_passes(device):
    data = _disks(1)
    evaluator = CertificationEvaluator(
        device,
        data,
        constant_network().to(device),
        sigma=SIGMA,
        n0=N0,
        n=N,
        alpha=ALPHA,
        radii=[0.0],
        attack_radii=[0.5, 2.0],
        attack_steps=3,
        intensity_range=(0.0, 1.0),
        progress=False,
    )
    evaluator.run()
    report = evaluator.results
    assert report["radii"] == [0.0, 0.5, 2.0]  # the attacked radii join the certificate's
    rows = {row["radius"]: row for row in report["metrics"]}
    base = report["base"]["dice"]
    assert rows[0.0]["attack_dice_base"] is None
    for radius in (0.5, 2.0):
        assert rows[radius]["attack_dice_base"] == pytest.approx(base)
        assert rows[radius]["attack_dice_smoothed"] == pytest.approx(rows[0.0]["certified_dice"])
    assert report["check"]["passed"] is True and report["check"]["flipped_certified_voxels"] == 0
    assert report["attack"]["name"] == "pgd_l2" and report["attack"]["steps"] == 3
    assert evaluator.state.metrics["attack_dice_smoothed_r0.5"] == pytest.approx(base)


def test_l2_pgd_lowers_the_base_dice_and_stays_above_the_certificate(unet):
    evaluator = CertificationEvaluator(
        "cpu",
        _disks(size=32),
        unet,
        sigma=0.12,
        n0=N0,
        n=N,
        radii=[0.0],
        attack_radii=[0.03, 3.0],
        attack_steps=10,
        intensity_range=(0.0, 1.0),
        progress=False,
    )
    evaluator.run()
    rows = {row["radius"]: row for row in evaluator.results["metrics"]}
    base = evaluator.results["base"]["dice"]
    # measured 2026-12-01: base 0.959, under L2 PGD at radius 3 (of a 32x32 image in [0, 1]) 0.580, smoothed 0.510
    assert rows[3.0]["attack_dice_base"] < base - 0.2
    assert rows[3.0]["attack_dice_smoothed"] < rows[0.0]["certified_dice"]
    check = evaluator.results["check"]
    assert check["passed"] is True and check["flipped_certified_voxels"] == 0
    assert check["rows"][0]["certified_voxels"] > 0  # something was certified at radius 0.03 and the attack kept it
    assert rows[0.03]["certified_dice"] <= rows[0.03]["attack_dice_smoothed"]


def _ddp_worker(rank: int, store: str, out: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    data = _disks(2, batch=1)[rank : rank + 1]  # rank r holds case r
    evaluator = CertificationEvaluator(
        "cpu",
        data,
        constant_network(),
        sigma=SIGMA,
        n0=N0,
        n=N,
        alpha=ALPHA,
        radii=[0.0, 1.0],
        attack_radii=[0.1],
        attack_steps=1,
        output_dir=out,
        plot=False,
        progress=False,
    )
    evaluator.run()
    dist.destroy_process_group()


def test_ranks_cases_are_gathered_into_one_report_written_by_rank_zero(tmp_path):
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    out = tmp_path / "report"
    workers = [context.Process(target=_ddp_worker, args=(r, str(tmp_path / "store"), str(out))) for r in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
    assert [worker.exitcode for worker in workers] == [0, 0]
    report = load_certification_report(out / "certify.json")
    single = CertificationEvaluator(
        "cpu",
        _disks(2, batch=1),
        constant_network(),
        sigma=SIGMA,
        n0=N0,
        n=N,
        alpha=ALPHA,
        radii=[0.0, 1.0],
        attack_radii=[0.1],
        attack_steps=1,
        progress=False,
    )
    single.run()
    assert report["n_cases"] == 2
    assert [c["certified_dice"] for c in report["cases"]] == pytest.approx(
        [c["certified_dice"] for c in single.results["cases"]]
    )
    assert report["check"]["rows"][0]["certified_voxels"] == 2 * 16 * 16  # both ranks' voxels counted
