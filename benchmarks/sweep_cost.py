"""Cost of the full batched robustness evaluation relative to its ideal, the sum of its gradient steps.

The full 18-epsilon sweep of the NLCE paper (targeted I-FGSM, alpha = 1 level, Kurakin steps) needs
sum(kurakin_steps) = 327 forward + input-backward passes per image. The key figure times the whole evaluation,
``RobustnessEvaluator.run()`` on an N-image loader (clean pass, the batched attacks, the adversarial forwards and the
Dice / Jaccard metrics), and divides by 327 x N x (time of one forward + input-only backward per image), measured in
the same run. The evaluator attacks all epsilons of a batch together and drops samples whose budget is spent, so the
ratio should be close to 1. Also printed: the attack-only ratio (``attack_sweep``) and the padded alternative (every
epsilon run for 36 steps, 648 passes per image, in the same ``max_batch`` chunks) on the same scale.

Reference model: MONAI 2D UNet channels (16, 32, 64, 128, 256), strides 2, num_res_units 2, input 1 x 128 x 128,
random weights in eval mode, two threads. The last line printed is the full evaluation's ratio (target <= 1.15).

Usage: ``python benchmarks/sweep_cost.py [--images 2] [--repeats 3] [--threads 2]``
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from monai.networks.nets import UNet

from monai_advseg.attacks import PAPER_EPSILON_LEVELS, attack_mode, input_gradient, inverse_mask, kurakin_steps
from monai_advseg.engines import RobustnessEvaluator


def _timed(function, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        function()
        times.append(time.perf_counter() - began)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2, help="images per sweep (N)")
    parser.add_argument("--repeats", type=int, default=3, help="timed repetitions (median)")
    parser.add_argument("--unit-batch", type=int, default=8, help="batch of the per-image unit measurement")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (the reference setting is 2)")
    parser.add_argument(
        "--max-batch", type=int, default=8, help="RobustnessEvaluator max_batch (0: all samples of a batch at once)"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    network = UNet(2, 1, 2, channels=(16, 32, 64, 128, 256), strides=(2, 2, 2, 2), num_res_units=2).eval()
    images = torch.rand(args.images, 1, 128, 128)
    labels = (torch.rand(args.images, 1, 128, 128) > 0.5).long()
    loader = [{"image": images, "label": labels}]  # one batch of N images
    evaluator = RobustnessEvaluator(
        "cpu", loader, network, epsilons=PAPER_EPSILON_LEVELS, progress=False, max_batch=args.max_batch or None
    )
    steps = [kurakin_steps(e) for e in PAPER_EPSILON_LEVELS]

    unit_images = torch.rand(args.unit_batch, 1, 128, 128)
    unit_target = inverse_mask((torch.rand(args.unit_batch, 1, 128, 128) > 0.5).long(), 2)

    def unit() -> None:
        with attack_mode(network) as module:
            input_gradient(module, unit_images, unit_target)

    def sweep() -> None:
        evaluator.attack_sweep(images, labels, 2)

    def full() -> None:
        evaluator.run()

    eps = torch.tensor(evaluator.epsilons, dtype=torch.float64).repeat_interleave(args.images)
    padded_steps = torch.full_like(eps, max(steps), dtype=torch.long)
    target = inverse_mask(labels, 2).repeat(len(steps), 1, 1, 1)

    padded_images = images.repeat(len(steps), 1, 1, 1)
    chunk = args.max_batch or len(eps)  # the same batch cap as the evaluator, so only the schedule differs

    def padded() -> None:
        for start in range(0, len(eps), chunk):
            part = slice(start, start + chunk)
            evaluator.attack_samples(padded_images[part], target[part], eps[part], padded_steps[part])

    unit(), full()  # warm-up: allocator and oneDNN primitive caches
    if evaluator.results["n_cases"] != args.images:  # the run really evaluated the N images at every epsilon
        raise RuntimeError(f"the evaluation saw {evaluator.results['n_cases']} of {args.images} images")
    unit_times, full_times, sweep_times, padded_times = [], [], [], []
    for _ in range(args.repeats):  # interleaved so that machine load drifts affect all four alike
        unit_times.append(_timed(unit, 5) / args.unit_batch)
        full_times.append(_timed(full, 1))
        sweep_times.append(_timed(sweep, 1))
        padded_times.append(_timed(padded, 1))
    per_image = statistics.median(unit_times)
    full_seconds = statistics.median(full_times)
    sweep_seconds = statistics.median(sweep_times)
    padded_seconds = statistics.median(padded_times)
    ideal = sum(steps) * args.images * per_image
    padded_ideal_steps = max(steps) * len(steps)
    print(f"epsilons: {len(steps)}, sum of Kurakin steps per image: {sum(steps)}, padded: {padded_ideal_steps}")
    print(f"images: {args.images}, max_batch: {args.max_batch}, threads: {torch.get_num_threads()}")
    print(f"forward + input backward per image (batch {args.unit_batch}): {per_image * 1e3:.2f} ms")
    print(f"ideal sweep ({sum(steps)} x {args.images} x unit): {ideal:.2f} s")
    print(f"full evaluation (run: clean, attacks, adversarial forwards, metrics): {full_seconds:.2f} s")
    print(f"attack-only sweep (attack_sweep, active-set compaction): {sweep_seconds:.2f} s")
    print(f"padded attack sweep (every epsilon {max(steps)} steps, chunks of {chunk}): {padded_seconds:.2f} s")
    print(f"padded ratio: {padded_seconds / ideal:.3f}")
    print(f"attack-only ratio: {sweep_seconds / ideal:.3f}")
    print(f"full evaluation ratio (target <= 1.15): {full_seconds / ideal:.3f}")
    print(f"{full_seconds / ideal:.3f}")


if __name__ == "__main__":
    main()
