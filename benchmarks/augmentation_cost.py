"""Cost of one online FGSM + inverse-FGSM training iteration relative to one clean training iteration.

Reference model and batch (benchmarks/reference_model.py: MONAI 2D UNet, batch 8 of 1x128x128), 2 threads, SGD.
Three trainers run interleaved in one process: clean (no augmentation), both copies with the reused gradient, and
both copies from a separate attack pass (``reuse_gradient=False``). Each copy needs its own forward/backward, so the
floor is 1 + 2 = 3.0; target <= 3.2 with reuse. The last line printed is the reuse ratio.
``--device cuda`` trains on the GPU with the batch already there (the GPU-cache idiom; semantics in
``benchmarks/bench_device.py``: synchronised timings, peak GPU memory printed before the last line); ``--batch`` /
``--size`` shrink the batch for a smoke run.

    python benchmarks/augmentation_cost.py [--repeats 9] [--device cpu]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from bench_device import add_device_argument, peak_memory_mib, reset_peak_memory, resolve_device, synchronize
from reference_model import reference_batch, reference_unet

from monai_advseg.engines import AdversarialAugmentationTrainer


def make_trainer(
    augmentations: str, reuse: bool, batch: dict, device: torch.device | str = "cpu"
) -> AdversarialAugmentationTrainer:
    torch.manual_seed(0)
    network = reference_unet().to(device)
    loss = torch.nn.CrossEntropyLoss()
    return AdversarialAugmentationTrainer(
        device=torch.device(device),
        max_epochs=1,
        train_data_loader=[batch],
        network=network,
        optimizer=torch.optim.SGD(network.parameters(), lr=1e-3),
        loss_function=lambda pred, label: loss(pred, label[:, 0]),
        augmentations=augmentations,
        epsilon=0.05,
        clip_range=(0, 1),
        reuse_gradient=reuse,
    )


def main(argv: list[str] | None = None) -> dict[str, float | str | None]:
    """Run the benchmark; return its figures (times in seconds) for callers such as ``benchmarks/gpu_check.py``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--batch", type=int, default=8, help="batch size (the reference is 8)")
    parser.add_argument("--size", type=int, default=128, help="image side (the reference is 128)")
    add_device_argument(parser)
    args = parser.parse_args(argv)
    device = resolve_device(parser, args.device)
    torch.set_num_threads(2)
    image, label = (t.to(device) for t in reference_batch(args.batch, args.size))
    batch = {"image": image, "label": label}
    trainers = {
        "clean": make_trainer("none", True, batch, device),
        "reuse": make_trainer("both", True, batch, device),
        "separate": make_trainer("both", False, batch, device),
    }
    times: dict[str, list[float]] = {name: [] for name in trainers}
    for repeat in range(args.repeats + 1):
        if repeat == 1:  # the peak over the timed rounds only
            reset_peak_memory(device)
        for name, trainer in trainers.items():
            synchronize(device)
            start = time.perf_counter()
            trainer._iteration(trainer, batch)
            synchronize(device)
            if repeat:  # the first round warms up allocators and kernels
                times[name].append(time.perf_counter() - start)
    clean = statistics.median(times["clean"])
    reuse = statistics.median(times["reuse"]) / clean
    separate = statistics.median(times["separate"]) / clean
    peak = peak_memory_mib(device)
    print(f"device: {device}, batch {args.batch} of 1x{args.size}x{args.size}")
    print(f"clean iteration: {clean * 1000:.0f} ms (median of {args.repeats})")
    print(f"FGSM + inverse FGSM, separate attack pass (reuse_gradient=False): {separate:.3f} x clean")
    print(f"FGSM + inverse FGSM, reused gradient (reuse_gradient=True): {reuse:.3f} x clean (target <= 3.2)")
    if peak is not None:
        print(f"peak GPU memory (three trainers' models and optimizer states): {peak:.1f} MiB")
    print(f"{reuse:.3f}")
    return {
        "device": str(device),
        "ratio": reuse,
        "separate_ratio": separate,
        "clean_iteration_s": clean,
        "peak_gpu_memory_mib": peak,
    }


if __name__ == "__main__":
    main()
