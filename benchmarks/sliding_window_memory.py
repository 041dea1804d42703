"""Peak memory of one attack step through a sliding window: naive autograd vs the streamed input gradient.

Model: the MONAI model zoo's spleen_ct_segmentation 3D UNet, built from its ``configs/train.json`` ``network_def``
(``../shared/zoo``; the same arguments are kept below for machines without that folder), random weights (seed 0),
eval mode. Inferer: ``SlidingWindowInferer(roi 96^3, overlap 0.5)`` as in that bundle, with ``sw_batch_size`` 1 and
4 (the bundle's); naive = MONAI's inferer differentiated directly, streamed =
:class:`monai_advseg.inferers.StreamedSlidingWindowInferer` (its default ``gradient_batch_size`` 2: the backward
recomputes at most two windows at a time whatever ``sw_batch_size``; ``--gradient-batch-size 0`` recomputes
``sw_batch_size``). One attack step = the attack core's forward + input-only backward
(``monai_advseg.attacks.gradient.input_gradient``, summed cross-entropy to random labels) of one volume
``1x1xHxWxD``.

Memory: the peak bytes of live tensors over the step above what was allocated before it. On the CPU that is counted
from the allocation events of ``torch.profiler`` (``profile_memory=True``) over a second, profiled step (the profiler
adds about 15 % to a step, so that one is not timed); the time is the median of ``--repeats`` (3) unprofiled steps,
the first of them the process's first step (its start-up costs included). On CUDA it is
``torch.cuda.max_memory_allocated`` after a warm-up step, with synchronised times. On the CPU each case runs in a
fresh process, and the growth of ``ru_maxrss`` over the first step is printed beside it ("RSS"): what the process
really held, which also counts freed buffers that glibc keeps resident in its heap (transparent huge pages make the
resident size of a reused process meaningless, hence the fresh process; glibc's dynamic mmap threshold keeps freed
buffers of up to 32 MiB in the heap, so the RSS grows with the number of windows recomputed even where the tensors do
not; ``--mmap-threshold 1048576`` fixes the threshold and the RSS follows the tensors more closely, at some cost in
time).
Targets (on the tensor bytes): streamed peak flat in the volume size (within 20 %, where the volume has at least
``sw_batch_size`` windows), >= 5x less than naive at 224x224x128, time <= 1.6x naive. The last line is
``memory ratio naive/streamed X.XX at <largest volume> (time ratio Y.YY)`` for the largest ``sw_batch_size``.

    python benchmarks/sliding_window_memory.py [--device cpu] [--sw-batch 1 4] [--volumes 96x96x96 ...]
        [--gradient-batch-size 1] [--mmap-threshold BYTES]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from bench_device import add_device_argument, resolve_device, synchronize
from monai.data.utils import dense_patch_slices
from monai.inferers import SlidingWindowInferer
from monai.inferers.utils import _get_scan_interval
from monai.networks.nets import UNet
from torch import nn

from monai_advseg.attacks.gradient import attack_mode, input_gradient
from monai_advseg.inferers import StreamedSlidingWindowInferer

REPO_ROOT = Path(__file__).resolve().parents[1]
ZOO_TRAIN = REPO_ROOT.parent / "shared" / "zoo" / "spleen_ct_segmentation" / "configs" / "train.json"
# configs/train.json "network_def" of spleen_ct_segmentation 0.5.9 (used where ../shared/zoo is absent)
SPLEEN_UNET = {
    "spatial_dims": 3,
    "in_channels": 1,
    "out_channels": 2,
    "channels": [16, 32, 64, 128, 256],
    "strides": [2, 2, 2, 2],
    "num_res_units": 2,
    "norm": "batch",
}
VOLUMES = ["96x96x96", "160x160x96", "224x224x128"]


def spleen_unet_args(path: Path = ZOO_TRAIN) -> tuple[dict[str, Any], str]:
    """The zoo bundle's UNet arguments and where they came from (its config, else the copy above)."""
    if not path.is_file():
        return dict(SPLEEN_UNET), "built-in copy of the spleen bundle's network_def"
    definition = dict(json.loads(path.read_text())["network_def"])
    target = definition.pop("_target_")
    if target.rsplit(".", 1)[-1] != "UNet":
        raise ValueError(f"{path}: network_def is {target}, not MONAI's UNet")
    return definition, str(path)


class _Windowed(nn.Module):
    """``x -> inferer(x, network)``: what the attack core differentiates (as the robustness evaluator wraps it)."""

    def __init__(self, network: nn.Module, inferer: SlidingWindowInferer) -> None:
        super().__init__()
        self.network, self.inferer = network, inferer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inferer(x, self.network)


def _parse_volume(text: str) -> tuple[int, int, int]:
    parts = tuple(int(v) for v in text.lower().split("x"))
    if len(parts) != 3 or min(parts) < 1:
        raise argparse.ArgumentTypeError(f"a volume is HxWxD, got {text!r}")
    return parts  # type: ignore[return-value]


def run_case(
    device: torch.device,
    streamed: bool,
    volume: tuple[int, int, int],
    sw_batch: int,
    roi: int,
    overlap: float,
    repeats: int,
    gradient_batch_size: int | None = 2,
) -> dict[str, Any]:
    """One case: build the model and the volume, then measure the attack step's memory growth and time.

    Returns:
        ``{"peak_mib", "rss_mib", "seconds", "windows"}``: peak live tensor bytes over the step (MiB), the growth of
        ``ru_maxrss`` over the first step (MiB; None on CUDA), the median step time and the number of windows.
    """
    torch.manual_seed(0)
    args, _ = spleen_unet_args()
    network = UNet(**args).eval().to(device)
    settings = dict(roi_size=(roi,) * 3, sw_batch_size=sw_batch, overlap=overlap)
    if streamed:
        inferer = StreamedSlidingWindowInferer(**settings, gradient_batch_size=gradient_batch_size)
    else:
        inferer = SlidingWindowInferer(**settings)
    module = _Windowed(network, inferer)
    generator = torch.Generator().manual_seed(1)
    image = torch.rand((1, 1, *volume), generator=generator).to(device)
    label = torch.randint(0, 2, (1, 1, *volume), generator=generator).to(device)

    def step() -> None:
        with attack_mode(module) as attacked:
            input_gradient(attacked, image, label)

    times = []
    rss_mib = None
    if device.type == "cuda":
        step()  # warm-up (cuDNN plans); the peak window below starts after it
        torch.cuda.empty_cache()
        synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        began = time.perf_counter()
        step()
        synchronize(device)
        times.append(time.perf_counter() - began)
        peak = (torch.cuda.max_memory_allocated(device) - before) / 2**20
    else:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
        began = time.perf_counter()
        step()
        times.append(time.perf_counter() - began)
        rss_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
        peak = peak_tensor_bytes(step) / 2**20
    for _ in range(repeats - 1):
        synchronize(device)
        began = time.perf_counter()
        step()
        synchronize(device)
        times.append(time.perf_counter() - began)
    image_size = tuple(max(v, roi) for v in volume)
    scan = _get_scan_interval(image_size, (roi,) * 3, 3, (overlap,) * 3)
    windows = len(dense_patch_slices(image_size, (roi,) * 3, scan))
    return {"peak_mib": peak, "rss_mib": rss_mib, "seconds": statistics.median(times), "windows": windows}


def peak_tensor_bytes(step: Callable[[], None]) -> int:
    """The peak bytes of CPU tensors alive during ``step()`` above those alive before it (torch's allocation events).

    Every CPU allocation and free made through torch's allocator while the profiler runs is an event with a signed
    size; their running sum, in time order, is the live tensor bytes, and its maximum is the peak.
    """
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as profiler:
        step()
    events = [e for e in profiler.profiler.kineto_results.events() if e.name() == "[memory]"]
    live = peak = 0
    for event in sorted(events, key=lambda e: e.start_ns()):
        live += event.nbytes()
        peak = max(peak, live)
    return peak


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    """Run the benchmark; return its figures for callers such as ``benchmarks/gpu_check.py``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--volumes", nargs="+", type=_parse_volume, default=[_parse_volume(v) for v in VOLUMES])
    parser.add_argument("--sw-batch", nargs="+", type=int, default=[1, 4], help="sw_batch_size values")
    parser.add_argument("--roi", type=int, default=96, help="cubic window side (the bundle's 96)")
    parser.add_argument("--overlap", type=float, default=0.5, help="window overlap (the bundle's 0.5)")
    parser.add_argument(
        "--repeats", type=int, default=3, help="timed steps per case, their median is the time (the first: the RSS)"
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--gradient-batch-size",
        type=int,
        default=2,
        help="windows the streamed backward recomputes at once (the inferer's default 2; 0: sw_batch_size)",
    )
    parser.add_argument(
        "--mmap-threshold",
        type=int,
        help="CPU: run the cases with glibc's MALLOC_MMAP_THRESHOLD_ fixed at this many bytes (default: glibc's "
        "dynamic threshold), so that freed large buffers leave the resident size instead of staying in the heap",
    )
    parser.add_argument("--case", help=argparse.SUPPRESS)  # internal: run one case in this (fresh) process
    add_device_argument(parser)
    args = parser.parse_args(argv)
    device = resolve_device(parser, args.device)
    torch.set_num_threads(args.threads)
    gradient_batch = args.gradient_batch_size or None
    if args.case is not None:
        case = json.loads(args.case)
        volume, sw_batch = tuple(case["volume"]), case["sw_batch"]
        result = run_case(
            device, case["streamed"], volume, sw_batch, args.roi, args.overlap, args.repeats, gradient_batch
        )
        print(json.dumps(result))
        return None
    unet_args, source = spleen_unet_args()
    volumes = sorted(args.volumes, key=lambda v: v[0] * v[1] * v[2])
    print(f"device: {device}; network: MONAI UNet {unet_args} from {source}")
    print(f"roi {args.roi}^3, overlap {args.overlap}; one step = forward + input-only backward of a 1x1xHxWxD volume")
    recomputed = "sw_batch_size" if gradient_batch is None else gradient_batch
    print(f"streamed backward: gradient_batch_size {recomputed} (windows recomputed with autograd at once)")
    if device.type == "cpu":
        memory = "peak live tensor bytes over a profiled step (MiB); RSS: ru_maxrss growth, fresh process per case"
        if args.mmap_threshold is not None:
            memory += f", MALLOC_MMAP_THRESHOLD_={args.mmap_threshold}"
    else:
        memory = "max allocated over the step (MiB)"
    print(f"memory: {memory}")
    print(
        f"{'sw_batch':>8} {'volume':>12} {'windows':>7} {'naive MiB':>10} {'streamed MiB':>12} {'mem ratio':>9} "
        f"{'naive s':>8} {'streamed s':>10} {'time ratio':>10} {'naive RSS':>9} {'streamed RSS':>12}"
    )
    rows = []
    for sw_batch in args.sw_batch:
        for volume in volumes:
            result = {}
            for streamed in (False, True):
                if device.type == "cpu":
                    case = {"streamed": streamed, "volume": list(volume), "sw_batch": sw_batch}
                    extra = ["--roi", str(args.roi), "--overlap", str(args.overlap)]
                    extra += ["--gradient-batch-size", str(args.gradient_batch_size), "--repeats", str(args.repeats)]
                    result[streamed] = _in_fresh_process_with(case, args.threads, extra, args.mmap_threshold)
                else:
                    result[streamed] = run_case(
                        device, streamed, volume, sw_batch, args.roi, args.overlap, args.repeats, gradient_batch
                    )
            naive, streamed_ = result[False], result[True]
            row = {
                "sw_batch": sw_batch,
                "volume": "x".join(map(str, volume)),
                "windows": naive["windows"],
                "naive_mib": naive["peak_mib"],
                "streamed_mib": streamed_["peak_mib"],
                "memory_ratio": naive["peak_mib"] / max(streamed_["peak_mib"], 1e-9),
                "naive_seconds": naive["seconds"],
                "streamed_seconds": streamed_["seconds"],
                "time_ratio": streamed_["seconds"] / naive["seconds"],
                "naive_rss_mib": naive["rss_mib"],
                "streamed_rss_mib": streamed_["rss_mib"],
            }
            rows.append(row)
            print(
                f"{sw_batch:>8} {row['volume']:>12} {row['windows']:>7} {row['naive_mib']:>10.0f} "
                f"{row['streamed_mib']:>12.0f} {row['memory_ratio']:>9.2f} {row['naive_seconds']:>8.1f} "
                f"{row['streamed_seconds']:>10.1f} {row['time_ratio']:>10.2f} {_mib(row['naive_rss_mib']):>9} "
                f"{_mib(row['streamed_rss_mib']):>12}",
                flush=True,
            )
    for sw_batch in args.sw_batch:
        # flatness over the volumes that fill at least one whole window batch
        filled = [r for r in rows if r["sw_batch"] == sw_batch and r["windows"] >= sw_batch]
        if len(filled) > 1:
            peaks = [r["streamed_mib"] for r in filled]
            line = (
                f"sw_batch {sw_batch}: streamed peak max/min over volumes with >= {sw_batch} windows "
                f"{max(peaks) / min(peaks):.2f} (target <= 1.20)"
            )
            if device.type == "cpu":
                resident = [r["streamed_rss_mib"] for r in filled]
                line += f"; RSS {max(resident) / min(resident):.2f} (glibc's heap, see the docstring)"
            print(line)
    key = [r for r in rows if r["sw_batch"] == max(args.sw_batch)][-1]
    print(f"sw_batch {key['sw_batch']} at the largest volume: targets memory ratio >= 5, time ratio <= 1.6")
    print(
        f"memory ratio naive/streamed {key['memory_ratio']:.2f} at {key['volume']} (time ratio {key['time_ratio']:.2f})"
    )
    return {
        "device": str(device),
        "rows": rows,
        "memory_ratio": key["memory_ratio"],
        "time_ratio": key["time_ratio"],
        "naive_s": key["naive_seconds"],
        "streamed_s": key["streamed_seconds"],
    }


def _mib(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def _in_fresh_process_with(
    case: dict[str, Any], threads: int, extra: list[str], mmap_threshold: int | None = None
) -> dict[str, Any]:
    """Run one case in a new Python process (its own ``ru_maxrss``) and return its figures."""
    command = [sys.executable, str(Path(__file__).resolve()), "--case", json.dumps(case), "--threads", str(threads)]
    path = os.environ.get("PYTHONPATH")
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT) + (os.pathsep + path if path else "")}
    if mmap_threshold is not None:
        env["MALLOC_MMAP_THRESHOLD_"] = str(mmap_threshold)
    done = subprocess.run([*command, *extra], capture_output=True, text=True, check=False, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"case {case} failed (exit {done.returncode}):\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    main()
