"""Certified vs empirical robustness on real CXR: randomized smoothing's certified Dice beside L2 PGD at the same radii.

Same data, split, resizing and training recipe as ``benchmarks/nlce_robustness_results.py`` (imported from it; the
split of ``docs/results/worst_case.md``): a MONAI U-Net trained with a Gaussian noise copy of every batch
(``augmentation="gaussian"``, ``noise_sigma`` = the certificate's sigma, on [0, 1] inputs) for each --sigmas value,
--epochs epochs, seed --seed. A network whose ``<work>/<key>/model.pt`` and ``train.json`` exist is not trained
again.

Per sigma, on the first --cases test images:

- certification: ``monai_advseg.certify.smoothed_segmentation`` (n0, n, alpha, Clopper-Pearson with Bonferroni over
  the voxels of a case) at the clean images, and ``certified_scores`` (certified Dice: abstentions and voxels
  certified below r count as wrong) at every radius of --radii;
- attack: ``monai_advseg.attacks.pgd_l2`` on the base network at every radius of --attack-radii (L2 over the image,
  input units; --pgd-steps steps of ``2.5 r / steps``, random start, clipped to [0, 1]); scored as the base network's
  Dice on the attacked images and as the smoothed prediction's Dice there (``smoothed_segmentation`` at the PGD
  image, abstentions wrong: ``certified_scores`` at r = 0);
- the check: per case, certified Dice at r <= the smoothed Dice at the PGD image of radius r. The certificate says
  no perturbation of norm r can bring the smoothed Dice below the certified Dice (with probability 1 - alpha), so a
  case above is a bug or the certificate's alpha event; the base network's Dice is reported beside it, but the
  certificate is about the smoothed network, not the base one.

Writes ``<work>/<key>/{model.pt,train.json,certified.json}`` and ``docs/results/certified.{json,md,png}``.

    python benchmarks/certified_results.py [--sigmas 0.12 0.25 0.5] [--epochs 15] [--cases 16] [--n0 10] [--n 200] \\
        [--threads 1] [--work /tmp/certified_runs] [--train-only] [--render-only]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from nlce_robustness_results import clean_scores, load_split, make_network, train  # noqa: E402

from monai_advseg.attacks import pgd_l2  # noqa: E402
from monai_advseg.certify import certified_scores, smoothed_segmentation  # noqa: E402
from monai_advseg.handlers import save_atomically  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "docs" / "results"


def key_of(sigma: float) -> str:
    return f"unet_gaussian_{sigma:g}"


def trained(sigma: float, train_data: list[dict], test_data: list[dict], args) -> tuple[torch.nn.Module, dict]:
    """The U-Net noise-trained at ``sigma`` (trained now, or the one a previous run saved) and its record."""
    out = args.work / key_of(sigma)
    out.mkdir(parents=True, exist_ok=True)
    if (out / "model.pt").exists() and (out / "train.json").exists():
        network = make_network("unet")
        network.load_state_dict(torch.load(out / "model.pt", weights_only=True))
        return network.eval(), json.loads((out / "train.json").read_text())
    network, history, seconds = train(
        "unet", train_data, args.epochs, args.seed, augmentations="gaussian", noise_sigma=sigma
    )
    save_atomically(network.state_dict(), out / "model.pt")
    record = {
        "network": "unet",
        "augmentations": "gaussian",
        "noise_sigma": sigma,
        "epochs": args.epochs,
        "seed": args.seed,
        "loss_history": history,
        "train_seconds": seconds,
        "clean_test": clean_scores(network, test_data),
        "parameters": sum(p.numel() for p in network.parameters()),
    }
    (out / "train.json").write_text(json.dumps(record, indent=2))
    print(f"[{key_of(sigma)}] trained in {seconds:.0f} s, clean test Dice {record['clean_test']['dice']:.3f}")
    return network.eval(), record


class NoisyAverage(torch.nn.Module):
    """The smoothed network's soft output for an attack on it: log of the mean softmax over ``samples`` noisy copies
    ``x + N(0, sigma^2)`` (fresh noise every forward; SmoothAdv's expectation over transformation)."""

    def __init__(self, network: torch.nn.Module, sigma: float, samples: int, generator: torch.Generator) -> None:
        super().__init__()
        self.network, self.sigma, self.samples, self.generator = network, sigma, samples, generator

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        noise = torch.randn((self.samples, *image.shape), generator=self.generator).to(image)
        logits = self.network((image.unsqueeze(0) + self.sigma * noise).flatten(0, 1))
        probabilities = logits.softmax(dim=1).reshape(self.samples, *image.shape[:1], *logits.shape[1:]).mean(dim=0)
        return probabilities.clamp_min(1e-12).log()


def base_dice(network: torch.nn.Module, images: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """Per-case foreground Dice of the base network's argmax (``certified_scores`` with every voxel counted)."""
    with torch.no_grad():
        prediction = network(images).argmax(dim=1, keepdim=True)
    return certified_scores(prediction, torch.ones(prediction.shape), truth, [0.0], 2)["dice"][:, 0]


def certify(network, images: torch.Tensor, sigma: float, args, stream: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(args.seed * 1000 + stream)
    return smoothed_segmentation(
        network,
        images,
        sigma=sigma,
        n0=args.n0,
        n=args.n,
        alpha=args.alpha,
        batch_size=args.batch_size,
        generator=generator,
    )


def evaluate(sigma: float, network: torch.nn.Module, data: list[dict], args, earlier: dict | None = None) -> dict:
    """Certification at the clean images and L2 PGD (base and smoothed Dice) at each attack radius.

    With ``earlier`` (a previous record of the same settings), its attack rows are kept and only the radii it lacks
    are attacked, numbered after its own: the random streams, and so the result, are those of one run over all the
    radii in that order (the clean certification is recomputed from the same stream and must agree).
    """
    images = torch.stack([d["image"] for d in data])
    truth = torch.stack([d["label"] for d in data]).long()
    began = time.perf_counter()
    labels, radius = certify(network, images, sigma, args, stream=0)
    certify_seconds = time.perf_counter() - began
    certified = certified_scores(labels, radius, truth, args.radii, 2)
    record = {
        "sigma": sigma,
        "cases": [d["name"] for d in data],
        "base_clean_dice": base_dice(network, images, truth).tolist(),
        "radii": list(args.radii),
        "certified_dice": certified["dice"].tolist(),
        "certified_fraction": certified["certified_fraction"].tolist(),
        "abstain_rate": certified["abstain_rate"].tolist(),
        "median_radius_certified": float(radius[labels >= 0].median()) if bool((labels >= 0).any()) else 0.0,
        "max_radius": float(radius.max()),
        "certify_seconds": certify_seconds,
        "attack": [],
    }
    print(f"[{key_of(sigma)}] certified {len(data)} cases in {certify_seconds:.0f} s", flush=True)
    if earlier is not None:
        if earlier["certified_dice"] != record["certified_dice"] or earlier["cases"] != record["cases"]:
            raise SystemExit(f"[{key_of(sigma)}] --append: the clean certification differs from the earlier run's")
        record["attack"] = list(earlier["attack"])
        record["certify_seconds"] = earlier["certify_seconds"]
    done = [row["radius"] for row in record["attack"]]
    todo = [r for r in args.attack_radii if r not in done]
    for number, r in enumerate(todo, start=len(done) + 1):
        began = time.perf_counter()
        attacked = pgd_l2(
            network,
            images,
            truth,
            r,
            alpha=2.5 * r / args.pgd_steps,
            steps=args.pgd_steps,
            generator=torch.Generator().manual_seed(args.seed * 1000 + number),
            clip_range=(0.0, 1.0),
        )
        attack_seconds = time.perf_counter() - began
        norms = (attacked.double() - images.double()).flatten(1).norm(dim=1)
        began = time.perf_counter()
        adv_labels, adv_radius = certify(network, attacked, sigma, args, stream=100 + number)
        smoothed_seconds = time.perf_counter() - began
        smoothed = certified_scores(adv_labels, adv_radius, truth, [0.0], 2)
        certified_at_r = certified_scores(labels, radius, truth, [r], 2)["dice"][:, 0]
        eot = {}
        if args.eot_samples > 0:  # the same L2 PGD on the smoothed network itself
            began = time.perf_counter()
            smoothed_network = NoisyAverage(
                network, sigma, args.eot_samples, torch.Generator().manual_seed(args.seed * 1000 + 200 + number)
            )
            eot_images = pgd_l2(
                smoothed_network,
                images,
                truth,
                r,
                alpha=2.5 * r / args.pgd_steps,
                steps=args.pgd_steps,
                generator=torch.Generator().manual_seed(args.seed * 1000 + 300 + number),
                clip_range=(0.0, 1.0),
            )
            eot_attack_seconds = time.perf_counter() - began
            eot_labels, eot_radius = certify(network, eot_images, sigma, args, stream=400 + number)
            eot_scores = certified_scores(eot_labels, eot_radius, truth, [0.0], 2)
            eot = {
                "eot_smoothed_dice": eot_scores["dice"][:, 0].tolist(),
                "eot_base_dice": base_dice(network, eot_images, truth).tolist(),
                "eot_violations": int((certified_at_r > eot_scores["dice"][:, 0] + 1e-12).sum()),
                "eot_max_perturbation_norm": float(
                    (eot_images.double() - images.double()).flatten(1).norm(dim=1).max()
                ),
                "eot_seconds": time.perf_counter() - began,
                "eot_attack_seconds": eot_attack_seconds,
            }
        row = {
            "radius": r,
            "max_perturbation_norm": float(norms.max()),
            "base_dice": base_dice(network, attacked, truth).tolist(),
            "smoothed_dice": smoothed["dice"][:, 0].tolist(),
            "smoothed_abstain_rate": smoothed["abstain_rate"].tolist(),
            "certified_dice": certified_at_r.tolist(),
            "violations": int((certified_at_r > smoothed["dice"][:, 0] + 1e-12).sum()),
            "attack_seconds": attack_seconds,
            "smoothed_seconds": smoothed_seconds,
            **eot,
        }
        record["attack"].append(row)
        print(
            f"[{key_of(sigma)}] r={r:g}: base {_mean(row['base_dice']):.3f} smoothed {_mean(row['smoothed_dice']):.3f}"
            f" certified {_mean(row['certified_dice']):.3f} violations {row['violations']} "
            f"({attack_seconds:.0f} + {smoothed_seconds:.0f} s)",
            flush=True,
        )
    return record


def _mean(values) -> float:
    finite = [v for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    return sum(finite) / len(finite) if finite else float("nan")


def machine() -> dict:
    return {
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "load_average_at_render": os.getloadavg(),
    }


def certify_control(control: str, sigma: float, data: list[dict], args, command: str) -> None:
    """Certify a network trained without noise (``ARCH:PATH``, a :func:`make_network` name and its weights) on the
    clean cases: how much the noise training matters. Written to ``<work>/control_<ARCH>_<sigma>/certified.json``."""
    arch, _, weights = control.partition(":")
    out = args.work / f"control_{arch}_{sigma:g}"
    if (out / "certified.json").exists():
        return
    network = make_network(arch)
    network.load_state_dict(torch.load(weights, weights_only=True))
    network.eval()
    images = torch.stack([d["image"] for d in data])
    truth = torch.stack([d["label"] for d in data]).long()
    began = time.perf_counter()
    labels, radius = certify(network, images, sigma, args, stream=0)
    seconds = time.perf_counter() - began
    scores = certified_scores(labels, radius, truth, args.radii, 2)
    record = {
        "network": arch,
        "weights": weights,
        "sigma": sigma,
        "cases": [d["name"] for d in data],
        "base_clean_dice": base_dice(network, images, truth).tolist(),
        "radii": list(args.radii),
        "certified_dice": scores["dice"].tolist(),
        "abstain_rate": scores["abstain_rate"].tolist(),
        "max_radius": float(radius.max()),
        "certify_seconds": seconds,
        "command": command,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "certified.json").write_text(json.dumps(record, indent=2))
    print(f"[control {arch} sigma {sigma:g}] certified in {seconds:.0f} s", flush=True)


def _summary(record: dict) -> dict:
    """Means over the cases of one sigma's record (NaN cases, without foreground, left out)."""
    certified = [_mean(column) for column in zip(*record["certified_dice"], strict=True)]
    rows = []
    for row in record["attack"]:
        rows.append(
            {
                "radius": row["radius"],
                "certified_dice": _mean(row["certified_dice"]),
                "smoothed_dice_at_pgd": _mean(row["smoothed_dice"]),
                "base_dice_at_pgd": _mean(row["base_dice"]),
                "smoothed_abstain_rate_at_pgd": _mean(row["smoothed_abstain_rate"]),
                "cases_certified_above_smoothed": row["violations"],
                "cases_certified_above_base": sum(
                    c > b + 1e-12 for c, b in zip(row["certified_dice"], row["base_dice"], strict=True)
                ),
                "max_perturbation_norm": row["max_perturbation_norm"],
                "attack_seconds": row["attack_seconds"],
                "smoothed_seconds": row["smoothed_seconds"],
                "eot_smoothed_dice_at_pgd": _mean(row.get("eot_smoothed_dice", [])),
                "eot_base_dice_at_pgd": _mean(row.get("eot_base_dice", [])),
                "cases_certified_above_eot": row.get("eot_violations"),
                "eot_seconds": row.get("eot_seconds"),
            }
        )
    margins = [
        (min(smoothed, eot) - certified, row["radius"], certified, min(smoothed, eot))
        for row in record["attack"]
        for certified, smoothed, eot in zip(
            row["certified_dice"], row["smoothed_dice"], row.get("eot_smoothed_dice", row["smoothed_dice"]), strict=True
        )
        if certified > 0
    ]
    closest = min(margins) if margins else None
    return {
        "sigma": record["sigma"],
        "command": record["command"],
        "nontrivial_comparisons": len(margins) * (2 if "eot_smoothed_dice" in record["attack"][0] else 1),
        "closest_case": None
        if closest is None
        else {"margin": closest[0], "radius": closest[1], "certified_dice": closest[2], "attacked_dice": closest[3]},
        "train": {k: record["train"][k] for k in ("clean_test", "train_seconds", "epochs", "seed", "parameters")},
        "base_clean_dice": _mean(record["base_clean_dice"]),
        "certified_dice_by_radius": dict(zip([f"{r:g}" for r in record["radii"]], certified, strict=True)),
        "abstain_rate": _mean(record["abstain_rate"]),
        "median_certified_radius": record["median_radius_certified"],
        "max_certified_radius": record["max_radius"],
        "certify_seconds": record["certify_seconds"],
        "attack": rows,
    }


def _figure(records: list[dict], path: Path) -> None:
    from monai_advseg.handlers.robustness_report import require_matplotlib, save_figure

    plt = require_matplotlib()
    figure, axes = plt.subplots(1, len(records), figsize=(4.2 * len(records), 3.6), sharey=True, squeeze=False)
    for axis, record in zip(axes[0], records, strict=True):
        certified = [_mean(column) for column in zip(*record["certified_dice"], strict=True)]
        axis.plot(record["radii"], certified, "-o", color="tab:green", label="certified Dice (smoothed)", ms=3)
        radii = [row["radius"] for row in record["attack"]]
        axis.plot(radii, [_mean(r["smoothed_dice"]) for r in record["attack"]], "s--", color="tab:blue",
                  label="smoothed Dice at L2 PGD")  # fmt: skip
        axis.plot(radii, [_mean(r["base_dice"]) for r in record["attack"]], "^:", color="tab:red",
                  label="base Dice at L2 PGD")  # fmt: skip
        if "eot_smoothed_dice" in record["attack"][0]:
            axis.plot(radii, [_mean(r["eot_smoothed_dice"]) for r in record["attack"]], "D--", color="tab:purple",
                      label="smoothed Dice at L2 PGD on the smoothed net (EOT)")  # fmt: skip
        axis.axhline(_mean(record["base_clean_dice"]), color="grey", lw=0.8, label="base clean Dice")
        axis.set_title(f"U-Net, noise sigma {record['sigma']:g}")
        axis.set_xscale("symlog", linthresh=0.1)  # the certificates end below 1, the attacks go on to 16
        axis.set_xlim(0, 1.3 * max(record["radii"] + radii))
        axis.set_xlabel("L2 radius (input units, [0, 1] image; symlog)")
        axis.set_ylim(-0.02, 1.0)
        axis.grid(alpha=0.3)
    axes[0][0].set_ylabel("mean foreground Dice")
    axes[0][0].legend(fontsize=7, loc="lower left")
    figure.tight_layout()
    save_figure(figure, path)


def render(args, command: str, host: dict) -> None:
    """``docs/results/certified.{json,md,png}`` from the per-sigma records under ``args.work``."""
    records = []
    for sigma in args.sigmas:
        path = args.work / key_of(sigma) / "certified.json"
        if path.exists():
            records.append(json.loads(path.read_text()))
    if not records:
        raise SystemExit(f"no certified.json under {args.work}: run without --render-only first")
    summaries = [_summary(r) for r in records]
    controls = [json.loads(path.read_text()) for path in sorted(args.work.glob("control_*/certified.json"))]
    seed_runs = [
        json.loads(path.read_text())
        for folder in getattr(args, "seed_runs", [])
        for path in sorted(Path(folder).glob("unet_gaussian_*/certified.json"))
    ]
    settings = records[0]["settings"]
    done = len(records) == len(args.sigmas)
    violations = sum(row["cases_certified_above_smoothed"] for s in summaries for row in s["attack"])
    violations += sum(row["cases_certified_above_eot"] or 0 for s in summaries for row in s["attack"])
    summary = {
        "status": "complete" if done else f"partial: {len(records)} of {len(args.sigmas)} sigmas",
        "command": records[0]["command"],
        "render_command": command,
        "data": "cxr_lung_montgomery_shenzhen, split_datalist(0.2, seed=0): 200 train / 50 test, 96x96, [0, 1]",
        "cases": records[0]["cases"],
        "certification": {k: settings[k] for k in ("n0", "n", "alpha", "batch_size")}
        | {"bound": "Clopper-Pearson, Bonferroni over the voxels of a case"},
        "attack": {
            "name": "pgd_l2",
            "steps": settings["pgd_steps"],
            "alpha": "2.5 r / steps",
            "random_start": True,
            "eot_samples": settings["eot_samples"],
        },
        "machine": host,
        "violations_certified_above_smoothed": violations,
        "train_command": getattr(args, "train_command", ""),
        "sigmas": summaries,
        "controls": [
            {
                "network": c["network"],
                "weights": c["weights"],
                "sigma": c["sigma"],
                "command": c["command"],
                "base_clean_dice": _mean(c["base_clean_dice"]),
                "abstain_rate": _mean(c["abstain_rate"]),
                "max_certified_radius": c["max_radius"],
                "certified_dice_by_radius": dict(
                    zip(
                        [f"{r:g}" for r in c["radii"]],
                        [_mean(col) for col in zip(*c["certified_dice"], strict=True)],
                        strict=True,
                    )
                ),
                "certify_seconds": c["certify_seconds"],
            }
            for c in controls
        ],
        "other_seeds": [
            _summary(r) | {"seed": r["settings"]["seed"], "n_cases": len(r["cases"]), "work": r["settings"]["work"]}
            for r in seed_runs
        ],
    }
    args.results_dir.mkdir(parents=True, exist_ok=True)
    (args.results_dir / "certified.json").write_text(json.dumps(summary, indent=2) + "\n")
    _figure(records, args.results_dir / "certified.png")
    (args.results_dir / "certified.md").write_text(markdown(summary, settings))


def markdown(summary: dict, settings: dict) -> str:
    sigmas = summary["sigmas"]
    attacks = 2 if summary["attack"]["eot_samples"] else 1
    total_cases = sum(len(s["attack"]) for s in sigmas) * len(summary["cases"]) * attacks
    violations = summary["violations_certified_above_smoothed"]
    lines = ["# Certified Dice (randomized smoothing) vs L2 PGD on chest X-ray lungs", ""]
    check = (
        f"**The check holds: in none of the {total_cases} (case, sigma, radius, attack) comparisons is the certified "
        "Dice above the smoothed network's Dice at the L2 PGD image of that radius.**"
        if violations == 0
        else f"**The check FAILS in {violations} of {total_cases} (case, sigma, radius, attack) comparisons: a "
        "certified Dice above the smoothed network's Dice at the PGD image (a bug, or the certificate's alpha "
        "event).**"
    )
    nontrivial = sum(s["nontrivial_comparisons"] for s in sigmas)
    candidates = [s["closest_case"] | {"sigma": s["sigma"]} for s in sigmas if s["closest_case"]]
    check += (
        f" {nontrivial} of them have a certified Dice above 0 (beyond the largest certified radius the certified Dice "
        "is 0 and the check is trivial)"
    )
    if candidates:
        closest = min(candidates, key=lambda c: c["margin"])
        check += (
            f"; the closest case (sigma {closest['sigma']:g}, r = {closest['radius']:g}) has certified Dice "
            f"{closest['certified_dice']:.3f} vs {closest['attacked_dice']:.3f} under attack."
        )
    else:
        check += "."
    lines += [check, ""]
    lines += findings(sigmas, settings)
    if summary["controls"]:
        values = "; ".join(
            f"{c['network']} at sigma {c['sigma']:g}: {c['certified_dice_by_radius']['0']:.3f} "
            f"(abstain rate {c['abstain_rate']:.3f})"
            for c in sorted(summary["controls"], key=lambda c: (c["network"], c["sigma"]))
        )
        lines += [
            "",
            "Controls trained without noise (same split and recipe, clean Dice about 0.95): certified Dice at r = 0 "
            f"{values}. A certified Dice of 0 with almost no abstention means the smoothed prediction is certified but "
            "wrong: not one lung voxel is certified as lung. Noise training is what makes these certificates useful.",
        ]
    if summary["other_seeds"]:
        lines += ["", seeds_line(summary["other_seeds"], sigmas)]
    lines += [
        "",
        (
            f"Scope: seed {settings['seed']}, and a second training seed at sigma "
            + ", ".join(sorted({f"{o['sigma']:g} (seed {o['seed']})" for o in summary["other_seeds"]}))
            + "; the first"
            if summary["other_seeds"]
            else f"Scope: one seed ({settings['seed']}), the first"
        )
        + f" {len(summary['cases'])} test images, n = {settings['n']}; "
        "only the U-Net is noise-trained and attacked (NLCEN, the issue's optional second network, appears only as "
        "a control trained without noise), and no larger n that would certify larger radii.",
    ]
    if summary["status"] != "complete":
        lines += ["", f"**Partial:** {summary['status'].removeprefix('partial: ')} finished."]
    lines += ["", "![certified vs empirical Dice](certified.png)", ""]
    lines += ["## Certified Dice vs radius (mean over the cases)", ""]
    radii = list(sigmas[0]["certified_dice_by_radius"])
    lines += ["| sigma | base clean Dice | abstain rate (r = 0) | " + " | ".join(f"r {r}" for r in radii) + " |"]
    lines += ["|---" * (3 + len(radii)) + "|"]
    for s in sigmas:
        cells = " | ".join(f"{v:.3f}" for v in s["certified_dice_by_radius"].values())
        lines += [f"| {s['sigma']:g} | {s['base_clean_dice']:.3f} | {s['abstain_rate']:.3f} | {cells} |"]
    if summary["controls"]:
        lines += [
            "",
            "Controls: the same certification of networks trained **without** noise (the models of "
            "`docs/results/worst_case.md`, same split and recipe; clean cases only, no attack):",
            "",
            "| network | sigma | base clean Dice | abstain rate (r = 0) | "
            + " | ".join(f"r {r}" for r in radii)
            + " |",
            "|---" * (4 + len(radii)) + "|",
        ]
        for c in sorted(summary["controls"], key=lambda c: (c["network"], c["sigma"])):
            cells = " | ".join(f"{v:.3f}" for v in c["certified_dice_by_radius"].values())
            lines += [
                f"| {c['network']} | {c['sigma']:g} | {c['base_clean_dice']:.3f} | {c['abstain_rate']:.3f} | {cells} |"
            ]
    lines += ["", "## L2 PGD at the same radii (mean over the cases)", ""]
    lines += [
        "| sigma | radius | certified Dice | smoothed Dice at PGD | base Dice at PGD | smoothed abstain at PGD | "
        "smoothed Dice at EOT PGD | base Dice at EOT PGD | cases certified > smoothed (PGD, EOT) | "
        "cases certified > base |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in sigmas:
        for row in s["attack"]:
            lines += [
                f"| {s['sigma']:g} | {row['radius']:g} | {row['certified_dice']:.3f} | "
                f"{row['smoothed_dice_at_pgd']:.3f} | {row['base_dice_at_pgd']:.3f} | "
                f"{row['smoothed_abstain_rate_at_pgd']:.3f} | {row['eot_smoothed_dice_at_pgd']:.3f} | "
                f"{row['eot_base_dice_at_pgd']:.3f} | {row['cases_certified_above_smoothed']}, "
                f"{row['cases_certified_above_eot']} | {row['cases_certified_above_base']} |"
            ]
    if summary["other_seeds"]:
        lines += ["", "## A second training seed"]
        for other in summary["other_seeds"]:
            lines += ["", *seed_paragraph(other, sigmas)]
    lines += ["", "## What was run", ""]
    lines += [
        "- Commands (per sigma; `--append` runs attack only the radii an earlier run lacks, with the random streams of "
        "one run over all the radii): "
        + "; ".join(f"sigma {s['sigma']:g}: `{s['command'].replace(', then ', '`, then `')}`" for s in sigmas)
        + ". "
        f"Page: `{summary['render_command']}`.",
        *(
            [
                "- Controls: "
                + "; ".join(sorted({f"`{c['command']}` ({c['weights']})" for c in summary["controls"]}))
                + ", one process per network."
            ]
            if summary["controls"]
            else []
        ),
        f"- Data: {summary['data']}; the first {len(summary['cases'])} test images are certified and attacked.",
        "- Networks: MONAI U-Net (16-256 channels, 2 residual units, batch norm), the recipe of "
        "`docs/results/nlce_robustness.md` / `worst_case.md` (Adam 1e-3, weight decay 1e-4, batch 8, "
        f"ReduceLROnPlateau, {sigmas[0]['train']['epochs']} epochs, seed {sigmas[0]['train']['seed']}, last epoch) "
        'with `augmentation="gaussian"`: every batch also trained as `x + N(0, sigma^2)` (not clipped), '
        "sigma = the certificate's"
        + (
            f"; trained first, one after another, by `{summary['train_command']}`." if summary["train_command"] else "."
        ),
        f"- Certification: `smoothed_segmentation(n0={settings['n0']}, n={settings['n']}, alpha={settings['alpha']})`, "
        "Clopper-Pearson lower bounds with Bonferroni over the 9216 voxels of a case; certified Dice at r: "
        "abstentions and voxels certified below r count as wrong (`certified_scores`). With n = "
        f"{settings['n']} the largest radius any voxel can get is sigma * Phi^-1((alpha / 9216)^(1/n)).",
        f"- Attack: `pgd_l2` on the base network, {settings['pgd_steps']} steps of 2.5 r / steps, uniform random "
        "start in the L2 ball, clipped to [0, 1], untargeted cross-entropy on the truth; the smoothed Dice at the PGD "
        "image is `smoothed_segmentation` there (same n0, n, alpha, fresh noise), abstentions wrong.",
        f"- EOT attack: the same `pgd_l2` on the smoothed network itself (a module whose output is the log of the "
        f"mean softmax over {settings['eot_samples']} fresh noisy copies per forward, SmoothAdv's attack), then the "
        "smoothed Dice at its image as above.",
        "- Why the check compares with the smoothed Dice: the certificate bounds the smoothed network's Dice, not the "
        "base network's; the base network's Dice at the PGD image is shown for reference (the PGD attacks the base "
        "network, so for the smoothed network it is a transfer attack, an upper bound that may be loose).",
        f"- Machine: {summary['machine']['platform']}, {summary['machine']['cpus']} CPU cores shared with other "
        f"jobs, torch {summary['machine']['torch']}, {summary['machine']['torch_threads']} torch thread(s); load "
        f"average at render {', '.join(f'{v:.1f}' for v in summary['machine']['load_average_at_render'])}"
        + (f"; {summary['machine']['note']}" if summary["machine"].get("note") else "")
        + ".",
        "",
        f"Wall times (s; {len(summary['cases'])} cases, several of these runs at once on the shared cores, so "
        "read them as orders of magnitude; EOT: its attack plus the smoothing at its images):",
        "",
        "| sigma | train | clean test Dice (50 images) | certify the clean cases | L2 PGD, all radii | smoothing at "
        "the PGD images, all radii | EOT PGD + smoothing, all radii |",
        "|---|---|---|---|---|---|---|",
    ]
    for s in sigmas:
        attack, smoothed = (sum(r[key] for r in s["attack"]) for key in ("attack_seconds", "smoothed_seconds"))
        eot = sum(r["eot_seconds"] or 0 for r in s["attack"])
        lines += [
            f"| {s['sigma']:g} | {s['train']['train_seconds']:.0f} | {s['train']['clean_test']['dice']:.3f} | "
            f"{s['certify_seconds']:.0f} | {attack:.0f} | {smoothed:.0f} | {eot:.0f} |"
        ]
    return "\n".join(lines) + "\n"


def seeds_line(others: list[dict], sigmas: list[dict]) -> str:
    """One line on the other seeds: their check, and how far their numbers are from the main seed's."""
    comparisons = sum(len(o["attack"]) * o["n_cases"] * 2 for o in others)
    violations = sum(
        r["cases_certified_above_smoothed"] + (r["cases_certified_above_eot"] or 0) for o in others for r in o["attack"]
    )
    by_sigma = {s["sigma"]: s for s in sigmas}
    clean_gap = max(
        abs(o["certified_dice_by_radius"]["0"] - by_sigma[o["sigma"]]["certified_dice_by_radius"]["0"])
        for o in others
        if o["sigma"] in by_sigma
    )
    attacked_gap, where = 0.0, None
    for o in others:
        main = {r["radius"]: r for r in by_sigma.get(o["sigma"], {"attack": []})["attack"]}
        for row in o["attack"]:
            if row["radius"] in main:
                gap = abs(row["eot_smoothed_dice_at_pgd"] - main[row["radius"]]["eot_smoothed_dice_at_pgd"])
                if gap > attacked_gap:
                    attacked_gap, where = gap, (o["sigma"], row["radius"])
    verdict = f"holds in all {comparisons}" if violations == 0 else f"FAILS in {violations} of {comparisons}"
    seeds = ", ".join(sorted({str(o["seed"]) for o in others}))
    at = ", ".join(f"{o['sigma']:g}" for o in others)
    text = (
        f"A second training seed ({seeds}) at sigma {at}: the check {verdict} of its comparisons; its certified Dice "
        f"at r = 0 is within {clean_gap:.3f} of seed {sigmas[0]['train']['seed']}'s"
    )
    if where is not None:
        text += (
            f", while the smoothed Dice under the EOT attack differs by up to {attacked_gap:.3f} (sigma {where[0]:g}, "
            f"r = {where[1]:g}): read differences at large radii as seed noise"
        )
    return text + " (section below)."


def seed_paragraph(other: dict, sigmas: list[dict]) -> list[str]:
    """Another training seed at one sigma: its own check and its numbers beside the main seed's."""
    main = next((s for s in sigmas if s["sigma"] == other["sigma"]), None)
    rows = other["attack"]
    comparisons = len(rows) * other["n_cases"] * 2
    violations = sum(r["cases_certified_above_smoothed"] + (r["cases_certified_above_eot"] or 0) for r in rows)
    verdict = f"holds in all {comparisons}" if violations == 0 else f"FAILS in {violations} of {comparisons}"
    text = (
        f"Another training seed ({other['seed']}, sigma {other['sigma']:g}, the same {other['n_cases']} cases, fresh "
        f"noise and attack starts): the check {verdict} of its comparisons "
        f"({other['nontrivial_comparisons']} with a certified Dice above 0); certified Dice at r = 0 "
        f"{other['certified_dice_by_radius']['0']:.3f}, largest certified radius {other['max_certified_radius']:.3f}"
    )
    if main is not None:
        text += (
            f" (seed {main['train']['seed']}: {main['certified_dice_by_radius']['0']:.3f}, "
            f"{main['max_certified_radius']:.3f})"
        )
    lines = [text + f". Command: `{other['command']}`. Per radius (this seed / the main seed):", ""]
    lines += [
        "| radius | certified Dice | smoothed Dice at PGD | smoothed Dice at EOT PGD | base Dice at PGD |",
        "|---|---|---|---|---|",
    ]
    by_radius = {r["radius"]: r for r in (main["attack"] if main else [])}
    for row in rows:
        ref = by_radius.get(row["radius"])

        def pair(key, row=row, ref=ref):
            return f"{row[key]:.3f} / {ref[key]:.3f}" if ref else f"{row[key]:.3f}"

        lines += [
            f"| {row['radius']:g} | {pair('certified_dice')} | {pair('smoothed_dice_at_pgd')} | "
            f"{pair('eot_smoothed_dice_at_pgd')} | {pair('base_dice_at_pgd')} |"
        ]
    return lines


def findings(sigmas: list[dict], settings: dict) -> list[str]:
    """The first lines: what the numbers say, computed from them."""
    voxels = 96 * 96
    cap = statistics.NormalDist().inv_cdf((settings["alpha"] / voxels) ** (1 / settings["n"]))
    lines, gaps = [], []
    for s in sigmas:
        curve = s["certified_dice_by_radius"]
        reached = [r for r, v in curve.items() if v > 0.5]
        certified = f"certified Dice above 0.5 up to r = {reached[-1]}" if reached else "no certified Dice above 0.5"
        broken = [
            row["radius"]
            for row in s["attack"]
            if min(row["smoothed_dice_at_pgd"], row["eot_smoothed_dice_at_pgd"]) <= 0.5
        ]
        attack = s["attack"]
        worst = attack[-1]
        empirical = (
            f"the smoothed Dice under attack first falls to 0.5 or below at r = {broken[0]:g}"
            if broken
            else f"the smoothed Dice under attack stays above 0.5 up to the largest radius attacked, "
            f"r = {worst['radius']:g}"
        )
        gaps.append((s["sigma"], s["max_certified_radius"], broken[0] if broken else None, worst["radius"]))
        lines.append(
            f"- sigma {s['sigma']:g}: base clean Dice {s['base_clean_dice']:.3f}; certified Dice at r = 0 "
            f"{curve['0']:.3f} (abstain rate {s['abstain_rate']:.3f}), {certified} (largest certified radius "
            f"{s['max_certified_radius']:.3f}); {empirical}. At r = {worst['radius']:g}: base Dice "
            f"{worst['base_dice_at_pgd']:.3f}, smoothed {worst['smoothed_dice_at_pgd']:.3f} (PGD on the base network), "
            f"{worst['eot_smoothed_dice_at_pgd']:.3f} (EOT PGD on the smoothed network)."
        )
    parts = []
    for sigma, certified_radius, broken_at, largest in gaps:
        if broken_at is None:
            parts.append(
                f"sigma {sigma:g}: largest certified radius {certified_radius:.2f}, no attack brought the smoothed "
                f"Dice to 0.5 up to r = {largest:g}"
            )
        else:
            parts.append(
                f"sigma {sigma:g}: largest certified radius {certified_radius:.2f}, an attack brought the smoothed "
                f"Dice to 0.5 or below at r = {broken_at:g} ({broken_at / max(certified_radius, 1e-12):.0f}x)"
            )
    lead = (
        f"With n = {settings['n']} noisy samples per case no voxel can be certified beyond {cap:.2f} sigma "
        f"(alpha = {settings['alpha']} over {voxels} voxels); " + "; ".join(parts) + ". Per sigma (means over "
        "the cases):"
    )
    return [lead, "", *lines]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sigmas", type=float, nargs="+", default=[0.12, 0.25, 0.5])
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cases", type=int, default=16)
    parser.add_argument("--n0", type=int, default=10)
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--alpha", type=float, default=0.001)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument(
        "--radii", type=float, nargs="+", default=[0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.6, 0.75]
    )
    parser.add_argument("--attack-radii", type=float, nargs="+", default=[0.1, 0.25, 0.5, 1.0])
    parser.add_argument("--pgd-steps", type=int, default=20)
    parser.add_argument("--eot-samples", type=int, default=4, help="noise samples per step of the PGD on the "
                        "smoothed network (0: only the PGD on the base network)")  # fmt: skip
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--work", type=Path, default=Path("/tmp/certified_runs"))
    parser.add_argument("--results-dir", type=Path, default=RESULTS)
    parser.add_argument("--train-only", action="store_true")
    parser.add_argument(
        "--seed-runs", nargs="+", default=[], help="--work folders of runs with another --seed, shown beside (render)"
    )
    parser.add_argument(
        "--controls",
        nargs="+",
        default=[],
        help="ARCH:PATH networks trained without noise to certify on the clean cases only (then render)",
    )
    parser.add_argument("--render-only", action="store_true")
    parser.add_argument("--machine-note", default="", help="what the page should say about the machine's load")
    parser.add_argument("--train-command", default="", help="the command that trained the networks, for the page")
    parser.add_argument(
        "--append", action="store_true", help="keep an earlier run's attack rows, attack only the new --attack-radii"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    command = "python benchmarks/certified_results.py " + " ".join(argv if argv is not None else sys.argv[1:])
    if args.controls:
        _, test_data = load_split(args.size)
        for control in args.controls:
            for sigma in args.sigmas:
                certify_control(control, sigma, test_data[: args.cases], args, command)
    elif not args.render_only:
        train_data, test_data = load_split(args.size)
        for sigma in args.sigmas:
            network, record = trained(sigma, train_data, test_data, args)
            if args.train_only:
                continue
            path = args.work / key_of(sigma) / "certified.json"
            earlier = json.loads(path.read_text()) if args.append and path.exists() else None
            result = evaluate(sigma, network, test_data[: args.cases], args, earlier)
            result["train"] = record
            result["settings"] = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
            result["settings"]["attack_radii"] = [row["radius"] for row in result["attack"]]
            result["command"] = command if earlier is None else f"{earlier['command']}, then {command}"
            (args.work / key_of(sigma) / "certified.json").write_text(json.dumps(result, indent=2))
    if not args.train_only:
        render(args, command, machine() | ({"note": args.machine_note} if args.machine_note else {}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
