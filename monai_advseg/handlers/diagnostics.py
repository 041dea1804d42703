"""Gradient-masking diagnostics as a pure function: per-case Dice arrays in, ``{name: {"passed": ..., ...}}`` out.

Each check compares the evaluated attack with something that a truly robust model must also resist and that a
masked gradient cannot fool (Athalye et al. 2018, Carlini et al. 2019's checklist): more budget, no budget, noise,
another network's gradient, and no gradient at all. ``passed`` is None when a check was not run (with the reason).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

__all__ = ["DIAGNOSTICS", "build_diagnostics", "diagnostics_verdict"]

#: The diagnostics' names, in the order the report lists them.
DIAGNOSTICS: tuple[str, ...] = ("monotone", "unbounded", "noise", "transfer", "black_box")


def _column_means(values: Any) -> list[float]:
    import numpy as np

    array = np.asarray(values, dtype=np.float64)
    out = []
    for column in range(array.shape[1]):
        finite = array[:, column][np.isfinite(array[:, column])]
        out.append(float(finite.mean()) if finite.size else float("nan"))
    return out


def _not_stronger(name: str, reference: list[float], other: list[float], levels: Sequence[float], tolerance: float):
    """``other`` (noise, transfer, black box) must not reach a lower mean Dice than the attack at any eps."""
    gaps = [o - r for o, r in zip(other, reference, strict=True)]
    finite = [(g, level) for g, level in zip(gaps, levels, strict=True) if math.isfinite(g)]
    worst_gap, worst_level = min(finite) if finite else (float("nan"), None)
    return {
        "passed": bool(finite) and worst_gap >= -tolerance,
        "eps_levels": list(levels),
        f"{name}_dice": other,
        "attack_dice": reference,
        "largest_advantage": -worst_gap if finite else None,  # how far below the attack it got (> 0: stronger)
        "at_eps_levels": worst_level,
        "tolerance": tolerance,
    }


def build_diagnostics(
    epsilon_levels: Sequence[float],
    clean_dice: Any,
    attack_dice: Any,
    *,
    unbounded_dice: Any | None = None,
    noise_dice: Any | None = None,
    transfer_dice: Any | None = None,
    black_box_dice: Any | None = None,
    black_box_cases: Sequence[int] = (),
    black_box_levels: Sequence[float] = (),
    skipped: dict[str, str] | None = None,
    tolerance: float = 0.02,
    unbounded_threshold: float = 0.05,
    details: dict[str, Any] | None = None,
) -> dict[str, dict[str, Any]]:
    """Judge the five diagnostics from per-case Dice.

    Args:
        epsilon_levels: the sweep's strengths (E), in levels.
        clean_dice: ``(N,)`` clean Dice per case.
        attack_dice: ``(N, E)`` Dice under the evaluated attack.
        unbounded_dice: ``(N,)`` Dice under the attack with eps = the whole intensity range (255 levels).
        noise_dice: ``(N, E)`` Dice under uniform noise of the same eps.
        transfer_dice: ``(N, E)`` Dice of the model on images attacked through the surrogate.
        black_box_dice: ``(n, len(black_box_levels))`` Dice under the random search, for cases ``black_box_cases``.
        black_box_cases: row indices (into ``attack_dice``) of the black-box cases.
        black_box_levels: the strengths the random search ran at (each one of ``epsilon_levels``).
        skipped: ``{name: reason}`` for checks not run.
        tolerance: Dice by which a reference may beat the attack (or the curve rise) before a check fails.
        unbounded_threshold: the highest mean Dice allowed at eps = the whole range.
        details: extra numbers per check (e.g. queries, the surrogate), merged into its entry.

    Returns:
        ``{name: {"passed": bool or None, ...numbers...}}`` for every name of :data:`DIAGNOSTICS`.
    """
    import numpy as np

    skipped = dict(skipped or {})
    levels = [float(e) for e in epsilon_levels]
    attack = np.asarray(attack_dice, dtype=np.float64)
    means = _column_means(attack)
    clean = _column_means(np.asarray(clean_dice, dtype=np.float64).reshape(-1, 1))[0]
    curve = [clean, *means]
    rises = [b - a for a, b in zip(curve[:-1], curve[1:], strict=True)]
    finite = [(r, level) for r, level in zip(rises, levels, strict=True) if math.isfinite(r)]
    rise, at = max(finite) if finite else (float("nan"), None)
    out: dict[str, dict[str, Any]] = {
        "monotone": {
            "passed": bool(finite) and rise <= tolerance,
            "eps_levels": [0.0, *levels],
            "attack_dice": curve,
            "largest_rise": rise if finite else None,
            "at_eps_levels": at,
            "tolerance": tolerance,
        }
    }
    if unbounded_dice is not None:
        value = _column_means(np.asarray(unbounded_dice, dtype=np.float64).reshape(-1, 1))[0]
        out["unbounded"] = {
            "passed": math.isfinite(value) and value <= unbounded_threshold,
            "eps_levels": 255.0,
            "attack_dice": value,
            "threshold": unbounded_threshold,
        }
    if noise_dice is not None:
        out["noise"] = _not_stronger("noise", means, _column_means(noise_dice), levels, tolerance)
    if transfer_dice is not None:
        out["transfer"] = _not_stronger("transfer", means, _column_means(transfer_dice), levels, tolerance)
    if black_box_dice is not None and len(black_box_cases):
        rows = np.asarray(list(black_box_cases), dtype=np.int64)
        columns = [levels.index(float(e)) for e in black_box_levels]
        reference = _column_means(attack[rows][:, columns])
        entry = _not_stronger("black_box", reference, _column_means(black_box_dice), list(black_box_levels), tolerance)
        out["black_box"] = {**entry, "n_cases": int(rows.size)}
    for name in DIAGNOSTICS:
        if name not in out:
            out[name] = {"passed": None, "skipped": skipped.get(name, "not run")}
    for name, extra in (details or {}).items():
        if name in out:
            out[name].update(extra)
    return {name: out[name] for name in DIAGNOSTICS}


def diagnostics_verdict(diagnostics: dict[str, dict[str, Any]]) -> str:
    """One line: which diagnostics failed, or that all that ran passed."""
    failed = [n for n, d in diagnostics.items() if d.get("passed") is False]
    ran = [n for n, d in diagnostics.items() if d.get("passed") is not None]
    if failed:
        return (
            f"gradient masking suspected: {', '.join(failed)} failed ({len(failed)} of {len(ran)} run); the attacked "
            "Dice overstates the robustness"
        )
    return f"no sign of gradient masking: all {len(ran)} diagnostics run passed"
