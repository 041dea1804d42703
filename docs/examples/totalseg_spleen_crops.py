"""Lay TotalSegmentator CT crops out as an MSD-style spleen dataset (``imagesTr/``, ``labelsTr/``).

The MONAI model zoo's ``spleen_ct_segmentation`` bundle reads ``<dataset_dir>/imagesTr/*.nii.gz`` and
``labelsTr/*.nii.gz`` and uses the last 9 sorted pairs for validation. This writes ``count`` crops of
``ct_totalseg_example/nifti/example_ct.nii.gz`` (122 x 101 x 112, 3 mm, RAS, HU) around the spleen with the label
map reduced to spleen = 1, everything else 0 (TotalSegmentator label 1 = spleen; the labels are model output, not
manual annotations). The crops are shifted windows of ONE volume: enough to run the bundle's pipeline, not a dataset
to learn spleen from.

Usage::

    python docs/examples/totalseg_spleen_crops.py ../shared/data/ct_totalseg_example /tmp/spleen_data --count 10
"""

from __future__ import annotations

import argparse
from pathlib import Path

import nibabel as nib
import numpy as np

__all__ = ["write_spleen_crops"]


def write_spleen_crops(source: str | Path, target: str | Path, count: int = 10, size=(49, 49, 64)) -> list[Path]:
    """Write ``count`` shifted crops of ``size`` voxels of 3 mm.

    At the bundle's 1.5 x 1.5 x 2 mm a crop is 97 x 97 x 96 voxels, at least its 96^3 training crop (48 voxels
    would give 95: ``Spacingd`` keeps the end points, ``(n - 1) * 2 + 1``).

    Args:
        source: the ``ct_totalseg_example`` folder.
        target: the dataset folder to create (``imagesTr/``, ``labelsTr/``); it must not hold crops yet.
        count: number of image / label pairs (the bundle validates on the last 9, trains on the rest).
        size: crop size in voxels of the 3 mm source.

    Returns:
        the image files written.
    """
    source, target = Path(source), Path(target)
    ct = nib.load(source / "nifti" / "example_ct.nii.gz")
    seg = np.asarray(nib.load(source / "nifti" / "example_seg_fast_force_split.nii.gz").dataobj)
    image = np.asarray(ct.dataobj).astype(np.int16)  # stored as int32; HU fit int16
    spleen = (seg == 1).astype(np.uint8)
    (target / "imagesTr").mkdir(parents=True, exist_ok=True)
    (target / "labelsTr").mkdir(parents=True, exist_ok=True)
    # the spleen lies in x 10..43, y 21..57, z 82..111: windows starting near it keep all of it in every crop
    starts = [(i % 4, 12 + (i // 4) % 4, image.shape[2] - size[2] - (i % 3)) for i in range(count)]
    written = []
    for index, (x, y, z) in enumerate(starts):
        window = (slice(x, x + size[0]), slice(y, y + size[1]), slice(z, z + size[2]))
        affine = ct.affine.copy()
        affine[:3, 3] = ct.affine[:3, :3] @ np.array([x, y, z]) + ct.affine[:3, 3]
        name = f"spleen_{index:02d}.nii.gz"
        for folder, array in (("imagesTr", image), ("labelsTr", spleen)):
            path = target / folder / name
            if path.exists():
                raise FileExistsError(f"{path}: exists already; choose an empty target folder")
            nib.save(nib.Nifti1Image(array[window], affine), path)
        written.append(target / "imagesTr" / name)
    return written


if __name__ == "__main__":
    arguments = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    arguments.add_argument("source")
    arguments.add_argument("target")
    arguments.add_argument("--count", type=int, default=10)
    options = arguments.parse_args()
    print(len(write_spleen_crops(options.source, options.target, options.count)), "crops in", options.target)
