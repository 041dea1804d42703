"""Checked decathlon-style datalists for 3D images: NIfTI files and DICOM series folders, with optional labels.

Command line::

    python -m monai_advseg.data.datalist IMAGES [LABELS] -o datalist.json [--val-fraction F] [--seed S] [--overwrite]

``IMAGES`` is a NIfTI file, a DICOM series folder, or a folder searched recursively for both. ``LABELS`` is a NIfTI
file (for a single image) or a folder of NIfTI labels paired by name stem (``case1.nii.gz`` with
``case1.nii.gz``, a series folder ``case1/`` with ``case1.nii.gz``); a single image with a single label is paired
whatever their names. Every image and label is read in full and checked (see :mod:`monai_advseg.data.checks`);
the first problem stops the run with one ``error: <file>: <reason>`` line and exit status 1 (``--debug`` shows the
traceback), and nothing is written.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from monai_advseg.cli import DEBUG_HELP, entry_point
from monai_advseg.data.checks import check_datalist_geometry, is_nifti_file
from monai_advseg.data.dicom import find_dicom_series
from monai_advseg.data.folders import split_datalist, strip_suffix

__all__ = ["build_datalist", "find_images", "main", "write_datalist_json"]

logger = logging.getLogger(__name__)

_NIFTI_SUFFIXES = (".nii.gz", ".nii")


def _key(path: Path) -> str:
    """The pairing key: a NIfTI file's stem or a series folder's name."""
    return (strip_suffix(path.name, _NIFTI_SUFFIXES) or path.name) if path.is_file() else path.name


def find_images(images: str | os.PathLike) -> list[Path]:
    """Return the NIfTI files and DICOM series folders that ``images`` is or contains, sorted by path.

    Args:
        images: a NIfTI file, a DICOM series folder, or a folder searched recursively.

    Returns:
        the paths (files for NIfTI, folders for DICOM series).

    Raises:
        FileNotFoundError: when ``images`` does not exist.
        ValueError: when ``images`` is a file of another kind, or a folder holding neither.
    """
    images = Path(images)
    if not images.exists():
        raise FileNotFoundError(f"{images}: image path not found")
    if images.is_file():
        if not is_nifti_file(images):
            raise ValueError(f"{images}: not a NIfTI file; give a NIfTI file, a DICOM series folder or a folder")
        return [images]
    found = [p for p in images.rglob("*") if p.is_file() and is_nifti_file(p)]
    found += find_dicom_series(images)
    if not found:
        raise ValueError(f"{images}: folder holds no NIfTI file and no DICOM series")
    return sorted(found)


def _find_labels(labels: Path) -> dict[str, Path]:
    if not labels.exists():
        raise FileNotFoundError(f"{labels}: label path not found")
    files = [labels] if labels.is_file() else sorted(p for p in labels.rglob("*") if p.is_file() and is_nifti_file(p))
    if not files:
        raise ValueError(f"{labels}: label folder holds no NIfTI file")
    by_key: dict[str, Path] = {}
    for p in files:
        if not is_nifti_file(p):
            raise ValueError(f"{p}: labels must be NIfTI files")
        if _key(p) in by_key:
            raise ValueError(f"{labels}: two labels share the name {_key(p)!r}: {by_key[_key(p)]}, {p}")
        by_key[_key(p)] = p
    return by_key


def _pair(images: list[Path], labels: Path) -> list[tuple[Path, Path]]:
    by_key = _find_labels(labels)
    if len(images) == 1 and len(by_key) == 1:
        # one series/volume and one label map: the usual "series folder + its segmentation" case, names differ
        return [(images[0], next(iter(by_key.values())))]
    unmatched = [str(p) for p in images if _key(p) not in by_key]
    if unmatched:
        shown = ", ".join(unmatched[:10]) + (f" and {len(unmatched) - 10} more" if len(unmatched) > 10 else "")
        raise ValueError(f"{labels}: no label named like {len(unmatched)} image(s): {shown}")
    return [(p, by_key[_key(p)]) for p in images]


def build_datalist(
    images: str | os.PathLike,
    labels: str | os.PathLike | None = None,
    *,
    val_fraction: float = 0.0,
    seed: int = 0,
    expected_ndim: int = 3,
    check_values: bool = True,
    atol: float = 1e-2,
) -> dict[str, list[dict[str, str]]]:
    """Find, check and pair 3D images and labels into a decathlon-style datalist.

    Args:
        images: a NIfTI file, a DICOM series folder, or a folder searched recursively for both.
        labels: ``None`` (image-only datalist), a NIfTI label file, or a folder of NIfTI labels (see module doc).
        val_fraction: share of items put in ``"validation"`` (see :func:`~monai_advseg.data.split_datalist`).
        seed: split seed.
        expected_ndim: required spatial dimensions of every image and label.
        check_values: decode every voxel (finds truncated files, undecodable pixel data, NaN/Inf).
        atol: tolerance in mm for the image/label affine comparison.

    Returns:
        ``{"training": [...], "validation": [...]}``; items are ``{"image": path, "label": path}`` with absolute
        paths (DICOM series as their folder, which ``LoadImaged`` reads as one volume).

    Raises:
        FileNotFoundError: when an input path does not exist.
        ValueError: on the first input that fails a check, naming the file and the reason.
    """
    # Pair on the names as given (a link may be named unlike its target), then store resolved paths.
    found = find_images(images)
    if labels is None:
        items = [{"image": str(image.resolve())} for image in found]
    else:
        items = [{"image": str(i.resolve()), "label": str(lbl.resolve())} for i, lbl in _pair(found, Path(labels))]
    check_datalist_geometry(items, expected_ndim=expected_ndim, check_values=check_values, atol=atol)
    train, val = split_datalist(items, val_fraction, seed)
    logger.info("datalist: %d training and %d validation items", len(train), len(val))
    return {"training": train, "validation": val}


def write_datalist_json(datalist: dict[str, Any], path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write a datalist as JSON atomically: a reader sees the old file or the complete new one, never a part.

    Args:
        datalist: the datalist dictionary.
        path: output file; its folder must exist.
        overwrite: replace an existing file; otherwise an existing file is an error and stays untouched.

    Returns:
        the output path.

    Raises:
        FileExistsError: when ``path`` exists and ``overwrite`` is false.
        FileNotFoundError: when the output folder does not exist.
    """
    path = Path(path)
    if not path.parent.is_dir():
        raise FileNotFoundError(f"{path}: output folder {path.parent} does not exist")
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path}: output exists; pass overwrite=True (--overwrite) to replace it")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(datalist, f, indent=2)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        if overwrite:
            os.replace(tmp, path)
        else:
            # link() fails if the name appeared meanwhile, so a concurrent writer's file is never clobbered
            os.link(tmp, path)
            os.unlink(tmp)
    except FileExistsError:
        os.unlink(tmp)
        raise FileExistsError(f"{path}: output exists; pass overwrite=True (--overwrite) to replace it") from None
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


# The command only finds, reads and checks files and writes one JSON: any ValueError / OSError is about its input or
# output files (our checks name the file), not a bug of a model run.
@entry_point(input_errors=(ValueError, OSError))
def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status (0 on success, 1 on bad input)."""
    parser = argparse.ArgumentParser(
        prog="python -m monai_advseg.data.datalist",
        description="Build a checked MONAI/decathlon datalist JSON from NIfTI files and DICOM series folders.",
    )
    parser.add_argument("images", help="NIfTI file, DICOM series folder, or folder searched recursively")
    parser.add_argument("labels", nargs="?", default=None, help="NIfTI label file or folder of NIfTI labels")
    parser.add_argument("-o", "--output", required=True, help="datalist JSON to write")
    parser.add_argument("--val-fraction", type=float, default=0.0, help="share of items for validation (0..1)")
    parser.add_argument("--seed", type=int, default=0, help="split seed")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    parser.add_argument("--skip-value-check", action="store_true", help="check headers only, do not decode voxels")
    parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    output = Path(args.output)
    if output.exists() and not args.overwrite:  # fail before the (slow) checks, not after
        raise FileExistsError(f"{output}: output exists; pass --overwrite to replace it")
    datalist = build_datalist(
        args.images,
        args.labels,
        val_fraction=args.val_fraction,
        seed=args.seed,
        check_values=not args.skip_value_check,
    )
    write_datalist_json(datalist, output, overwrite=args.overwrite)
    n_train, n_val = len(datalist["training"]), len(datalist["validation"])
    print(f"wrote {output}: {n_train} training, {n_val} validation items")
    return 0


if __name__ == "__main__":
    sys.exit(main())
