"""Cost of the full robustness evaluation relative to attacking each epsilon on its own.

The full 18-epsilon sweep of the NLCE paper (targeted I-FGSM, alpha = 1 level, Kurakin steps) needs
sum(kurakin_steps) = 327 forward + input-backward passes per image when every epsilon is attacked on its own. The key
figure times the whole evaluation, ``RobustnessEvaluator.run()`` on an N-image loader (clean pass, the shared-trajectory
attack, the adversarial forwards and the Dice / Jaccard metrics), and divides by 327 x N x (time of one forward +
input-only backward per image), measured in the same run. Every epsilon follows one shared trunk until its own ball
first acts, so the evaluation needs only the trunk and branch steps (about 85 per image) plus 19 forwards.

Also printed: the floor those step counts allow ((gradient steps x unit + 19 forwards x forward-only time) / (327 x
unit)), the attack-only ratio, and the unshared ratio (the same attack loop over all 18 x N samples without sharing:
what per-epsilon attacks cost).

Reference model: MONAI 2D UNet channels (16, 32, 64, 128, 256), strides 2, num_res_units 2, input 1 x 128 x 128,
random weights in eval mode, two threads. The last line printed is the full evaluation's ratio (target <= 0.35).

Usage: ``python benchmarks/sweep_cost.py [--images 2] [--repeats 3] [--threads 2] [--max-batch 8] [--device cpu]``
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from monai.networks.nets import UNet
from torch import nn

from monai_advseg.attacks import (
    PAPER_EPSILON_LEVELS,
    attack_mode,
    input_gradient,
    inverse_mask,
    iterative_fgsm_sweep,
    kurakin_steps,
    levels_to_epsilon,
    repeat_for_sweep,
)
from monai_advseg.attacks.iterative import _iterate
from monai_advseg.engines import RobustnessEvaluator


class _Counting(nn.Module):
    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network
        self.samples = 0

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        self.samples += image.shape[0]
        return self.network(image)


def _timed(function, repeats: int, device: torch.device) -> float:
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        began = time.perf_counter()
        function()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - began)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2, help="images per sweep (N)")
    parser.add_argument("--repeats", type=int, default=3, help="timed repetitions (median)")
    parser.add_argument("--unit-batch", type=int, default=8, help="batch of the per-image unit measurement")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (the reference setting is 2)")
    parser.add_argument("--max-batch", type=int, default=8, help="evaluator max_batch (0: no bound)")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: CUDA is not available on this machine")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    network = UNet(2, 1, 2, channels=(16, 32, 64, 128, 256), strides=(2, 2, 2, 2), num_res_units=2).to(device).eval()
    images = torch.rand(args.images, 1, 128, 128, device=device)
    labels = (torch.rand(args.images, 1, 128, 128, device=device) > 0.5).long()
    loader = [{"image": images, "label": labels}]  # one batch of N images
    max_batch = args.max_batch or None
    evaluator = RobustnessEvaluator(device, loader, network, progress=False, max_batch=max_batch, plot=False)
    levels = list(PAPER_EPSILON_LEVELS)
    steps = [kurakin_steps(e) for e in levels]
    eps = levels_to_epsilon(levels, (0.0, 1.0))
    target = inverse_mask(labels, 2)

    unit_images = torch.rand(args.unit_batch, 1, 128, 128, device=device)
    unit_target = inverse_mask((torch.rand(args.unit_batch, 1, 128, 128, device=device) > 0.5).long(), 2)

    def unit() -> None:
        with attack_mode(network) as module:
            input_gradient(module, unit_images, unit_target)

    def forward_only() -> None:
        with torch.no_grad():
            network(unit_images)

    def sweep() -> None:
        evaluator.attack_sweep(images, labels, 2)

    def full() -> None:
        evaluator.run()

    repeated, repeated_target, repeated_eps, _ = repeat_for_sweep(images, target, eps)
    repeated_steps = torch.tensor(steps).repeat_interleave(args.images)

    def unshared() -> None:
        _iterate(
            network,
            repeated,
            repeated_target,
            repeated_eps,
            alpha=1 / 255,
            steps=repeated_steps,
            targeted=True,
            loss_fn=None,
            clip_range=(0.0, 1.0),
            max_batch=max_batch,
        )

    counting = _Counting(network)
    iterative_fgsm_sweep(counting, images, target, eps, alpha=1 / 255, steps=steps, targeted=True, clip_range=(0, 1))
    gradient_steps = counting.samples / args.images

    unit(), forward_only(), full()  # warm-up: allocator and oneDNN primitive caches
    if evaluator.results["n_cases"] != args.images:  # the run really evaluated the N images at every epsilon
        raise RuntimeError(f"the evaluation saw {evaluator.results['n_cases']} of {args.images} images")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    unit_times, forward_times, full_times, sweep_times, unshared_times = [], [], [], [], []
    for _ in range(args.repeats):  # interleaved so that machine load drifts affect all alike
        unit_times.append(_timed(unit, 5, device) / args.unit_batch)
        forward_times.append(_timed(forward_only, 5, device) / args.unit_batch)
        full_times.append(_timed(full, 1, device))
        sweep_times.append(_timed(sweep, 1, device))
        unshared_times.append(_timed(unshared, 1, device))
    per_image = statistics.median(unit_times)
    forward_per_image = statistics.median(forward_times)
    full_seconds = statistics.median(full_times)
    sweep_seconds = statistics.median(sweep_times)
    unshared_seconds = statistics.median(unshared_times)
    ideal = sum(steps) * args.images * per_image
    floor = (gradient_steps * per_image + (1 + len(levels)) * forward_per_image) / (sum(steps) * per_image)
    print(f"epsilons: {len(steps)}, per-epsilon gradient steps per image: {sum(steps)}")
    print(f"shared-trajectory gradient steps per image: {gradient_steps:g}")
    print(f"images: {args.images}, max_batch: {args.max_batch}, threads: {torch.get_num_threads()}, device: {device}")
    print(f"forward + input backward per image (batch {args.unit_batch}): {per_image * 1e3:.2f} ms")
    print(f"forward only per image (batch {args.unit_batch}): {forward_per_image * 1e3:.2f} ms")
    print(f"per-epsilon ideal ({sum(steps)} x {args.images} x unit): {ideal:.2f} s")
    print(f"full evaluation (run: clean, attacks, adversarial forwards, metrics): {full_seconds:.2f} s")
    print(f"attack-only sweep (attack_sweep, shared trajectories): {sweep_seconds:.2f} s")
    print(f"unshared attack sweep (the same loop, every epsilon on its own): {unshared_seconds:.2f} s")
    if device.type == "cuda":
        print(f"peak GPU memory: {torch.cuda.max_memory_allocated(device) / 2**20:.1f} MiB")
    print(f"unshared ratio: {unshared_seconds / ideal:.3f}")
    print(f"attack-only ratio: {sweep_seconds / ideal:.3f}")
    print(f"floor the step counts allow: {floor:.3f}")
    print(f"full evaluation ratio (target <= 0.35): {full_seconds / ideal:.3f}")
    print(f"{full_seconds / ideal:.3f}")


if __name__ == "__main__":
    main()
