"""Cost of one iterative-FGSM iteration relative to one forward + input-only backward of the same model.

Reference model (shared by the benchmarks): MONAI 2D UNet, channels (16, 32, 64, 128, 256), strides 2, 2 residual
units, batch 8 of 1x128x128, 2 threads. Both timings are taken in this run, interleaved, and the medians compared, so
machine noise affects numerator and denominator alike. Target: <= 1.05. The last line printed is the ratio.
``--device cuda`` runs the model and batch on the GPU (semantics in ``benchmarks/bench_device.py``: synchronised
timings, peak GPU memory printed before the last line); ``--batch`` / ``--size`` shrink the batch for a smoke run.

    python benchmarks/attack_cost.py [--repeats 15] [--device cpu]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from bench_device import add_device_argument, peak_memory_mib, reset_peak_memory, resolve_device, synchronize
from reference_model import reference_batch, reference_unet

from monai_advseg.attacks import iterative_fgsm


def forward_input_backward(network: torch.nn.Module, image: torch.Tensor, label: torch.Tensor) -> None:
    x = image.detach().requires_grad_(True)
    loss = torch.nn.functional.cross_entropy(network(x), label[:, 0], reduction="sum")
    torch.autograd.grad(loss, x)


def main(argv: list[str] | None = None) -> dict[str, float | str | None]:
    """Run the benchmark; return its figures (times in seconds) for callers such as ``benchmarks/gpu_check.py``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--steps", type=int, default=4, help="iterations per timed attack call")
    parser.add_argument("--batch", type=int, default=8, help="batch size (the reference is 8)")
    parser.add_argument("--size", type=int, default=128, help="image side (the reference is 128)")
    add_device_argument(parser)
    args = parser.parse_args(argv)
    device = resolve_device(parser, args.device)
    torch.set_num_threads(2)
    torch.manual_seed(0)
    network = reference_unet().eval().to(device)
    image, label = (t.to(device) for t in reference_batch(args.batch, args.size))
    for _ in range(2):  # warm-up: allocator, oneDNN / cuDNN primitive caches
        forward_input_backward(network, image, label)
        iterative_fgsm(network, image, label, 0.1, alpha=0.01, steps=1, clip_range=(0, 1))
    reset_peak_memory(device)
    baseline, attack = [], []
    for _ in range(args.repeats):
        synchronize(device)
        start = time.perf_counter()
        for _ in range(args.steps):
            forward_input_backward(network, image, label)
        synchronize(device)
        baseline.append((time.perf_counter() - start) / args.steps)
        start = time.perf_counter()
        iterative_fgsm(network, image, label, 0.1, alpha=0.01, steps=args.steps, clip_range=(0, 1))
        synchronize(device)
        attack.append((time.perf_counter() - start) / args.steps)
    base, per_step = statistics.median(baseline), statistics.median(attack)
    peak = peak_memory_mib(device)
    print(f"device: {device}, batch {args.batch} of 1x{args.size}x{args.size}")
    print(f"forward + input-only backward (batch {args.batch}): {base * 1000:.1f} ms (median of {args.repeats})")
    print(f"one iterative_fgsm iteration (batch {args.batch}):  {per_step * 1000:.1f} ms (median of {args.repeats})")
    print(f"attack iteration / (forward + input backward) = {per_step / base:.3f}  (target <= 1.05)")
    if peak is not None:
        print(f"peak GPU memory: {peak:.1f} MiB")
    print(f"{per_step / base:.3f}")
    return {
        "device": str(device),
        "ratio": per_step / base,
        "forward_input_backward_s": base,
        "attack_iteration_s": per_step,
        "peak_gpu_memory_mib": peak,
    }


if __name__ == "__main__":
    main()
