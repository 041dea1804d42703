"""Paper A at CPU scale: U-Net vs U-Net + FGSM / inverse FGSM / both copies (online and offline), on real CT data.

Data (read from ../shared/data, never copied):
- ``medseg``: the 50 MedSeg COVID-19 CT slices (ct_covid_medseg_infnet/train), resized to --size (default 96);
  a fixed 40 / 10 train / test split (seed 0), lesion masks by a radiologist.
- ``msd``: the MSD Task06 lung-tumour patches, 48x48: the 130 ``val_*`` patches (13 patients) for training and the
  130 ``test_*`` patches (13 other patients) for testing.
Model and training: MONAI UNet (16, 32, 64, 128, 256), batch norm, DiceCE loss, Adam 1e-3, batch 8, --epochs
epochs, the project's AdversarialAugmentationTrainer with eps 0.1 on [0, 1] inputs (the paper's eps). Offline
variants train a fresh model on originals + copies made by the seed's trained baseline (the paper's two stages).
Evaluation on the test split: per-image foreground Dice and IoU (MONAI DiceMetric / MeanIoU; images without
foreground are left out of the mean), clean and under untargeted FGSM with eps in {0, 0.02, 0.05, 0.1, 0.15, 0.2}.
Writes ``docs/results/adversarial_augmentation.{json,md,png}`` (``--render-only`` rewrites the page and figure from the
JSON without training); the last line printed is the IoU gain of online "both"
over the baseline on medseg (mean over seeds).

    python benchmarks/augmentation_results.py [--seeds 0 1 2] [--epochs 30] [--datasets medseg msd]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from monai.data import DataLoader
from monai.losses import DiceCELoss
from monai.metrics import DiceMetric, MeanIoU
from monai.networks.nets import UNet
from monai.transforms import LoadImage
from monai.utils import set_determinism

from monai_advseg.attacks import fgsm, fgsm_pair
from monai_advseg.data import paired_folder_datalist, split_datalist
from monai_advseg.engines import AdversarialAugmentationTrainer

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
ROBUSTNESS_EPSILONS = (0.0, 0.02, 0.05, 0.1, 0.15, 0.2)
VARIANTS = ("none", "fgsm", "inverse_fgsm", "both", "offline_fgsm", "offline_inverse_fgsm", "offline_both")


def load_medseg(size: int) -> tuple[torch.Tensor, ...]:
    items = paired_folder_datalist(DATA / "ct_covid_medseg_infnet" / "train")
    train, test = split_datalist(items, 0.2, seed=0)
    reader = LoadImage(image_only=True, ensure_channel_first=True)

    def stack(subset):
        images, labels = [], []
        for item in subset:
            image = reader(item["image"]).float()[None] / 255.0
            label = (reader(item["label"]).float()[None] > 127).float()
            images.append(torch.nn.functional.interpolate(image, size=(size, size), mode="bilinear")[0])
            labels.append(torch.nn.functional.interpolate(label, size=(size, size), mode="nearest")[0])
        return torch.stack(images).clamp(0, 1), torch.stack(labels).long()

    return (*stack(train), *stack(test))


def load_msd() -> tuple[torch.Tensor, ...]:
    root = DATA / "ct_msd_lung_tumour_patches"

    def pair(split):
        images = torch.from_numpy(np.load(root / f"{split}_images.npy")).float()[:, None]
        labels = torch.from_numpy(np.load(root / f"{split}_labels.npy")).long()[:, None]
        return images, labels

    return (*pair("val"), *pair("test"))


def new_network() -> torch.nn.Module:
    return UNet(2, 1, 2, channels=(16, 32, 64, 128, 256), strides=(2, 2, 2, 2), num_res_units=2, norm="batch")


def train(images, labels, augmentation: str, epochs: int, seed: int) -> torch.nn.Module:
    set_determinism(seed)
    network = new_network()
    data = [{"image": x, "label": y} for x, y in zip(images, labels, strict=True)]
    loader = DataLoader(data, batch_size=8, shuffle=True, generator=torch.Generator().manual_seed(seed))
    AdversarialAugmentationTrainer(
        device=torch.device("cpu"),
        max_epochs=epochs,
        train_data_loader=loader,
        network=network,
        optimizer=torch.optim.Adam(network.parameters(), lr=1e-3),
        loss_function=DiceCELoss(to_onehot_y=True, softmax=True),
        augmentations=augmentation,
        epsilon=0.1,
        clip_range=(0, 1),
    ).run()
    return network.eval()


def evaluate(network, images, labels) -> dict[str, dict[str, float]]:
    results = {}
    for epsilon in ROBUSTNESS_EPSILONS:
        attacked = fgsm(network, images, labels, epsilon, clip_range=(0, 1)) if epsilon else images
        with torch.no_grad():
            prediction = network(attacked).argmax(1, keepdim=True)
        dice = DiceMetric(include_background=False, reduction="none", ignore_empty=True)
        iou = MeanIoU(include_background=False, reduction="none", ignore_empty=True)
        onehot_pred = torch.cat([1 - prediction, prediction], 1)
        onehot_label = torch.cat([1 - labels, labels], 1)
        d = dice(onehot_pred, onehot_label).flatten()
        j = iou(onehot_pred, onehot_label).flatten()
        results[str(epsilon)] = {"dice": float(np.nanmean(d.numpy())), "iou": float(np.nanmean(j.numpy()))}
    return results


def run_dataset(name, data, seeds, epochs) -> dict:
    train_x, train_y, test_x, test_y = data
    per_variant: dict[str, list] = {v: [] for v in VARIANTS}
    for seed in seeds:
        baseline = None
        for variant in VARIANTS:
            start = time.time()
            if variant.startswith("offline_"):
                kinds = variant.removeprefix("offline_")
                adversarial, inverse = fgsm_pair(baseline, train_x, train_y, 0.1, clip_range=(0, 1))
                extra = {"fgsm": [adversarial], "inverse_fgsm": [inverse], "both": [adversarial, inverse]}[kinds]
                x = torch.cat([train_x, *extra])
                y = torch.cat([train_y] * (1 + len(extra)))
                network = train(x, y, "none", epochs, seed)
            else:
                network = train(train_x, train_y, variant, epochs, seed)
            if variant == "none":
                baseline = network
            scores = evaluate(network, test_x, test_y)
            per_variant[variant].append(scores)
            print(
                f"[{name}] seed {seed} {variant:>22}: Dice {scores['0.0']['dice']:.4f} IoU {scores['0.0']['iou']:.4f}"
                f" | FGSM 0.1: Dice {scores['0.1']['dice']:.4f} ({time.time() - start:.0f} s)",
                flush=True,
            )
    return per_variant


def summarise(per_variant: dict) -> dict:
    summary = {}
    for variant, runs in per_variant.items():
        summary[variant] = {}
        for epsilon in ROBUSTNESS_EPSILONS:
            for metric in ("dice", "iou"):
                values = [run[str(epsilon)][metric] for run in runs]
                summary[variant][f"{metric}@{epsilon}"] = (statistics.mean(values), statistics.stdev(values))
    return summary


def machine() -> dict:
    """The machine a training run happens on, stored in the JSON so that ``--render-only`` can name it."""
    import os

    return {
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
    }


def command(config: dict) -> str:
    """The full command line equivalent to a run's config (every option spelled out)."""
    return (
        f"python benchmarks/augmentation_results.py --seeds {' '.join(map(str, config['seeds']))} "
        f"--epochs {config['epochs']} --size {config['size']} --datasets {' '.join(config['datasets'])} "
        f"--threads {config['threads']}"
    )


def markdown(results: dict, name: str) -> str:
    """The results page, rendered from the JSON alone (``--render-only`` re-renders it without training)."""
    config, host = results["config"], results.get("machine") or {}
    size, seeds = config["size"], ", ".join(map(str, config["seeds"]))
    gpu = host.get("gpu") or "no GPU"
    lines = [
        "# Paper A at CPU scale: adversarial-attack-driven augmentation",
        "",
        f"- **Command:** `{command(config)}` (re-render this page and the figure from the JSON, without training:",
        "  `python benchmarks/augmentation_results.py --render-only`).",
        f"- **Data:** `medseg`: the 50 MedSeg COVID-19 CT slices of `../shared/data/ct_covid_medseg_infnet/train`,"
        f" resized to {size}x{size}, a fixed 40 / 10 train / test split (seed 0); `msd`: the MSD Task06 lung-tumour"
        " patches of `../shared/data/ct_msd_lung_tumour_patches`, 48x48, the 130 `val_*` patches (13 patients) for"
        " training and the 130 `test_*` patches (13 other patients) for testing.",
        f"- **Seeds:** {seeds} (one training run per seed and variant, {config['epochs']} epochs); every cell is the"
        " mean ± sample standard deviation over the seeds.",
        f"- **Machine:** {host.get('platform', 'not recorded')}, {host.get('cpus', '?')} CPU cores, {gpu},"
        f" torch {host.get('torch', '?')}, {host.get('threads', config['threads'])} torch thread(s)"
        + (f", run on {host['date']}" if host.get("date") else "")
        + ".",
        "",
        "See the script's docstring for the model, training and metrics (per-image foreground Dice and IoU on the test"
        " split; images without foreground are left out).",
        "",
        "Online variants (`fgsm`, `inverse_fgsm`, `both`) make the copies in the training loop"
        " (`AdversarialAugmentationTrainer`, eps 0.1 on [0, 1] inputs). The offline variants (`offline_*`, the"
        " paper's two stages) make their copies **in memory**: `fgsm_pair` on the seed's trained baseline (`none`)"
        " over the whole training tensor at the training resolution, concatenated with the originals for a fresh"
        " model. They do not go through the bundles' `configs/generate_adversarial.json` (no NIfTI files, no mapping"
        " back to the source geometry).",
        "",
    ]
    for dataset, summary in results["summary"].items():
        lines += [f"## {dataset}", ""]
        for metric, label in (("dice", "Dice"), ("iou", "IoU")):
            lines += [
                f"{label} on the test split, clean and under untargeted FGSM (eps on [0, 1] inputs), mean ± std:",
                "",
                "| variant | clean | " + " | ".join(f"FGSM {e}" for e in ROBUSTNESS_EPSILONS[1:]) + " |",
                "|---|" + "---|" * len(ROBUSTNESS_EPSILONS),
            ]
            for variant, row in summary.items():
                cells = [f"{row[f'{metric}@{e}'][0]:.4f} ± {row[f'{metric}@{e}'][1]:.4f}" for e in ROBUSTNESS_EPSILONS]
                lines.append(f"| {variant} | " + " | ".join(cells) + " |")
            lines.append("")
    lines += [f"![Dice vs FGSM epsilon, mean ± std over seeds]({name}.png)", ""]
    return "\n".join(lines)


def figure(results: dict, path: Path) -> Path:
    """Dice vs FGSM epsilon per variant (mean +- std over seeds), one panel per data set; offline variants dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results["summary"])
    fig, axes = plt.subplots(1, len(names), figsize=(6 * len(names), 4.5), squeeze=False)
    for axis, name in zip(axes[0], names, strict=True):
        for variant, row in results["summary"][name].items():
            epsilons = [float(e) for e in ROBUSTNESS_EPSILONS]
            means = [row[f"dice@{e}"][0] for e in ROBUSTNESS_EPSILONS]
            stds = [row[f"dice@{e}"][1] for e in ROBUSTNESS_EPSILONS]
            style = "--" if variant.startswith("offline") else "-"
            axis.errorbar(epsilons, means, yerr=stds, linestyle=style, marker="o", capsize=3, label=variant)
        axis.set(title=f"{name}: Dice under untargeted FGSM", xlabel="epsilon (on [0, 1] inputs)", ylabel="Dice")
        axis.set_ylim(0, 1)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--datasets", nargs="+", default=["medseg", "msd"], choices=["medseg", "msd"])
    parser.add_argument("--output", type=Path, default=REPO / "docs" / "results" / "adversarial_augmentation")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is robust to a shared machine)")
    parser.add_argument(
        "--render-only",
        action="store_true",
        help="rewrite the page and figure from an existing OUTPUT.json, no training",
    )
    args = parser.parse_args()
    if args.render_only:
        results = json.loads(args.output.with_suffix(".json").read_text())
        args.output.with_suffix(".md").write_text(markdown(results, args.output.name))
        print(args.output.with_suffix(".md"))
        print(figure(results, args.output.with_suffix(".png")))
        return
    torch.set_num_threads(args.threads)
    loaders = {"medseg": lambda: load_medseg(args.size), "msd": load_msd}
    raw = {name: run_dataset(name, loaders[name](), args.seeds, args.epochs) for name in args.datasets}
    results = {"config": vars(args) | {"output": str(args.output)}, "machine": machine(), "raw": raw}
    results["summary"] = {name: summarise(per_variant) for name, per_variant in raw.items()}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.with_suffix(".json").write_text(json.dumps(results, indent=1))
    args.output.with_suffix(".md").write_text(markdown(results, args.output.name))
    figure(results, args.output.with_suffix(".png"))
    first = results["summary"][args.datasets[0]]
    print(f"IoU gain of online FGSM + inverse FGSM over U-Net on {args.datasets[0]}:")
    print(f"{first['both']['iou@0.0'][0] - first['none']['iou@0.0'][0]:+.4f}")


if __name__ == "__main__":
    main()
