"""Datalists for folders of 2D slices (``images/`` + ``masks/``), train/validation splits, checked JSON loading, and the
up-front check of every 2D slice and mask of a run (:func:`check_slice_datalist`)."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from monai.data import load_decathlon_datalist, partition_dataset

from monai_advseg.data.checks import (
    MAX_PROBLEMS,
    PIL_SUFFIXES,
    InputError,
    MissingInputError,
    _checked,
    log_input_problem,
    logged,
)

__all__ = [
    "IMAGE_SUFFIXES",
    "LABEL_SUFFIXES",
    "MASK_VALUES",
    "check_datalist_files",
    "check_slice_datalist",
    "load_datalist_json",
    "paired_folder_datalist",
    "split_datalist",
    "strip_suffix",
    "train_val_items",
]

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".nii", ".nii.gz")
LABEL_SUFFIXES = (".png", ".nii", ".nii.gz")
#: The mask conventions of the 2D bundles and the demo: binary masks stored as {0, 255} (8-bit PNG) or {0, 1}.
MASK_VALUES = ((0, 255), (0, 1))


def strip_suffix(name: str, suffixes: Sequence[str]) -> str | None:
    """Return ``name`` without the longest matching suffix (case-insensitive), or ``None`` if none matches."""
    lower = name.lower()
    for suffix in sorted(suffixes, key=len, reverse=True):  # ".nii.gz" before ".gz"-like shorter suffixes
        if lower.endswith(suffix.lower()):
            return name[: -len(suffix)]
    return None


def _files_by_stem(folder: Path, suffixes: Sequence[str], what: str) -> dict[str, Path]:
    if not folder.is_dir():
        raise logged(MissingInputError(f"{folder}: {what} folder not found"))
    by_stem: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        stem = strip_suffix(p.name, suffixes) if p.is_file() else None
        if stem is None:
            continue
        if stem in by_stem:
            raise logged(
                InputError(f"{folder}: two {what} files share the name {stem!r}: {by_stem[stem].name}, {p.name}")
            )
        by_stem[stem] = p
    if not by_stem:
        raise logged(InputError(f"{folder}: {what} folder holds no file ending in {tuple(suffixes)}"))
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
        MissingInputError: (a ``FileNotFoundError``) when a folder is missing.
        InputError: (a ``ValueError``) when a folder holds no matching file, two files share a stem, or images lack a
            mask.
    """
    dataset_dir = Path(dataset_dir)
    if not dataset_dir.is_dir():
        raise logged(MissingInputError(f"{dataset_dir}: data set folder not found"))
    images = _files_by_stem(dataset_dir / image_folder, image_suffixes, "image")
    if label_folder is None:
        return [{"image": str(images[s])} for s in sorted(images, key=lambda s: images[s].name)]
    labels = _files_by_stem(dataset_dir / label_folder, label_suffixes, "mask")
    missing = sorted(images[s].name for s in images if s not in labels)
    if missing:
        shown = ", ".join(missing[:10]) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
        raise logged(InputError(f"{dataset_dir / label_folder}: no mask for {len(missing)} image(s): {shown}"))
    extra = sorted(labels[s].name for s in set(labels) - set(images))
    if extra:
        shown = ", ".join(extra[:10]) + (f" and {len(extra) - 10} more" if len(extra) > 10 else "")
        folder = dataset_dir / label_folder
        logger.warning("%s: %d mask(s) without an image were ignored: %s", folder, len(extra), shown)
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
        InputError: (a ``ValueError``) when ``val_fraction`` is out of range, or positive with fewer than two items.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise logged(InputError(f"val_fraction={val_fraction}: must be in [0, 1)"))
    items = list(items)
    if val_fraction == 0.0:
        return items, []
    n = len(items)
    if n < 2:
        raise logged(InputError(f"val_fraction={val_fraction}: cannot split {n} item(s) into training and validation"))
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
        MissingInputError: (a ``FileNotFoundError``) listing the missing paths.
    """
    missing = []
    for item in items:
        for key in keys:
            if key in item:
                values = item[key] if isinstance(item[key], (list, tuple)) else [item[key]]
                missing += [f"{key}={v}" for v in values if not os.path.exists(v)]
    if missing:
        shown = "; ".join(missing[:10]) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
        raise logged(MissingInputError(f"{source}: {len(missing)} path(s) do not exist: {shown}"))


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
        MissingInputError: (a ``FileNotFoundError``) when the JSON file or a listed file is missing (the message
            names both).
        InputError: (a ``ValueError``) when the JSON is malformed or lacks ``key``.
    """
    path = Path(path)
    if not path.is_file():
        raise logged(MissingInputError(f"{path}: datalist file not found"))
    try:
        items = load_decathlon_datalist(path, is_segmentation=True, data_list_key=key, base_dir=base_dir)
    except ValueError as e:  # MONAI's message for a missing key does not name the file
        raise logged(InputError(f"{path}: {e}")) from e
    except (OSError, TypeError) as e:
        raise logged(InputError(f"{path}: not a valid datalist JSON ({type(e).__name__}: {e})")) from e
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
        MissingInputError: (a ``FileNotFoundError``) when the JSON file or an ``image`` / ``label`` path of an item
            does not exist (the message names the datalist and the paths).
        InputError: (a ``ValueError``) on a malformed datalist, or a split that is impossible (see
            :func:`split_datalist`).
    """
    if isinstance(datalist, (str, os.PathLike)):
        path = Path(datalist)
        train = load_datalist_json(path, "training")
        try:
            has_validation = bool(json.loads(path.read_text()).get("validation"))
        except (OSError, ValueError, AttributeError) as e:
            raise logged(InputError(f"{path}: not a valid datalist JSON ({type(e).__name__}: {e})")) from e
        if has_validation:
            return train, load_datalist_json(path, "validation")
        return split_datalist(train, val_fraction, seed)
    if isinstance(datalist, dict):
        if "training" not in datalist:
            raise logged(InputError(f"datalist dictionary has no 'training' list (keys: {sorted(datalist)})"))
        train, val = list(datalist["training"]), list(datalist.get("validation") or [])
        check_datalist_files(train + val, source="datalist")
        return (train, val) if val else split_datalist(train, val_fraction, seed)
    items = list(datalist)
    check_datalist_files(items, source="datalist")
    return split_datalist(items, val_fraction, seed)


def check_slice_datalist(
    items: Sequence[Mapping[str, Any]],
    mask_values: Sequence[Sequence[float]] | None = MASK_VALUES,
    max_problems: int = MAX_PROBLEMS,
) -> None:
    """Check every 2D slice and mask of a run before it starts, and report all problems at once.

    Each image and mask must be a readable 2D file read to the last pixel (:func:`~monai_advseg.data.check_image_files`:
    truncated or corrupt files, NaN/Inf in NIfTI slices), each mask a single channel of the same size as its image with
    only the values of one of ``mask_values``. A bundle or the demo calls this before anything is written, so that a
    broken slice stops the run up front instead of when the loader reaches it (possibly mid-epoch). An empty ``items``
    passes, as in :func:`~monai_advseg.data.check_image_files`: an empty folder is an error of
    :func:`paired_folder_datalist`, an empty inference list just has nothing to do.

    Args:
        items: ``{"image": path, "label": path}`` items; ``"label"`` is optional (inference datalists).
        mask_values: the accepted value sets; a mask passes when its values are all in one of them (``{0}`` alone, a
            slice without foreground, passes). ``None`` skips the value check.
        max_problems: stop after this many problems (the message says so).

    Raises:
        InputError: one line per problem (``<file>: <reason>``), each also logged as ``bad input: ...``.
    """
    items = list(items)
    problems: list[str] = []
    checked = 0
    for item in items:
        checked += 1
        problems += _slice_item_problems(item, mask_values)
        if len(problems) >= max_problems:
            break
    if problems:
        # an item adds up to three problems, so the list can pass the cap within the last item checked
        truncated = len(problems) > max_problems or (len(problems) == max_problems and checked < len(items))
        raise InputError(problems[:max_problems], truncated=truncated)
    n_files = sum(1 + (item.get("label") is not None) for item in items)
    logger.info("checked %d 2D image/mask file(s) of %d item(s) (all pixels read)", n_files, len(items))


def _slice_item_problems(item: Mapping[str, Any], mask_values: Sequence[Sequence[float]] | None) -> list[str]:
    """The problem lines of one datalist item (each logged as it is found)."""
    if "image" not in item:
        problem = f"datalist item {dict(item)}: no 'image' key"
        log_input_problem(problem)
        return [problem]
    image, problem = _checked(item["image"], 2, True)
    problems = [problem] if problem else []
    if item.get("label") is None:
        return problems
    label, problem = _checked(item["label"], 2, True)
    if problem:
        return [*problems, problem]
    found = _mask_problem(Path(item["label"]), mask_values)
    if found is None and image is not None:
        image_shape, label_shape = _loaded_shape(item["image"], image[0]), _loaded_shape(item["label"], label[0])
        if image_shape != label_shape:
            found = f"{item['label']}: mask size {label_shape} differs from image {item['image']} size {image_shape}"
    if found is not None:
        log_input_problem(found)
        problems.append(found)
    return problems


def _loaded_shape(path: str | os.PathLike, shape: Sequence[int]) -> tuple[int, ...]:
    """The spatial shape as MONAI's ``LoadImage`` gives it: its PIL reader reverses (height, width) to (width,
    height), NIfTI keeps the stored axes; an image and a mask in different formats are compared like this."""
    return tuple(shape[::-1]) if Path(path).suffix.lower() in PIL_SUFFIXES else tuple(shape)


def _mask_problem(path: Path, mask_values: Sequence[Sequence[float]] | None) -> str | None:
    """What is wrong with the pixels of a readable 2D mask, or ``None``."""
    if path.suffix.lower() in PIL_SUFFIXES:
        from PIL import Image

        with Image.open(path) as im:
            mode = im.mode
            array = np.asarray(im)
        if array.ndim != 2:  # RGB(A) or LA: MONAI would load several channels as several labels
            return f"{path}: mask has {array.shape[-1]} channels (PIL mode {mode}); expected a single-channel mask"
    else:
        import nibabel as nib

        array = np.asarray(nib.load(str(path)).dataobj)
    if mask_values is None:
        return None
    values = np.unique(array)
    if any(np.isin(values, allowed).all() for allowed in mask_values):
        return None
    # float(): a bilevel (mode "1") PNG reads as bool, which has no "g" format
    shown = ", ".join(f"{float(v):g}" for v in values[:8]) + (
        f", ... ({len(values)} distinct)" if len(values) > 8 else ""
    )
    accepted = " or ".join("{" + ", ".join(f"{float(v):g}" for v in allowed) + "}" for allowed in mask_values)
    return f"{path}: mask values {shown}; expected only {accepted}"
