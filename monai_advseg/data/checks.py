"""Input checks for image files, DICOM series folders and image/label pairs.

Every check raises one ``ValueError`` (or ``FileNotFoundError``) whose message names the offending file and the reason,
so that datalist building, bundles and command-line tools can report bad input without a traceback into a reader.
The checks of a whole run (:func:`check_image_files`) collect the problems of all inputs (up to a cap) into one
:class:`InputError`, one ``<file>: <reason>`` line each, which the command-line tools print as ``error:`` lines.

Privacy: messages and logs name files, tags and geometry only. DICOM patient attributes (PatientName, PatientID,
PatientBirthDate, ...) are never read into a message, a log record or a returned object.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = [
    "MAX_PROBLEMS",
    "NIFTI_SUFFIXES",
    "PIL_SUFFIXES",
    "DicomSeriesInfo",
    "InputError",
    "MissingInputError",
    "check_dicom_series",
    "check_finite",
    "check_geometry_match",
    "check_image_file",
    "check_image_files",
    "check_nifti_file",
    "is_dicom_file",
    "is_nifti_file",
]

logger = logging.getLogger(__name__)

NIFTI_SUFFIXES = (".nii", ".nii.gz")
PIL_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")

# SOP classes that can sit in a study folder next to CT/MR slices but hold no slice of the volume.
_NON_IMAGE_SOP_PREFIXES = (
    "1.2.840.10008.5.1.4.1.1.88.",  # structured reports (Basic Text SR, Enhanced SR, ...)
    "1.2.840.10008.5.1.4.1.1.66",  # raw data, spatial registration, SEG, ...
    "1.2.840.10008.5.1.4.1.1.481.",  # RT objects (RTSTRUCT, RTPLAN, RTDOSE)
    "1.2.840.10008.5.1.4.1.1.11.",  # presentation states
    "1.2.840.10008.5.1.4.1.1.104.",  # encapsulated PDF / CDA
)
# Relative tolerance on slice gaps: scanners write positions rounded to ~1e-3 mm, a missing slice doubles a gap.
_SPACING_RTOL = 0.01
_SPACING_ATOL = 1e-3
_ORIENTATION_ATOL = 1e-4
#: How many problems a check of a whole run lists before it stops: enough to show a pattern (a wrong folder, a broken
#: export), few enough to read; checking on after that costs a full read of every remaining input for nothing.
MAX_PROBLEMS = 20


class InputError(ValueError):
    """Bad input a user has to fix (not a bug): one ``<file or value>: <what is wrong>`` line per problem.

    ``str(error)`` is the lines joined by newlines, so its first line names the first bad file and the reason even
    where MONAI's bundle runner wraps the error in its own ``RuntimeError``. The command-line tools print each line
    as ``error: <line>`` without a traceback (see :func:`monai_advseg.cli.entry_point`).

    Args:
        problems: one line per problem (or a single line).
        truncated: the check stopped after ``len(problems)`` problems; a last line says that more may follow.

    Attributes:
        problems: the problem lines, in the order found.
        truncated: as given.
    """

    def __init__(self, problems: str | Sequence[str], truncated: bool = False) -> None:
        self.problems = [problems] if isinstance(problems, str) else [str(p) for p in problems]
        if not self.problems:
            raise TypeError("InputError needs at least one problem")
        self.truncated = truncated
        super().__init__("\n".join(self.lines))

    @property
    def lines(self) -> list[str]:
        """The problems, then (when the check stopped early) a line saying so: what a command prints as ``error:``."""
        note = f"stopped after the first {len(self.problems)} problems; the remaining inputs were not checked"
        return [*self.problems, note] if self.truncated else list(self.problems)


class MissingInputError(InputError, FileNotFoundError):
    """An :class:`InputError` for a file or folder that does not exist (also a ``FileNotFoundError``)."""


#: Set on the log records of :func:`log_input_problem`: a command that prints the problems itself as ``error:`` lines
#: filters these records out (see :func:`monai_advseg.cli.entry_point`), so that each problem is shown once.
INPUT_PROBLEM_RECORD = "monai_advseg_input_problem"


def log_input_problem(problem: str) -> None:
    """Log one problem of a check of a whole run as an ``ERROR`` line ``bad input: <file>: <reason>``.

    In a bundle run this line is what the log shows before MONAI's traceback, one per bad input.
    """
    logger.error("bad input: %s", problem, extra={INPUT_PROBLEM_RECORD: True})


def logged(error: InputError) -> InputError:
    """Log each line of ``error`` with :func:`log_input_problem` and return it: ``raise logged(InputError(...))``."""
    for line in error.lines:
        log_input_problem(line)
    return error


def _describe_error(error: BaseException) -> str:
    """One ``<file>: <reason>`` text for an exception raised while checking an input.

    Our checks' messages already start with the file; an ``OSError`` raised by Python itself reads
    ``[Errno 13] Permission denied: '/x'``, which is rewritten as ``/x: Permission denied``.
    """
    if isinstance(error, OSError) and not isinstance(error, InputError) and error.filename and error.strerror:
        return f"{error.filename}: {error.strerror}"
    return str(error)


def is_nifti_file(path: str | os.PathLike) -> bool:
    """Return whether ``path`` has a NIfTI suffix (``.nii`` or ``.nii.gz``, case-insensitive)."""
    return str(path).lower().endswith(NIFTI_SUFFIXES)


def is_dicom_file(path: str | os.PathLike) -> bool:
    """Return whether ``path`` is a file with the DICOM Part 10 preamble (``DICM`` at byte 128)."""
    path = Path(path)
    if not path.is_file():
        return False
    try:
        with open(path, "rb") as f:
            f.seek(128)
            return f.read(4) == b"DICM"
    except OSError:
        return False


def check_finite(array: np.ndarray, path: str | os.PathLike) -> None:
    """Raise if a floating-point ``array`` read from ``path`` holds NaN or Inf voxels.

    Args:
        array: the voxel data.
        path: the file (or series folder) the data came from, used in the message.

    Raises:
        ValueError: when any voxel is NaN or +-Inf.
    """
    if not np.issubdtype(array.dtype, np.floating):
        return
    finite = np.isfinite(array)
    if not finite.all():
        n_nan = int(np.isnan(array).sum())
        n_inf = int(finite.size - finite.sum()) - n_nan
        raise ValueError(f"{path}: image holds non-finite voxels ({n_nan} NaN, {n_inf} Inf of {array.size})")


def _check_ndim(shape: Sequence[int], expected_ndim: int | None, path: str | os.PathLike) -> None:
    if expected_ndim is not None and len(shape) != expected_ndim:
        raise ValueError(
            f"{path}: image has {len(shape)} dimensions, shape {tuple(int(s) for s in shape)}; "
            f"expected a {expected_ndim}D image"
        )


def check_nifti_file(
    path: str | os.PathLike, expected_ndim: int | None = 3, check_values: bool = True
) -> tuple[tuple[int, ...], np.ndarray]:
    """Check that a NIfTI file is readable to the last voxel, has ``expected_ndim`` dimensions and finite values.

    Args:
        path: a ``.nii`` or ``.nii.gz`` file.
        expected_ndim: required number of dimensions (``None`` accepts any).
        check_values: read all voxels, which finds truncated/corrupt files and NaN/Inf (costs one full read).

    Returns:
        ``(shape, affine)`` from the header (affine in RAS world coordinates, as nibabel and MONAI use).

    Raises:
        FileNotFoundError: when the file does not exist.
        ValueError: when the header or the data cannot be read, the dimension is wrong or voxels are not finite.
    """
    import nibabel as nib

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: image file not found")
    try:
        img = nib.load(str(path))
    except Exception as e:  # nibabel raises many types (ImageFileError, EOFError, zlib.error, ...)
        raise ValueError(f"{path}: not a readable NIfTI file ({type(e).__name__}: {e})") from e
    shape = tuple(int(s) for s in img.shape)
    _check_ndim(shape, expected_ndim, path)
    if check_values:
        try:
            data = np.asarray(img.dataobj)
        except Exception as e:  # a truncated .nii.gz fails only when the data block is decompressed
            raise ValueError(f"{path}: NIfTI data is truncated or corrupt ({type(e).__name__}: {e})") from e
        check_finite(data, path)
    affine = np.asarray(img.affine, dtype=np.float64)
    if not np.isfinite(affine).all():
        raise ValueError(f"{path}: NIfTI affine is not finite")
    return shape, affine


def _check_pil_file(path: Path, expected_ndim: int | None) -> tuple[int, ...]:
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.load()  # decode everything: Image.open alone only parses the header
            shape = (im.height, im.width)
    except Exception as e:
        raise ValueError(f"{path}: not a readable image file ({type(e).__name__}: {e})") from e
    _check_ndim(shape, expected_ndim, path)
    return shape


@dataclass
class DicomSeriesInfo:
    """What :func:`check_dicom_series` found out about a series folder (geometry only, no patient data).

    Attributes:
        folder: the series folder.
        files: the slice files ordered by position along the slice normal (ascending).
        positions: the slice positions along the normal, in mm, same order as ``files``.
        slice_spacing: the distance between neighbouring slices in mm (from positions, not SliceThickness).
        pixel_spacing: (row spacing, column spacing) in mm.
        shape: (columns, rows, slices), the voxel axis order of MONAI's readers and of :func:`load_dicom_series`.
        orientation: ImageOrientationPatient (row direction, column direction), LPS.
        origin: ImagePositionPatient of the first slice in ``files`` (LPS, mm).
        series_uid: the SeriesInstanceUID (may be empty in anonymised data).
        ignored_files: non-DICOM files in the folder that were skipped.
    """

    folder: Path
    files: list[Path]
    positions: np.ndarray
    slice_spacing: float
    pixel_spacing: tuple[float, float]
    shape: tuple[int, int, int]
    orientation: np.ndarray
    origin: np.ndarray
    series_uid: str = ""
    ignored_files: list[Path] = field(default_factory=list)


def _read_header(path: Path):
    import pydicom

    try:
        # defer_size keeps PixelData listed (so its presence can be tested) without reading or decoding it
        return pydicom.dcmread(path, defer_size=256)
    except Exception as e:
        raise ValueError(f"{path}: not a readable DICOM file ({type(e).__name__}: {e})") from e


def _sop_class_name(uid: str) -> str:
    from pydicom.uid import UID

    name = UID(uid).name if uid else "unknown"
    return f"{name} ({uid})" if uid and name != uid else (uid or "no SOPClassUID")


def check_dicom_series(folder: str | os.PathLike, min_slices: int = 2) -> DicomSeriesInfo:
    """Check that a folder holds exactly one regularly spaced DICOM image series and order its slices.

    Slices are ordered by ImagePositionPatient projected on the slice normal (the cross product of the
    ImageOrientationPatient row and column directions). File name, InstanceNumber and SliceThickness are
    never used: the data sets we ship contradict all three.

    Args:
        folder: a folder of DICOM files; files without the DICOM preamble (e.g. ``README``) are ignored.
        min_slices: the least number of slices accepted as a volume.

    Returns:
        a :class:`DicomSeriesInfo`.

    Raises:
        FileNotFoundError: when the folder does not exist.
        ValueError: when the folder is empty or holds no DICOM file, a file is unreadable or not an image slice
            (e.g. an SR or SEG object), a slice lacks a geometry attribute (ImagePositionPatient,
            ImageOrientationPatient, PixelSpacing, Rows, Columns; none is defaulted), several series are mixed, slices
            disagree in orientation, size or pixel spacing, two slices share a position, or the slice spacing is
            irregular (a missing slice).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: DICOM series folder not found")
    entries = sorted(p for p in folder.iterdir() if p.is_file())
    dicom_files = [p for p in entries if is_dicom_file(p)]
    ignored = [p for p in entries if p not in set(dicom_files)]
    if not dicom_files:
        what = "is empty" if not entries else f"holds no DICOM file ({len(entries)} other files)"
        raise ValueError(f"{folder}: DICOM series folder {what}")

    headers = [(p, _read_header(p)) for p in dicom_files]

    series = Counter(str(ds.get("SeriesInstanceUID", "") or "") for _, ds in headers)
    if len(series) > 1:
        counts = ", ".join(f"{uid or '<no SeriesInstanceUID>'}: {n} files" for uid, n in series.most_common())
        raise ValueError(
            f"{folder}: {len(series)} DICOM series are mixed in one folder ({counts}); "
            "put each series in its own folder"
        )

    for p, ds in headers:
        sop = str(ds.get("SOPClassUID", "") or "")
        if sop.startswith(_NON_IMAGE_SOP_PREFIXES) or "PixelData" not in ds:
            raise ValueError(
                f"{p}: not an image slice (SOP class {_sop_class_name(sop)}"
                f"{', no pixel data' if 'PixelData' not in ds else ''}); remove it from the series folder "
                "(or replace it if it is a truncated image slice)"
            )
        # no default for PixelSpacing: assuming 1 x 1 mm would give a CT volume the wrong geometry without a word
        missing = [
            t
            for t in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "Rows", "Columns")
            if t not in ds or ds.get(t) is None or (hasattr(ds.get(t), "__len__") and not len(ds.get(t)))
        ]
        if missing:
            raise ValueError(
                f"{p}: slice lacks {', '.join(missing)} (SOP class {_sop_class_name(sop)}); cannot place it in a volume"
            )
        if int(ds.get("NumberOfFrames", 1) or 1) > 1:
            raise ValueError(f"{p}: multi-frame DICOM objects are not supported in a series folder")

    if len(headers) < min_slices:
        raise ValueError(f"{folder}: DICOM series has {len(headers)} slice(s); at least {min_slices} are needed")

    p0, ds0 = headers[0]
    iop0 = np.asarray(ds0.ImageOrientationPatient, dtype=np.float64)
    size0 = (int(ds0.Rows), int(ds0.Columns))
    spacing0 = np.asarray(ds0.PixelSpacing, dtype=np.float64)
    for p, ds in headers[1:]:
        if not np.allclose(np.asarray(ds.ImageOrientationPatient, dtype=np.float64), iop0, atol=_ORIENTATION_ATOL):
            raise ValueError(f"{p}: ImageOrientationPatient differs from {p0.name}; the folder is not one volume")
        if (int(ds.Rows), int(ds.Columns)) != size0:
            raise ValueError(f"{p}: slice size {int(ds.Rows)}x{int(ds.Columns)} differs from {p0.name} ({size0})")
        if not np.allclose(np.asarray(ds.PixelSpacing, dtype=np.float64), spacing0, rtol=1e-4):
            raise ValueError(f"{p}: PixelSpacing differs from {p0.name}")

    normal = np.cross(iop0[:3], iop0[3:])
    positions = np.array([np.dot(normal, np.asarray(ds.ImagePositionPatient, dtype=np.float64)) for _, ds in headers])
    order = np.argsort(positions, kind="stable")
    files = [headers[i][0] for i in order]
    positions = positions[order]
    gaps = np.diff(positions)
    if (gaps < _SPACING_ATOL).any():
        i = int(np.argmax(gaps < _SPACING_ATOL))
        raise ValueError(f"{folder}: slices {files[i].name} and {files[i + 1].name} share one position")
    spacing = float(np.median(gaps))
    bad = np.abs(gaps - spacing) > _SPACING_RTOL * spacing + _SPACING_ATOL
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(
            f"{folder}: irregular slice spacing: {gaps[i]:.3f} mm between {files[i].name} and {files[i + 1].name} "
            f"where the series steps {spacing:.3f} mm (a slice is missing or the folder mixes acquisitions)"
        )
    return DicomSeriesInfo(
        folder=folder,
        files=files,
        positions=positions,
        slice_spacing=spacing,
        pixel_spacing=(float(spacing0[0]), float(spacing0[1])),
        shape=(size0[1], size0[0], len(files)),
        orientation=iop0,
        origin=np.asarray(headers[int(order[0])][1].ImagePositionPatient, dtype=np.float64),
        series_uid=str(ds0.get("SeriesInstanceUID", "") or ""),
        ignored_files=ignored,
    )


def _canonical(affine: np.ndarray, shape: Sequence[int]) -> tuple[np.ndarray, tuple[int, ...]]:
    """Return the affine and shape after reorienting the voxel axes to the closest RAS orientation."""
    import nibabel as nib

    ornt = nib.orientations.io_orientation(affine)
    canon_affine = affine @ nib.orientations.inv_ornt_aff(ornt, shape)
    canon_shape = tuple(int(shape[int(i)]) for i in np.argsort(ornt[:, 0]))
    return canon_affine, canon_shape


def check_geometry_match(
    image_shape: Sequence[int],
    image_affine: np.ndarray,
    label_shape: Sequence[int],
    label_affine: np.ndarray,
    *,
    image_path: str | os.PathLike = "image",
    label_path: str | os.PathLike = "label",
    atol: float = 1e-2,
) -> None:
    """Check that an image and its label cover the same voxel grid in world space.

    The two may store their voxel axes in different orders or directions (a DICOM series in LPS vs a
    dcm2niix-style LAS NIfTI label), which ``Orientationd`` resolves; what must agree is the grid after
    reorienting both to RAS.

    Args:
        image_shape: spatial shape of the image.
        image_affine: 4x4 voxel-to-RAS affine of the image.
        label_shape: spatial shape of the label.
        label_affine: 4x4 voxel-to-RAS affine of the label.
        image_path: name of the image in messages.
        label_path: name of the label in messages.
        atol: absolute tolerance in mm on the affine entries (origin and voxel vectors).

    Raises:
        ValueError: when the dimensions, the shapes or the affines differ.
    """
    image_affine = np.asarray(image_affine, dtype=np.float64)
    label_affine = np.asarray(label_affine, dtype=np.float64)
    if len(image_shape) != len(label_shape):
        raise ValueError(
            f"{label_path}: label has {len(label_shape)} dimensions {tuple(label_shape)}, "
            f"image {image_path} has {len(image_shape)} {tuple(image_shape)}"
        )
    ia, ishape = _canonical(image_affine, image_shape)
    la, lshape = _canonical(label_affine, label_shape)
    if ishape != lshape:
        raise ValueError(
            f"{label_path}: label shape {tuple(label_shape)} does not match image {image_path} shape "
            f"{tuple(image_shape)} (compared in RAS orientation: {lshape} vs {ishape})"
        )
    if not np.allclose(ia, la, atol=atol):
        diff = float(np.abs(ia - la).max())
        raise ValueError(
            f"{label_path}: label geometry differs from image {image_path} by up to {diff:.3g} mm "
            f"(tolerance {atol} mm):\nimage affine (RAS)\n{np.round(ia, 4)}\nlabel affine (RAS)\n{np.round(la, 4)}"
        )


def check_image_file(
    path: str | os.PathLike, expected_ndim: int | None = 3, check_values: bool = True
) -> tuple[tuple[int, ...], np.ndarray | None]:
    """Check one datalist image entry: a NIfTI file, a DICOM series folder or a 2D image file (PNG, JPEG, ...).

    Args:
        path: the file or the DICOM series folder.
        expected_ndim: required number of spatial dimensions (``None`` accepts any). 2D image files have 2.
        check_values: decode all voxels (finds truncated files, undecodable DICOM pixel data, NaN/Inf).

    Returns:
        ``(shape, affine)``; ``affine`` is the voxel-to-RAS matrix, ``None`` for 2D image files.

    Raises:
        FileNotFoundError: when the path does not exist.
        ValueError: when the input is unreadable or fails a check; the message names the file and the reason.
    """
    path = Path(path)
    if path.is_dir():
        if check_values:
            from monai_advseg.data.dicom import load_dicom_series

            array, meta = load_dicom_series(path)
            shape: tuple[int, ...] = tuple(int(s) for s in array.shape)
            affine = np.asarray(meta["affine"])
        else:
            from monai_advseg.data.dicom import dicom_series_affine

            info = check_dicom_series(path)
            shape, affine = info.shape, dicom_series_affine(info)
        _check_ndim(shape, expected_ndim, path)
        return shape, affine
    if not path.exists():
        raise MissingInputError(f"{path}: image file not found")
    if is_nifti_file(path):
        return check_nifti_file(path, expected_ndim, check_values)
    if path.suffix.lower() in PIL_SUFFIXES:
        return _check_pil_file(path, expected_ndim), None
    if is_dicom_file(path):
        raise ValueError(f"{path}: a single DICOM file is not a volume; give its series folder instead")
    raise ValueError(f"{path}: unsupported image format (expected NIfTI, a DICOM series folder or {PIL_SUFFIXES})")


def check_image_files(
    paths: Sequence[str | os.PathLike],
    expected_ndim: int | None = 3,
    check_values: bool = True,
    max_problems: int = MAX_PROBLEMS,
) -> list[tuple[tuple[int, ...], np.ndarray | None]]:
    """Check every input of a run with :func:`check_image_file`, before anything is written.

    Every failing input is logged as one ``ERROR`` line (``bad input: <file>: <reason>``) and all of them are raised
    together, up to ``max_problems``: a bundle's config machinery wraps exceptions in its own ``RuntimeError``, whose
    last traceback line does not name the file, so the log lines and the first line of the message do.

    Args:
        paths: NIfTI files, DICOM series folders or 2D image files.
        expected_ndim: required number of spatial dimensions (``None`` accepts any).
        check_values: decode every voxel of every input (one full read each; finds truncated or corrupt files,
            undecodable DICOM pixel data and NaN/Inf voxels).
        max_problems: stop after this many failing inputs (the message says so).

    Returns:
        ``(shape, affine)`` per input, as :func:`check_image_file`.

    Raises:
        InputError: listing each failing input (its file and the reason), one line each.
    """
    results, problems = [], []
    for path in paths:
        result, problem = _checked(path, expected_ndim, check_values)
        results.append(result)
        if problem is not None:
            problems.append(problem)
            if len(problems) >= max_problems:
                break
    if problems:
        raise InputError(problems, truncated=len(problems) >= max_problems and len(results) < len(paths))
    logger.info("checked %d input(s)%s", len(results), " (all voxels read)" if check_values else " (headers only)")
    return results


def _checked(
    path: str | os.PathLike, expected_ndim: int | None, check_values: bool
) -> tuple[tuple[tuple[int, ...], np.ndarray | None] | None, str | None]:
    """:func:`check_image_file` as ``(result, None)`` or ``(None, problem line)``; the problem is logged."""
    try:
        return check_image_file(path, expected_ndim=expected_ndim, check_values=check_values), None
    except (OSError, ValueError) as e:
        problem = _describe_error(e)
        log_input_problem(problem)
        return None, problem


def check_datalist_geometry(
    items: Sequence[dict],
    *,
    expected_ndim: int = 3,
    check_values: bool = False,
    atol: float = 1e-2,
) -> None:
    """Check every ``{"image", "label"}`` item of a datalist: readable files, ``expected_ndim`` dimensions and, where a
    label is given, the same voxel grid as its image (:func:`check_geometry_match`).

    Args:
        items: datalist items; ``label`` is optional.
        expected_ndim: required spatial dimensions.
        check_values: also decode every voxel (finds truncated files and NaN/Inf; slower).
        atol: tolerance in mm for the affine comparison.

    Raises:
        FileNotFoundError, ValueError: on the first item that fails, naming the file and the reason.
    """
    for item in items:
        shape, affine = check_image_file(item["image"], expected_ndim=expected_ndim, check_values=check_values)
        if item.get("label") is None:
            continue
        label_shape, label_affine = check_nifti_file(
            item["label"], expected_ndim=expected_ndim, check_values=check_values
        )
        check_geometry_match(
            shape, affine, label_shape, label_affine, image_path=item["image"], label_path=item["label"], atol=atol
        )
