"""benchmarks/sliding_window_memory.py on the CPU with tiny sizes: its network, its last line, its --device refusal."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[2]
BENCHMARKS = REPO_ROOT / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import gpu_check  # noqa: E402  (benchmarks/ is not a package)
import sliding_window_memory  # noqa: E402


@pytest.fixture(autouse=True)
def _keep_threads():
    threads = torch.get_num_threads()  # the benchmark sets its own thread count in this process
    yield
    torch.set_num_threads(threads)


def test_the_network_is_the_zoo_bundles_unet():
    path = sliding_window_memory.ZOO_TRAIN
    if not path.is_file():
        pytest.skip(f"the spleen zoo bundle is not at {path}")
    definition = json.loads(path.read_text())["network_def"]
    assert definition.pop("_target_") == "UNet"
    args, source = sliding_window_memory.spleen_unet_args()
    assert args == definition == sliding_window_memory.SPLEEN_UNET and source == str(path)
    missing = sliding_window_memory.spleen_unet_args(path.parent / "no_such.json")
    assert missing[0] == definition and "built-in" in missing[1]


def test_a_tiny_run_prints_the_key_line_last():
    args = ["--roi", "32", "--volumes", "48x32x32", "--sw-batch", "1", "--threads", "1"]  # two fresh processes
    part = gpu_check.run_benchmark(BENCHMARKS / "sliding_window_memory.py", args)
    assert part["status"] == "passed", part.get("error")
    assert re.fullmatch(
        r"memory ratio naive/streamed \d+\.\d\d at 48x32x32 \(time ratio \d+\.\d\d\)", part["lines"][-1]
    )
    rows = part["figures"]["rows"]
    assert [(r["volume"], r["windows"]) for r in rows] == [("48x32x32", 2)]
    # a tiny volume may grow the resident set by less than the allocator's granularity: 0 MiB is a valid reading
    assert all(r["naive_mib"] >= 0 and r["streamed_mib"] >= 0 and r["time_ratio"] > 0 for r in rows)


@pytest.mark.skipif(torch.cuda.is_available(), reason="tests the refusal on a machine without CUDA")
def test_device_cuda_without_cuda_is_a_usage_error():
    part = gpu_check.run_benchmark(BENCHMARKS / "sliding_window_memory.py", ["--device", "cuda"])
    assert part["status"] == "failed" and "--device 'cuda': CUDA is not available" in part["error"]
