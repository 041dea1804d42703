"""Is NLCEN's robustness real? The paper's attack vs the worst case with gradient-masking diagnostics, on real CXR.

Same data, split, resizing and training recipe as ``benchmarks/nlce_robustness_results.py`` (imported from it):
MONAI U-Net, NLCE-U-Net, NLCEN (ResNet-18), and a U-Net trained with online FGSM augmentation (epsilon 0.1 on [0, 1]
inputs, the augmentation paper's value; otherwise the same recipe). Each network is evaluated on the first
--cases test images under the paper's targeted I-FGSM (all 18 eps) and under ``worst_case`` (--worst-eps) with the
diagnostics; the transfer check attacks a surrogate (the plain U-Net; for the plain U-Net itself the NLCE-U-Net)
with the same worst case. A network whose ``<work>/<key>/model.pt`` and ``train.json`` exist is not trained again.

Writes ``<work>/<key>/{paper,worst_case}/robustness.*`` and ``docs/results/worst_case.{json,md}`` plus each
network's gallery as ``docs/results/worst_case_gallery_<key>.png``.

    python benchmarks/worst_case_results.py [--size 96] [--epochs 15] [--cases 8] [--worst-eps 2 4 8 16 32] \\
        [--apgd-steps 20] [--threads 1] [--work /tmp/worst_runs/cxr96]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from nlce_robustness_results import clean_scores, load_split, make_network, train  # noqa: E402

from monai_advseg.attacks import PAPER_EPSILON_LEVELS, WorstCaseSpec  # noqa: E402
from monai_advseg.engines import GradientMaskingDiagnostics, RobustnessEvaluator  # noqa: E402
from monai_advseg.handlers import save_atomically  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "docs" / "results"
#: key -> (architecture of make_network, online augmentation, label)
NETWORKS = {
    "unet": ("unet", "none", "MONAI U-Net"),
    "nlce_unet": ("nlce_unet", "none", "NLCE-U-Net"),
    "nlcen": ("nlcen", "none", "NLCEN (ResNet-18)"),
    "unet_fgsm": ("unet", "fgsm", "U-Net + online FGSM"),
}
AUGMENTATION_EPSILON = 0.1


def trained(key: str, train_data: list[dict], test_data: list[dict], args) -> tuple[torch.nn.Module, dict]:
    """Train a network (or load the one a previous run saved) and its clean test scores.

    Args:
        key: a :data:`NETWORKS` key.
        train_data, test_data: the split.
        args: the command line.

    Returns:
        The network in eval mode and its training record.
    """
    arch, augmentation, _ = NETWORKS[key]
    out = args.work / key
    out.mkdir(parents=True, exist_ok=True)
    if (out / "model.pt").exists() and (out / "train.json").exists():
        network = make_network(arch)
        network.load_state_dict(torch.load(out / "model.pt", weights_only=True))
        return network.eval(), json.loads((out / "train.json").read_text())
    network, history, seconds = train(
        arch, train_data, args.epochs, args.seed, augmentations=augmentation, epsilon=AUGMENTATION_EPSILON
    )
    save_atomically(network.state_dict(), out / "model.pt")
    record = {
        "network": arch,
        "augmentations": augmentation,
        "epsilon": AUGMENTATION_EPSILON,
        "loss_history": history,
        "train_seconds": seconds,
        "clean_test": clean_scores(network, test_data),
        "parameters": sum(p.numel() for p in network.parameters()),
    }
    (out / "train.json").write_text(json.dumps(record, indent=2))
    return network, record


def evaluate(key: str, network, surrogate, data: list[dict], args) -> dict:
    """The paper's sweep and the worst case with diagnostics on ``data``; their reports and wall times."""
    loader = [
        {
            "image": torch.stack([d["image"] for d in data[i : i + 4]]),
            "label": torch.stack([d["label"] for d in data[i : i + 4]]),
        }
        for i in range(0, len(data), 4)
    ]
    out = {}
    for name, attack, levels, diagnostics in (
        ("paper", "ifgsm_targeted", PAPER_EPSILON_LEVELS, False),
        (
            "worst_case",
            WorstCaseSpec(apgd_steps=args.apgd_steps),
            args.worst_eps,
            GradientMaskingDiagnostics(
                surrogate=surrogate, black_box_cases=args.black_box_cases, black_box_queries=args.queries
            ),
        ),
    ):
        began = time.perf_counter()
        evaluator = RobustnessEvaluator(
            "cpu",
            loader,
            network,
            epsilons=levels,
            attack=attack,
            diagnostics=diagnostics,
            max_batch=args.max_batch,
            output_dir=args.work / key / name,
            overwrite=True,
            progress=False,
            config={"benchmark": "worst_case_results", "network_choice": key, "size": args.size},
        )
        evaluator.run()
        out[name] = {"report": evaluator.results, "seconds": time.perf_counter() - began}
        print(f"[{key}] {name}: {out[name]['seconds']:.0f} s", flush=True)
    return out


def _row(report: dict, level: float) -> dict:
    return next(r for r in report["metrics"] if r["setting"] != "clean" and r["eps_levels"] == level)


def _small_copy(source: Path, target: Path) -> None:
    """The gallery at 60 % size and 64 colours (noise-like perturbation maps compress badly at full size)."""
    from PIL import Image

    with Image.open(source) as image:
        small = image.convert("RGB").resize((int(image.width * 0.6), int(image.height * 0.6)), Image.LANCZOS)
        small.quantize(colors=64).save(target, optimize=True)


def render(args) -> None:
    """``docs/results/worst_case.{json,md,png}`` and the galleries from the reports under ``--work``."""
    from monai_advseg.handlers import load_robustness_report, plot_robustness

    entries = {}
    for key in args.networks:
        folder = args.work / key
        if not (folder / "worst_case" / "robustness.json").exists():
            continue
        entries[key] = {
            "training": json.loads((folder / "train.json").read_text()),
            "paper": load_robustness_report(folder / "paper" / "robustness.json"),
            "worst_case": load_robustness_report(folder / "worst_case" / "robustness.json"),
        }
        gallery = folder / "worst_case" / "robustness_gallery.png"
        if key == "nlcen" and gallery.exists():  # the page's question; the others stay in --work (2.5 MB each)
            _small_copy(gallery, args.results_dir / "worst_case_gallery_nlcen.png")
    reports = [e[run] for e in entries.values() for run in ("paper", "worst_case")]
    labels = [f"{NETWORKS[k][2]} ({run})" for k in entries for run in ("paper", "worst case")]
    plot_robustness(reports, args.results_dir / "worst_case.png", labels=labels, title="CXR 96x96: paper vs worst case")
    summary = {
        key: {
            "label": NETWORKS[key][2],
            "training": {k: v for k, v in e["training"].items() if k != "loss_history"},
            "paper": {"metrics": e["paper"]["metrics"], "seconds": e["paper"]["timings"]["total_seconds"]},
            "worst_case": {
                "metrics": e["worst_case"]["metrics"],
                "attack": e["worst_case"]["attack"],
                "seconds": e["worst_case"]["timings"]["total_seconds"],
                "diagnostics_seconds": e["worst_case"]["timings"].get("diagnostics_seconds"),
            },
            "diagnostics": e["worst_case"]["diagnostics"],
            "cases": sorted({c["case"] for c in e["worst_case"]["cases"]}),
        }
        for key, e in entries.items()
    }
    (args.results_dir / "worst_case.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    (args.results_dir / "worst_case.md").write_text(page(summary, args) + "\n")


def budget(path: Path) -> list[str]:
    """The "Budget" section from ``benchmarks/worst_case_budget.py --json`` (none when it was not measured)."""
    if not path.exists():
        return []
    b = json.loads(path.read_text())
    nets = b["networks"]
    first = next(iter(nets.values()))
    labels = {"unet": "U-Net", "nlcen": "NLCEN", "nlce_unet": "NLCE-U-Net"}

    def minutes(key: str) -> str:
        return ", ".join(f"{labels.get(k, k)} {m[key] / 60:.0f} min" for k, m in nets.items())

    def verdict(key: str) -> str:
        return "within the hour" if max(m[key] for m in nets.values()) <= 3600 else "over the hour"

    measured = "; ".join(
        f"{labels.get(k, k)}: {m['cases']} cases in {m['run']:.0f} s (attack {m['attack']:.0f} s, diagnostics "
        f"{m['diagnostics']:.0f} s of which the black box {m['black_box']:.0f} s), {m['per_case']:.0f} s per case "
        f"without the black box, CPU {m['cpu']:.0f} s ({m['cpu_per_case_per_thread']:.0f} s per case); load average "
        f"{'/'.join(f'{v:.1f}' for v in m['load'])} (1/5/15 min, the larger of before and after)"
        for k, m in nets.items()
    )
    return [
        "",
        "## Budget",
        "",
        "The shipped configuration — the CXR bundle's `robust_evaluate.json` with `--attack worst_case`: "
        f"`WorstCaseSpec` defaults (apgd_steps {first['apgd_steps']}, Kurakin steps for I-FGSM and SegPGD, at most "
        f"{first['passes']} gradient passes per case over the paper's 18 eps) and its default diagnostics (unbounded, "
        f"noise, black box with {first['queries']} queries on the first {first['black_box_cases']} cases; no "
        f"surrogate, so no transfer) — at {b['size']}x{b['size']} on the bundle's validation split of "
        f"{first['split']} cases (the 250 pairs in `../shared`, `val_fraction` 0.2) projects to "
        f"**{minutes('projected_idle_seconds')}** on cores no other job uses ({verdict('projected_idle_seconds')}; "
        f"the runs' CPU time, {b['threads']} torch thread, so one of the two cores), and to "
        f"{minutes('projected_seconds')} of wall time as measured, with other jobs on the 2 cores "
        f"({verdict('projected_seconds')}). The shipped budget is kept: the APGD members win most cases "
        "(the wins per member below), so fewer APGD steps would weaken the number this page reports to meet a time "
        "that only other jobs' load breaks.",
        "",
        f"Measured {b['started']} - {b['finished']} with `benchmarks/worst_case_budget.py` ({b['threads']} torch "
        f"thread, nice {b['niceness']}), on the first validation cases: {measured}. The projection is linear in the "
        "cases, plus the black box once (scaled to its cases).",
        *(["", *b.get("notes", [])] if b.get("notes") else []),
    ]


def page(summary: dict, args) -> str:
    """The results page: its first lines answer whether NLCEN's robustness is real."""
    top = max(args.worst_eps)
    lines = [
        "# Is NLCEN's robustness real? The paper's attack vs the worst case, with gradient-masking diagnostics",
        "",
    ]
    if "nlcen" in summary:
        nl = summary["nlcen"]
        paper, worst = _row(nl["paper"], top)["mean_dice"], _row(nl["worst_case"], top)["mean_dice"]
        clean = nl["paper"]["metrics"][0]["mean_dice"]
        failed = [n for n, d in nl["diagnostics"].items() if d["passed"] is False]
        real = worst >= 0.5 * clean and not failed
        mid = sorted(args.worst_eps)[-2] if len(args.worst_eps) > 1 else top
        plain = [k for k in summary if k != "nlcen" and NETWORKS[k][1] == "none"]  # no adversarial training
        others = {k: _row(summary[k]["worst_case"], mid)["mean_dice"] for k in plain}
        best_other = max(others, key=others.get) if others else None
        lines += [
            f"**{'Yes' if real else f'No, not at eps {top:g}'}.** "
            f"Under the paper's targeted I-FGSM NLCEN keeps Dice {paper:.3f} at eps {top:g} (clean {clean:.3f}; the "
            "paper reports 0.963 on JSRT at 256x256 with full training); "
            f"under the worst case it falls to **{worst:.3f}**. "
            + (
                f"Diagnostics that failed for NLCEN: {', '.join(failed)}."
                if failed
                else "No gradient-masking diagnostic failed for NLCEN, so the gap is the paper's attack being weak, "
                "not a masked gradient."
            ),
        ]
        if best_other is not None:
            nl_mid = _row(nl["worst_case"], mid)["mean_dice"]
            lines += [
                f"What is real is a smaller advantage at moderate eps: at eps {mid:g} NLCEN's worst-case Dice is "
                f"{nl_mid:.3f} against {others[best_other]:.3f} for the best other network "
                f"({summary[best_other]['label']}, trained the same way); "
                f"one seed, {args.cases} attacked cases, so read differences of a few hundredths as noise."
            ]
        if "unet_fgsm" in summary:
            fg = summary["unet_fgsm"]
            fg_failed = [n for n, d in fg["diagnostics"].items() if d["passed"] is False]
            lines += [
                f"The network that is robust here is the plain U-Net trained with online FGSM copies: worst-case Dice "
                f"{_row(fg['worst_case'], top)['mean_dice']:.3f} at eps {top:g} (clean "
                f"{fg['paper']['metrics'][0]['mean_dice']:.3f}), "
                + (
                    f"but {', '.join(fg_failed)} failed for it."
                    if fg_failed
                    else "and no diagnostic failed for it (at eps 255 its Dice is "
                    f"{fg['diagnostics']['unbounded']['attack_dice']:.3f}, just under the 0.05 bound)."
                )
            ]
        lines += [""]
    lines += [
        f"| network | clean Dice ({args.cases} cases) | paper attack, eps {top:g} | worst case, eps {top:g} | "
        "diagnostics failed |"
    ]
    lines += ["|---|---|---|---|---|"]
    for e in summary.values():
        failed = [n for n, d in e["diagnostics"].items() if d["passed"] is False]
        lines.append(
            f"| {e['label']} | {e['paper']['metrics'][0]['mean_dice']:.3f} | "
            f"{_row(e['paper'], top)['mean_dice']:.3f} | {_row(e['worst_case'], top)['mean_dice']:.3f} | "
            f"{', '.join(failed) or 'none'} |"
        )
    lines += [
        "",
        "## What was run",
        "",
        f"- Data, split, resizing ({args.size}x{args.size}) and the training recipe of "
        f"`docs/results/nlce_robustness.md` ({args.epochs} epochs, seed {args.seed}, one run per network); the "
        "U-Net + online FGSM is the same U-Net trained with an FGSM copy of every batch "
        f"(epsilon {AUGMENTATION_EPSILON} on [0, 1], the augmentation paper's value).",
        f"- Attacked cases: the first {args.cases} test images of the split (the same for every network and attack).",
        "- Paper's attack: targeted I-FGSM towards the inverse mask, alpha 1 level, Kurakin steps, all 18 eps.",
        f"- Worst case: `WorstCaseSpec(apgd_steps={args.apgd_steps})` (members: the paper's I-FGSM, APGD with masked "
        "CE, balanced CE, Jensen-Shannon and masked spherical losses, SegPGD; lowest Dice per case and eps; early stop "
        f"threshold 0) at eps {args.worst_eps} levels (a subset of the 18, for CPU time).",
        f"- Diagnostics (tolerance 0.02 Dice): monotone; unbounded (the same worst case at eps 255, Dice <= 0.05); "
        f"uniform noise at every eps; transfer (the same worst case run on a surrogate: the plain U-Net, for the plain "
        f"U-Net the NLCE-U-Net, then scored on the model); black box (Square-style random search, {args.queries} "
        f"queries, the first {args.black_box_cases} cases, at eps {top:g}).",
        "- Commands: `python benchmarks/worst_case_results.py --networks unet nlce_unet unet_fgsm --cases 8 "
        "--apgd-steps 20` and, at the same time, `--networks nlcen` (two processes, one thread each), then "
        "`--render-only`; the trainings ran first with the same recipe (`trained()`), one network after another.",
        "- One seed, not three: each worst-case evaluation with its diagnostics took the wall time below on 2 CPU "
        "cores shared with other jobs (1 torch thread), so three seeds of four networks did not fit the session.",
        "",
        "| network | parameters | train time (s) | paper attack eval (s) | worst case + diagnostics (s) | of which "
        "diagnostics (s) |",
        "|---|---|---|---|---|---|",
    ]
    for e in summary.values():
        t, w = e["training"], e["worst_case"]
        lines.append(
            f"| {e['label']} | {t['parameters'] / 1e6:.2f} M | {t['train_seconds']:.0f} | {e['paper']['seconds']:.0f} |"
            f" {w['seconds']:.0f} | {w['diagnostics_seconds']:.0f} |"
        )
    lines += budget(args.results_dir / "worst_case_budget.json")
    lines += ["", "## Mean Dice per eps (paper's attack / worst case)", ""]
    names = list(summary)
    lines.append("| eps | " + " | ".join(f"{summary[n]['label']} paper | worst" for n in names) + " |")
    lines.append("|---|" + "---|---|" * len(names))
    for level in args.worst_eps:
        cells = [
            f"{_row(summary[n]['paper'], level)['mean_dice']:.3f} | "
            f"{_row(summary[n]['worst_case'], level)['mean_dice']:.3f}"
            for n in names
        ]
        lines.append(f"| {level:g} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "![paper vs worst case](worst_case.png)",
        "",
        "Notes: the paper's-attack rows here are over the same first "
        f"{args.cases} test images as the worst case (docs/results/nlce_robustness.md used 16, so its numbers differ "
        "slightly). A diagnostic's reference (noise, transfer, black box) is compared with the worst case on the "
        "same cases and eps; the black-box search ran on the first "
        f"{args.black_box_cases} cases only. The galleries show the images as the networks see them: MONAI's PNG "
        "reader puts the image's width first, so the chest X-rays appear turned by 90 degrees.",
        "",
        "## Diagnostics",
        "",
    ]
    for e in summary.values():
        lines.append(f"### {e['label']}")
        lines.append("")
        for name, d in e["diagnostics"].items():
            if d["passed"] is None:
                lines.append(f"- {name}: skipped ({d.get('skipped')})")
                continue
            if name == "monotone":
                numbers = f"largest rise of the mean Dice {d['largest_rise']:.3f} (at eps {d['at_eps_levels']:g})"
            elif name == "unbounded":
                numbers = f"Dice at eps 255: {d['attack_dice']:.3f}"
            else:
                ours = ", ".join(f"{v:.3f}" for v in d[name + "_dice"])
                theirs = ", ".join(f"{v:.3f}" for v in d["attack_dice"])
                numbers = f"Dice {ours} vs the worst case {theirs} at eps {d['eps_levels']}"
            lines.append(f"- {name}: {'PASS' if d['passed'] else 'FAIL'} — {numbers}")
        wins = {
            k[5:]: sum(r.get(k, 0) for r in e["worst_case"]["metrics"])
            for k in e["worst_case"]["metrics"][-1]
            if k.startswith("wins_")
        }
        lines += ["", "Worst-case wins per member (case x eps): " + ", ".join(f"{k} {v}" for k, v in wins.items()), ""]
        key = next(k for k, v in summary.items() if v is e)
        if key == "nlcen":
            lines += [f"![gallery {e['label']}](worst_case_gallery_{key}.png)", ""]
        else:
            lines += [f"Gallery: `{args.work / key / 'worst_case' / 'robustness_gallery.png'}` (not committed).", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--cases", type=int, default=8)
    parser.add_argument("--worst-eps", type=float, nargs="+", default=[2.0, 4.0, 8.0, 16.0, 32.0])
    parser.add_argument("--apgd-steps", type=int, default=20)
    parser.add_argument("--black-box-cases", type=int, default=4)
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--networks", nargs="+", default=list(NETWORKS), choices=list(NETWORKS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--max-batch", type=int, default=24)
    parser.add_argument("--work", type=Path, default=Path("/tmp/worst_runs/cxr96"))
    parser.add_argument("--results-dir", type=Path, default=RESULTS)
    parser.add_argument("--render-only", action="store_true", help="write the page from the reports under --work")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.render_only:
        args.results_dir.mkdir(parents=True, exist_ok=True)
        render(args)
        return 0
    train_data, test_data = load_split(args.size)
    nets = {
        key: trained(key, train_data, test_data, args) for key in dict.fromkeys(["unet", "nlce_unet", *args.networks])
    }
    for key in args.networks:
        network, record = nets[key]
        surrogate_key = "nlce_unet" if key == "unet" else "unet"
        surrogate = make_network(NETWORKS[surrogate_key][0])
        surrogate.load_state_dict(nets[surrogate_key][0].state_dict())
        evaluate(key, network, surrogate.eval(), test_data[: args.cases], args)
    args.results_dir.mkdir(parents=True, exist_ok=True)
    render(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
