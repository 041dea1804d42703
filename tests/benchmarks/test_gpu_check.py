"""The GPU check (benchmarks/gpu_check.sh, gpu_check.py, gpu_bundle.sh) on the CPU: its refusal without CUDA, and the
logic of each step with a forced ``device=cpu`` and tiny sizes."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from conftest import available_devices, device_params
from tiny_models import linear_pixel_model

REPO_ROOT = Path(__file__).resolve().parents[2]
BENCHMARKS = REPO_ROOT / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import gpu_check  # noqa: E402  (benchmarks/ is not a package)


@pytest.mark.parametrize("script", ["gpu_check.sh", "gpu_bundle.sh"])
def test_shell_scripts_parse(script):
    result = subprocess.run(["bash", "-n", str(BENCHMARKS / script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    if shutil.which("shellcheck"):
        result = subprocess.run(["shellcheck", str(BENCHMARKS / script)], capture_output=True, text=True)
        assert result.returncode == 0, result.stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA, so the check would run")
def test_without_cuda_the_check_refuses_and_writes_nothing(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable, "OUT": str(tmp_path / "out")}
    env.pop("GPU_CHECK_DEVICE", None)
    result = subprocess.run(
        ["bash", str(BENCHMARKS / "gpu_check.sh")], capture_output=True, text=True, env=env, timeout=120
    )
    assert result.returncode == 3
    assert "CUDA is not available" in result.stderr
    assert not (tmp_path / "out").exists()


def test_a_python_without_torch_is_refused_too(tmp_path):
    env = {**os.environ, "PYTHON": "false", "OUT": str(tmp_path / "out")}  # `false -c ...` fails like a bare python
    result = subprocess.run(["bash", str(BENCHMARKS / "gpu_check.sh")], capture_output=True, text=True, env=env)
    assert result.returncode == 3 and "CUDA is not available" in result.stderr


def test_a_spent_budget_skips_every_step_and_still_writes_the_json(tmp_path):
    """The shell plumbing: every step is recorded (here as skipped for time), the JSON lands in $OUT, exit 1."""
    env = {
        **os.environ,
        "PYTHON": sys.executable,
        "OUT": str(tmp_path),
        "GPU_CHECK_DEVICE": "cpu",
        "GPU_CHECK_BUDGET_S": "0",
    }
    result = subprocess.run(
        ["bash", str(BENCHMARKS / "gpu_check.sh")], capture_output=True, text=True, env=env, timeout=300
    )
    assert result.returncode == 1, result.stderr
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    expected = ["env", "tests", "attack_cost", "augmentation_cost", "sweep_cost", "sliding_window_memory"]
    assert [name for name in report["steps"] if name != "setup"] == [*expected, "autocast", "abdomen_sweep"]
    assert {step["status"] for step in report["steps"].values()} == {"timed out"}
    assert report["ok"] is False
    assert "SOME STEPS FAILED" in result.stdout


def test_the_device_fixture_has_cpu_and_cuda_when_present(device):
    assert available_devices()[0] == "cpu"
    assert ("cuda" in available_devices()) == torch.cuda.is_available()
    params = device_params()
    assert [param.id for param in params] == available_devices()
    assert [[mark.name for mark in param.marks] for param in params] == [
        [] if n == "cpu" else ["cuda"] for n in available_devices()
    ]
    assert isinstance(device, torch.device) and device.type in available_devices()
    if device.type == "cuda":
        assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark


# ------------------------------------------------------------------------------------------------ sign agreement


def _linear_case(slope: float, size: int):
    network = linear_pixel_model(spatial_dims=3, slope=slope)
    generator = torch.Generator().manual_seed(0)
    image = 0.5 + 0.5 * torch.rand(1, 1, size, size, size, generator=generator)
    label = (torch.rand(1, 1, size, size, size, generator=generator) > 0.5).long()
    return network, image, label


def test_sign_agreement_is_one_where_half_precision_keeps_every_sign():
    network, image, label = _linear_case(slope=2.0, size=8)  # gradient sign known: -1 where y = 1, +1 where y = 0
    result = gpu_check.gradient_sign_agreement(network, image, label)
    for reduction in ("sum", "mean"):
        rows = result["reductions"][reduction]
        assert rows["fp32"]["zero_share"] == 0.0
        for variant in ("fp32_rerun", "float16", "bfloat16"):
            assert rows[variant]["agreement"] == 1.0, (reduction, variant)
    assert "tf32" not in result["reductions"]["sum"]  # a CUDA-only variant


def test_the_mean_loss_loses_fp16_gradient_signs_that_the_summed_loss_keeps():
    """With a small slope the mean's per-voxel gradient (slope * (p - y) / N ~ 1e-8) is below fp16's smallest
    subnormal and flushes to zero; the sum's (N times larger) is representable."""
    network, image, label = _linear_case(slope=1e-4, size=16)
    rows = gpu_check.gradient_sign_agreement(network, image, label, dtypes=("float16",))["reductions"]
    assert rows["sum"]["float16"]["agreement"] == 1.0
    assert rows["mean"]["fp32"]["zero_share"] == 0.0  # in fp32 every sign is there
    assert rows["mean"]["float16"]["zero_share"] > 0.5
    assert rows["mean"]["float16"]["agreement"] < 0.5


def test_autocast_check_on_a_tiny_3d_unet_on_cpu():
    torch.set_num_threads(1)
    result = gpu_check.autocast_check("cpu", size=16, batch=1, channels=[4, 8])
    assert result["shape"] == [1, 1, 16, 16, 16] and result["device"] == "cpu"
    for rows in result["reductions"].values():
        assert rows["fp32_rerun"]["agreement"] == 1.0  # the CPU kernels are deterministic
        for variant in ("float16", "bfloat16"):
            assert 0.5 < rows[variant]["agreement"] <= 1.0
    assert "peak_gpu_memory_mib" not in result
    assert result["summary"].startswith("sign agreement with fp32: sum float16")


def test_blob_batch_labels_match_the_bright_balls():
    image, label = gpu_check.blob_batch(2, 16, classes=3)
    assert image.shape == label.shape == (2, 1, 16, 16, 16)
    assert set(label.unique().tolist()) <= {0, 1, 2} and (label > 0).any()
    assert image[label == 2].mean() > image[label == 1].mean() > image[label == 0].mean()


# ---------------------------------------------------------------------------------------------------- benchmarks


def test_a_benchmark_runs_in_process_and_its_figures_are_kept():
    part = gpu_check.run_benchmark(
        BENCHMARKS / "attack_cost.py", ["--repeats", "1", "--steps", "1", "--batch", "1", "--size", "32"]
    )
    assert part["status"] == "passed", part.get("error")
    assert part["lines"][0] == "device: cpu, batch 1 of 1x32x32"
    assert part["key"] == pytest.approx(part["figures"]["ratio"], abs=5e-4)  # the last line is the key figure
    assert part["figures"]["peak_gpu_memory_mib"] is None and part["peak_gpu_memory_mib"] is None
    assert part["wall_s"] > 0 and "key" in part["summary"] and " ms" in part["summary"]


def test_a_benchmark_refusing_an_option_fails_and_an_absent_one_is_absent():
    refused = gpu_check.run_benchmark(BENCHMARKS / "attack_cost.py", ["--no-such-option"])
    assert refused["status"] == "failed"
    assert refused["error"].startswith("exit 2: ") and "unrecognized arguments: --no-such-option" in refused["error"]
    absent = gpu_check.run_benchmark(BENCHMARKS / "no_such_benchmark.py", [])
    assert absent["status"] == "absent"


@pytest.mark.skipif(torch.cuda.is_available(), reason="tests the refusal on a machine without CUDA")
def test_device_cuda_without_cuda_is_a_usage_error():
    part = gpu_check.run_benchmark(BENCHMARKS / "augmentation_cost.py", ["--device", "cuda"])
    assert part["status"] == "failed" and "--device 'cuda': CUDA is not available" in part["error"]


# ---------------------------------------------------------------------------------------------- report and JSON


def _parts(folder: Path) -> Path:
    folder.mkdir()
    env = {"gpus": [{"name": "Test GPU", "memory_gib": 80.0}], "torch": "2.11.0", "cuda": "12.8", "summary": "x"}
    gpu_check.write_part(folder / "01_env.json", {**env, "date_utc": "2026-12-01 10:00:00"})
    (folder / "01_env.rc").write_text("0 3\n")
    gpu_check.write_part(folder / "02_bench.json", {"status": "passed", "key": float("nan"), "summary": "key 1.0"})
    (folder / "02_bench.rc").write_text("0 12\n")
    (folder / "03_broken.rc").write_text("1 5\n")
    (folder / "03_broken.log").write_text("Traceback ...\nRuntimeError: CUDA error\n")
    gpu_check.write_part(folder / "04_killed.json", {"status": "passed"})  # no .rc: the step never finished
    (folder / "05_slow.rc").write_text("124 90\n")
    gpu_check.write_part(folder / "06_other.json", {"status": "absent", "summary": "not in this tree"})
    (folder / "06_other.rc").write_text("0 0\n")
    return folder


def test_report_merges_the_parts_with_each_steps_status(tmp_path):
    report = gpu_check.collect(_parts(tmp_path / "parts"))
    status = {name: step["status"] for name, step in report["steps"].items()}
    assert status == {
        "env": "passed",
        "bench": "passed",
        "broken": "failed",
        "killed": "not finished",
        "slow": "timed out",
        "other": "absent",
    }
    assert report["steps"]["bench"]["result"]["key"] is None  # NaN is written as null: strict JSON
    assert "RuntimeError: CUDA error" in report["steps"]["broken"]["log_tail"]
    assert "log_tail" not in report["steps"]["bench"]
    assert report["steps"]["broken"]["seconds"] == 5.0
    assert report["environment"]["gpus"][0]["name"] == "Test GPU"
    assert report["ok"] is False and report["format"] == gpu_check.SCHEMA


def test_report_command_writes_the_json_and_prints_the_table(tmp_path, capsys):
    parts = _parts(tmp_path / "parts")
    assert gpu_check.main(["report", "--parts", str(parts), "--out", str(tmp_path / "check.json")]) == 0
    printed = capsys.readouterr().out
    assert json.loads((tmp_path / "check.json").read_text())["steps"]["slow"]["status"] == "timed out"
    table = printed.splitlines()
    assert table[0].split() == ["step", "status", "seconds", "figures"]
    assert any(line.split()[:3] == ["bench", "passed", "12"] for line in table)
    assert "SOME STEPS FAILED" in printed
    for name in ("broken", "killed", "slow"):
        (parts / f"{name}.rc").unlink(missing_ok=True)
    for path in parts.glob("0[345]_*"):
        path.unlink()
    assert gpu_check.collect(parts)["ok"] is True  # passed and absent steps only


def test_markdown_names_the_gpu_versions_and_the_steps(tmp_path):
    report = gpu_check.collect(_parts(tmp_path / "parts"))
    report["steps"]["autocast"] = {
        "status": "passed",
        "result": {
            "shape": [2, 1, 128, 128, 128],
            "reductions": {"sum": {"float16": {"agreement": 0.99, "zero_share": 0}}},
        },
    }
    text = gpu_check.markdown(report)
    assert text.startswith("## Run of 2026-12-01 10:00:00 UTC")
    assert "Test GPU (80.0 GiB)" in text and "torch 2.11.0, CUDA 12.8" in text
    assert "| broken | failed | 5 |" in text and "| sum | float16 | 0.99000 | 0.00000 |" in text


def test_junit_summary_counts_each_outcome(tmp_path):
    xml = tmp_path / "report.xml"
    xml.write_text(
        "<testsuites><testsuite>"
        '<testcase classname="a" name="ok[cuda]"/>'
        '<testcase classname="a" name="bad[cuda]"><failure message="assert 1 == 2"/></testcase>'
        '<testcase classname="a" name="skip[cuda]"><skipped message="no data"/></testcase>'
        '<testcase classname="b" name="b"><error message="collection failure"/></testcase>'
        "</testsuite></testsuites>"
    )
    summary = gpu_check.junit_summary(xml)
    assert (summary["passed"], summary["failed"], summary["skipped"], summary["errors"]) == (1, 1, 1, 1)
    assert summary["status"] == "failed" and summary["failures"][0]["test"] == "a::bad[cuda]"
    assert gpu_check.junit_summary(tmp_path / "missing.xml")["status"] == "failed"


# ----------------------------------------------------------------------------------------- prepare and set-up


def _wheel(folder: Path, name: str, module: str) -> Path:
    path = folder / f"{name}-1.0-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(f"{module}/__init__.py", "VALUE = 42\n")
        archive.writestr(f"{name}-1.0.dist-info/METADATA", f"Name: {name}\nVersion: 1.0\n")
        archive.writestr(f"{name}-1.0.data/purelib/{module}_extra.py", "EXTRA = 1\n")
    return path


def test_setup_unpacks_only_the_wheels_whose_packages_are_missing(tmp_path):
    wheels, site = tmp_path / "wheels", tmp_path / "site"
    wheels.mkdir()
    _wheel(wheels, "gpucheck_missing", "gpucheck_missing_pkg")
    _wheel(wheels, "json_shadow", "json")  # the standard library's json must not be shadowed
    done = gpu_check.unpack_missing_wheels(wheels, site)
    assert done == {
        "unpacked": ["gpucheck_missing-1.0-py3-none-any.whl"],
        "present": ["json_shadow-1.0-py3-none-any.whl"],
        "kept": [],
    }
    assert not (site / "json").exists()
    probe = "import gpucheck_missing_pkg, gpucheck_missing_pkg_extra; print(gpucheck_missing_pkg.VALUE)"
    result = subprocess.run(
        [sys.executable, "-c", probe], env={**os.environ, "PYTHONPATH": str(site)}, capture_output=True, text=True
    )
    assert result.stdout.strip() == "42", result.stderr
    assert gpu_check.unpack_missing_wheels(wheels, site)["kept"] == ["gpucheck_missing-1.0-py3-none-any.whl"]


def test_carried_size_counts_the_files_git_would_copy_and_the_carry_paths(tmp_path):
    root = tmp_path / "repo"
    root.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    (root / ".gitignore").write_text("/ignored/\n/bundle/\n")
    (root / "tracked.txt").write_bytes(b"x" * 1000)
    subprocess.run(["git", "add", "tracked.txt"], cwd=root, check=True)
    (root / "untracked.txt").write_bytes(b"y" * 500)
    (root / "ignored").mkdir()
    (root / "ignored" / "big.bin").write_bytes(b"z" * 100_000)
    (root / "bundle" / "wheels").mkdir(parents=True)
    (root / "bundle" / "wheels" / "a.whl").write_bytes(b"w" * 3000)
    sizes = gpu_check.carried_bytes(root, ["bundle"])
    gitignore = len("/ignored/\n/bundle/\n")
    assert sizes == {"tree": 1000 + 500 + gitignore, "carry": 3000, "total": 4500 + gitignore}


# ------------------------------------------------------------------------------------------------------- bundle


@pytest.mark.real_data
def test_abdomen_sweep_step_with_the_gpu_pipeline_on_cpu(shared_dataset, tmp_path):
    """The bundle step's logic with a forced device=cpu and a tiny network: train (AMP, gpu_pipeline), then sweep."""
    torch.set_num_threads(1)
    data = shared_dataset("ct_totalseg_example").parent
    tiny = {
        "spatial_size": [32, 32, 32],
        "network_choices#unet#channels": [8, 16, 32],
        "network_choices#unet#strides": [2, 2],
    }
    part = gpu_check.bundle_check(data, tmp_path / "work", "cpu", epochs=1, epsilons=[1], overrides=tiny)
    assert part["cached_image_device"] == "cpu" and part["grad_scaler"] is None  # bf16 autocast: no scaler on CPU
    assert [row["eps_levels"] for row in part["robustness"]] == [0, 1]
    assert all(0 <= row["mean_dice"] <= 1 for row in part["robustness"])
    assert math.isfinite(part["train_loss"]) and part["train_peak_gpu_memory_mib"] is None
    assert (tmp_path / "work" / "robustness" / "robustness.json").is_file()
