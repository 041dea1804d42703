"""Epsilon units and the Kurakin iteration schedule.

The robustness protocol of the NLCE paper states every strength on the 0..255 intensity scale ("levels"). Networks see
inputs in their own units (Hounsfield units, [0, 1], z-scores), so these helpers convert between the two.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = ["PAPER_EPSILON_LEVELS", "kurakin_steps", "kurakin_steps_for", "levels_to_epsilon"]

#: The 18 attack strengths of the NLCE paper's sweep, in 0..255 levels.
PAPER_EPSILON_LEVELS: tuple[float, ...] = (0.5, 1, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30, 32)


def kurakin_steps(levels: float) -> int:
    """Number of iterations of the basic iterative method for a strength given in levels.

    Kurakin et al. use ``min(eps + 4, 1.25 * eps)`` iterations with eps in 0..255 levels and a step of one level. The
    count is rounded *up* so that every positive strength gets at least one step (torchattacks floors it, which gives
    0 steps at eps = 0.5). For whole levels this equals ``min(levels + 4, ceil(1.25 * levels))``.

    Args:
        levels: attack strength on the 0..255 scale (non-negative, finite).

    Returns:
        The number of iterations: 0 at 0 levels, 1 at 0.5, 36 at 32.

    Raises:
        ValueError: when ``levels`` is negative or not finite.
    """
    levels = float(levels)
    if not math.isfinite(levels) or levels < 0:
        raise ValueError(f"kurakin_steps: levels must be a finite number >= 0, got {levels}")
    return int(math.ceil(min(levels + 4.0, 1.25 * levels)))


def kurakin_steps_for(epsilon: float, alpha: float = 1.0, *, rtol: float = 1e-9) -> int:
    """Kurakin iterations for a strength and a step size in the same unit: ``kurakin_steps(epsilon / alpha)``.

    Strengths and steps converted to input units rarely divide exactly: 12 levels in HU over one-level steps is
    12.000000000000002 in float64 (12.000001 in float32), and ``ceil(1.25 * r)`` would count 16 iterations instead
    of 15. So ``min(r + 4, 1.25 r)`` is snapped to the nearest whole number when it lies within ``rtol`` of it.

    Args:
        epsilon: the strength (>= 0).
        alpha: the step size (> 0 when ``epsilon`` > 0), in the unit of ``epsilon``.
        rtol: relative tolerance of the snap: the rounding error the two values and their ratio may carry.

    Returns:
        The number of iterations (0 at strength 0).

    Raises:
        ValueError: on a negative or non-finite strength, or a step size that is not > 0.
    """
    epsilon, alpha = float(epsilon), float(alpha)
    if not math.isfinite(epsilon) or epsilon < 0:
        raise ValueError(f"kurakin_steps_for: epsilon must be a finite number >= 0, got {epsilon}")
    if epsilon == 0:
        return 0
    if not (math.isfinite(alpha) and alpha > 0):
        raise ValueError(f"kurakin_steps_for: alpha must be a finite number > 0, got {alpha}")
    ratio = epsilon / alpha
    bound = min(ratio + 4.0, 1.25 * ratio)
    if abs(bound - round(bound)) <= rtol * max(1.0, bound):
        bound = float(round(bound))
    return int(math.ceil(bound))


def levels_to_epsilon(levels: float | Sequence[float], intensity_range: tuple[float, float]) -> float | list[float]:
    """Convert strengths on the 0..255 scale to the network's input units: ``levels / 255 * (hi - lo)``.

    Args:
        levels: one strength or a sequence of strengths in 0..255 levels.
        intensity_range: ``(lo, hi)`` of the network's input, e.g. ``(0, 1)`` or ``(-1024, 3071)`` for raw HU.

    Returns:
        The strength(s) in input units, a float for a float and a list for a sequence.

    Raises:
        ValueError: when the range is empty or reversed, or a strength is negative or not finite.
    """
    lo, hi = (float(v) for v in intensity_range)
    if not (math.isfinite(lo) and math.isfinite(hi)) or lo >= hi:
        raise ValueError(f"levels_to_epsilon: intensity_range must be finite with lo < hi, got {intensity_range}")
    values = [levels] if isinstance(levels, (int, float)) else list(levels)
    for value in values:
        if not math.isfinite(float(value)) or float(value) < 0:
            raise ValueError(f"levels_to_epsilon: levels must be finite and >= 0, got {value}")
    converted = [float(value) / 255.0 * (hi - lo) for value in values]
    return converted[0] if isinstance(levels, (int, float)) else converted
