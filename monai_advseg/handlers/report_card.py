"""The report card a person reads first: ``robustness.md`` (a pure function of the report) and the example gallery.

``robustness.md``: the setting, the Dice / Jaccard table (per-member columns for an ensemble, the diagnostics'
references), the diagnostics as pass / fail lines and a one-line verdict. ``robustness_gallery.png``: for the cases
the evaluator kept, the image, the adversarial image, the perturbation (amplified, diverging colour map) and the clean
and adversarial predictions over the ground truth, at two or three strengths; 3D cases show the slice through the
structure's centre.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from monai_advseg.handlers.diagnostics import diagnostics_verdict

__all__ = ["centre_slice", "plot_gallery", "report_markdown", "report_verdict"]


def _number(value: Any, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, (int, float)):
        return f"{value:.{digits}f}"
    return str(value)


def _diagnostic_line(name: str, entry: dict[str, Any]) -> str:
    passed = entry.get("passed")
    if passed is None:
        return f"- **{name}: skipped** ({entry.get('skipped', 'not run')})"
    mark = "PASS" if passed else "FAIL"
    if name == "monotone":
        detail = (
            f"largest rise of the mean Dice between neighbouring eps {_number(entry.get('largest_rise'))} "
            f"(at eps {entry.get('at_eps_levels')}; tolerance {entry.get('tolerance')})"
        )
    elif name == "unbounded":
        detail = (
            f"mean Dice {_number(entry.get('attack_dice'))} at eps = the whole range (255 levels); must be <= "
            f"{entry.get('threshold')}"
        )
    else:
        what = {
            "noise": "uniform noise",
            "transfer": f"attack on the surrogate {entry.get('surrogate')}",
            "black_box": f"random search ({entry.get('queries')} queries, {entry.get('n_cases')} cases)",
        }[name]
        detail = (
            f"{what} got {_number(entry.get('largest_advantage'))} Dice below the attack at its best "
            f"(eps {entry.get('at_eps_levels')}; a positive value above the tolerance {entry.get('tolerance')} fails)"
        )
    return f"- **{name}: {mark}** — {detail}"


def report_verdict(report: dict[str, Any]) -> str:
    """One line: the Dice at the largest eps under the attack and what the diagnostics say about it."""
    rows = report["metrics"]
    clean, last = rows[0], rows[-1]
    attack = report.get("attack", {}).get("name", "?")
    head = (
        f"Dice {_number(clean['mean_dice'], 3)} clean -> {_number(last['mean_dice'], 3)} at eps "
        f"{last['eps_levels']:g} levels under {attack}"
    )
    diagnostics = report.get("diagnostics")
    if not diagnostics:
        return head + "; one attack and no gradient-masking diagnostics, so this is an upper bound on robustness."
    return f"{head}; {diagnostics_verdict(diagnostics)}."


def report_markdown(report: dict[str, Any]) -> str:
    """``robustness.md``: setting, table, diagnostics and the verdict, from a report; a pure function.

    Args:
        report: ``RobustnessEvaluator.results`` (or a loaded ``robustness.json``).

    Returns:
        The Markdown text.
    """
    config, attack = report.get("config", {}), report.get("attack", {})
    rows = report["metrics"]
    members = [key[len("mean_dice_") :] for key in rows[-1] if key.startswith("mean_dice_")]
    references = [key for key in ("noise_dice", "transfer_dice", "black_box_dice") if key in rows[-1]]
    lines = [
        f"# Robustness report: {config.get('network', 'model')} under {attack.get('name', '?')}",
        "",
        f"**Verdict:** {report_verdict(report)}",
        "",
        "## Setting",
        "",
        f"- Network: {config.get('network')}; inferer: {config.get('inferer')}; intensity range "
        f"{config.get('intensity_range')}; {report.get('n_cases')} cases.",
        f"- Attack: `{attack.get('name')}` ("
        + ", ".join(f"{k}={v}" for k, v in attack.items() if k not in ("name", "selection", "target"))
        + ").",
        f"- eps (0..255 levels of the intensity range): {report.get('epsilons', {}).get('levels')}.",
        f"- Time: {_number(report.get('timings', {}).get('total_seconds'), 1)} s in all"
        + (
            f", of which the diagnostics {_number(report['timings']['diagnostics_seconds'], 1)} s."
            if report.get("timings", {}).get("diagnostics_seconds") is not None
            else "."
        ),
        "",
        "## Mean Dice / Jaccard per eps",
        "",
        "| eps (levels) | steps | Dice | Jaccard | "
        + "".join(f"{m} | " for m in members)
        + "".join(f"{r.replace('_dice', '')} | " for r in references),
        "|---|---|---|---|" + "---|" * (len(members) + len(references)),
    ]
    for row in rows:
        label = "clean" if row["setting"] == "clean" else f"{row['eps_levels']:g}"
        cells = [label, str(row["steps"]), _number(row["mean_dice"]), _number(row["mean_jaccard"])]
        cells += [_number(row.get(f"mean_dice_{m}")) for m in members]
        cells += [_number(row.get(r)) if row["setting"] != "clean" else "" for r in references]
        lines.append("| " + " | ".join(cells) + " |")
    if members:
        lines += ["", "Member columns: mean Dice of each member of the ensemble (where it ran; see early stop)."]
        wins = {m: sum(int(r.get(f"wins_{m}", 0)) for r in rows) for m in members}
        lines.append(
            "Wins (case x eps where a member gave the lowest Dice): "
            + ", ".join(f"{m} {w}" for m, w in wins.items())
            + "."
        )
    diagnostics = report.get("diagnostics")
    lines += ["", "## Gradient-masking diagnostics", ""]
    if diagnostics:
        lines += [_diagnostic_line(name, entry) for name, entry in diagnostics.items()]
    else:
        lines.append("Not run with this attack (the worst case runs them; `diagnostics=True` runs them for any).")
    lines += ["", "Figures: `robustness.png` (Dice / Jaccard vs eps), `robustness_gallery.png` (examples).", ""]
    return "\n".join(lines)


def centre_slice(array: Any, label: Any) -> tuple[Any, Any]:
    """A 2D view of a case: itself if 2D, else the last-axis slice through the centre of its foreground.

    Args:
        array: ``(C, *spatial)`` (channel 0 is shown) or ``(*spatial)``.
        label: ``(*spatial)`` class indices, the slice's guide (its middle slice when it has no foreground).

    Returns:
        ``(view, index)``: the 2D array and the slice index along the last axis (None for 2D).
    """
    import numpy as np

    label = np.asarray(label)
    data = np.asarray(array)
    if data.ndim == label.ndim + 1:
        data = data[0]
    if label.ndim == 2:
        return data, None
    foreground = np.nonzero(label > 0)
    index = int(round(float(np.mean(foreground[-1])))) if foreground[-1].size else label.shape[-1] // 2
    return data[..., index], index


def _overlay(axis: Any, image: Any, prediction: Any, truth: Any, title: str) -> None:
    import numpy as np

    axis.imshow(image, cmap="gray")
    axis.imshow(np.ma.masked_where(np.asarray(prediction) == 0, prediction), cmap="autumn", alpha=0.45)
    if np.asarray(truth).any():
        axis.contour(np.asarray(truth) > 0, levels=[0.5], colors="cyan", linewidths=0.8)
    axis.set_title(title, fontsize=7)


def plot_gallery(cases: Sequence[dict[str, Any]], path: str | Path, title: str | None = None) -> Path:
    """The example gallery: one row per case and strength.

    Columns: image, adversarial image, perturbation (scaled to its own largest magnitude, diverging map, centred at
    0), clean prediction over the ground truth (cyan contour), adversarial prediction over the ground truth.

    Args:
        cases: ``{"image", "label", "clean_prediction", "eps_levels", "adversarial", "adversarial_prediction"}`` per
            case (numpy arrays; the evaluator's ``state.robustness_gallery``).
        path: the PNG to write (atomically).
        title: figure title.

    Returns:
        The written path.

    Raises:
        ValueError: when there is no case or no strength to show.
    """
    import numpy as np

    from monai_advseg.handlers.robustness_report import require_matplotlib, save_figure

    rows = [(case, e) for case in cases for e in range(len(case["eps_levels"]))]
    if not rows:
        raise ValueError("plot_gallery needs at least one case with at least one strength")
    plt = require_matplotlib()
    figure, axes = plt.subplots(len(rows), 5, figsize=(11, 2.3 * len(rows)), squeeze=False, constrained_layout=True)
    for r, (case, e) in enumerate(rows):
        label = case["label"]
        image, index = centre_slice(case["image"], label)
        adversarial, _ = centre_slice(case["adversarial"][e], label)
        truth, _ = centre_slice(label, label)
        clean, _ = centre_slice(case["clean_prediction"], label)
        attacked, _ = centre_slice(case["adversarial_prediction"][e], label)
        delta = np.asarray(adversarial) - np.asarray(image)
        scale = float(np.abs(delta).max()) or 1.0
        where = "" if index is None else f", slice {index}"
        eps = case["eps_levels"][e]
        axes[r, 0].imshow(image, cmap="gray")
        axes[r, 0].set_title(f"image{where}", fontsize=7)
        axes[r, 1].imshow(adversarial, cmap="gray")
        axes[r, 1].set_title(f"adversarial, eps {eps:g}", fontsize=7)
        shown = axes[r, 2].imshow(delta, cmap="RdBu_r", vmin=-scale, vmax=scale)
        axes[r, 2].set_title(f"perturbation (max |d| {scale:.3g})", fontsize=7)
        figure.colorbar(shown, ax=axes[r, 2], fraction=0.046)
        _overlay(axes[r, 3], image, clean, truth, "clean prediction / truth")
        _overlay(axes[r, 4], adversarial, attacked, truth, f"adversarial prediction, eps {eps:g}")
        for axis in axes[r]:
            axis.set_xticks([])
            axis.set_yticks([])
    return save_figure(figure, path, title, dpi=100)
