"""Report writers of the robustness sweep: CSV, JSON and a Dice / Jaccard vs epsilon figure.

Every file is written to a temporary name in the target folder and renamed into place, so an interrupted run never
leaves a half-written report that looks complete. Existing reports are only replaced with ``overwrite=True``.
"""

from __future__ import annotations

import io
import math
import platform
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from monai_advseg.handlers.report_card import plot_gallery, report_markdown
from monai_advseg.handlers.report_files import (
    ReportWriter,
    atomic_write,
    csv_bytes,
    json_bytes,
    load_json_report,
    require_matplotlib,
    summary,
    write_files,
)

if TYPE_CHECKING:  # ignite pulls in torch; the report command line only needs matplotlib
    pass

__all__ = [
    "REPORT_FILES",
    "build_robustness_report",
    "RobustnessReportWriter",
    "check_report_dir",
    "load_robustness_report",
    "plot_robustness",
    "require_matplotlib",
    "write_robustness_reports",
]

#: The files one sweep writes into its report folder (the figures only with ``plot``; the gallery when the run kept
#: images): the overwrite check covers all of them.
REPORT_FILES: tuple[str, ...] = (
    "robustness.csv",
    "robustness_cases.csv",
    "robustness.json",
    "robustness.md",
    "robustness.png",
    "robustness_gallery.png",
)

SUMMARY_COLUMNS = (
    "setting",
    "eps_levels",
    "eps",
    "steps",
    "mean_dice",
    "std_dice",
    "mean_jaccard",
    "std_jaccard",
    "n_cases",
    "n_empty_cases",
    "empty_case_foreground_fraction",
    "seconds",
)
CASE_COLUMNS = ("case", "setting", "eps_levels", "eps", "dice", "jaccard", "foreground_fraction")

REPORT_FORMAT = "monai_advseg.robustness/1"


def _case_details(details: dict[str, Any] | None, case: int, column: int) -> dict[str, Any]:
    if details is None:
        return {}
    row: dict[str, Any] = {"attack": details["winner"][case][column - 1] if column else None}
    for name, values in details["member_dice"].items():
        row[f"dice_{name}"] = float(values[case, column - 1]) if column else float("nan")
    return row


def build_robustness_report(
    cases: Sequence[str],
    dice: Any,
    jaccard: Any,
    foreground: Any,
    empty: Any,
    *,
    epsilon_levels: Sequence[float],
    epsilons: Sequence[float],
    steps: Sequence[int],
    seconds: Sequence[float],
    attack: dict[str, Any],
    config: dict[str, Any],
    total_seconds: float,
    attack_details: dict[str, Any] | None = None,
    diagnostics: dict[str, dict[str, Any]] | None = None,
    diagnostics_seconds: float | None = None,
) -> dict[str, Any]:
    """The sweep's report (``robustness.json``'s content) from its per-case arrays; a pure function.

    Column 0 of every array is the clean evaluation, column ``1 + e`` the attack at ``epsilon_levels[e]``.

    Args:
        cases: one id per case (row).
        dice, jaccard: ``(N, 1 + E)`` per-case scores, NaN for a case without a scored class.
        foreground: ``(N, 1 + E)`` share of each case's voxels predicted as foreground (any class but 0).
        empty: ``(N,)`` booleans: the case's ground truth has no foreground.
        epsilon_levels: the strengths in levels (E).
        epsilons: the same in input units.
        steps: gradient steps per strength.
        seconds: ``1 + E`` seconds (clean, then per strength).
        attack: the attack block (the attack component's ``describe()``).
        config: the run's configuration (network, inferer, ranges, bundle information ...).
        total_seconds: wall time of the whole evaluation.
        attack_details: for an ensemble (``worst_case``): ``{"winner": (N, E) member names (None: no member beat the
            clean image), "member_dice": {member: (N, E) scores, NaN where the member did not run}}``; adds the
            per-case ``attack`` and ``dice_<member>`` and the per-row ``wins_<member>`` / ``mean_dice_<member>``
            columns.
        diagnostics: :func:`~monai_advseg.handlers.diagnostics.build_diagnostics`' block; its per-eps references
            become the row columns ``noise_dice`` / ``transfer_dice`` / ``black_box_dice``.
        diagnostics_seconds: wall time of the diagnostics (not part of the attack's timings).

    Returns:
        ``{"format", "config", "attack", "epsilons", "metrics", "cases", "n_cases", "timings", "versions"}``, plus
        ``"diagnostics"`` when given.
    """
    import monai
    import numpy as np
    import torch

    import monai_advseg

    dice, jaccard, foreground = (np.asarray(a, dtype=np.float64) for a in (dice, jaccard, foreground))
    empty = np.asarray(empty, dtype=bool)
    levels = [0.0, *epsilon_levels]
    units = [0.0, *epsilons]
    step_list = [0, *steps]
    rows = []
    for column, (level, unit, step) in enumerate(zip(levels, units, step_list, strict=True)):
        mean_dice, std_dice, n_cases = summary(dice[:, column])
        mean_jaccard, std_jaccard, _ = summary(jaccard[:, column])
        n_empty = int(empty.sum())
        rows.append(
            {
                "setting": "clean" if column == 0 else "attack",
                "eps_levels": level,
                "eps": unit,
                "steps": step,
                "mean_dice": mean_dice,
                "std_dice": std_dice,
                "mean_jaccard": mean_jaccard,
                "std_jaccard": std_jaccard,
                "n_cases": n_cases,
                "n_empty_cases": n_empty,
                # Dice skips cases without foreground; this keeps what the attack did to them visible.
                "empty_case_foreground_fraction": float(foreground[empty, column].mean()) if n_empty else None,
                "seconds": seconds[column],
            }
        )
        if attack_details is not None:
            names = list(attack_details["member_dice"])
            for name in names:
                wins = sum(1 for row in attack_details["winner"] if column and row[column - 1] == name)
                rows[-1][f"wins_{name}"] = wins
            for name in names:
                values = np.asarray(attack_details["member_dice"][name], dtype=np.float64)
                rows[-1][f"mean_dice_{name}"] = summary(values[:, column - 1])[0] if column else mean_dice
        for key in ("noise", "transfer", "black_box"):
            entry = (diagnostics or {}).get(key, {})
            if entry.get("passed") is not None:
                by_level = dict(zip(entry["eps_levels"], entry[f"{key}_dice"], strict=True))
                rows[-1][f"{key}_dice"] = by_level.get(level) if column else None
    per_case = [
        {
            "case": case,
            "setting": "clean" if column == 0 else "attack",
            "eps_levels": levels[column],
            "eps": units[column],
            "dice": float(dice[i, column]),
            "jaccard": float(jaccard[i, column]),
            "foreground_fraction": float(foreground[i, column]),
            **_case_details(attack_details, i, column),
        }
        for column in range(len(levels))
        for i, case in enumerate(cases)
    ]
    report = {
        "format": REPORT_FORMAT,
        "config": {
            **config,
            "empty_cases": "cases with no scored class are NaN (null in JSON) and excluded from the means; "
            "n_empty_cases / empty_case_foreground_fraction: the cases without foreground in the ground truth "
            "and the mean share of their voxels predicted as foreground",
            "std": "sample standard deviation over the scored cases (0 for a single case)",
        },
        "attack": attack,
        "epsilons": {"levels": list(epsilon_levels), "input_units": list(epsilons)},
        "metrics": rows,
        "cases": per_case,
        "n_cases": len(cases),
        "timings": {
            "total_seconds": total_seconds,
            "clean_seconds": seconds[0],
            "attack_seconds": float(sum(seconds[1:])),
            "per_eps_seconds": "attack time shared by gradient steps, plus the adversarial forward per sample",
        },
        "versions": {
            "monai_advseg": getattr(monai_advseg, "__version__", "unknown"),
            "torch": torch.__version__,
            "monai": monai.__version__,
            "python": platform.python_version(),
        },
    }
    if diagnostics is not None:
        report["diagnostics"] = diagnostics
        report["timings"]["diagnostics_seconds"] = diagnostics_seconds
    return report


def check_report_dir(
    output_dir: str | Path,
    overwrite: bool = False,
    files: Sequence[str] = REPORT_FILES,
    what: str = "robustness report",
) -> Path:
    """Refuse to reuse a folder that already holds a robustness report, unless ``overwrite``.

    Other files in the folder (logs, predictions) are left alone and do not count.

    Args:
        output_dir: the report folder.
        overwrite: allow replacing the report.
        files: the report's file names (default the sweep's :data:`REPORT_FILES`; the certification passes its own).
        what: the report's name in the message.

    Returns:
        The folder as a ``Path``.

    Raises:
        FileExistsError: naming the existing report files.
        NotADirectoryError: when ``output_dir`` is a file.
    """
    folder = Path(output_dir)
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(f"report folder {folder} exists and is not a directory")
    existing = [str(folder / name) for name in files if (folder / name).exists()]
    if existing and not overwrite:
        raise FileExistsError(
            f"report folder {folder} already holds a {what} ({', '.join(existing)}); "
            "choose another output_dir or pass overwrite=True"
        )
    return folder


def _with_extra_columns(rows: Sequence[dict], columns: Sequence[str]) -> list[str]:
    """The fixed columns, then any further keys of the rows (an ensemble's per-member columns), in first-seen order."""
    extra = [key for key in dict.fromkeys(k for row in rows for k in row) if key not in columns]
    return [*columns, *extra]


def load_robustness_report(path: str | Path) -> dict[str, Any]:
    """Read a ``robustness.json`` written by :func:`write_robustness_reports`.

    Raises:
        ValueError: when the file is not a robustness report.
    """
    return load_json_report(path, "monai_advseg.robustness/", "robustness report (robustness.json)")


def _curve(report: dict[str, Any], metric: str) -> tuple[float | None, list[float], list[float]]:
    clean = None
    levels, values = [], []
    for row in report["metrics"]:
        value = row[f"mean_{metric}"]
        value = float("nan") if value is None else float(value)
        if row["setting"] == "clean":
            clean = value
        else:
            levels.append(float(row["eps_levels"]))
            values.append(value)
    return clean, levels, values


def _empty_case_curve(report: dict[str, Any]) -> tuple[int, list[float], list[float]] | None:
    """``(n_empty_cases, levels, mean predicted-foreground share)`` of the attack rows; None without empty cases."""
    rows = [r for r in report["metrics"] if r["setting"] != "clean" and r.get("n_empty_cases")]
    if not rows or any(r.get("empty_case_foreground_fraction") is None for r in rows):
        return None
    return (
        int(rows[0]["n_empty_cases"]),
        [float(r["eps_levels"]) for r in rows],
        [float(r["empty_case_foreground_fraction"]) for r in rows],
    )


def _reference_curves(report: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """Row columns drawn beside a single sweep's Dice: members (dotted) and diagnostics' references (dashed, x)."""
    last = report["metrics"][-1] if report.get("metrics") else {}
    members = [(k, {"linestyle": ":"}) for k in last if k.startswith("mean_dice_")]
    references = [(k, {"linestyle": "--", "marker": "x"}) for k in ("noise_dice", "transfer_dice", "black_box_dice")]
    return members + [(k, style) for k, style in references if k in last]


def _row_curve(report: dict[str, Any], key: str) -> tuple[list[float], list[float]]:
    rows = [r for r in report["metrics"] if r["setting"] != "clean" and r.get(key) is not None]
    return [float(r["eps_levels"]) for r in rows], [float(r[key]) for r in rows]


def plot_robustness(
    reports: Sequence[dict[str, Any]],
    path: str | Path,
    labels: Sequence[str] | None = None,
    title: str | None = None,
) -> Path:
    """Dice and Jaccard vs epsilon (0..255 levels) for one or several sweeps, clean scores as dashed lines.

    Args:
        reports: robustness results (``RobustnessEvaluator.results`` or loaded ``robustness.json``).
        path: the PNG to write (atomically).
        labels: one legend entry per report (default: the network name and attack of each).
        title: figure title.

    Returns:
        The written path.

    Raises:
        ValueError: when ``labels`` does not match ``reports`` or there is nothing to plot.
        ImportError: when matplotlib is missing.
    """
    if not reports:
        raise ValueError("plot_robustness needs at least one report")
    if labels is None:
        labels = [
            f"{r.get('config', {}).get('network', 'model')} ({r.get('attack', {}).get('name', '?')})" for r in reports
        ]
    if len(labels) != len(reports):
        raise ValueError(f"got {len(labels)} labels for {len(reports)} reports")
    plt = require_matplotlib()
    figure, axes = plt.subplots(1, 2, figsize=(11, 4.2), constrained_layout=True)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for index, (report, label) in enumerate(zip(reports, labels, strict=True)):
        colour = colours[index % len(colours)]
        for axis, metric in zip(axes, ("dice", "jaccard"), strict=True):
            clean, levels, values = _curve(report, metric)
            axis.plot(levels, values, marker="o", markersize=3, color=colour, label=label)
            if clean is not None and math.isfinite(clean):
                axis.axhline(clean, color=colour, linestyle="--", linewidth=1, label=f"{label} clean")
        if len(reports) == 1:  # one sweep: its ensemble members and the diagnostics' references, thin, on Dice
            for key, style in _reference_curves(report):
                levels, values = _row_curve(report, key)
                axes[0].plot(levels, values, linewidth=0.8, markersize=3, label=key.replace("mean_dice_", ""), **style)
        empty = _empty_case_curve(report)
        if empty is not None:  # Dice cannot see these cases; show what the attack predicted on them
            count, levels, shares = empty
            axes[0].plot(
                levels,
                shares,
                linestyle=":",
                marker="x",
                markersize=3,
                color=colour,
                label=f"{label}: predicted foreground share, {count} empty case(s)",
            )
    for axis, name in zip(axes, ("Dice", "Jaccard"), strict=True):
        axis.set_xlabel("epsilon (0..255 levels)")
        axis.set_ylabel(name)
        axis.set_ylim(0, 1.02)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
    return save_figure(figure, path, title, dpi=120)


def save_figure(figure: Any, path: str | Path, title: str | None = None, dpi: int = 120) -> Path:
    """Write a matplotlib figure as a PNG atomically (creating the folder), then close it.

    Args:
        figure: the figure.
        path: the PNG to write.
        title: a title to set first, if any.
        dpi: resolution.

    Returns:
        The written path.
    """
    import matplotlib.pyplot as plt

    if title:
        figure.suptitle(title)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi)
    plt.close(figure)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, buffer.getvalue())
    return path


def write_robustness_reports(
    results: dict[str, Any],
    output_dir: str | Path,
    overwrite: bool = False,
    plot: bool = True,
    gallery: Sequence[dict[str, Any]] | None = None,
) -> dict[str, Path]:
    """Write ``robustness.csv``, ``robustness_cases.csv``, ``robustness.json``, ``robustness.md`` and (``plot``)
    ``robustness.png`` and, with ``gallery`` cases, ``robustness_gallery.png``.

    Args:
        results: ``RobustnessEvaluator.results``.
        output_dir: report folder (created if missing).
        overwrite: replace an existing report in that folder.
        plot: also write the figures (needs matplotlib).
        gallery: cases kept by the evaluator (``engine.state.robustness_gallery``) for the example gallery.

    Returns:
        ``{file name: path}`` of the written files.

    Raises:
        FileExistsError: when the folder holds a report and ``overwrite`` is False.
    """
    folder = check_report_dir(output_dir, overwrite)
    cases = results.get("cases", [])
    written = write_files(
        folder,
        {
            "robustness.csv": csv_bytes(results["metrics"], _with_extra_columns(results["metrics"], SUMMARY_COLUMNS)),
            "robustness_cases.csv": csv_bytes(cases, _with_extra_columns(cases, CASE_COLUMNS)),
            "robustness.json": json_bytes(results),
            "robustness.md": report_markdown(results).encode(),
        },
    )
    if plot:
        title = f"{results.get('config', {}).get('network', '')} under {results.get('attack', {}).get('name', '')}"
        written["robustness.png"] = plot_robustness([results], folder / "robustness.png", labels=["model"], title=title)
        if gallery:
            written["robustness_gallery.png"] = plot_gallery(gallery, folder / "robustness_gallery.png", title=title)
    return written


class RobustnessReportWriter(ReportWriter):
    """Ignite handler writing the sweep's reports (:func:`write_robustness_reports`) when the evaluation epoch
    completes (rank 0 only).

    Reads ``engine.state.robustness``, which :class:`~monai_advseg.engines.RobustnessEvaluator` fills at
    ``EPOCH_COMPLETED`` before this handler runs, and the gallery's cases in ``engine.state.robustness_gallery``.

    Arguments and errors as in :class:`~monai_advseg.handlers.ReportWriter` (``plot``: ``robustness.png`` and the
    gallery).
    """

    state_key = "robustness"
    gallery_key = "robustness_gallery"
    filled_by = "a sweep"
    check_folder = staticmethod(check_report_dir)
    write_reports = staticmethod(write_robustness_reports)


def state_metrics(results: dict[str, Any]) -> dict[str, float]:
    """The report's mean scores as ignite metrics: ``dice``, ``jaccard`` (clean) and ``dice_eps<levels>``,
    ``jaccard_eps<levels>`` per strength."""
    metrics: dict[str, float] = {}
    for row in results["metrics"]:
        suffix = "" if row["setting"] == "clean" else f"_eps{row['eps_levels']:g}"
        metrics[f"dice{suffix}"] = row["mean_dice"]
        metrics[f"jaccard{suffix}"] = row["mean_jaccard"]
    return metrics
