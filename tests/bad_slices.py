"""Bad 2D slice folders made from a few real slices: each kind of bad input, the file its error must name and the
reason the message must give."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
from PIL import Image

#: every kind :func:`break_slice_folder` makes
KINDS = (
    "not_an_image",
    "truncated_image",
    "truncated_mask",
    "size_mismatch",
    "mask_values",
    "rgb_mask",
    "unmatched_names",
    "empty_image_folder",
    "no_mask_folder",
)


def _own_copy(path: Path) -> Path:
    """Replace a link to the real data by a copy of its bytes, so the test can damage it; the data stays intact."""
    data = path.read_bytes()
    path.unlink()  # never write through the link into the shared data
    path.write_bytes(data)
    return path


def break_slice_folder(kind: str, folder: Path, name: str, source: Path | None = None) -> tuple[Path, str]:
    """Damage the slice ``name`` of a data folder (or the folder itself) in the way ``kind`` says.

    Args:
        kind: one of :data:`KINDS`.
        folder: the data folder (``images/`` + ``masks/``), e.g. links made by ``bundle_helpers.link_subset``.
        name: the file stem of the slice to damage.
        source: the real data folder, for ``mask_values`` (its ``masks_multiclass/`` when it has one).

    Returns:
        ``(path, reason)``: the file (or folder) the error must name, and a fragment of the reason.
    """
    image = next((folder / "images").glob(f"{name}.*"))
    mask = next((folder / "masks").glob(f"{name}.*"))
    if kind == "not_an_image":
        image.unlink()
        image.write_text("this is not an image\n")
        return image, "not a readable image file (UnidentifiedImageError"
    if kind == "truncated_image":
        data = _own_copy(image).read_bytes()
        image.write_bytes(data[: len(data) // 2])
        return image, "not a readable image file"
    if kind == "truncated_mask":
        data = _own_copy(mask).read_bytes()
        mask.write_bytes(data[: len(data) // 2])
        return mask, "not a readable image file"
    if kind == "size_mismatch":
        with Image.open(mask) as im:
            smaller = im.resize((im.width // 2, im.height), Image.NEAREST)
        mask.unlink()
        smaller.save(mask)
        return mask, "mask size"
    if kind == "mask_values":
        multiclass = source / "masks_multiclass" / mask.name if source is not None else None
        mask.unlink()
        # the real palette masks (0, 1 = ground glass, 2 = consolidation), where the slice has both classes: one with
        # ground glass only is {0, 1}, a valid binary mask
        if multiclass is not None and multiclass.is_file() and len(np.unique(np.asarray(Image.open(multiclass)))) > 2:
            shutil.copy(multiclass, mask)
        else:
            with Image.open(image) as im:
                size = im.size
            values = np.zeros(size[::-1], np.uint8)
            values[: size[1] // 2] = 128  # an anti-aliased or label-map mask: neither {0, 255} nor {0, 1}
            values[: size[1] // 4] = 255
            Image.fromarray(values).save(mask)
        return mask, "mask values 0, "
    if kind == "rgb_mask":
        with Image.open(mask) as im:
            rgb = im.convert("RGB")
        mask.unlink()
        rgb.save(mask)
        return mask, "mask has 3 channels (PIL mode RGB); expected a single-channel mask"
    if kind == "unmatched_names":
        mask.unlink()
        return folder / "masks", f"no mask for 1 image(s): {image.name}"
    if kind == "empty_image_folder":
        for path in (folder / "images").iterdir():
            path.unlink()
        return folder / "images", "image folder holds no file ending in"
    if kind == "no_mask_folder":
        shutil.rmtree(folder / "masks")
        return folder / "masks", "mask folder not found"
    raise AssertionError(kind)
