"""Datalists for folders of 2D slices (``images/`` + ``masks/``), train/validation splits, checked JSON loading."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

from monai.data import load_decathlon_datalist, partition_dataset

__all__ = [
    "IMAGE_SUFFIXES",
    "LABEL_SUFFIXES",
    "check_datalist_files",
    "load_datalist_json",
    "paired_folder_datalist",
    "split_datalist",
    "strip_suffix",
    "train_val_items",
]

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".nii", ".nii.gz")
LABEL_SUFFIXES = (".png", ".nii", ".nii.gz")


def strip_suffix(name: str, suffixes: Sequence[str]) -> str | None:
    """Return ``name`` without the longest matching suffix (case-insensitive), or ``None`` if none matches."""
    lower = name.lower()
    for suffix in sorted(suffixes, key=len, reverse=True):  # ".nii.gz" before ".gz"-like shorter suffixes
        if lower.endswith(suffix.lower()):
            return name[: -len(suffix)]
    return None


def _files_by_stem(folder: Path, suffixes: Sequence[str], what: str) -> dict[str, Path]:
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: {what} folder not found")
    by_stem: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        stem = strip_suffix(p.name, suffixes) if p.is_file() else None
        if stem is None:
            continue
        if stem in by_stem:
            raise ValueError(f"{folder}: two {what} files share the name {stem!r}: {by_stem[stem].name}, {p.name}")
        by_stem[stem] = p
    if not by_stem:
        raise ValueError(f"{folder}: {what} folder holds no file ending in {tuple(suffixes)}")
    return by_stem


def paired_folder_datalist(
    dataset_dir: str | os.PathLike,
    image_folder: str = "images",
    label_folder: str | None = "masks",
    *,
    image_suffixes: Sequence[str] = IMAGE_SUFFIXES,
    label_suffixes: Sequence[str] = LABEL_SUFFIXES,
) -> list[dict[str, str]]:
    """Pair the images and masks of a slice data set by file stem (``images/0.jpg`` with ``masks/0.png``).

    The layout is the one of the 2D sets we use (COVID-SemiSeg ``train/{images,masks}``, Montgomery/Shenzhen
    ``{images,masks}``). Masks without an image are ignored (a data set may ship extra masks); images without a
    mask are an error, because silently dropping them changes the data set.

    Args:
        dataset_dir: the folder holding ``image_folder`` and ``label_folder``.
        image_folder: image sub-folder (or an absolute path).
        label_folder: mask sub-folder (or an absolute path); ``None`` for an image-only (inference) datalist.
        image_suffixes: image file endings to take, case-insensitive.
        label_suffixes: mask file endings to take, case-insensitive.

    Returns:
        ``[{"image": path, "label": path}, ...]`` (``"image"`` only without ``label_folder``) sorted by image file
        name, paths as strings.

    Raises:
        FileNotFoundError: when a folder is missing.
        ValueError: when a folder holds no matching file, two files share a stem, or images lack a mask.
    """
    dataset_dir = Path(dataset_dir)
    if not dataset_dir.is_dir():
        raise FileNotFoundError(f"{dataset_dir}: data set folder not found")
    images = _files_by_stem(dataset_dir / image_folder, image_suffixes, "image")
    if label_folder is None:
        return [{"image": str(images[s])} for s in sorted(images, key=lambda s: images[s].name)]
    labels = _files_by_stem(dataset_dir / label_folder, label_suffixes, "mask")
    missing = sorted(images[s].name for s in images if s not in labels)
    if missing:
        shown = ", ".join(missing[:10]) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
        raise ValueError(f"{dataset_dir / label_folder}: no mask for {len(missing)} image(s): {shown}")
    extra = len(set(labels) - set(images))
    if extra:
        logger.warning("%s: %d mask(s) without an image were ignored", dataset_dir / label_folder, extra)
    return [{"image": str(images[s]), "label": str(labels[s])} for s in sorted(images, key=lambda s: images[s].name)]


def split_datalist(items: Sequence[dict], val_fraction: float, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """Split a datalist reproducibly into training and validation items (``monai.data.partition_dataset``).

    Args:
        items: the datalist.
        val_fraction: the share for validation, in ``[0, 1)``. Any positive share keeps at least one item for
            validation (and one for training), because an empty validation set defeats the purpose silently.
        seed: the shuffle seed; the same items, fraction and seed always give the same split.

    Returns:
        ``(train, validation)``, each in shuffled order.

    Raises:
        ValueError: when ``val_fraction`` is out of range, or positive with fewer than two items.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    items = list(items)
    if val_fraction == 0.0:
        return items, []
    n = len(items)
    if n < 2:
        raise ValueError(f"cannot split {n} item(s) into training and validation (val_fraction={val_fraction})")
    n_val = min(max(1, round(val_fraction * n)), n - 1)
    train, val = partition_dataset(items, ratios=[n - n_val, n_val], shuffle=True, seed=seed)
    return list(train), list(val)


def check_datalist_files(
    items: Sequence[dict], keys: Sequence[str] = ("image", "label"), source: str | os.PathLike = "datalist"
) -> None:
    """Raise if any ``keys`` entry of ``items`` names a path that does not exist.

    Args:
        items: datalist items (values are paths or lists of paths).
        keys: the keys holding paths.
        source: what to name in the message (e.g. the JSON file).

    Raises:
        FileNotFoundError: listing the missing paths.
    """
    missing = []
    for item in items:
        for key in keys:
            if key in item:
                values = item[key] if isinstance(item[key], (list, tuple)) else [item[key]]
                missing += [f"{key}={v}" for v in values if not os.path.exists(v)]
    if missing:
        shown = "; ".join(missing[:10]) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
        raise FileNotFoundError(f"{source}: {len(missing)} path(s) do not exist: {shown}")


def load_datalist_json(
    path: str | os.PathLike,
    key: str = "training",
    base_dir: str | os.PathLike | None = None,
    check_files: bool = True,
) -> list[dict]:
    """Load a decathlon-style datalist (``monai.data.load_decathlon_datalist``) and check its files exist.

    Args:
        path: the JSON file.
        key: the list to read (``"training"``, ``"validation"``, ...).
        base_dir: folder that relative paths are relative to; default: the JSON file's folder (as in MONAI).
        check_files: raise when an ``image`` or ``label`` path does not exist.

    Returns:
        the items, paths made absolute against ``base_dir``.

    Raises:
        FileNotFoundError: when the JSON file or a listed file is missing (the message names both).
        ValueError: when the JSON is malformed or lacks ``key``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: datalist file not found")
    try:
        items = load_decathlon_datalist(path, is_segmentation=True, data_list_key=key, base_dir=base_dir)
    except ValueError as e:  # MONAI's message for a missing key does not name the file
        raise ValueError(f"{path}: {e}") from e
    except (OSError, TypeError) as e:
        raise ValueError(f"{path}: not a valid datalist JSON ({type(e).__name__}: {e})") from e
    if check_files:
        check_datalist_files(items, source=f"{path} [{key}]")
    return items


def train_val_items(
    datalist: Sequence[dict] | dict | str | os.PathLike, val_fraction: float, seed: int = 0
) -> tuple[list[dict], list[dict]]:
    """Training and validation items from a datalist in any of the forms a bundle's ``datalist`` override takes.

    Args:
        datalist: a list of items (e.g. from :func:`paired_folder_datalist`); a decathlon-style dictionary with a
            ``"training"`` and optionally a ``"validation"`` list; or the path of such a JSON file (relative paths are
            relative to the file's folder, see :func:`load_datalist_json`).
        val_fraction: share of the training items held out for validation, used when the datalist has no non-empty
            ``"validation"`` list of its own (see :func:`split_datalist`).
        seed: split seed.

    Returns:
        ``(train, validation)``: the datalist's own lists when it has a non-empty ``"validation"``, else the
        reproducible split of its (training) items.

    Raises:
        FileNotFoundError: when the JSON file or an ``image`` / ``label`` path of an item does not exist (the message
            names the datalist and the paths).
        ValueError: on a malformed datalist, or a split that is impossible (see :func:`split_datalist`).
    """
    if isinstance(datalist, (str, os.PathLike)):
        path = Path(datalist)
        train = load_datalist_json(path, "training")
        try:
            has_validation = bool(json.loads(path.read_text()).get("validation"))
        except (OSError, ValueError, AttributeError) as e:
            raise ValueError(f"{path}: not a valid datalist JSON ({type(e).__name__}: {e})") from e
        if has_validation:
            return train, load_datalist_json(path, "validation")
        return split_datalist(train, val_fraction, seed)
    if isinstance(datalist, dict):
        if "training" not in datalist:
            raise ValueError(f"datalist dictionary has no 'training' list (keys: {sorted(datalist)})")
        train, val = list(datalist["training"]), list(datalist.get("validation") or [])
        check_datalist_files(train + val, source="datalist")
        return (train, val) if val else split_datalist(train, val_fraction, seed)
    items = list(datalist)
    check_datalist_files(items, source="datalist")
    return split_datalist(items, val_fraction, seed)
