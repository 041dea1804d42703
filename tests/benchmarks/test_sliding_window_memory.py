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
    # the tensor bytes: the naive step holds both windows' graphs, the streamed one window's (and the volume's
    # gradients); a tiny volume may grow the resident set by less than the allocator's granularity: 0 MiB is valid
    assert all(r["naive_mib"] > r["streamed_mib"] > 0 and r["time_ratio"] > 0 for r in rows)
    assert all(r["naive_rss_mib"] >= 0 and r["streamed_rss_mib"] >= 0 for r in rows)


def test_peak_tensor_bytes_counts_the_live_tensors_at_their_peak():
    kept = torch.ones(250_000)  # alive before the step: not counted

    def step() -> None:
        first = torch.empty(1_000_000)  # 4 MB
        second = torch.empty(500_000)  # 2 MB: 6 MB alive together
        del first, second
        third = torch.empty(1_250_000)  # 5 MB alone: below the peak
        del third
        kept.add_(1)  # in place: no allocation

    assert 6_000_000 <= sliding_window_memory.peak_tensor_bytes(step) < 6_000_000 + 4096


@pytest.mark.skipif(torch.cuda.is_available(), reason="tests the refusal on a machine without CUDA")
def test_device_cuda_without_cuda_is_a_usage_error():
    part = gpu_check.run_benchmark(BENCHMARKS / "sliding_window_memory.py", ["--device", "cuda"])
    assert part["status"] == "failed" and "--device 'cuda': CUDA is not available" in part["error"]
