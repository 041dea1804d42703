"""Small writing helpers the report writers share: atomic file writes, CSV bytes, JSON-safe values, summaries."""

from __future__ import annotations

import csv
import io
import math
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["atomic_write", "csv_bytes", "json_safe", "summary"]


def summary(values: Any) -> tuple[float, float, int]:
    """``(mean, sample std, count)`` of the finite values (NaN, NaN, 0 when there is none)."""
    import numpy as np

    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return float("nan"), float("nan"), 0
    std = float(finite.std(ddof=1)) if finite.size > 1 else 0.0
    return float(finite.mean()), std, int(finite.size)


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder: a reader sees the old or the new file."""
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
        # mkstemp creates the file private (0600); a report should get the permissions of any new file.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temporary, 0o666 & ~umask)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def csv_bytes(rows: Sequence[dict], columns: Sequence[str]) -> bytes:
    """The rows as CSV with these columns (other keys ignored, missing ones empty)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue().encode()


def json_safe(value: Any) -> Any:
    """``value`` with non-finite floats as None and unknown objects as strings, for strict JSON."""
    # NaN is not JSON: cases without a score become null so that strict parsers read the report.
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, (str, int, bool)) or value is None:
        return value
    if isinstance(value, float):
        return value
    return str(value)
