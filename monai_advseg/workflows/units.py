"""Attack strengths in three units: levels of the network-input range, network-input units and source units (HU).

A bundle's intensity preprocessing maps the image's source units (Hounsfield units for CT) to what the network sees.
:func:`intensity_map` reads that map from the bundle's own (instantiated) preprocessing:

- ``ScaleIntensityRanged`` (``a_min, a_max, b_min, b_max``): fixed and linear, ``(b_max - b_min) / (a_max - a_min)``
  input units per source unit; with ``clip=True`` the network input lies in ``[b_min, b_max]``.
- ``NormalizeIntensityd`` with a fixed ``subtrahend`` and ``divisor``: fixed and linear, ``1 / divisor`` per unit.
- ``ScaleIntensityd`` (min-max of each image), ``ScaleIntensityRangePercentilesd`` (percentiles of each image) and
  ``NormalizeIntensityd`` without fixed statistics: the factor differs from image to image, so an epsilon in source
  units has no fixed meaning at the network input.

Several such transforms compose (a linear map after a linear map is linear). :class:`EpsilonUnits` converts the
strengths of a sweep between the units and describes the conversion for the report.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from monai_advseg.data import InputError

__all__ = ["EPSILON_UNITS", "EpsilonUnits", "IntensityMap", "intensity_map"]

#: The units an epsilon may be given in: ``levels`` (of 255 of the network-input range, the NLCE paper's unit),
#: ``hu`` (the image's source units, Hounsfield units for CT) and ``input`` (network-input units).
EPSILON_UNITS: tuple[str, ...] = ("levels", "hu", "input")


@dataclass(frozen=True)
class IntensityMap:
    """What the intensity preprocessing does to the image: ``input = scale * source + offset`` when ``fixed``.

    Attributes:
        scale: network-input units per source unit (None when the map is not fixed).
        offset: the input value of source value 0 (None when not fixed).
        input_range: ``(lo, hi)`` of the network input where the preprocessing bounds it, else None.
        clipped: the preprocessing clips its output to ``input_range`` (a clipped window clips the attack too).
        fixed: the map is the same for every image (False for per-image normalisations).
        transforms: one description per intensity transform found, in order.
    """

    scale: float | None = 1.0
    offset: float | None = 0.0
    input_range: tuple[float, float] | None = None
    clipped: bool = False
    fixed: bool = True
    transforms: list[str] = field(default_factory=list)

    def describe(self) -> str:
        """The map in one line, for messages and the report."""
        if not self.transforms:
            return "no intensity transform: the network sees the source units"
        return "; ".join(self.transforms)


def _flatten(transforms: Any) -> list[Any]:
    found = []
    for transform in getattr(transforms, "transforms", [transforms]):
        if hasattr(transform, "transforms") and not hasattr(transform, "keys"):
            found += _flatten(transform)
        else:
            found.append(transform)
    return found


def _scalar(value: Any) -> float | None:
    """A single number from a scalar or a one-element sequence (one channel), else None."""
    if value is None:
        return None
    try:
        values = [float(v) for v in value] if isinstance(value, (list, tuple)) else [float(value)]
    except (TypeError, ValueError):
        return None
    return values[0] if len(values) == 1 else None


def intensity_map(preprocessing: Any, key: str = "image") -> IntensityMap:
    """Read the intensity map of a (composed) preprocessing for the image ``key``.

    Args:
        preprocessing: a MONAI ``Compose`` (nested ones too) or a single transform, already instantiated; None
            means no preprocessing (the identity).
        key: the image key of the dataset items.

    Returns:
        the composed :class:`IntensityMap`.
    """
    from monai.transforms import (
        NormalizeIntensityd,
        ScaleIntensityd,
        ScaleIntensityRanged,
        ScaleIntensityRangePercentilesd,
    )

    scale: float | None = 1.0
    offset: float | None = 0.0
    input_range: tuple[float, float] | None = None
    clipped, fixed, described = False, True, []
    for transform in [] if preprocessing is None else _flatten(preprocessing):
        keys = getattr(transform, "keys", ())
        if key not in (keys if isinstance(keys, (list, tuple)) else (keys,)):
            continue
        name = type(transform).__name__
        if isinstance(transform, ScaleIntensityRanged):
            s = transform.scaler
            b_min = 0.0 if s.b_min is None or s.b_max is None else float(s.b_min)
            b_max = 1.0 if s.b_min is None or s.b_max is None else float(s.b_max)
            factor = (b_max - b_min) / (float(s.a_max) - float(s.a_min))
            shift = b_min - float(s.a_min) * factor
            described.append(
                f"{name}(a_min={s.a_min:g}, a_max={s.a_max:g}, b_min={b_min:g}, b_max={b_max:g}, clip={s.clip})"
            )
            new_range: tuple[float, float] | None = (min(b_min, b_max), max(b_min, b_max))
            clip_now = bool(s.clip)
        elif isinstance(transform, NormalizeIntensityd):
            n = transform.normalizer
            subtrahend, divisor = _scalar(n.subtrahend), _scalar(n.divisor)
            if subtrahend is None or divisor is None or n.nonzero:
                described.append(f"{name}(subtrahend={n.subtrahend}, divisor={n.divisor}): statistics of each image")
                scale = offset = None
                fixed, new_range, clip_now = False, None, False
                input_range, clipped = None, False
                continue
            factor, shift = 1.0 / divisor, -subtrahend / divisor
            described.append(f"{name}(subtrahend={subtrahend:g}, divisor={divisor:g})")
            new_range, clip_now = None, False
        elif isinstance(transform, (ScaleIntensityd, ScaleIntensityRangePercentilesd)):
            s = transform.scaler
            if isinstance(transform, ScaleIntensityd):
                if s.minv is None or s.maxv is None:
                    described.append(f"{name}(factor={s.factor}): not a fixed range")
                    input_range = None
                else:
                    described.append(f"{name}(minv={s.minv:g}, maxv={s.maxv:g}): min-max of each image")
                    input_range = (min(s.minv, s.maxv), max(s.minv, s.maxv))
                clipped = input_range is not None  # min-max scaling puts every image exactly into the range
            else:
                described.append(
                    f"{name}(lower={s.lower:g}, upper={s.upper:g}, b_min={s.b_min}, b_max={s.b_max}, clip={s.clip}): "
                    "percentiles of each image"
                )
                bounded = s.b_min is not None and s.b_max is not None
                input_range = (min(s.b_min, s.b_max), max(s.b_min, s.b_max)) if bounded else None
                clipped = bool(s.clip) and bounded
            scale = offset = None
            fixed = False
            continue
        else:
            continue
        if scale is not None and offset is not None:
            scale, offset = scale * factor, offset * factor + shift
        if input_range is not None:  # an earlier bound, carried through this linear map
            lo, hi = (factor * v + shift for v in input_range)
            input_range = (min(lo, hi), max(lo, hi))
        if new_range is not None:
            input_range, clipped = new_range, clip_now
    return IntensityMap(scale, offset, input_range, clipped, fixed, described)


def _numbers(values: Sequence[float], name: str) -> list[float]:
    try:
        numbers = [float(v) for v in values]
    except (TypeError, ValueError):
        raise InputError(f'{name}: {values!r}: expected a list of numbers, e.g. "[1, 2, 4]"') from None
    bad = [v for v in numbers if not math.isfinite(v) or v < 0]
    if bad:
        raise InputError(f"{name}: {bad}: strengths must be finite and >= 0")
    return numbers


class EpsilonUnits:
    """Convert the strengths of a sweep between levels, network-input units and source units (HU).

    A level is 1/255 of the network-input range ``(lo, hi)``; an input unit is what the network sees; a source unit
    (``hu``) is converted through the fixed linear map of the preprocessing (``input = |scale| * HU`` for a
    difference; the offset does not matter for a perturbation).

    Args:
        unit: the unit the strengths are given in, one of :data:`EPSILON_UNITS`.
        mapping: the preprocessing's :class:`IntensityMap`.
        input_range: the network-input range ``(lo, hi)``; None takes the preprocessing's.
        source: where the preprocessing came from (named in messages), e.g. ``"validate#preprocessing"``.

    Raises:
        InputError: on an unknown unit, on ``hu`` with a map that is not fixed (suggests ``input``), or when no
            network-input range is known.
    """

    def __init__(
        self,
        unit: str,
        mapping: IntensityMap,
        input_range: Sequence[float] | None = None,
        source: str = "validate#preprocessing",
    ) -> None:
        if unit not in EPSILON_UNITS:
            raise InputError(f"--epsilon_unit: {unit!r}: unknown unit; choose one of {', '.join(EPSILON_UNITS)}")
        if unit == "hu" and not mapping.fixed:
            raise InputError(
                f"{source}: {mapping.describe()}: the intensity scale differs from image to image, so an epsilon in "
                "HU has no fixed size at the network input; give it with --epsilon_unit input (or levels)"
            )
        if input_range is None:
            input_range = mapping.input_range
        if input_range is None:
            raise InputError(
                f"{source}: {mapping.describe()}: does not bound the network input, so a level (1/255 of the "
                'input range) and the clip range are unknown; pass --intensity_range "[lo, hi]"'
            )
        lo, hi = (float(v) for v in input_range)
        if not (math.isfinite(lo) and math.isfinite(hi) and hi > lo):
            raise InputError(f"--intensity_range: {list(input_range)}: expected [lo, hi] with lo < hi")
        self.unit = unit
        self.mapping = mapping
        self.input_range = (lo, hi)
        self.source = source

    @property
    def input_per_level(self) -> float:
        """Network-input units in one level."""
        return (self.input_range[1] - self.input_range[0]) / 255.0

    @property
    def input_per_source(self) -> float | None:
        """Network-input units in one source unit (HU), None when the map is not fixed."""
        return None if self.mapping.scale is None else abs(self.mapping.scale)

    def to_levels(self, values: Sequence[float], name: str = "--epsilons") -> list[float]:
        """The strengths ``values`` (in :attr:`unit`) in levels."""
        numbers = _numbers(values, name)
        if self.unit == "levels":
            return numbers
        if self.unit == "input":
            return [v / self.input_per_level for v in numbers]
        assert self.input_per_source is not None  # checked in __init__
        return [v * self.input_per_source / self.input_per_level for v in numbers]

    def to_input_units(self, values: Sequence[float], name: str = "--epsilons") -> list[float]:
        """The values (in :attr:`unit`) in network-input units.

        Every conversion is a fixed linear factor, so it serves an L2 norm (a noise std, a certified radius) as
        well as an L-inf epsilon: ``||scale * d||_2 = |scale| * ||d||_2``.
        """
        if self.unit == "input":  # as given, not through levels and back (no rounding)
            return _numbers(values, name)
        return [v * self.input_per_level for v in self.to_levels(values, name)]

    def all_units(self, levels: Sequence[float]) -> dict[str, list[float] | None]:
        """``{"levels", "input_units", "hu"}`` of strengths given in levels (``hu`` None when not fixed)."""
        per_source = self.input_per_source
        return {
            "levels": [float(v) for v in levels],
            "input_units": [v * self.input_per_level for v in levels],
            "hu": None
            if per_source is None or per_source == 0
            else [v * self.input_per_level / per_source for v in levels],
        }

    def describe(self) -> dict[str, Any]:
        """How the strengths were converted, for the report."""
        per_source = self.input_per_source
        return {
            "given_in": self.unit,
            "preprocessing": self.source,
            "intensity_map": self.mapping.describe(),
            "input_range": list(self.input_range),
            "clip_range": list(self.input_range),
            "clipped_by_preprocessing": self.mapping.clipped,
            "input_units_per_level": self.input_per_level,
            "input_units_per_hu": per_source,
            "hu_per_level": None if not per_source else self.input_per_level / per_source,
            "note": "a level is 1/255 of input_range; HU are the image's source units, converted through the fixed "
            "linear intensity map (null when the map differs per image); the attack clips to clip_range",
        }
