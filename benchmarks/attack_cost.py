"""Cost of one iterative-FGSM iteration relative to one forward + input-only backward of the same model.

Reference model (shared by the benchmarks): MONAI 2D UNet, channels (16, 32, 64, 128, 256), strides 2, 2 residual
units, batch 8 of 1x128x128, 2 threads. Both timings are taken in this run, interleaved, and the medians compared, so
machine noise affects numerator and denominator alike. Target: <= 1.05. The last line printed is the ratio.

    python benchmarks/attack_cost.py [--repeats 15]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from reference_model import reference_batch, reference_unet

from monai_advseg.attacks import iterative_fgsm


def forward_input_backward(network: torch.nn.Module, image: torch.Tensor, label: torch.Tensor) -> None:
    x = image.detach().requires_grad_(True)
    loss = torch.nn.functional.cross_entropy(network(x), label[:, 0], reduction="sum")
    torch.autograd.grad(loss, x)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--steps", type=int, default=4, help="iterations per timed attack call")
    args = parser.parse_args()
    torch.set_num_threads(2)
    torch.manual_seed(0)
    network = reference_unet().eval()
    image, label = reference_batch()
    for _ in range(2):  # warm-up: allocator and oneDNN primitive caches
        forward_input_backward(network, image, label)
        iterative_fgsm(network, image, label, 0.1, alpha=0.01, steps=1, clip_range=(0, 1))
    baseline, attack = [], []
    for _ in range(args.repeats):
        start = time.perf_counter()
        for _ in range(args.steps):
            forward_input_backward(network, image, label)
        baseline.append((time.perf_counter() - start) / args.steps)
        start = time.perf_counter()
        iterative_fgsm(network, image, label, 0.1, alpha=0.01, steps=args.steps, clip_range=(0, 1))
        attack.append((time.perf_counter() - start) / args.steps)
    base, per_step = statistics.median(baseline), statistics.median(attack)
    print(f"forward + input-only backward (batch 8): {base * 1000:.1f} ms (median of {args.repeats})")
    print(f"one iterative_fgsm iteration (batch 8):  {per_step * 1000:.1f} ms (median of {args.repeats})")
    print(f"attack iteration / (forward + input backward) = {per_step / base:.3f}  (target <= 1.05)")
    print(f"{per_step / base:.3f}")


if __name__ == "__main__":
    main()
