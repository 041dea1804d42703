"""The main job: train a U-Net with and without adversarial augmentation and an NLCE-UNet, then sweep their robustness.

``python -m monai_advseg demo --output_dir ./demo_out`` works offline with no data of its own: it builds a small
synthetic CT-like 2D data set in Hounsfield units (MONAI's ``create_test_image_2d`` blobs as lesions in soft tissue,
with noise), windows it to [0, 1], trains the three models, runs the NLCE paper's targeted I-FGSM sweep on each with
:class:`~monai_advseg.engines.RobustnessEvaluator`, then the worst case (``attack="worst_case"``, small: a few APGD
steps, a few eps, the first test cases) with its gradient-masking diagnostics beside it, prints both tables and
writes the comparison figure.
``--dataset_dir`` runs it on real ``images/`` + ``masks/`` folders instead (8-bit slices, window 0..255; masks
{0, 255} or {0, 1}). Every slice and mask is checked before anything is written or replaced
(:func:`~monai_advseg.data.check_slice_datalist`); bad input ends the command with one ``error:`` line per problem and
exit status 1 (``--debug`` shows the traceback).
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from monai.data import DataLoader
from monai.data.synthetic import create_test_image_2d
from monai.losses import DiceCELoss
from monai.networks.nets import UNet
from monai.transforms import LoadImage
from monai.utils import set_determinism

from monai_advseg.attacks import PAPER_EPSILON_LEVELS, WorstCaseSpec
from monai_advseg.cli import DEBUG_HELP, entry_point
from monai_advseg.data import InputError, check_slice_datalist, paired_folder_datalist, split_datalist
from monai_advseg.engines import AdversarialAugmentationTrainer, GradientMaskingDiagnostics, RobustnessEvaluator
from monai_advseg.handlers import report_verdict, save_atomically
from monai_advseg.networks.nets import NLCEUNet

__all__ = ["DemoSettings", "main", "run_demo", "synthetic_ct_slices"]

#: Soft-tissue window of the synthetic data, in HU: what the network sees as [0, 1].
HU_WINDOW = (-160.0, 240.0)
MODELS = {"unet": "none", "unet_fgsm_inverse": "both", "nlce_unet": "none"}
DEMO_OUTPUTS = (*MODELS, "comparison.png", "summary.json")


class DemoSettings:
    """Sizes of one demo run; ``quick`` is the reduced size the test suite uses."""

    def __init__(self, quick: bool = False) -> None:
        self.size = 32 if quick else 64
        self.train_cases = 8 if quick else 48
        self.test_cases = 4 if quick else 16
        self.epochs = 1 if quick else 6
        self.epsilons: tuple[float, ...] = (0.5, 4.0, 16.0) if quick else PAPER_EPSILON_LEVELS
        # The worst case, kept to seconds on 2 CPU cores: a few eps, the first test cases, 5 APGD / SegPGD steps.
        self.worst_epsilons: tuple[float, ...] = (4.0, 16.0) if quick else (4.0, 16.0, 32.0)
        self.worst_cases = 2 if quick else 4
        self.apgd_steps = 5


def synthetic_ct_slices(count: int, size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """CT-like slices in HU: soft tissue (~40 HU) with brighter lesions (~+90 HU) and 25 HU noise, and their masks.

    Returns:
        ``(images, labels)``: ``(count, 1, size, size)`` float32 HU and int64 {0, 1}.
    """
    state = np.random.RandomState(seed)
    images, labels = [], []
    for _ in range(count):
        _, mask = create_test_image_2d(
            size,
            size,
            num_objs=3,
            rad_max=max(4, size // 8),
            rad_min=max(2, size // 16),
            num_seg_classes=1,
            random_state=state,
        )
        hu = 40.0 + 90.0 * mask + 25.0 * state.standard_normal(mask.shape)
        images.append(hu.astype(np.float32)[None])
        labels.append((mask > 0).astype(np.int64)[None])
    return torch.from_numpy(np.stack(images)), torch.from_numpy(np.stack(labels))


def window(hu: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    return ((hu - lo) / (hi - lo)).clamp(0, 1)


def folder_slices(dataset_dir: Path, size: int, seed: int, test_fraction: float = 0.25):
    """Real ``images/`` + ``masks/`` slices, windowed 0..255 -> [0, 1] and resized; a seeded train/test split.

    Every slice and mask is checked first (:func:`~monai_advseg.data.check_slice_datalist`), so a broken file stops
    the demo before training with all problems listed, not when the loader reaches it.
    """
    items = paired_folder_datalist(dataset_dir)
    check_slice_datalist(items)
    train_items, test_items = split_datalist(items, test_fraction, seed=seed)
    reader = LoadImage(image_only=True, ensure_channel_first=True)

    def stack(items):
        images, labels = [], []
        for item in items:
            image = reader(item["image"]).float()[:1][None] / 255.0
            label = (reader(item["label"]).float()[:1][None] > 0.5 * reader(item["label"]).max()).float()
            images.append(torch.nn.functional.interpolate(image, size=(size, size), mode="bilinear")[0])
            labels.append(torch.nn.functional.interpolate(label, size=(size, size), mode="nearest")[0])
        return torch.stack(images).clamp(0, 1), torch.stack(labels).long()

    return (*stack(train_items), *stack(test_items))


def build_network(name: str) -> torch.nn.Module:
    arguments = dict(
        spatial_dims=2, in_channels=1, out_channels=2, channels=(16, 32, 64, 128), strides=(2, 2, 2), num_res_units=1
    )
    return NLCEUNet(**arguments, num_codes=8) if name == "nlce_unet" else UNet(**arguments, norm="batch")


def train_model(name: str, images, labels, settings: DemoSettings, seed: int) -> torch.nn.Module:
    set_determinism(seed)
    network = build_network(name)
    data = [{"image": x, "label": y} for x, y in zip(images, labels, strict=True)]
    loader = DataLoader(data, batch_size=8, shuffle=True, generator=torch.Generator().manual_seed(seed))
    trainer = AdversarialAugmentationTrainer(
        device=torch.device("cpu"),
        max_epochs=settings.epochs,
        train_data_loader=loader,
        network=network,
        optimizer=torch.optim.Adam(network.parameters(), lr=3e-3),
        loss_function=DiceCELoss(to_onehot_y=True, softmax=True),
        augmentations=MODELS[name],
        epsilon=0.1,
        clip_range=(0.0, 1.0),
    )

    from ignite.engine import Events

    @trainer.on(Events.EPOCH_COMPLETED)
    def _report(engine):
        loss = engine.state.output[0]["loss"] if isinstance(engine.state.output, list) else engine.state.output
        print(f"  {name}: epoch {engine.state.epoch}/{settings.epochs}, last loss {float(loss):.4f}", flush=True)

    trainer.run()
    return network.eval()


def run_demo(
    output_dir: Path,
    dataset_dir: Path | None = None,
    quick: bool = False,
    seed: int = 0,
    *,
    replace: Sequence[Path] = (),
) -> dict:
    """Train the three models, sweep them, write reports and the comparison figure.

    Args:
        output_dir: where the reports, weights and the figure go.
        dataset_dir: a folder with ``images/`` and ``masks/`` (checked before anything is written), or ``None`` for
            the synthetic slices.
        quick: the reduced size of :class:`DemoSettings`.
        seed: data, split and training seed.
        replace: an earlier demo's outputs to delete (``--overwrite``), only once the data is loaded and checked, so
            that bad input leaves them in place.

    Returns:
        ``{model name: robustness report}``.

    Raises:
        InputError: on a bad ``dataset_dir`` (missing or empty folders, unmatched names, unreadable or truncated
            files, mask/image size mismatch, mask values other than {0, 255} or {0, 1}), all problems listed.
    """
    from monai_advseg.report import compare

    settings = DemoSettings(quick)
    if dataset_dir is None:
        train_hu, train_y = synthetic_ct_slices(settings.train_cases, settings.size, seed)
        test_hu, test_y = synthetic_ct_slices(settings.test_cases, settings.size, seed + 1)
        train_x, test_x = window(train_hu, *HU_WINDOW), window(test_hu, *HU_WINDOW)
        source = f"synthetic CT-like slices in HU, window {HU_WINDOW}"
    else:
        train_x, train_y, test_x, test_y = folder_slices(dataset_dir, settings.size, seed)
        source = str(dataset_dir)
    for path in replace:
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
    print(f"data: {source}; {len(train_x)} train / {len(test_x)} test, {settings.size}x{settings.size}", flush=True)
    reports, worst = {}, {}
    surrogate = None  # the plain U-Net, once trained: the other models' transfer check
    for name in MODELS:
        start = time.time()
        print(f"training {name} (augmentation: {MODELS[name]}) ...", flush=True)
        network = train_model(name, train_x, train_y, settings, seed)
        print(f"robustness sweep of {name} over {len(settings.epsilons)} epsilons ...", flush=True)
        loader = DataLoader([{"image": x, "label": y} for x, y in zip(test_x, test_y, strict=True)], batch_size=4)
        evaluator = RobustnessEvaluator(
            device=torch.device("cpu"),
            val_data_loader=loader,
            network=network,
            epsilons=settings.epsilons,
            intensity_range=(0.0, 1.0),
            output_dir=output_dir / name,
            progress=None,  # a bar over epsilons x batches on a terminal, quiet in logs
            config={"demo": True, "model": name, "augmentation": MODELS[name], "data": source, "seed": seed},
        )
        evaluator.run()
        save_atomically(network.state_dict(), output_dir / name / "model.pt")
        reports[name] = evaluator.results
        print(f"worst case of {name} on {settings.worst_cases} test cases with diagnostics ...", flush=True)
        cases = [{"image": x, "label": y} for x, y in zip(test_x, test_y, strict=True)][: settings.worst_cases]
        worst_case = RobustnessEvaluator(
            device=torch.device("cpu"),
            val_data_loader=DataLoader(cases, batch_size=4),
            network=network,
            epsilons=settings.worst_epsilons,
            intensity_range=(0.0, 1.0),
            attack=WorstCaseSpec(apgd_steps=settings.apgd_steps, segpgd_steps=settings.apgd_steps),
            diagnostics=GradientMaskingDiagnostics(
                surrogate=surrogate, black_box_cases=min(2, settings.worst_cases), black_box_queries=100
            ),
            output_dir=output_dir / name / "worst_case",
            progress=None,
            config={"demo": True, "model": name, "data": source, "seed": seed, "cases": settings.worst_cases},
        )
        worst_case.run()
        worst[name] = worst_case.results
        if surrogate is None:
            surrogate = build_network(name)
            surrogate.load_state_dict(network.state_dict())
            surrogate.eval()
        print(f"  {name} done in {time.time() - start:.0f} s", flush=True)
    figure = compare([output_dir / name / "robustness.json" for name in MODELS], output_dir / "comparison.png")
    print_table(reports)
    print_worst_case(reports, worst, settings)
    print(f"reports in {output_dir} (worst case: <model>/worst_case/robustness.md); comparison figure {figure}")
    return {name: {**reports[name], "worst_case": worst[name]} for name in reports}


def print_table(reports: dict) -> None:
    names = list(reports)
    print("\nDice under the targeted I-FGSM attack (eps in 0..255 levels):")
    print(f"{'eps':>6} | " + " | ".join(f"{name:>18}" for name in names))
    rows = [report["metrics"] for report in reports.values()]
    for index, row in enumerate(rows[0]):
        label = "clean" if row["setting"] == "clean" else f"{row['eps_levels']:g}"
        print(f"{label:>6} | " + " | ".join(f"{r[index]['mean_dice']:>18.4f}" for r in rows))


def print_worst_case(reports: dict, worst: dict, settings: DemoSettings) -> None:
    """The paper's attack beside the worst case on the same cases' eps, and each model's verdict.

    Args:
        reports: the paper's sweeps by model.
        worst: the worst-case reports by model.
        settings: the run's sizes (said in the heading: the worst case here is deliberately small).
    """
    names = list(worst)
    print(
        f"\nThe honest table: paper's attack (all {settings.test_cases} test cases) vs worst case (first "
        f"{settings.worst_cases} cases; {settings.apgd_steps} APGD / SegPGD steps, a demo-sized ensemble):"
    )
    print(f"{'eps':>6} | " + " | ".join(f"{name + ' paper':>24} | {name + ' worst':>24}" for name in names))
    for level in settings.worst_epsilons:
        cells = []
        for name in names:
            paper = next(r for r in reports[name]["metrics"] if r["eps_levels"] == level and r["setting"] != "clean")
            low = next(r for r in worst[name]["metrics"] if r["eps_levels"] == level and r["setting"] != "clean")
            cells.append(f"{paper['mean_dice']:>24.4f} | {low['mean_dice']:>24.4f}")
        print(f"{level:>6g} | " + " | ".join(cells))
    for name in names:
        print(f"  {name}: {report_verdict(worst[name])}")


def _earlier_outputs(output_dir: Path, overwrite: bool) -> list[Path]:
    """Check ``--output_dir`` and return the earlier demo outputs in it that ``--overwrite`` replaces.

    Args:
        output_dir: the demo's output folder.
        overwrite: replace an earlier demo's output.

    Returns:
        the paths to delete before writing (empty for a new or empty folder).

    Raises:
        InputError: when ``output_dir`` is a file, or holds files and ``overwrite`` is false, or holds files that no
            demo wrote (``--overwrite`` never replaces a folder holding anything else).
    """
    if output_dir.exists() and not output_dir.is_dir():
        raise InputError(f"{output_dir}: --output_dir is a file, not a folder")
    if not output_dir.exists() or not any(output_dir.iterdir()):
        return []
    if not overwrite:
        raise InputError(f"{output_dir}: exists and is not empty; pass --overwrite to replace it")
    foreign = sorted(p.name for p in output_dir.iterdir() if p.name not in DEMO_OUTPUTS)
    if foreign:
        raise InputError(
            f"{output_dir}: holds files the demo did not write ({', '.join(foreign[:5])}); "
            "--overwrite only replaces an earlier demo output, choose another --output_dir"
        )
    return [output_dir / name for name in DEMO_OUTPUTS if (output_dir / name).exists()]


@entry_point
def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m monai_advseg demo``; returns the exit status (1 on bad input)."""
    parser = argparse.ArgumentParser(prog="python -m monai_advseg demo", description=__doc__.splitlines()[0])
    parser.add_argument("--output_dir", type=Path, default=Path("demo_out"))
    parser.add_argument("--dataset_dir", type=Path, default=None, help="folder with images/ and masks/ (optional)")
    parser.add_argument("--quick", action="store_true", help="reduced size (used by the test suite)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output_dir")
    parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    args = parser.parse_args(argv)
    replace = _earlier_outputs(args.output_dir, args.overwrite)
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    reports = run_demo(args.output_dir, args.dataset_dir, args.quick, args.seed, replace=replace)
    summary = {
        name: {"paper": report["metrics"], "worst_case": report["worst_case"]["metrics"]}
        | {"diagnostics": report["worst_case"]["diagnostics"]}
        for name, report in reports.items()
    }
    (args.output_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    return 0
