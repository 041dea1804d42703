"""Cost of ``attack="worst_case"`` over the gradient passes its members actually take, and the early stop's saving.

The key figure times the whole evaluation (``RobustnessEvaluator.run()`` with the worst case, diagnostics off: the
clean pass, every member's attack, the Dice picks of each member's best iterate, the members' final forwards, the
adversarial forwards and the metrics) and divides by (forward + input-backward passes the members took, counted per
sample by a wrapper) x (time of one forward + input-only backward per image, measured in the same run). Everything
the ensemble adds beyond its members' own gradient steps shows up as the excess over 1 (target <= 1.15). Both sides
are the fastest of a few timings (the evaluation ``--repeats`` times, the unit 3 times before and after each), so
other jobs on the machine bias neither; the same ratio in CPU time is printed before it.

Then, on a trained model (the reference U-Net trained for a few dozen steps on bright-disk images, on which Dice
reaches 0 at large eps), the share of the ensemble's gradient passes that the early stop saved (samples already at
or below ``threshold`` are not attacked by the remaining members), for the default threshold 0 and for 0.05.

Reference model: benchmarks/reference_model.py (MONAI 2D UNet 16..256, 2 residual units), random weights for the
ratio, input 1 x --size x --size, eval mode. The last line printed is the ratio.

Usage: ``python benchmarks/worst_case_cost.py [--images 2] [--size 64] [--apgd-steps 10] [--threads 1] [--repeats 3]``
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reference_model import reference_batch, reference_unet  # noqa: E402

from monai_advseg.attacks import WorstCaseSpec  # noqa: E402
from monai_advseg.engines import RobustnessEvaluator  # noqa: E402

LEVELS = [4.0, 16.0]


class _Counting(nn.Module):
    """Counts the samples of forwards taken with autograd on (each is one forward + input-backward of an attack)."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network
        self.gradient_samples = 0
        self.forward_samples = 0

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and image.requires_grad:
            self.gradient_samples += image.shape[0]
        else:
            self.forward_samples += image.shape[0]
        return self.network(image)


def _unit_seconds(
    network: nn.Module, image: torch.Tensor, label: torch.Tensor, repeats: int = 3
) -> tuple[float, float]:
    """Wall and CPU seconds of one forward + input-only backward per image (cross-entropy), each best of ``repeats``."""
    best, best_cpu = float("inf"), float("inf")
    for _ in range(repeats):
        x = image.clone().requires_grad_(True)
        began, cpu = time.perf_counter(), time.process_time()
        loss = nn.functional.cross_entropy(network(x), label[:, 0])
        torch.autograd.grad(loss, x)
        best = min(best, (time.perf_counter() - began) / image.shape[0])
        best_cpu = min(best_cpu, (time.process_time() - cpu) / image.shape[0])
    return best, best_cpu


def _evaluate(network: nn.Module, image, label, spec: WorstCaseSpec) -> tuple[float, float, _Counting]:
    counting = _Counting(network).eval()
    loader = [{"image": image, "label": label}]
    evaluator = RobustnessEvaluator(
        "cpu", loader, counting, epsilons=LEVELS, attack=spec, diagnostics=False, progress=False
    )
    began, cpu = time.perf_counter(), time.process_time()
    evaluator.run()
    return time.perf_counter() - began, time.process_time() - cpu, counting


def _disks(count: int, size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    grid = torch.stack(torch.meshgrid(*[torch.arange(size, dtype=torch.float32)] * 2, indexing="ij"))
    centres = torch.randint(size // 4, 3 * size // 4, (count, 2, 1, 1), generator=generator).float()
    radius = torch.randint(size // 8, size // 4, (count, 1, 1), generator=generator).float()
    mask = ((grid[None] - centres) ** 2).sum(dim=1) <= radius**2
    image = (0.3 + 0.4 * mask.float() + 0.1 * torch.randn(mask.shape, generator=generator)).clamp(0, 1)
    return image[:, None], mask.long()[:, None]


def _trained(size: int, steps: int) -> nn.Module:
    torch.manual_seed(0)
    network = reference_unet()
    optimizer = torch.optim.Adam(network.parameters(), lr=1e-2)
    images, labels = _disks(8, size, seed=1)
    for _ in range(steps):
        optimizer.zero_grad()
        nn.functional.cross_entropy(network(images), labels[:, 0]).backward()
        optimizer.step()
    return network.eval()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--apgd-steps", type=int, default=10)
    parser.add_argument("--train-steps", type=int, default=40)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3, help="evaluations timed (the fastest counts)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    spec = WorstCaseSpec(apgd_steps=args.apgd_steps)
    full = sum(spec.step_counts(LEVELS))
    print(f"worst case: members {spec.members}, eps {LEVELS}, at most {full} gradient passes per image")

    network = reference_unet().eval()
    image, label = reference_batch(args.images, args.size)
    unit, unit_cpu = _unit_seconds(network, image, label)
    seconds, cpu = float("inf"), float("inf")
    for _ in range(args.repeats):  # the best of a few, like the unit: the two sides are timed alike
        took, took_cpu, counting = _evaluate(network, image, label, spec)
        seconds, cpu = min(seconds, took), min(cpu, took_cpu)
        after, after_cpu = _unit_seconds(network, image, label)
        unit, unit_cpu = min(unit, after), min(unit_cpu, after_cpu)  # the faster, on a loaded machine
    passes = counting.gradient_samples
    print(
        f"random weights: {passes} gradient passes ({passes / args.images:.0f} per image of at most {full}), "
        f"{counting.forward_samples} forward-only samples; unit {unit * 1e3:.1f} ms; evaluation {seconds:.2f} s"
    )

    trained = _trained(args.size, args.train_steps)
    disks, masks = _disks(args.images, args.size, seed=2)
    for threshold in (0.0, 0.05):
        *_, counted = _evaluate(trained, disks, masks, WorstCaseSpec(apgd_steps=args.apgd_steps, threshold=threshold))
        saved = 1 - counted.gradient_samples / (full * args.images)
        print(
            f"trained model, threshold {threshold:g}: {counted.gradient_samples} of {full * args.images} gradient "
            f"passes taken; the early stop saved {saved:.1%}"
        )
    # the same ratio in CPU time (with one thread it hardly moves when other jobs share the cores; wall time does)
    cpu_ratio = cpu / (passes * unit_cpu)
    print(f"the same in CPU time: {cpu_ratio:.3f} (evaluation {cpu:.2f} s, unit {unit_cpu * 1e3:.1f} ms)")
    ratio = seconds / (passes * unit)
    print(f"worst-case evaluation / members' forward+input-backward passes: {ratio:.3f} (target <= 1.15)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
