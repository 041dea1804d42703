"""DICOM series: discovery, checked loading, and a MONAI ``ImageReader`` that orders slices by position.

Why not just ``LoadImage(reader="PydicomReader")``: in monai 1.6.1 ``PydicomReader`` stacks *every* DICOM file of a
folder in ``InstanceNumber`` order and takes the slice spacing as the mean absolute position step. It therefore
gives the right volume only when InstanceNumber runs monotonically along the slice normal and the folder holds one
complete series; it silently stacks mixed series, non-image objects with an InstanceNumber, and gaps. ``ITKReader``
sorts by position through GDCM but needs the ``itk`` package (not a dependency here) and copies every DICOM tag,
patient name included, into the image metadata. :class:`DicomSeriesReader` checks the folder with
:func:`~monai_advseg.data.checks.check_dicom_series`, orders slices by ImagePositionPatient along the normal, decodes
with SimpleITK (GDCM with its bundled OpenJPEG, so JPEG 2000 works without extra packages), takes the volume's
geometry from SimpleITK (cross-checked against the slice positions) and keeps only geometry metadata.
Use it as ``LoadImaged(keys="image", reader="monai_advseg.data.dicom.DicomSeriesReader")``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from monai.data import ImageReader
from monai.data.utils import orientation_ras_lps
from monai.utils import MetaKeys, SpaceKeys, ensure_tuple

from monai_advseg.data.checks import DicomSeriesInfo, check_dicom_series, check_finite, is_dicom_file

__all__ = ["DicomSeriesReader", "dicom_series_affine", "find_dicom_series", "load_dicom_series"]

logger = logging.getLogger(__name__)


def find_dicom_series(root: str | os.PathLike) -> list[Path]:
    """Return the folders under ``root`` (``root`` included) that directly contain DICOM files, sorted.

    Each such folder is one datalist entry; :func:`~monai_advseg.data.checks.check_dicom_series` then verifies
    that it holds exactly one image series.

    Args:
        root: a folder to search recursively.

    Returns:
        the folders, sorted by path.
    """
    root = Path(root)
    folders = []
    for dirpath, _, filenames in os.walk(root):
        if any(is_dicom_file(Path(dirpath) / f) for f in filenames):
            folders.append(Path(dirpath))
    return sorted(folders)


def dicom_series_affine(info: DicomSeriesInfo) -> np.ndarray:
    """Return the voxel-to-RAS affine of a checked series from its headers, for voxel axes (column, row, slice).

    Geometry checks use it before any pixel data is decoded. A loaded volume takes SimpleITK's geometry instead, and
    :func:`load_dicom_series` refuses a series where the two disagree.

    Args:
        info: the result of :func:`~monai_advseg.data.checks.check_dicom_series`.

    Returns:
        a 4x4 float64 affine in RAS world coordinates (the convention of nibabel and of MONAI's readers).
    """
    row_dir, col_dir = info.orientation[:3], info.orientation[3:]
    lps = np.eye(4)
    # DICOM: the column index steps along the row direction by the column spacing (PixelSpacing[1]), and vice versa
    lps[:3, 0] = row_dir * info.pixel_spacing[1]
    lps[:3, 1] = col_dir * info.pixel_spacing[0]
    lps[:3, 2] = np.cross(row_dir, col_dir) * info.slice_spacing
    lps[:3, 3] = info.origin
    return orientation_ras_lps(lps)


def _reason(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[-1].strip() if text else type(error).__name__


def _find_undecodable(info: DicomSeriesInfo) -> Path:
    """Return the first slice SimpleITK cannot decode on its own (the series error does not name it)."""
    import SimpleITK as sitk

    for f in info.files:
        try:
            sitk.ReadImage(str(f))
        except RuntimeError:
            return f
    return info.folder


def _read_series(info: DicomSeriesInfo) -> tuple[np.ndarray, dict[str, Any]]:
    import SimpleITK as sitk

    reader = sitk.ImageSeriesReader()
    reader.SetFileNames([str(f) for f in info.files])
    # metadata stays off: it would carry patient attributes into memory for no use
    reader.MetaDataDictionaryArrayUpdateOff()
    try:
        image = reader.Execute()
    except RuntimeError as e:
        raise ValueError(f"{_find_undecodable(info)}: cannot decode the DICOM pixel data ({_reason(e)})") from e
    # SimpleITK gives (slice, row, column); MONAI's readers use (column, row, slice)
    array = np.ascontiguousarray(np.transpose(sitk.GetArrayViewFromImage(image), (2, 1, 0)))
    # the decoded volume's geometry is SimpleITK's (GDCM); the header-only affine, which geometry checks use before
    # anything is decoded, must agree with it
    sitk_lps = np.eye(4)
    sitk_lps[:3, :3] = np.asarray(image.GetDirection()).reshape(3, 3) @ np.diag(image.GetSpacing())
    sitk_lps[:3, 3] = image.GetOrigin()
    affine = orientation_ras_lps(sitk_lps)
    if not np.allclose(dicom_series_affine(info), affine, atol=1e-3):
        raise ValueError(f"{info.folder}: SimpleITK geometry disagrees with the slice positions; refusing to guess")
    meta: dict[str, Any] = {
        MetaKeys.AFFINE: affine,
        MetaKeys.ORIGINAL_AFFINE: affine.copy(),
        MetaKeys.SPATIAL_SHAPE: np.asarray(array.shape),
        MetaKeys.SPACE: SpaceKeys.RAS,
        MetaKeys.ORIGINAL_CHANNEL_DIM: float("nan"),
        "spacing": np.asarray(image.GetSpacing(), dtype=np.float64),
        "filename_or_obj": str(info.folder),
    }
    return array, meta


def load_dicom_series(folder: str | os.PathLike, check_values: bool = True) -> tuple[np.ndarray, dict[str, Any]]:
    """Check and load one DICOM series folder, slices ordered by position along the slice normal.

    Args:
        folder: a folder holding exactly one DICOM image series.
        check_values: raise if the decoded volume holds NaN/Inf (only possible for float pixel data).

    Returns:
        ``(array, meta)``: ``array`` has axes (column, row, slice) and rescaled values (HU for CT); ``meta`` holds
        ``affine`` / ``original_affine`` (4x4 voxel-to-RAS, float64), ``spatial_shape``, ``spacing`` (mm,
        SimpleITK's, which must agree with the slice positions), ``space`` and ``original_channel_dim`` as MONAI's
        readers do. No DICOM attribute other than geometry is kept.

    Raises:
        FileNotFoundError: when the folder does not exist.
        ValueError: when the folder fails :func:`~monai_advseg.data.checks.check_dicom_series` or cannot be decoded.
    """
    info = check_dicom_series(folder)
    array, meta = _read_series(info)
    if check_values:
        check_finite(array, info.folder)
    logger.debug("loaded DICOM series %s: shape %s, spacing %s", info.folder, array.shape, meta["spacing"])
    return array, meta


class DicomSeriesReader(ImageReader):
    """MONAI image reader for DICOM series folders, ordering slices by ImagePositionPatient (see module docstring).

    Usage in a bundle config::

        {"_target_": "LoadImaged", "keys": ["image"], "reader": "monai_advseg.data.dicom.DicomSeriesReader"}

    Only folders are accepted; mix with other readers (``reader=[DicomSeriesReader(), "NibabelReader"]``) for
    datalists holding NIfTI files as well.

    Args:
        check_values: raise on NaN/Inf voxels.
    """

    def __init__(self, check_values: bool = True) -> None:
        super().__init__()
        self.check_values = check_values

    def verify_suffix(self, filename: Sequence[str | os.PathLike] | str | os.PathLike) -> bool:
        """Return whether every entry of ``filename`` is a folder (a DICOM series)."""
        return all(Path(f).is_dir() for f in ensure_tuple(filename))

    def read(self, data: Sequence[str | os.PathLike] | str | os.PathLike, **kwargs) -> Any:
        """Check the series folder(s); return one :class:`~monai_advseg.data.checks.DicomSeriesInfo` or a list."""
        infos = [check_dicom_series(d) for d in ensure_tuple(data)]
        return infos if len(infos) > 1 else infos[0]

    def get_data(self, img: Any) -> tuple[np.ndarray, dict]:
        """Decode the series; several series are stacked as channels on a new first axis, like MONAI's readers."""
        loaded = [_read_series(info) for info in ensure_tuple(img)]
        if self.check_values:
            for (array, _), info in zip(loaded, ensure_tuple(img), strict=True):
                check_finite(array, info.folder)
        if len(loaded) == 1:
            return loaded[0]
        shapes = {a.shape for a, _ in loaded}
        if len(shapes) > 1:
            raise ValueError(f"cannot stack DICOM series of different shapes {sorted(shapes)} as channels")
        meta = dict(loaded[0][1])
        meta[MetaKeys.ORIGINAL_CHANNEL_DIM] = 0
        return np.stack([a for a, _ in loaded]), meta
