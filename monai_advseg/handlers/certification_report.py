"""Report writers of the certified evaluation (randomized smoothing): JSON, CSV, certified Dice vs radius, gallery.

:func:`build_certification_report` turns the per-case arrays of
:class:`~monai_advseg.engines.CertificationEvaluator` into ``certify.json``'s content (a pure function);
:func:`write_certification_reports` writes ``certify.json``, ``certify.csv`` (one row per radius),
``certify_cases.csv`` (one row per case and radius), ``certify.png`` (certified Dice vs radius, with the empirical
L2 attack's curves when the run attacked) and ``certify_gallery.png`` (the certified map over the first cases). Like
the sweep's reports every file is written to a temporary name and renamed into place, and an existing report is only
replaced with ``overwrite=True``.
"""

from __future__ import annotations

import math
import platform
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from monai_advseg.handlers.report_card import centre_slice
from monai_advseg.handlers.report_files import (
    ReportWriter,
    csv_bytes,
    json_bytes,
    load_json_report,
    require_matplotlib,
    summary,
    write_files,
)
from monai_advseg.handlers.robustness_report import check_report_dir, save_figure

if TYPE_CHECKING:
    pass

__all__ = [
    "CERTIFY_FILES",
    "CertificationReportWriter",
    "build_certification_report",
    "certification_check",
    "check_certify_dir",
    "load_certification_report",
    "plot_certification",
    "plot_certified_gallery",
    "write_certification_reports",
]

#: The files one certified evaluation writes (the figures only with ``plot``; the gallery when cases were kept).
CERTIFY_FILES: tuple[str, ...] = (
    "certify.json",
    "certify.csv",
    "certify_cases.csv",
    "certify.png",
    "certify_gallery.png",
)

REPORT_FORMAT = "monai_advseg.certify/1"

# The scores after the certified Dice, in both tables' order.
_SCORE_COLUMNS = (
    "certified_jaccard",
    "certified_fraction",
    "abstain_rate",
    "base_dice",
    "attack_dice_base",
    "attack_dice_smoothed",
)
SUMMARY_COLUMNS = ("radius", "certified_dice", "std_certified_dice", *_SCORE_COLUMNS, "n_cases")
CASE_COLUMNS = ("case", "radius", "certified_dice", *_SCORE_COLUMNS)


def _mean(values: Any) -> float:
    return summary(values)[0]


def certification_check(
    radii: Sequence[float],
    certified_dice: Sequence[float],
    attack_radii: Sequence[float],
    attack_dice_smoothed: Sequence[float],
    tolerance: float = 0.0,
    flipped: Sequence[int] | None = None,
    certified_voxels: Sequence[int] | None = None,
    cases: Sequence[str] | None = None,
    case_certified_dice: Any = None,
    case_attack_dice_smoothed: Any = None,
) -> dict[str, Any]:
    """The report's sanity check: the certified Dice at radius r must not exceed the smoothed Dice under attack at r.

    A certificate bounds from below what any perturbation of L2 norm ``<= r`` can do; an attack found one such
    perturbation, so its Dice bounds from above. A certified Dice above an attacked one beyond ``tolerance`` means a
    bug (or a certificate that failed, which happens with probability at most the family-wise ``alpha``). The
    smoothed prediction under attack is itself a Monte Carlo estimate that may abstain where the true vote is just
    above 1/2, i.e. on voxels certified to a radius close to r, so a small excess can also be sampling; the strict
    voxel-level count is ``flipped_certified_voxels``: voxels certified at radius >= r whose smoothed class under the
    attack is another class (not an abstention).

    Args:
        radii: the certificate's radii (input units).
        certified_dice: mean certified Dice at each of ``radii``.
        attack_radii: the attacked radii (a subset of ``radii``).
        attack_dice_smoothed: mean Dice of the smoothed prediction on the attacked images, per attacked radius.
        tolerance: allowed excess.
        flipped: per attacked radius, the count of certified voxels whose smoothed class under attack changed.
        certified_voxels: per attacked radius, the count of voxels certified at that radius.
        cases: the case ids, with the two per-case arrays below: then the check is per case (stricter than on the
            means, which it implies), each row counts ``cases_above`` and ``largest_excess`` names its case.
        case_certified_dice: ``(N, A)`` certified Dice per case at each attacked radius.
        case_attack_dice_smoothed: ``(N, A)`` smoothed Dice per case on the attacked images.

    Returns:
        ``{"passed", "tolerance", "largest_excess", "at_radius", "rows", "note"}`` (+ ``at_case``, the voxel
        counts); ``passed`` is None when nothing was attacked.
    """
    import numpy as np

    by_radius = dict(zip((float(r) for r in radii), certified_dice, strict=True))
    rows = []
    for index, (radius, attacked) in enumerate(zip(attack_radii, attack_dice_smoothed, strict=True)):
        certified = by_radius[float(radius)]
        excess = certified - attacked if math.isfinite(certified) and math.isfinite(attacked) else float("nan")
        row = {"radius": float(radius), "certified_dice": certified, "attack_dice_smoothed": attacked}
        row["excess"] = excess
        if flipped is not None and certified_voxels is not None:
            row["flipped_certified_voxels"] = int(flipped[index])
            row["certified_voxels"] = int(certified_voxels[index])
        rows.append(row)
    candidates = [(r["excess"], r["radius"], None) for r in rows]
    if cases is not None and rows:
        excess = np.asarray(case_certified_dice, dtype=np.float64) - np.asarray(case_attack_dice_smoothed, np.float64)
        candidates = []
        for index, row in enumerate(rows):
            column = excess[:, index]
            row["cases_above"] = int((column[np.isfinite(column)] > tolerance).sum())
            candidates += [(float(e), row["radius"], case) for e, case in zip(column, cases, strict=True)]
    finite = [c for c in candidates if math.isfinite(c[0])]
    worst = max(finite, key=lambda c: c[0]) if finite else None
    check: dict[str, Any] = {
        "passed": None if worst is None else bool(worst[0] <= tolerance),
        "tolerance": float(tolerance),
        "largest_excess": None if worst is None else worst[0],
        "at_radius": None if worst is None else worst[1],
        "rows": rows,
        "note": "certified Dice at r must be <= the smoothed prediction's Dice on the images the L2 PGD found at r "
        "(on the base model), per case where the cases are given; a positive excess above the tolerance fails. "
        "flipped_certified_voxels counts voxels certified at >= r whose smoothed class under the attack is another "
        "class (abstentions do not count)",
    }
    if cases is not None:
        check["at_case"] = None if worst is None else worst[2]
        check["cases_above"] = sum(r["cases_above"] for r in rows)
    if flipped is not None:
        check["flipped_certified_voxels"] = int(sum(flipped))
    if not rows:
        check["skipped"] = "no attack (attack_radii not given)"
    return check


def build_certification_report(
    cases: Sequence[str],
    certified_dice: Any,
    certified_jaccard: Any,
    certified_fraction: Any,
    abstain_rate: Any,
    base_dice: Any,
    *,
    radii: Sequence[float],
    certification: dict[str, Any],
    config: dict[str, Any],
    seconds: dict[str, float],
    attack: dict[str, Any] | None = None,
    attack_radii: Sequence[float] = (),
    attack_dice_base: Any = None,
    attack_dice_smoothed: Any = None,
    flipped: Sequence[int] | None = None,
    certified_voxels: Sequence[int] | None = None,
    check_tolerance: float = 0.0,
) -> dict[str, Any]:
    """The certified evaluation's report (``certify.json``'s content) from its per-case arrays; a pure function.

    Args:
        cases: one id per case (row).
        certified_dice, certified_jaccard, certified_fraction: ``(N, R)`` per case and radius (abstentions and voxels
            certified below the radius count as wrong; NaN for a case without a scored class).
        abstain_rate: ``(N,)`` share of each case's voxels where the smoothed model abstains.
        base_dice: ``(N,)`` the base (unsmoothed) model's clean Dice.
        radii: the R radii in input units, ascending.
        certification: the smoothing's settings (``sigma``, ``n0``, ``n``, ``alpha``, ``tau``, ``correction`` ...).
        config: the run's configuration (network, inferer, bundle information ...).
        seconds: timings (``total_seconds``, ``certify_seconds``, ...).
        attack: the empirical attack's settings (None: no attack).
        attack_radii: the A attacked radii (each one of ``radii``).
        attack_dice_base, attack_dice_smoothed: ``(N, A)`` Dice of the base model and of the smoothed prediction on
            the images the attack found at each attacked radius.
        flipped, certified_voxels: per attacked radius, the voxel counts of :func:`certification_check`.
        check_tolerance: the check's tolerance.

    Returns:
        ``{"format", "config", "certification", "attack", "radii", "base", "metrics", "cases", "n_cases", "check",
        "timings", "versions"}``.
    """
    import monai
    import numpy as np
    import torch

    import monai_advseg

    radii = [float(r) for r in radii]
    attack_radii = [float(r) for r in attack_radii]
    dice, jaccard, fraction = (
        np.asarray(a, dtype=np.float64).reshape(len(cases), len(radii))
        for a in (certified_dice, certified_jaccard, certified_fraction)
    )
    abstain = np.asarray(abstain_rate, dtype=np.float64).reshape(len(cases))
    base = np.asarray(base_dice, dtype=np.float64).reshape(len(cases))
    attacked = {"base": None, "smoothed": None}
    if attack_radii:
        attacked = {
            name: np.asarray(values, dtype=np.float64).reshape(len(cases), len(attack_radii))
            for name, values in (("base", attack_dice_base), ("smoothed", attack_dice_smoothed))
        }
    base_mean = _mean(base)
    rows = []
    for column, radius in enumerate(radii):
        mean_dice, std_dice, n_cases = summary(dice[:, column])
        at = attack_radii.index(radius) if radius in attack_radii else None
        rows.append(
            {
                "radius": radius,
                "certified_dice": mean_dice,
                "std_certified_dice": std_dice,
                "certified_jaccard": _mean(jaccard[:, column]),
                "certified_fraction": _mean(fraction[:, column]),
                "abstain_rate": _mean(abstain),
                "base_dice": base_mean,
                "attack_dice_base": None if at is None else _mean(attacked["base"][:, at]),
                "attack_dice_smoothed": None if at is None else _mean(attacked["smoothed"][:, at]),
                "n_cases": n_cases,
            }
        )
    per_case = []
    for column, radius in enumerate(radii):
        at = attack_radii.index(radius) if radius in attack_radii else None
        for i, case in enumerate(cases):
            per_case.append(
                {
                    "case": case,
                    "radius": radius,
                    "certified_dice": float(dice[i, column]),
                    "certified_jaccard": float(jaccard[i, column]),
                    "certified_fraction": float(fraction[i, column]),
                    "abstain_rate": float(abstain[i]),
                    "base_dice": float(base[i]),
                    "attack_dice_base": None if at is None else float(attacked["base"][i, at]),
                    "attack_dice_smoothed": None if at is None else float(attacked["smoothed"][i, at]),
                }
            )
    check = certification_check(
        radii,
        [row["certified_dice"] for row in rows],
        attack_radii,
        [rows[radii.index(r)]["attack_dice_smoothed"] for r in attack_radii],
        check_tolerance,
        flipped,
        certified_voxels,
        cases,
        dice[:, [radii.index(r) for r in attack_radii]] if attack_radii else None,
        attacked["smoothed"],
    )
    return {
        "format": REPORT_FORMAT,
        "config": {
            **config,
            "scoring": "certified Dice / Jaccard at radius r: a voxel counts as predicted only where the smoothed "
            "model certifies its class to a radius >= r (L2, input units); abstentions and smaller radii count as "
            "wrong. Cases with no scored class are NaN (null) and excluded from the means",
        },
        "certification": certification,
        "attack": attack,
        "radii": radii,
        "base": {"dice": base_mean, "note": "the base (unsmoothed) model's clean Dice"},
        "metrics": rows,
        "cases": per_case,
        "n_cases": len(cases),
        "check": check,
        "timings": dict(seconds),
        "versions": {
            "monai_advseg": getattr(monai_advseg, "__version__", "unknown"),
            "torch": torch.__version__,
            "monai": monai.__version__,
            "python": platform.python_version(),
        },
    }


def check_certify_dir(output_dir: str | Path, overwrite: bool = False) -> Path:
    """:func:`~monai_advseg.handlers.check_report_dir` for the certification's files (:data:`CERTIFY_FILES`)."""
    return check_report_dir(output_dir, overwrite, files=CERTIFY_FILES, what="certification report")


def load_certification_report(path: str | Path) -> dict[str, Any]:
    """Read a ``certify.json``.

    Raises:
        ValueError: when the file is not a certification report.
    """
    return load_json_report(path, "monai_advseg.certify/", "certification report (certify.json)")


def _values(rows: Sequence[dict], key: str) -> tuple[list[float], list[float]]:
    kept = [r for r in rows if r.get(key) is not None]
    return [float(r["radius"]) for r in kept], [float(r[key]) for r in kept]


def plot_certification(report: dict[str, Any], path: str | Path, title: str | None = None) -> Path:
    """Certified Dice (and Jaccard) vs L2 radius; with the attack's curves (base and smoothed Dice) when present.

    The base model's clean Dice is the dashed line; the certified fraction is drawn on the right panel.

    Returns:
        The written path.
    """
    plt = require_matplotlib()
    rows = report["metrics"]
    figure, axes = plt.subplots(1, 2, figsize=(11, 4.2), constrained_layout=True)
    axes[0].plot(*_values(rows, "certified_dice"), marker="o", markersize=3, label="certified Dice (smoothed)")
    axes[0].plot(
        *_values(rows, "certified_jaccard"), marker=".", markersize=3, linestyle=":", label="certified Jaccard"
    )
    for key, label in (
        ("attack_dice_smoothed", "smoothed Dice under L2 PGD"),
        ("attack_dice_base", "base Dice under L2 PGD"),
    ):
        radii, values = _values(rows, key)
        if radii:
            axes[0].plot(radii, values, marker="x", markersize=4, linestyle="--", label=label)
    base = report.get("base", {}).get("dice")
    if base is not None and math.isfinite(base):
        axes[0].axhline(base, color="grey", linestyle="--", linewidth=1, label="base model, clean")
    axes[1].plot(*_values(rows, "certified_fraction"), marker="o", markersize=3, label="certified fraction")
    axes[1].axhline(1 - float(rows[0]["abstain_rate"]), color="grey", linestyle=":", label="1 - abstain rate")
    sigma = report.get("certification", {}).get("sigma")
    for axis, name in zip(axes, ("Dice / Jaccard", "share of voxels"), strict=True):
        axis.set_xlabel(f"L2 radius (input units; sigma {sigma})")
        axis.set_ylabel(name)
        axis.set_ylim(0, 1.02)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
    return save_figure(figure, path, title, dpi=120)


def plot_certified_gallery(cases: Sequence[dict[str, Any]], path: str | Path, title: str | None = None) -> Path:
    """The certified map of the first cases: image, certified classes and abstentions, radius heat map, truth.

    Columns: the image; the certified foreground (orange) and the abstained voxels (magenta) over it with the ground
    truth's contour (cyan); the certified radius (heat map, abstained voxels blank); the ground truth. 3D cases show
    the last-axis slice through the structure's centre (:func:`~monai_advseg.handlers.centre_slice`).

    Args:
        cases: ``{"image", "label", "certified", "radius"}`` per case (numpy: ``certified`` holds class indices and
            -1 for abstentions).
        path: the PNG to write (atomically).
        title: figure title.

    Returns:
        The written path.

    Raises:
        ValueError: without cases.
    """
    import numpy as np

    if not cases:
        raise ValueError("plot_certified_gallery needs at least one case")
    plt = require_matplotlib()
    figure, axes = plt.subplots(len(cases), 4, figsize=(10, 2.5 * len(cases)), squeeze=False, constrained_layout=True)
    top = max(float(np.max(case["radius"])) for case in cases) or 1.0
    for r, case in enumerate(cases):
        label = case["label"]
        image, index = centre_slice(case["image"], label)
        certified, _ = centre_slice(case["certified"], label)
        radius, _ = centre_slice(case["radius"], label)
        truth, _ = centre_slice(label, label)
        certified, radius, truth = np.asarray(certified), np.asarray(radius), np.asarray(truth)
        where = "" if index is None else f", slice {index}"
        abstained = certified < 0
        axes[r, 0].imshow(image, cmap="gray")
        axes[r, 0].set_title(f"image{where}", fontsize=7)
        axes[r, 1].imshow(image, cmap="gray")
        axes[r, 1].imshow(np.ma.masked_where(certified <= 0, certified), cmap="autumn", alpha=0.5)
        axes[r, 1].imshow(np.ma.masked_where(~abstained, abstained.astype(float)), cmap="cool_r", alpha=0.7)
        if truth.any():
            axes[r, 1].contour(truth > 0, levels=[0.5], colors="cyan", linewidths=0.8)
        axes[r, 1].set_title(f"certified (orange) / abstained {abstained.mean():.1%} (magenta)", fontsize=7)
        shown = axes[r, 2].imshow(np.ma.masked_where(abstained, radius), cmap="viridis", vmin=0, vmax=top)
        axes[r, 2].set_title("certified L2 radius (input units)", fontsize=7)
        figure.colorbar(shown, ax=axes[r, 2], fraction=0.046)
        axes[r, 3].imshow(image, cmap="gray")
        axes[r, 3].imshow(np.ma.masked_where(truth == 0, truth), cmap="autumn", alpha=0.5)
        axes[r, 3].set_title("ground truth", fontsize=7)
        for axis in axes[r]:
            axis.set_xticks([])
            axis.set_yticks([])
    return save_figure(figure, path, title, dpi=100)


def write_certification_reports(
    results: dict[str, Any],
    output_dir: str | Path,
    overwrite: bool = False,
    plot: bool = True,
    gallery: Sequence[dict[str, Any]] | None = None,
) -> dict[str, Path]:
    """Write ``certify.json``, ``certify.csv``, ``certify_cases.csv`` and (``plot``) ``certify.png`` and, with
    ``gallery`` cases, ``certify_gallery.png``.

    Args:
        results: ``CertificationEvaluator.results``.
        output_dir: report folder (created if missing).
        overwrite: replace an existing certification report in that folder.
        plot: also write the figures (needs matplotlib).
        gallery: cases kept by the evaluator (``engine.state.certification_gallery``).

    Returns:
        ``{file name: path}`` of the written files.

    Raises:
        FileExistsError: when the folder holds a certification report and ``overwrite`` is False.
    """
    folder = check_certify_dir(output_dir, overwrite)
    written = write_files(
        folder,
        {
            "certify.csv": csv_bytes(results["metrics"], SUMMARY_COLUMNS),
            "certify_cases.csv": csv_bytes(results.get("cases", []), CASE_COLUMNS),
            "certify.json": json_bytes(results),
        },
    )
    if plot:
        sigma = results.get("certification", {}).get("sigma")
        title = f"{results.get('config', {}).get('network', '')} smoothed, sigma {sigma}"
        written["certify.png"] = plot_certification(results, folder / "certify.png", title=title)
        if gallery:
            written["certify_gallery.png"] = plot_certified_gallery(gallery, folder / "certify_gallery.png", title)
    return written


class CertificationReportWriter(ReportWriter):
    """Ignite handler writing the certification's reports (:func:`write_certification_reports`) when the evaluation
    epoch completes (rank 0 only).

    Reads ``engine.state.certification``, which :class:`~monai_advseg.engines.CertificationEvaluator` fills at
    ``EPOCH_COMPLETED`` before this handler runs, and the gallery's cases in ``engine.state.certification_gallery``.

    Arguments and errors as in :class:`~monai_advseg.handlers.ReportWriter` (``plot``: ``certify.png`` and
    ``certify_gallery.png``).
    """

    state_key = "certification"
    gallery_key = "certification_gallery"
    filled_by = "a certification run"
    check_folder = staticmethod(check_certify_dir)
    write_reports = staticmethod(write_certification_reports)
