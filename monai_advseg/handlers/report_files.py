"""What the report writers share: atomic file writes, CSV / JSON bytes, JSON-safe values, summaries, matplotlib, and
the ignite handler base that writes a run's report files when its epoch completes (:class:`ReportWriter`)."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # ignite pulls in torch; the report command line only needs matplotlib
    from ignite.engine import Engine

__all__ = [
    "ReportWriter",
    "atomic_write",
    "csv_bytes",
    "json_bytes",
    "json_safe",
    "load_json_report",
    "require_matplotlib",
    "summary",
    "write_files",
]


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


def json_bytes(value: Any) -> bytes:
    """``value`` as strict, indented JSON (:func:`json_safe` first), one trailing newline."""
    return json.dumps(json_safe(value), indent=2, allow_nan=False).encode() + b"\n"


def load_json_report(path: str | Path, format_prefix: str, what: str) -> dict[str, Any]:
    """Read a JSON report whose ``format`` starts with ``format_prefix`` and that has ``metrics``.

    Args:
        path: the JSON file.
        format_prefix: e.g. ``"monai_advseg.robustness/"``.
        what: the report's name and file in the error, e.g. ``"robustness report (robustness.json)"``.

    Raises:
        ValueError: when the file is not such a report.
    """
    path = Path(path)
    with open(path, encoding="utf-8") as stream:
        report = json.load(stream)
    if (
        not isinstance(report, dict)
        or "metrics" not in report
        or not str(report.get("format", "")).startswith(format_prefix)
    ):
        raise ValueError(f"{path} is not a monai_advseg {what}")
    return report


def write_files(folder: Path, files: Mapping[str, bytes]) -> dict[str, Path]:
    """Write each ``{file name: bytes}`` into ``folder`` (created if missing) with :func:`atomic_write`.

    Returns:
        ``{file name: path}`` of the written files.
    """
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    for name, data in files.items():
        atomic_write(folder / name, data)
        written[name] = folder / name
    return written


def require_matplotlib() -> Any:
    """Import matplotlib with the non-interactive Agg backend.

    Returns:
        ``matplotlib.pyplot``.

    Raises:
        ImportError: when matplotlib (a base dependency) is not installed.
    """
    try:
        import matplotlib
    except ImportError as error:
        raise ImportError(
            "report figures need matplotlib: pip install matplotlib (a dependency of monai_advseg), or pass plot=False"
        ) from error
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


class ReportWriter:
    """Base of the ignite handlers that write a run's reports when the evaluation epoch completes (rank 0 only).

    A subclass names the ``engine.state`` attribute holding the results (``state_key``, filled by the engine at
    ``EPOCH_COMPLETED`` before this handler runs) and the one holding the gallery's cases (``gallery_key``), what
    fills them (``filled_by``, for the error), the folder check ``check_folder(output_dir, overwrite)`` and the writer
    ``write_reports(results, output_dir, overwrite=, plot=, gallery=) -> {file name: path}``. The folder is checked
    and matplotlib imported at construction: a run refuses before any work, not after it.

    Args:
        output_dir: report folder.
        overwrite: replace an existing report.
        plot: also write the figures.

    Raises:
        FileExistsError: at construction, when the folder holds a report and ``overwrite`` is False.
        ImportError: at construction, when ``plot`` and matplotlib is missing.
    """

    state_key = ""
    gallery_key = ""
    filled_by = ""
    check_folder: Callable[..., Path]
    write_reports: Callable[..., dict[str, Path]]

    def __init__(self, output_dir: str | Path, overwrite: bool = False, plot: bool = True) -> None:
        self.check_folder(output_dir, overwrite)
        if plot:
            require_matplotlib()
        self.output_dir = Path(output_dir)
        self.overwrite = overwrite
        self.plot = plot
        self.paths: dict[str, Path] = {}

    def attach(self, engine: Engine) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        results = getattr(engine.state, self.state_key, None)
        if results is None:
            raise RuntimeError(
                f"{type(self).__name__}: engine.state.{self.state_key} is missing; attach it to {self.filled_by}"
            )
        if getattr(engine.state, "rank", 0) != 0:
            return
        self.paths = self.write_reports(
            results,
            self.output_dir,
            overwrite=self.overwrite,
            plot=self.plot,
            gallery=getattr(engine.state, self.gallery_key, None),
        )
