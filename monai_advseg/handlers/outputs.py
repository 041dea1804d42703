"""Refuse to replace the files of an earlier evaluation or inference run, before the run starts.

A bundle's ``initialize`` lists the files the run will write and checks that none of them exists yet:

- :func:`metrics_saver_files`: the CSV files a ``monai.handlers.MetricsSaver`` writes (``metrics.csv``,
  ``<metric>_raw.csv``, ``<metric>_summary.csv``).
- :func:`saved_image_files`: the files the ``SaveImaged`` transforms of a (composed) postprocessing write for a
  datalist, named exactly as MONAI names them; two inputs that would write the same file are an error too.
- :func:`check_new_files`: raise naming the existing ones unless ``overwrite``.

Only these files count: other files in the output folder (training logs, TensorBoard events) are left alone.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from monai.transforms import SaveImage, SaveImaged

from monai_advseg.engines.flags import as_flag

__all__ = ["check_new_files", "metrics_saver_files", "saved_image_files"]


def check_new_files(paths: Iterable[str | os.PathLike], overwrite: bool | str = False) -> list[Path]:
    """Refuse files that exist already, unless ``overwrite``.

    Args:
        paths: the files a run is about to write.
        overwrite: allow replacing them (``true`` / ``false``, also as text).

    Returns:
        The paths, as ``Path`` objects.

    Raises:
        FileExistsError: naming the existing files (the first ten and how many more).
        IsADirectoryError: when one of the paths is a folder (it cannot be replaced by a file).
    """
    replace = as_flag(overwrite, "overwrite")
    paths = [Path(path) for path in paths]
    folders = [str(path) for path in paths if path.is_dir()]
    if folders:
        raise IsADirectoryError(f"output file name(s) taken by a folder: {', '.join(folders[:10])}")
    existing = [str(path) for path in paths if path.exists()]
    if existing and not replace:
        shown = ", ".join(existing[:10]) + (f" and {len(existing) - 10} more" if len(existing) > 10 else "")
        raise FileExistsError(
            f"{len(existing)} output file(s) of an earlier run exist: {shown}; pass --overwrite true to replace "
            "them, or choose another --output_dir"
        )
    return paths


def metrics_saver_files(saver: Any) -> list[Path]:
    """The CSV files a ``monai.handlers.MetricsSaver`` will write (see ``monai.handlers.utils.write_metrics_reports``).

    Args:
        saver: the ``MetricsSaver`` (its ``save_dir``, ``metrics``, ``metric_details``, ``summary_ops`` are read).
            With ``metric_details="*"`` the metric names are not known before the run; the ``*_raw.csv`` and
            ``*_summary.csv`` files already in ``save_dir`` are returned instead.

    Returns:
        The file paths.
    """
    folder = Path(saver.save_dir)
    files = [folder / "metrics.csv"] if saver.metrics is not None else []
    details = saver.metric_details
    if details is None:
        return files
    suffixes = ["raw"] + (["summary"] if saver.summary_ops is not None else [])
    if details == "*" or "*" in details:
        return files + sorted(p for suffix in suffixes for p in folder.glob(f"*_{suffix}.csv"))
    names = [details] if isinstance(details, str) else list(details)
    return files + [folder / f"{name}_{suffix}.csv" for name in names for suffix in suffixes]


def _savers(transforms: Any) -> list[SaveImage]:
    found = []
    for transform in getattr(transforms, "transforms", [transforms]):
        if isinstance(transform, SaveImaged):
            found.append(transform.saver)
        elif isinstance(transform, SaveImage):
            found.append(transform)
        elif hasattr(transform, "transforms"):
            found += _savers(transform)
    return found


def saved_image_files(
    datalist: Sequence[dict | str | os.PathLike] | str | os.PathLike, transforms: Any, key: str = "image"
) -> list[Path]:
    """The files that the ``SaveImage(d)`` transforms in ``transforms`` will write for the inputs of ``datalist``.

    Names are made by each saver's own ``folder_layout`` from the input file name (what ``LoadImage`` stores as
    ``filename_or_obj``), so they match what MONAI writes; nothing is created on disk.

    Args:
        datalist: items (``{key: path}`` dictionaries) or paths; a single path is one input.
        transforms: a ``SaveImaged`` / ``SaveImage`` or a ``Compose`` holding them (nested ``Compose`` too).
        key: the item key holding the input path.

    Returns:
        The output paths, in datalist order (one per input and saver).

    Raises:
        ValueError: when no saver is found, or when two inputs would write the same file (the second would silently
            replace the first); the message names both inputs.
    """
    savers = _savers(transforms)
    if not savers:
        raise ValueError(f"no SaveImage / SaveImaged transform found in {type(transforms).__name__}")
    layouts = []
    for saver in savers:
        layout = copy.copy(saver.folder_layout)
        layout.makedirs = False  # MONAI's layout creates the output folder when it names a file
        layouts.append(layout)
    items = [datalist] if isinstance(datalist, (str, os.PathLike)) else list(datalist)
    written: dict[Path, str] = {}
    for item in items:
        source = str(item[key] if isinstance(item, dict) else item)
        for layout in layouts:
            target = Path(layout.filename(subject=source))
            if target in written:
                raise ValueError(f"inputs {written[target]} and {source} would both be written to {target}")
            written[target] = source
    return list(written)
