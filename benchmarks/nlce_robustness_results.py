"""Paper B at CPU scale: NLCEN (ResNet-18) vs MONAI U-Net vs NLCE-U-Net under the targeted I-FGSM sweep, on real CXR.

Data (read from ../shared/data, never copied): the 250 Montgomery + Shenzhen chest X-rays with lung masks
(cxr_lung_montgomery_shenzhen, 512x512 PNG), resized to --size (bilinear image, nearest mask), intensities / 255.
Split: ``split_datalist(items, 0.2, seed=0)`` -> 200 train / 50 test (fixed for every network).
Training (the paper's recipe, shortened): pixel-wise cross-entropy, for NLCEN the deep-supervision loss
``1/4 sum_i L_g^i + 0.25 L_r`` (``DeepSupervisionLoss(weights=[0.25] * 5)``), Adam lr 1e-3, weight decay 1e-4,
batch 8, ReduceLROnPlateau (factor 0.9, min lr 1e-4) on the epoch's mean training loss, --epochs epochs, no data
augmentation, the last epoch's weights (no model selection), seed --seed, the project's
AdversarialAugmentationTrainer with augmentation "none" (a plain SupervisedTrainer step).
Evaluation: clean foreground Dice / Jaccard on all 50 test images, and the paper's targeted I-FGSM sweep (18 epsilons
0.5..32 levels, alpha 1 level, min(eps + 4, ceil(1.25 eps)) steps, target = inverse mask) with the project's
RobustnessEvaluator on the first --sweep-images test images.

Writes per network ``<work>/<network>/{model.pt,robustness.*}``, then ``docs/results/nlce_robustness.{json,md,png}``
(the figure through ``python -m monai_advseg.report compare``). After each network the JSON / Markdown are rewritten
with what has finished so far, marked partial until all networks are done.

    python benchmarks/nlce_robustness_results.py [--size 128] [--epochs 15] [--sweep-images 20] \\
        [--networks unet nlce_unet nlcen] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import monai
import torch
from ignite.engine import Events
from monai.data import DataLoader
from monai.losses import DeepSupervisionLoss, DiceCELoss
from monai.metrics import DiceMetric, MeanIoU
from monai.networks.nets import UNet
from monai.networks.utils import one_hot
from monai.transforms import LoadImage
from monai.utils import set_determinism

from monai_advseg.attacks import PAPER_EPSILON_LEVELS
from monai_advseg.data import paired_folder_datalist, split_datalist
from monai_advseg.engines import AdversarialAugmentationTrainer, RobustnessEvaluator
from monai_advseg.handlers import save_atomically
from monai_advseg.networks.nets import NLCEN, NLCEUNet

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "cxr_lung_montgomery_shenzhen"
RESULTS = REPO / "docs" / "results"
LABELS = {"nlcen": "NLCEN (ResNet-18)", "unet": "MONAI U-Net", "nlce_unet": "NLCE-U-Net"}
PAPER = {
    "data": "JSRT lungs (SCR masks), 124 train / 123 test, 256x256",
    "nlcen": {"clean": {"dice": 0.971, "jaccard": 0.945}, "eps32": {"dice": 0.963, "jaccard": 0.929}},
    "unet": "collapses under the same attack (figure 4 of the paper)",
}


def make_network(name: str) -> torch.nn.Module:
    unet_args = dict(
        spatial_dims=2,
        in_channels=1,
        out_channels=2,
        channels=(16, 32, 64, 128, 256),
        strides=(2, 2, 2, 2),
        num_res_units=2,
        norm="batch",
    )
    if name == "nlcen":
        return NLCEN(spatial_dims=2, in_channels=1, out_channels=2, backbone="resnet18")
    if name == "unet":
        return UNet(**unet_args)
    if name == "nlce_unet":
        return NLCEUNet(**unet_args)
    raise ValueError(f"unknown network {name!r}")


def load_split(size: int) -> tuple[list[dict], list[dict]]:
    items = paired_folder_datalist(DATA)
    train, test = split_datalist(items, 0.2, seed=0)
    reader = LoadImage(image_only=True, ensure_channel_first=True)

    def load(subset):
        out = []
        for item in subset:
            image = reader(item["image"]).as_tensor().float()[None] / 255.0
            label = (reader(item["label"]).as_tensor().float()[None] > 127).float()
            out.append(
                {
                    "image": torch.nn.functional.interpolate(image, size=(size, size), mode="bilinear")[0].clamp(0, 1),
                    "label": torch.nn.functional.interpolate(label, size=(size, size), mode="nearest")[0],
                    "name": Path(item["image"]).name,
                }
            )
        return out

    return load(train), load(test)


def train(
    name: str,
    data: list[dict],
    epochs: int,
    seed: int,
    augmentations: str = "none",
    epsilon: float = 0.1,
    noise_sigma: float = 0.25,
) -> tuple[torch.nn.Module, list[float], float]:
    """Train one network with the recipe above; ``augmentations`` / ``epsilon`` add online FGSM copies (0..1 units),
    ``"gaussian"`` / ``noise_sigma`` a Gaussian noise copy (noise training for randomized smoothing).

    Args:
        name: a :func:`make_network` choice.
        data: the training items.
        epochs: number of epochs.
        seed: the determinism seed.
        augmentations: the trainer's online augmentations ("none" is the paper's recipe).
        epsilon: the augmentation strength in input units.
        noise_sigma: the std of the ``"gaussian"`` copy's noise in input units.

    Returns:
        The network in eval mode, the epoch mean losses and the training wall time (s).
    """
    set_determinism(seed=seed)
    network = make_network(name)
    loss = DeepSupervisionLoss(DiceCELoss(to_onehot_y=True, softmax=True, lambda_dice=0.0), weights=[0.25] * 5)
    optimizer = torch.optim.Adam(network.parameters(), lr=1e-3, weight_decay=1e-4)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", factor=0.9, min_lr=1e-4)
    loader = DataLoader(data, batch_size=8, shuffle=True, num_workers=0)
    trainer = AdversarialAugmentationTrainer(
        device=torch.device("cpu"),
        max_epochs=epochs,
        train_data_loader=loader,
        network=network,
        optimizer=optimizer,
        loss_function=loss,
        augmentations=augmentations,
        epsilon=epsilon,
        noise_sigma=noise_sigma,
        clip_range=(0.0, 1.0),
        decollate=False,
    )
    losses: list[float] = []
    history: list[float] = []

    @trainer.on(Events.ITERATION_COMPLETED)
    def _collect(engine):
        losses.append(float(engine.state.output["loss"]))

    @trainer.on(Events.EPOCH_COMPLETED)
    def _epoch(engine):
        mean = sum(losses) / len(losses)
        losses.clear()
        history.append(mean)
        scheduler.step(mean)
        print(
            f"[{name}] epoch {engine.state.epoch}/{epochs} loss {mean:.4f} lr {optimizer.param_groups[0]['lr']:.2e} "
            f"({time.perf_counter() - started:.0f} s)",
            flush=True,
        )

    started = time.perf_counter()
    trainer.run()
    return network.eval(), history, time.perf_counter() - started


def clean_scores(network: torch.nn.Module, data: list[dict]) -> dict[str, float]:
    dice, iou = DiceMetric(include_background=False), MeanIoU(include_background=False)
    network.eval()
    with torch.no_grad():
        for start in range(0, len(data), 8):
            batch = data[start : start + 8]
            image = torch.stack([d["image"] for d in batch])
            label = one_hot(torch.stack([d["label"] for d in batch]).long(), 2, dim=1)
            pred = one_hot(network(image).argmax(dim=1, keepdim=True), 2, dim=1)
            dice(pred, label)
            iou(pred, label)
    return {"dice": float(dice.aggregate()), "jaccard": float(iou.aggregate()), "n_images": len(data)}


def sweep(name: str, network: torch.nn.Module, data: list[dict], out: Path, args) -> dict:
    loader = DataLoader([{"image": d["image"], "label": d["label"]} for d in data], batch_size=4, shuffle=False)
    evaluator = RobustnessEvaluator(
        device=torch.device("cpu"),
        val_data_loader=loader,
        network=network,
        epsilons=PAPER_EPSILON_LEVELS,
        intensity_range=(0.0, 1.0),
        attack="ifgsm_targeted",
        max_batch=args.max_batch,
        output_dir=out,
        overwrite=True,
        progress=False,
        config={"benchmark": "nlce_robustness_results", "network_choice": name, "size": args.size},
    )
    evaluator.run()
    return evaluator.results


def write_outputs(args, entries: dict, done: bool, command: str) -> None:
    results = args.results_dir
    results.mkdir(parents=True, exist_ok=True)
    summary = {
        "status": "complete" if done else "partial (not all networks finished)",
        "command": command,
        "data": {
            "set": "cxr_lung_montgomery_shenzhen (138 Montgomery + 112 Shenzhen CXR, NLM / Stirenko et al. masks)",
            "split": "split_datalist(items, 0.2, seed=0): 200 train / 50 test",
            "size": [args.size, args.size],
            "sweep_images": f"first {args.sweep_images} test images of the split",
        },
        "training": {
            "epochs": args.epochs,
            "batch_size": 8,
            "optimizer": "Adam lr 1e-3, weight decay 1e-4",
            "schedule": "ReduceLROnPlateau(factor 0.9, min_lr 1e-4) on the epoch mean training loss",
            "loss": "cross-entropy; NLCEN: DeepSupervisionLoss(weights=[0.25]*5) = 1/4 sum L_g + 0.25 L_r",
            "seed": args.seed,
            "model": "last epoch",
        },
        "attack": "targeted I-FGSM, target = inverse mask, alpha 1 level, min(eps+4, ceil(1.25 eps)) steps",
        "machine": {
            "cpu_threads": torch.get_num_threads(),
            "platform": platform.platform(),
            "note": "2 shared CPU cores, loaded by other jobs; timings are noisy",
            "torch": torch.__version__,
            "monai": monai.__version__,
        },
        "paper": PAPER,
        "networks": entries,
    }
    (results / "nlce_robustness.json").write_text(json.dumps(summary, indent=2) + "\n")
    (results / "nlce_robustness.md").write_text(markdown(summary, args) + "\n")


def markdown(summary: dict, args) -> str:
    nets = summary["networks"]
    lines = [
        "# NLCE robustness at CPU scale (paper B): NLCEN vs U-Net vs NLCE-U-Net under targeted I-FGSM",
        "",
        f"Status: **{summary['status']}**.",
        "",
        "Command (repository root, venv active):",
        "",
        f"    {summary['command']}",
        "",
        "## Set-up",
        "",
        f"- Data: {summary['data']['set']}, resized from 512x512 to {args.size}x{args.size}, intensities / 255.",
        f"- Split: {summary['data']['split']}. Clean scores on all 50 test images; the attack sweep on the "
        f"{summary['data']['sweep_images']}.",
        f"- Training: {args.epochs} epochs, batch 8, {summary['training']['optimizer']}, "
        f"{summary['training']['schedule']}, {summary['training']['loss']}; no data augmentation; last-epoch "
        f"weights; seed {args.seed}; one run per network (no seed repeats, so no error bars across runs).",
        f"- Attack: {summary['attack']}; eps in {list(PAPER_EPSILON_LEVELS)} levels of 0..255 "
        "(the paper's 18 values), via `monai_advseg.engines.RobustnessEvaluator`.",
        "- Metrics: per-image foreground Dice `2TP/(2TP+FP+FN)` and Jaccard `TP/(TP+FP+FN)` (MONAI DiceMetric / "
        "MeanIoU), mean over images.",
        f"- Machine: {summary['machine']['note']}; torch {summary['machine']['torch']}, "
        f"monai {summary['machine']['monai']}, {summary['machine']['cpu_threads']} threads.",
        "",
        "## Training and clean test scores (50 test images)",
        "",
        "| network | parameters | final train loss | train time (s) | clean Dice | clean Jaccard |",
        "|---|---|---|---|---|---|",
    ]
    for name, entry in nets.items():
        lines.append(
            f"| {LABELS[name]} | {entry['parameters'] / 1e6:.2f} M | {entry['loss_history'][-1]:.4f} | "
            f"{entry['train_seconds']:.0f} | {entry['clean_test']['dice']:.4f} | {entry['clean_test']['jaccard']:.4f} |"
        )
    swept = {n: e for n, e in nets.items() if e.get("sweep")}
    if swept:
        lines += [
            "",
            f"## Targeted I-FGSM sweep ({args.sweep_images} test images): mean Dice / Jaccard per eps",
            "",
            "| eps (levels) | steps | " + " | ".join(f"{LABELS[n]} Dice | {LABELS[n]} Jaccard" for n in swept) + " |",
            "|---|---|" + "---|---|" * len(swept),
        ]
        first = next(iter(swept.values()))["sweep"]
        for i, row in enumerate(first):
            cells = []
            for entry in swept.values():
                r = entry["sweep"][i]
                cells.append(f"{r['mean_dice']:.4f} | {r['mean_jaccard']:.4f}")
            label = "clean" if row["setting"] == "clean" else f"{row['eps_levels']:g}"
            lines.append(f"| {label} | {row['steps']} | " + " | ".join(cells) + " |")
        lines += ["", "Attack wall time per network (s): "]
        lines[-1] += ", ".join(f"{LABELS[n]} {e['sweep_seconds']:.0f}" for n, e in swept.items()) + "."
        lines += ["", "![Dice / Jaccard vs eps](nlce_robustness.png)"]
    lines += [
        "",
        "## The paper's claim and what happened here",
        "",
        "Paper (JSRT, 256x256, full training on a GPU): NLCEN Dice 0.971 clean -> 0.963 at eps 32 (Jaccard "
        "0.945 -> 0.929); a plain U-Net and four other networks collapse under the same attack.",
        "",
    ]
    lines += verdict(swept)
    return "\n".join(lines)


def verdict(swept: dict) -> list[str]:
    if not swept:
        return ["No attack sweep finished, so the claim was not tested."]
    out = []
    for name, entry in swept.items():
        clean, last = entry["sweep"][0], entry["sweep"][-1]
        drop = clean["mean_dice"] - last["mean_dice"]
        out.append(
            f"- {LABELS[name]}: Dice {clean['mean_dice']:.3f} clean -> {last['mean_dice']:.3f} at eps "
            f"{last['eps_levels']:g} (drop {drop:.3f}); Jaccard {clean['mean_jaccard']:.3f} -> "
            f"{last['mean_jaccard']:.3f}."
        )
    if "nlcen" in swept:
        nl = swept["nlcen"]["sweep"]
        nl_drop = nl[0]["mean_dice"] - nl[-1]["mean_dice"]
        others = [n for n in swept if n != "nlcen"]
        above = all(swept[n]["sweep"][-1]["mean_dice"] < nl[-1]["mean_dice"] for n in others)
        collapsed = [n for n in others if swept[n]["sweep"][-1]["mean_dice"] < 0.5 * swept[n]["sweep"][0]["mean_dice"]]
        out += [
            "",
            "Reproduced? "
            + (
                f"The claim that NLCEN barely degrades did not reproduce: its Dice fell by {nl_drop:.3f} at eps 32 "
                "(the paper: 0.008)."
                if nl_drop > 0.05
                else f"NLCEN's small degradation reproduced: Dice fell by {nl_drop:.3f} at eps 32 (the paper: 0.008)."
            ),
        ]
        if others:
            out.append(
                (
                    "The ranking reproduced: NLCEN ends above every other network here"
                    if above
                    else "NLCEN does not end above every other network here"
                )
                + (
                    f", and {', '.join(LABELS[n] for n in collapsed)} collapsed (Dice below half of clean at eps 32)."
                    if collapsed
                    else "; no other network collapsed (Dice below half of clean at eps 32)."
                )
            )
        if "nlce_unet" in swept and "unet" in swept:
            gain = swept["nlce_unet"]["sweep"][-1]["mean_dice"] - swept["unet"]["sweep"][-1]["mean_dice"]
            out.append(
                f"The generalisation claim (one NLCE makes a U-Net robust): NLCE-U-Net minus U-Net Dice at eps 32 is "
                f"{gain:+.3f}" + (", i.e. no meaningful robustness gain here." if gain < 0.05 else ".")
            )
        out += [
            "",
            "This is a scaled-down run (smaller images, few epochs, a different data set, one seed, few attacked "
            "images), so it tests the direction of the claims, not their exact numbers. The NLCEN training loss is the "
            "deep-supervision sum (coarse heads included), so it is not comparable with the U-Nets' loss.",
        ]
    else:
        out += ["", "NLCEN did not finish its sweep, so the NLCEN part of the claim was not tested here."]
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--sweep-images", type=int, default=20)
    parser.add_argument("--networks", nargs="+", default=["unet", "nlce_unet", "nlcen"], choices=sorted(LABELS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="1 is far faster on a loaded machine")
    parser.add_argument("--max-batch", type=int, default=24, help="attacked samples per forward/backward")
    parser.add_argument("--work", type=Path, default=Path("/work/runs/nlce_results"))
    parser.add_argument("--train-limit", type=int, default=None, help="use only this many training images (timing)")
    parser.add_argument("--no-write", action="store_true", help="do not write docs/results (timing runs)")
    parser.add_argument("--results-dir", type=Path, default=RESULTS, help="where nlce_robustness.* are written")
    parser.add_argument("--render-only", action="store_true", help="rewrite the Markdown from the existing JSON")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.render_only:
        summary = json.loads((args.results_dir / "nlce_robustness.json").read_text())
        args.size, args.epochs = summary["data"]["size"][0], summary["training"]["epochs"]
        args.seed, args.sweep_images = summary["training"]["seed"], int(summary["data"]["sweep_images"].split()[1])
        (args.results_dir / "nlce_robustness.md").write_text(markdown(summary, args) + "\n")
        return 0
    command = "python benchmarks/nlce_robustness_results.py " + " ".join(argv if argv is not None else sys.argv[1:])
    started = time.perf_counter()
    train_data, test_data = load_split(args.size)
    if args.train_limit:
        train_data = train_data[: args.train_limit]
    print(f"data: {len(train_data)} train / {len(test_data)} test at {args.size}^2", flush=True)
    entries: dict = {}
    for name in args.networks:
        out = args.work / name
        out.mkdir(parents=True, exist_ok=True)
        network, history, seconds = train(name, train_data, args.epochs, args.seed)
        save_atomically(network.state_dict(), out / "model.pt")
        clean = clean_scores(network, test_data)
        print(f"[{name}] clean test Dice {clean['dice']:.4f} Jaccard {clean['jaccard']:.4f}", flush=True)
        entries[name] = {
            "label": LABELS[name],
            "parameters": sum(p.numel() for p in network.parameters()),
            "loss_history": history,
            "train_seconds": seconds,
            "clean_test": clean,
        }
        t0 = time.perf_counter()
        results = sweep(name, network, test_data[: args.sweep_images], out, args)
        entries[name]["sweep_seconds"] = time.perf_counter() - t0
        entries[name]["sweep"] = results["metrics"]
        entries[name]["sweep_cases"] = [d["name"] for d in test_data[: args.sweep_images]]
        print(
            f"[{name}] sweep: clean Dice {results['metrics'][0]['mean_dice']:.4f}, eps 32 Dice "
            f"{results['metrics'][-1]['mean_dice']:.4f} ({entries[name]['sweep_seconds']:.0f} s; "
            f"total {time.perf_counter() - started:.0f} s)",
            flush=True,
        )
        if not args.no_write:
            write_outputs(args, entries, done=len(entries) == len(args.networks), command=command)
    if not args.no_write:
        reports = [str(args.work / n / "robustness.json") for n in entries]
        subprocess.run(
            [sys.executable, "-m", "monai_advseg.report", "compare", *reports]
            + [
                "-o",
                str(args.results_dir / "nlce_robustness.png"),
                "--labels",
                *[LABELS[n] for n in entries],
                "--overwrite",
            ]
            + ["--title", f"CXR lungs {args.size}x{args.size}, targeted I-FGSM ({args.sweep_images} test images)"],
            check=True,
        )
    print(f"done in {time.perf_counter() - started:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
