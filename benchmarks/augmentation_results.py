"""Paper A at CPU scale, with AdvProp's auxiliary batch norm: U-Net vs online FGSM / inverse FGSM / both copies,
each with and without the auxiliary batch norm, at several budgets, on real CT data.

Data (read from ../shared/data, never copied):
- ``medseg``: the 50 MedSeg COVID-19 CT slices (ct_covid_medseg_infnet/train), resized to --size (default 96);
  a fixed 40 / 10 train / test split (seed 0), lesion masks by a radiologist.
- ``msd``: the MSD Task06 lung-tumour patches, 48x48: the 130 ``val_*`` patches (13 patients) for training and the
  130 ``test_*`` patches (13 other patients) for testing.
Model and training: MONAI UNet (16, 32, 64, 128, 256), batch norm, DiceCE loss, Adam 1e-3, batch 8, --epochs
epochs, the project's AdversarialAugmentationTrainer (reuse_gradient=True) with eps in --levels (0..255 levels on
[0, 1] inputs; 25.5 is the paper's 0.1); ``+auxbn`` variants convert the network with
``monai_advseg.networks.convert_to_auxiliary_bn`` and train with ``auxiliary_bn=True``.
Evaluation on the test split, with the trained weights loaded strictly into a plain UNet (the twins are not in the
state dict): per-image foreground Dice and IoU (MONAI DiceMetric / MeanIoU; images without foreground are left out
of the mean), clean, under untargeted FGSM at 8 and 25.5 levels and under the NLCE paper's targeted I-FGSM (towards
the inverse mask, one-level steps, Kurakin's step count) at 2 and 8 levels.

Each finished training is appended to ``--runs-dir``/<dataset>.jsonl at once, so an interrupted or partial run
keeps its results; the tasks are ordered by priority (data set by data set in --datasets order: its baselines, then
the budgets in --levels order, every seed of a budget before the next budget) and ``--worker K --workers N`` runs
every N-th task, for N processes side by side. ``--collect`` builds OUTPUT.json (and the page and figure) from the
runs found; ``--render-only`` rewrites the page and figure from OUTPUT.json alone.

    python benchmarks/augmentation_results.py [--seeds 0 1 2] [--epochs 20] [--datasets medseg msd] \
        [--levels 25.5 4 1 8 2] [--worker 0 --workers 2]
    python benchmarks/augmentation_results.py --collect
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
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
from scipy import stats

from monai_advseg.attacks import fgsm, inverse_mask, iterative_fgsm
from monai_advseg.data import paired_folder_datalist, split_datalist
from monai_advseg.engines import AdversarialAugmentationTrainer
from monai_advseg.networks import convert_to_auxiliary_bn

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
#: Training budgets in 0..255 levels on [0, 1] inputs, in priority order (25.5 = the paper's eps 0.1).
LEVELS = (25.5, 4.0, 1.0, 8.0, 2.0)
AUGMENTATIONS = ("fgsm", "inverse_fgsm", "both")
#: Evaluation attacks: (name, kind, strength in levels).
ATTACKS = (
    ("fgsm@8", "fgsm", 8.0),
    ("fgsm@25.5", "fgsm", 25.5),
    ("ifgsm_t@2", "ifgsm_t", 2.0),
    ("ifgsm_t@8", "ifgsm_t", 8.0),
)
METRICS = ("clean", *(name for name, _, _ in ATTACKS))


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


def variant_name(augmentation: str, auxiliary: bool) -> str:
    """``none``, ``fgsm``, ``inverse_fgsm``, ``both``, or one of the last three with ``+auxbn``."""
    return augmentation + ("+auxbn" if auxiliary else "")


def tasks(datasets, seeds, levels) -> list[tuple[str, int, str, float | None]]:
    """Every (dataset, seed, variant, level) training in priority order: data set by data set, its baselines first,
    then budget by budget (every seed of a budget before the next budget)."""
    order = []
    for d in datasets:
        order += [(d, seed, "none", None) for seed in seeds]
        for level in levels:
            for seed in seeds:
                order += [(d, seed, variant_name(a, aux), level) for aux in (False, True) for a in AUGMENTATIONS]
    return order


def train(images, labels, variant: str, level: float | None, epochs: int, seed: int) -> torch.nn.Module:
    """Train one U-Net; ``variant`` is ``none`` or an augmentation name with an optional ``+auxbn``."""
    set_determinism(seed)
    augmentation, _, auxiliary = variant.partition("+")
    network = new_network()
    if auxiliary:
        convert_to_auxiliary_bn(network)  # before the optimizer, so that it trains the twins
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
        epsilon=(level or 0.0) / 255.0,
        clip_range=(0, 1),
        auxiliary_bn=bool(auxiliary),
    ).run()
    # what inference.json sees: the plain network, loaded strictly (the twins are not in the state dict)
    plain = new_network()
    plain.load_state_dict(network.state_dict(), strict=True)
    return plain.eval()


def attacked_images(network, images, labels, kind: str, level: float) -> torch.Tensor:
    epsilon = level / 255.0
    if kind == "fgsm":
        return fgsm(network, images, labels, epsilon, clip_range=(0, 1))
    # the NLCE paper's attack: targeted towards the inverse mask, one-level steps, Kurakin's step count
    target = inverse_mask(labels, 2)
    return iterative_fgsm(network, images, target, epsilon, alpha=1 / 255.0, targeted=True, clip_range=(0, 1))


def evaluate(network, images, labels) -> dict[str, dict[str, float]]:
    """Mean per-image foreground Dice and IoU, clean and under each of ATTACKS."""
    results = {}
    for name, kind, level in (("clean", None, 0.0), *ATTACKS):
        attacked = images if kind is None else attacked_images(network, images, labels, kind, level)
        with torch.no_grad():
            prediction = network(attacked).argmax(1, keepdim=True)
        dice = DiceMetric(include_background=False, reduction="none", ignore_empty=True)
        iou = MeanIoU(include_background=False, reduction="none", ignore_empty=True)
        onehot_pred = torch.cat([1 - prediction, prediction], 1)
        onehot_label = torch.cat([1 - labels, labels], 1)
        d = dice(onehot_pred, onehot_label).flatten()
        j = iou(onehot_pred, onehot_label).flatten()
        results[name] = {"dice": float(np.nanmean(d.numpy())), "iou": float(np.nanmean(j.numpy()))}
    return results


def run_tasks(args) -> None:
    """Train and evaluate this worker's share of the tasks, appending each result to its dataset's JSONL file."""
    torch.set_num_threads(args.threads)
    loaders = {"medseg": lambda: load_medseg(args.size), "msd": load_msd}
    data = {name: loaders[name]() for name in args.datasets}
    args.runs_dir.mkdir(parents=True, exist_ok=True)
    done = {(r["dataset"], r["seed"], r["variant"], r["level"]) for r in read_runs(args.runs_dir)}
    for index, (dataset, seed, variant, level) in enumerate(tasks(args.datasets, args.seeds, args.levels)):
        if index % args.workers != args.worker or (dataset, seed, variant, level) in done:
            continue
        start = time.time()
        train_x, train_y, test_x, test_y = data[dataset]
        scores = evaluate(train(train_x, train_y, variant, level, args.epochs, seed), test_x, test_y)
        run = {"dataset": dataset, "seed": seed, "variant": variant, "level": level, "epochs": args.epochs}
        run |= {"scores": scores, "seconds": round(time.time() - start, 1)}
        with (args.runs_dir / f"{dataset}.jsonl").open("a") as stream:
            stream.write(json.dumps(run) + "\n")
        print(
            f"[{dataset}] seed {seed} {variant:>18} @ {level}: Dice {scores['clean']['dice']:.4f}"
            f" IoU {scores['clean']['iou']:.4f} | FGSM 25.5: Dice {scores['fgsm@25.5']['dice']:.4f}"
            f" ({run['seconds']:.0f} s)",
            flush=True,
        )


def read_runs(runs_dir: Path) -> list[dict]:
    runs = []
    for path in sorted(runs_dir.glob("*.jsonl")):
        runs += [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return runs


def machine() -> dict:
    """The machine the training runs happened on, stored in the JSON so that ``--render-only`` can name it."""
    return {
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
    }


def interval(values: list[float]) -> tuple[float, float | None]:
    """Mean and the half-width of its two-sided 95 % Student-t confidence interval (None for fewer than 2 values)."""
    mean = statistics.mean(values)
    if len(values) < 2:
        return mean, None
    return mean, float(stats.t.ppf(0.975, len(values) - 1) * statistics.stdev(values) / len(values) ** 0.5)


def row_key(variant: str, level: float | None) -> str:
    return variant if level is None else f"{variant}@{level:g}"


def _recipe_order(key: str) -> tuple:
    """U-Net first, then budget by budget: fgsm, inverse_fgsm, both, each followed by its ``+auxbn`` twin."""
    if key == "none":
        return (0.0, 0, False)
    variant, level = key.split("@")
    augmentation, _, auxiliary = variant.partition("+")
    return (float(level), AUGMENTATIONS.index(augmentation) + 1, bool(auxiliary))


def auxiliary_effect(runs: list[dict], dataset: str) -> dict | None:
    """Every (recipe, budget, seed) pair trained with and without the auxiliary batch norm on ``dataset``: the mean
    paired difference (auxiliary minus plain) of clean IoU and of the mean Dice under the four attacks, and how many
    pairs the auxiliary batch norm won. None when no pair ran."""
    cells = {(r["variant"], r["level"], r["seed"]): r["scores"] for r in runs if r["dataset"] == dataset}
    pairs = [
        (cells[key], cells[(key[0] + "+auxbn", key[1], key[2])])
        for key in cells
        if key[0] != "none" and "+" not in key[0] and (key[0] + "+auxbn", key[1], key[2]) in cells
    ]
    if not pairs:
        return None

    def robust(scores: dict) -> float:
        return statistics.mean(scores[name]["dice"] for name, _, _ in ATTACKS)

    iou = [aux["clean"]["iou"] - plain["clean"]["iou"] for plain, aux in pairs]
    attacked = [robust(aux) - robust(plain) for plain, aux in pairs]
    return {
        "pairs": len(pairs),
        "iou": interval(iou),
        "iou_wins": sum(d > 0 for d in iou),
        "robust_dice": interval(attacked),
        "robust_wins": sum(d > 0 for d in attacked),
    }


def summarise(runs: list[dict]) -> dict:
    """Per dataset and recipe: every metric's mean and 95 % CI over seeds, and the paired differences (same seed)
    to the U-Net and, for ``+auxbn`` recipes, to the same recipe without the auxiliary batch norm."""
    by_cell: dict[str, dict[str, dict[int, dict]]] = {}
    for run in runs:
        key = row_key(run["variant"], run["level"])
        by_cell.setdefault(run["dataset"], {}).setdefault(key, {})[run["seed"]] = run["scores"]
    summary = {}
    for dataset, cells in by_cell.items():
        baseline = cells.get("none", {})
        summary[dataset] = {}
        order = sorted(cells, key=_recipe_order)
        for key in order:
            seeds = cells[key]
            row: dict = {"seeds": sorted(seeds)}
            for metric in METRICS:
                for measure in ("dice", "iou"):
                    row[f"{measure}@{metric}"] = interval([s[metric][measure] for s in seeds.values()])
            paired = {"vs_unet": baseline}
            if "+auxbn" in key:
                paired["vs_plain_bn"] = cells.get(key.replace("+auxbn", ""), {})
            for name, reference in paired.items():
                common = sorted(set(seeds) & set(reference))
                for measure in ("dice", "iou"):
                    if common and key != "none":
                        diffs = [seeds[s]["clean"][measure] - reference[s]["clean"][measure] for s in common]
                        row[f"{name}:{measure}"] = (*interval(diffs), len(common))
            summary[dataset][key] = row
    return summary


def collect(args) -> dict:
    """OUTPUT.json's content from the runs in ``--runs-dir`` (only the data sets, seeds and budgets asked for)."""
    runs = [
        run
        for run in read_runs(args.runs_dir)
        if run["dataset"] in args.datasets
        and run["seed"] in args.seeds
        and (run["level"] is None or run["level"] in args.levels)
        and run["epochs"] == args.epochs
    ]
    config = {key: value for key, value in vars(args).items() if key not in ("worker", "render_only", "collect")}
    config = config | {"output": str(args.output), "runs_dir": str(args.runs_dir)}
    planned = tasks(args.datasets, args.seeds, args.levels)
    done = {(r["dataset"], r["seed"], r["variant"], r["level"]) for r in runs}
    missing = [list(task) for task in planned if task not in done]
    return {
        "config": config,
        "machine": machine(),
        "train_seconds": round(sum(run["seconds"] for run in runs), 1),
        "runs": runs,
        "missing": missing,
        "summary": summarise(runs),
    }


def command(config: dict) -> str:
    """The full command line equivalent to a run's config (every option spelled out)."""
    return (
        f"python benchmarks/augmentation_results.py --seeds {' '.join(map(str, config['seeds']))} "
        f"--epochs {config['epochs']} --size {config['size']} --datasets {' '.join(config['datasets'])} "
        f"--levels {' '.join(f'{level:g}' for level in config['levels'])} --threads {config['threads']}"
    )


def _ci(cell, digits: int = 3, signed: bool = False) -> str:
    mean, half = cell[0], cell[1]
    sign = "+" if signed else ""
    if half is None:
        return f"{mean:{sign}.{digits}f} (n=1)"
    return f"{mean:{sign}.{digits}f} [{mean - half:{sign}.{digits}f}, {mean + half:{sign}.{digits}f}]"


def _robust(row: dict) -> float:
    """Mean Dice over the four evaluation attacks: the robustness score of a recipe."""
    return statistics.mean(row[f"dice@{name}"][0] for name, _, _ in ATTACKS)


def headline(results: dict) -> list[str]:
    """The page's first lines: the best recipe for clean accuracy, for robustness and for both, per data set, and
    whether any recipe reproduces paper A's accuracy gain (a clean IoU above the U-Net's, paired 95 % CI above 0).
    Robustness is the mean Dice under the four evaluation attacks."""
    lines = []
    planned = len(results["config"]["seeds"])
    for dataset, summary in results["summary"].items():
        # only recipes with every planned seed compete (a partial one's mean is over other seeds than its rivals');
        # with none complete, those with at least two seeds
        recipes = {key: row for key, row in summary.items() if key != "none" and len(row["seeds"]) == planned}
        recipes = recipes or {k: row for k, row in summary.items() if k != "none" and len(row["seeds"]) >= 2}
        if "none" not in summary or not recipes:
            lines.append(f"- **{dataset}:** too few runs for a comparison (see the tables).")
            continue
        unet = summary["none"]
        accurate = max(recipes, key=lambda k: recipes[k]["iou@clean"][0])
        robust = max(recipes, key=lambda k: _robust(recipes[k]))

        # not significantly below the U-Net: the paired CI of the IoU difference reaches 0
        balanced = [
            k
            for k, row in recipes.items()
            if row["vs_unet:iou"][1] is not None and row["vs_unet:iou"][0] + row["vs_unet:iou"][1] >= 0
        ]
        both = max(balanced, key=lambda k: _robust(recipes[k])) if balanced else None
        # the stricter reading: the point estimate of the clean IoU is not below the U-Net's
        level = [k for k, row in recipes.items() if row["vs_unet:iou"][0] >= 0]
        strict = max(level, key=lambda k: _robust(recipes[k])) if level else None
        gains = [
            k
            for k in recipes
            if recipes[k]["vs_unet:iou"][1] is not None
            and recipes[k]["vs_unet:iou"][0] - recipes[k]["vs_unet:iou"][1] > 0
        ]
        delta = recipes[accurate]["vs_unet:iou"]
        effect = auxiliary_effect(results["runs"], dataset)
        lines += [
            f"- **{dataset}** (U-Net: clean IoU {_ci(unet['iou@clean'])}, robust Dice {_robust(unet):.3f}; among the"
            f" {len(recipes)} recipes with {len(next(iter(recipes.values()))['seeds'])} seeds):",
            f"  - best clean accuracy: `{accurate}`, IoU {_ci(recipes[accurate]['iou@clean'])}, "
            f"{_ci(delta, signed=True)} vs the U-Net (paired by seed, n={delta[2]}).",
            f"  - best robustness: `{robust}`, mean Dice under the four attacks {_robust(recipes[robust]):.3f} "
            f"(U-Net {_robust(unet):.3f}); clean IoU {_ci(recipes[robust]['iou@clean'])}.",
            (
                f"  - best for both (most robust among the recipes whose clean IoU is not significantly below the "
                f"U-Net's): `{both}`, robust Dice {_robust(recipes[both]):.3f}, clean IoU "
                f"{_ci(recipes[both]['iou@clean'])} ({_ci(recipes[both]['vs_unet:iou'], signed=True)} vs the U-Net)."
                if both
                else "  - best for both: none; every recipe's clean IoU is significantly below the U-Net's."
            ),
            (
                f"  - most robust recipe whose mean clean IoU is not below the U-Net's: `{strict}`, robust Dice"
                f" {_robust(recipes[strict]):.3f}, clean IoU {_ci(recipes[strict]['iou@clean'])}"
                f" ({_ci(recipes[strict]['vs_unet:iou'], signed=True)} vs the U-Net)."
                if strict
                else "  - no recipe's mean clean IoU reaches the U-Net's."
            ),
            (
                "  - paper A's accuracy gain (clean IoU above the U-Net's, paired 95 % CI above 0): reproduced by "
                + ", ".join(f"`{k}`" for k in gains)
                + "."
                if gains
                else "  - paper A's accuracy gain (clean IoU above the U-Net's, paired 95 % CI above 0): **not "
                "reproduced** by any recipe."
            ),
        ]
        if effect:
            lines.append(
                f"  - the auxiliary batch norm, over all {effect['pairs']} (recipe, budget, seed) pairs: clean IoU"
                f" {_ci(effect['iou'], signed=True)} (higher in {effect['iou_wins']} of {effect['pairs']}), robust"
                f" Dice {_ci(effect['robust_dice'], signed=True)} (higher in {effect['robust_wins']})."
            )
    return lines


def not_run(results: dict) -> list[str]:
    """What of the planned grid has no result (so the page says exactly what was not run)."""
    missing = results.get("missing") or []
    if not missing:
        return ["- **Grid:** every planned training ran."]
    cells: dict[tuple[str, str], list[int]] = {}
    for dataset, seed, _variant, level in missing:
        cells.setdefault((dataset, "U-Net" if level is None else f"eps {level:g}"), []).append(seed)
    parts = [f"{d} {what} ({len(seeds)} training{'s' if len(seeds) > 1 else ''})" for (d, what), seeds in cells.items()]
    return [
        f"- **Not run:** {len(missing)} of the planned trainings, for lack of CPU time on the shared 2-core machine: "
        + "; ".join(parts)
        + ". Those cells are absent from the tables and from the conclusions above."
    ]


def markdown(results: dict, name: str) -> str:
    """The results page, rendered from the JSON alone (``--render-only`` re-renders it without training)."""
    config, host = results["config"], results.get("machine") or {}
    size, seeds = config["size"], ", ".join(map(str, config["seeds"]))
    gpu = host.get("gpu") or "no GPU"
    lines = [
        "# Paper A at CPU scale: adversarial augmentation with and without an auxiliary batch norm (AdvProp)",
        "",
        *headline(results),
        *not_run(results),
        "",
        f"- **Command:** `{command(config)}` (one process per `--worker K --workers N`, then `--collect`; re-render"
        " this page and the figure from the JSON, without training: `python benchmarks/augmentation_results.py"
        " --render-only`).",
        f"- **Data:** `medseg`: the 50 MedSeg COVID-19 CT slices of `../shared/data/ct_covid_medseg_infnet/train`,"
        f" resized to {size}x{size}, a fixed 40 / 10 train / test split (seed 0); `msd`: the MSD Task06 lung-tumour"
        " patches of `../shared/data/ct_msd_lung_tumour_patches`, 48x48, the 130 `val_*` patches (13 patients) for"
        " training and the 130 `test_*` patches (13 other patients) for testing.",
        f"- **Seeds:** {seeds} planned (one training run per seed, recipe and budget, {config['epochs']} epochs);"
        " every cell is the mean over the seeds that ran, with its two-sided 95 % Student-t confidence interval over"
        " seeds in brackets; differences are paired by seed.",
        f"- **Machine:** {host.get('platform', 'not recorded')}, {host.get('cpus', '?')} CPU cores (shared with other"
        f" jobs), {gpu}, torch {host.get('torch', '?')}, {config['threads']} torch thread(s) per process,"
        f" {results.get('train_seconds', 0) / 3600:.1f} CPU-process hours in all"
        + (f", collected on {host['date']}" if host.get("date") else "")
        + ".",
        "",
        "Recipes: `none` is the plain U-Net; `fgsm`, `inverse_fgsm`, `both` add online copies of every batch"
        " (`AdversarialAugmentationTrainer`, `reuse_gradient=True`) made with the budget after `@` in 0..255 levels"
        " on [0, 1] inputs (25.5 = the paper's eps 0.1); `+auxbn` sends the copies through an auxiliary batch norm"
        " (`convert_to_auxiliary_bn`, one twin per layer shared by both copies; clean passes, evaluation and"
        " attacks use the main batch norm). Every model is evaluated after a strict load of its state dict into a"
        " plain MONAI UNet. Metrics: per-image foreground Dice and IoU on the test split (images without"
        " foreground left out). Attacks: untargeted FGSM at 8 and 25.5 levels, and the NLCE paper's targeted"
        " I-FGSM (towards the inverse mask, one-level steps, Kurakin's step count) at 2 and 8 levels. The"
        " offline (two-stage) variants and the FGSM sweep of the previous version of this page (git commit 5834a22,"
        " 20 epochs, same data) are not rerun here.",
        "",
    ]
    attack_columns = [f"Dice {name.replace('ifgsm_t', 'I-FGSM-t').replace('fgsm', 'FGSM')}" for name in METRICS[1:]]
    for dataset, summary in results["summary"].items():
        lines += [
            f"## {dataset}",
            "",
            "| recipe | seeds | clean Dice | clean IoU | IoU vs U-Net | " + " | ".join(attack_columns) + " |",
            "|---|---|---|---|---|" + "---|" * len(attack_columns),
        ]
        for key, row in summary.items():
            delta = _ci(row["vs_unet:iou"], signed=True) if "vs_unet:iou" in row else ""
            cells = [_ci(row["dice@clean"]), _ci(row["iou@clean"]), delta]
            cells += [f"{row[f'dice@{metric}'][0]:.3f}" for metric in METRICS[1:]]
            lines.append(f"| {key} | {len(row['seeds'])} | " + " | ".join(cells) + " |")
        lines += [
            "",
            "Auxiliary batch norm, paired with the same recipe, budget and seed without it (clean IoU and Dice):",
            "",
            "| recipe | seeds | IoU, +auxbn minus plain BN | Dice, +auxbn minus plain BN |",
            "|---|---|---|---|",
        ]
        for key, row in summary.items():
            if "vs_plain_bn:iou" in row:
                iou, dice = row["vs_plain_bn:iou"], row["vs_plain_bn:dice"]
                lines.append(f"| {key} | {iou[2]} | {_ci(iou, signed=True)} | {_ci(dice, signed=True)} |")
        lines.append("")
    lines += [f"![clean IoU and Dice under FGSM vs the training budget, mean over seeds]({name}.png)", ""]
    return "\n".join(lines)


def figure(results: dict, path: Path) -> Path:
    """Clean IoU and Dice under FGSM 25.5 vs the training budget, per recipe (auxiliary batch norm dashed), one
    column per data set; the U-Net is the grey band (its 95 % CI over seeds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # data sets with recipes only: a baseline alone has nothing to compare
    names = [name for name, summary in results["summary"].items() if any(key != "none" for key in summary)]
    names = names or list(results["summary"])
    panels = (("iou@clean", "clean IoU"), ("dice@fgsm@25.5", "Dice under FGSM 25.5"))
    fig, axes = plt.subplots(len(panels), len(names), figsize=(6 * len(names), 8), squeeze=False)
    colours = dict(zip(AUGMENTATIONS, ("tab:red", "tab:blue", "tab:purple"), strict=True))
    for column, name in enumerate(names):
        summary = results["summary"][name]
        for row_index, (metric, label) in enumerate(panels):
            axis = axes[row_index][column]
            if "none" in summary:
                mean, half = summary["none"][metric]
                axis.axhspan(mean - (half or 0), mean + (half or 0), color="grey", alpha=0.3, label="U-Net (95 % CI)")
                axis.axhline(mean, color="grey")
            for augmentation in AUGMENTATIONS:
                for auxiliary in (False, True):
                    variant = variant_name(augmentation, auxiliary)
                    points = sorted(
                        (float(key.split("@")[1]), row[metric])
                        for key, row in summary.items()
                        if key.split("@")[0] == variant
                    )
                    if not points:
                        continue
                    # a small multiplicative dodge keeps the six recipes' error bars apart on the log axis
                    dodge = 1 + 0.03 * (2 * AUGMENTATIONS.index(augmentation) + auxiliary - 2.5)
                    xs = [p[0] * dodge for p in points]
                    ys = [p[1][0] for p in points]
                    errors = [p[1][1] or 0 for p in points]
                    axis.errorbar(
                        xs,
                        ys,
                        yerr=errors,
                        color=colours[augmentation],
                        linestyle="--" if auxiliary else "-",
                        marker="s" if auxiliary else "o",
                        markerfacecolor="white" if auxiliary else None,
                        capsize=3,
                        label=variant,
                    )
            axis.set_xscale("log")
            axis.set(title=f"{name}: {label}", xlabel="training budget (0..255 levels, log)", ylabel=label)
            axis.grid(alpha=0.3)
            axis.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--datasets", nargs="+", default=["medseg", "msd"], choices=["medseg", "msd"])
    parser.add_argument("--levels", type=float, nargs="+", default=list(LEVELS), help="training budgets, 0..255")
    parser.add_argument("--output", type=Path, default=REPO / "docs" / "results" / "adversarial_augmentation")
    parser.add_argument("--runs-dir", type=Path, default=Path(tempfile.gettempdir()) / "augmentation_results_runs")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is robust to a shared machine)")
    parser.add_argument("--worker", type=int, default=0, help="this process's index among --workers")
    parser.add_argument("--workers", type=int, default=1, help="processes sharing the task list")
    parser.add_argument("--collect", action="store_true", help="build OUTPUT.json from --runs-dir, no training")
    parser.add_argument(
        "--render-only",
        action="store_true",
        help="rewrite the page and figure from an existing OUTPUT.json, no training",
    )
    args = parser.parse_args()
    if not 0 <= args.worker < args.workers:
        parser.error(f"--worker must be in 0..{args.workers - 1}, got {args.worker}")
    if args.render_only:
        results = json.loads(args.output.with_suffix(".json").read_text())
    else:
        if not args.collect:
            run_tasks(args)
        results = collect(args)
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.with_suffix(".json").write_text(json.dumps(results, indent=1))
    args.output.with_suffix(".md").write_text(markdown(results, args.output.name))
    print(args.output.with_suffix(".md"))
    print(figure(results, args.output.with_suffix(".png")))


if __name__ == "__main__":
    main()
