"""Cost of one online FGSM + inverse-FGSM training iteration relative to one clean training iteration.

Reference model and batch (benchmarks/reference_model.py: MONAI 2D UNet, batch 8 of 1x128x128), 2 threads, SGD.
Three trainers run interleaved in one process: clean (no augmentation), both copies with the reused gradient, and
both copies from a separate attack pass (``reuse_gradient=False``). Each copy needs its own forward/backward, so the
floor is 1 + 2 = 3.0; target <= 3.2 with reuse. The last line printed is the reuse ratio.

    python benchmarks/augmentation_cost.py [--repeats 9]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from reference_model import reference_batch, reference_unet

from monai_advseg.engines import AdversarialAugmentationTrainer


def make_trainer(augmentations: str, reuse: bool, batch: dict) -> AdversarialAugmentationTrainer:
    torch.manual_seed(0)
    network = reference_unet()
    loss = torch.nn.CrossEntropyLoss()
    return AdversarialAugmentationTrainer(
        device=torch.device("cpu"),
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=9)
    args = parser.parse_args()
    torch.set_num_threads(2)
    image, label = reference_batch()
    batch = {"image": image, "label": label}
    trainers = {
        "clean": make_trainer("none", True, batch),
        "reuse": make_trainer("both", True, batch),
        "separate": make_trainer("both", False, batch),
    }
    times: dict[str, list[float]] = {name: [] for name in trainers}
    for repeat in range(args.repeats + 1):
        for name, trainer in trainers.items():
            start = time.perf_counter()
            trainer._iteration(trainer, batch)
            if repeat:  # the first round warms up allocators and kernels
                times[name].append(time.perf_counter() - start)
    clean = statistics.median(times["clean"])
    reuse = statistics.median(times["reuse"]) / clean
    separate = statistics.median(times["separate"]) / clean
    print(f"clean iteration: {clean * 1000:.0f} ms (median of {args.repeats})")
    print(f"FGSM + inverse FGSM, separate attack pass (reuse_gradient=False): {separate:.3f} x clean")
    print(f"FGSM + inverse FGSM, reused gradient (reuse_gradient=True): {reuse:.3f} x clean (target <= 3.2)")
    print(f"{reuse:.3f}")


if __name__ == "__main__":
    main()
