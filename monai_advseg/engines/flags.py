"""Command-line friendly booleans for bundle overrides."""

from __future__ import annotations

__all__ = ["as_flag"]

_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


def as_flag(value: bool | int | str, name: str = "flag") -> bool:
    """Read a boolean given as a bool or as text.

    ``python -m monai.bundle run ... --online false`` passes the *string* "false" (only ``False`` is parsed as a
    Python literal), which is truthy; bundle configs route such switches through this function.

    Raises:
        ValueError: for anything but a bool, 0/1 or true/false/yes/no/on/off text.
    """
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise ValueError(f"{name} must be true or false, got {value!r}")
