"""DICOM-SEG output (highdicom): a predicted label map in the geometry of its source DICOM series, as a BINARY
Segmentation that references the series.

Frames are matched to source instances by geometry only: the label map is brought onto the voxel grid of the series
(:func:`~monai_advseg.data.checks.check_geometry_match`, then nibabel's orientation transforms) and slice ``k`` of
that grid is the ``k``-th file of :func:`~monai_advseg.data.checks.check_dicom_series`, which orders files by
ImagePositionPatient along the slice normal. File names and InstanceNumber are never used.

Privacy: a SEG must belong to the patient and study of its source, so it carries the Patient module values
(PatientName, PatientID, PatientBirthDate, PatientSex) and the study identity (StudyInstanceUID, StudyDate, StudyTime,
StudyID, AccessionNumber) of the source. Nothing else is copied: highdicom is given a reduced copy of each source
header that holds only those attributes, the UIDs and the image-plane geometry, so institution, station, operator,
physician names, patient age/weight and the like never reach the SEG (ReferringPhysicianName, a Type 2 attribute, is
written empty). Log records and re-emitted warnings never contain patient attribute values.

highdicom is an optional dependency: ``pip install monai_advseg[dicom]`` (or ``pip install highdicom``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import tempfile
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from monai_advseg.data.checks import DicomSeriesInfo, check_dicom_series, check_geometry_match, check_nifti_file
from monai_advseg.data.dicom import dicom_series_affine

__all__ = ["PATIENT_STUDY_ATTRIBUTES", "check_dicom_seg_source", "write_dicom_seg"]

logger = logging.getLogger(__name__)

#: The source attributes a SEG takes over (besides UIDs and geometry): the Patient module's Type 2 attributes and the
#: study identity of the General Study module. Everything else in the source headers is dropped.
PATIENT_STUDY_ATTRIBUTES = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "StudyID",
    "AccessionNumber",
)
_PATIENT_VALUES = ("PatientName", "PatientID", "PatientBirthDate")
_REQUIRED_UIDS = ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID")
_GEOMETRY = ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "SliceThickness", "Rows", "Columns")
_OTHER = ("Modality", "SpecificCharacterSet", "LossyImageCompression", "LossyImageCompressionRatio")
_INSTALL_HINT = "pip install monai_advseg[dicom]  (or: pip install highdicom)"


def _highdicom():
    try:
        import highdicom
    except ImportError as e:
        raise ImportError(f"DICOM-SEG output needs the optional package highdicom: {_INSTALL_HINT}") from e
    return highdicom


def _sop_uids(ds, path: Path) -> tuple[str, str]:
    """SOPClassUID and SOPInstanceUID; an anonymiser may blank them in the data set but keep the Part 10 file meta,
    which the standard requires to hold the same values."""
    meta = getattr(ds, "file_meta", None)
    sop_class = str(ds.get("SOPClassUID", "") or (meta.get("MediaStorageSOPClassUID", "") if meta else "") or "")
    sop_instance = str(
        ds.get("SOPInstanceUID", "") or (meta.get("MediaStorageSOPInstanceUID", "") if meta else "") or ""
    )
    if not sop_class or not sop_instance:
        raise ValueError(
            f"{path}: slice has no SOPClassUID/SOPInstanceUID (data set or file meta); a DICOM-SEG cannot reference it"
        )
    return sop_class, sop_instance


def _reduced_headers(info: DicomSeriesInfo) -> list:
    """Reduced copies of the source headers in ``info.files`` order: UIDs, geometry, Patient/Study identity only."""
    import pydicom
    from pydicom.dataset import Dataset

    headers = []
    for path in info.files:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        missing = [k for k in _REQUIRED_UIDS if not str(ds.get(k, "") or "")]
        if missing:
            raise ValueError(
                f"{path}: slice has no {', '.join(missing)}; a DICOM-SEG must reference the study, series and frame "
                "of reference of its source (anonymised series with blanked UIDs cannot be referenced)"
            )
        reduced = Dataset()
        reduced.SOPClassUID, reduced.SOPInstanceUID = _sop_uids(ds, path)
        for keyword in (*_REQUIRED_UIDS, *_GEOMETRY, *_OTHER):
            value = ds.get(keyword)
            if value not in (None, ""):
                setattr(reduced, keyword, value)
        for keyword in PATIENT_STUDY_ATTRIBUTES:  # Type 2: present, possibly empty
            setattr(reduced, keyword, ds.get(keyword, "") or "")
        reduced.ReferringPhysicianName = ""  # Type 2 in General Study; a person name we do not pass on
        headers.append(reduced)
    return headers


def check_dicom_seg_source(folder: str | os.PathLike) -> DicomSeriesInfo:
    """Check that a DICOM series folder can be the source of a DICOM-SEG (before any inference is run).

    Args:
        folder: a DICOM series folder.

    Returns:
        the :class:`~monai_advseg.data.checks.DicomSeriesInfo` of the series.

    Raises:
        FileNotFoundError: when the folder does not exist.
        ValueError: when the folder fails :func:`~monai_advseg.data.checks.check_dicom_series` or a slice lacks the
            study, series, frame-of-reference or SOP instance UID a SEG must reference.
        ImportError: when highdicom is not installed.
    """
    _highdicom()
    info = check_dicom_series(folder)
    _reduced_headers(info)
    return info


def _label_array(label: Any, affine: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, str]:
    """Return ``(array, affine, name)`` from a NIfTI path, a MetaTensor or an array with ``affine``."""
    if isinstance(label, (str, os.PathLike)):
        import nibabel as nib

        check_nifti_file(label, expected_ndim=None, check_values=False)
        img = nib.load(str(label))
        array, label_affine, name = np.asarray(img.dataobj), np.asarray(img.affine), str(label)
    else:
        meta_affine = getattr(label, "affine", None)
        if affine is None and meta_affine is None:
            raise ValueError("label is an array without an affine; pass affine= (voxel-to-RAS, 4x4)")
        label_affine = np.asarray(affine if affine is not None else meta_affine, dtype=np.float64)
        array = label.detach().cpu().numpy() if hasattr(label, "detach") else np.asarray(label)
        meta = getattr(label, "meta", None) or {}
        name = f"label of {meta['filename_or_obj']}" if meta.get("filename_or_obj") else "label"
    if array.ndim == 4 and array.shape[0] == 1:  # channel-first, as MONAI's post-processing leaves it
        array = array[0]
    if array.ndim != 3:
        raise ValueError(f"{name}: label map has shape {tuple(array.shape)}; expected a 3D volume (or one channel)")
    return array, np.asarray(label_affine, dtype=np.float64)[:4, :4], name


def _on_series_grid(array: np.ndarray, affine: np.ndarray, info: DicomSeriesInfo, name: str, atol: float):
    """Reorient the label onto the series voxel grid (column, row, slice) after checking that both cover it."""
    import nibabel as nib

    series_affine = dicom_series_affine(info)
    check_geometry_match(
        info.shape, series_affine, array.shape, affine, image_path=info.folder, label_path=name, atol=atol
    )
    transform = nib.orientations.ornt_transform(
        nib.orientations.io_orientation(affine), nib.orientations.io_orientation(series_affine)
    )
    moved = nib.orientations.apply_orientation(array, transform)
    moved_affine = affine @ nib.orientations.inv_ornt_aff(transform, array.shape)
    if moved.shape != tuple(info.shape) or not np.allclose(moved_affine, series_affine, atol=atol):
        raise ValueError(f"{name}: label grid cannot be mapped onto the series {info.folder} by axis flips/permutes")
    return moved


def _property_type(name: str):
    """SNOMED CT code for an organ name ("liver", "spleen", ...) from pydicom's code dictionary, else "Organ"."""
    from pydicom.sr.codedict import codes

    keyword = "".join(part.capitalize() for part in re.split(r"[\s_\-]+", name.strip()) if part)
    try:
        return getattr(codes.SCT, keyword)
    except AttributeError:
        return codes.SCT.Organ


@contextlib.contextmanager
def _quiet_and_redacted(headers: list) -> Iterator[None]:
    """Silence highdicom's per-attribute INFO log lines and re-emit its warnings with patient values removed (its
    person-name format check quotes the PatientName)."""
    secrets = {str(h.get(k, "") or "") for h in headers for k in _PATIENT_VALUES} - {""}
    hd_logger = logging.getLogger("highdicom")
    level = hd_logger.level
    hd_logger.setLevel(max(level, logging.WARNING))
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield
    finally:
        hd_logger.setLevel(level)
    for w in caught:
        text = str(w.message)
        if "unlikely to represent the intended person name" in text:
            continue  # about the source's name format, which we copy unchanged
        for secret in secrets:
            text = text.replace(secret, "<withheld>")
        logger.warning("highdicom: %s", text)


def write_dicom_seg(
    label: Any,
    source_series_dir: str | os.PathLike,
    output_path: str | os.PathLike,
    segment_names: Mapping[int, str],
    *,
    overwrite: bool = False,
    affine: np.ndarray | None = None,
    algorithm_name: str = "monai_advseg",
    algorithm_version: str | None = None,
    series_description: str = "Segmentation",
    atol: float = 1e-2,
) -> Path:
    """Write a predicted label map as a BINARY DICOM-SEG that references its source DICOM series.

    Args:
        label: the label map in the geometry of the series: a NIfTI path, a MONAI ``MetaTensor`` (its ``affine`` is
            used; a leading channel of size 1 is dropped) or an array with ``affine``. Its voxel axes may be in any
            order or direction (an LAS NIfTI of an LPS series is fine); the grid must be the series' grid.
        source_series_dir: the DICOM series folder the label was predicted on.
        output_path: the ``.dcm`` file to write.
        segment_names: label value -> segment name, e.g. ``{1: "liver", 2: "spleen"}``. Every entry becomes one
            segment, numbered 1, 2, ... in this order (also when the label holds no voxel of it); label values not
            listed are left out. Names matching a SNOMED CT concept of pydicom's code dictionary ("liver", "spleen",
            "pancreas", ...) get that code, others the generic "Organ"; the category is "Anatomical Structure".
        overwrite: replace an existing ``output_path``; by default an existing file is an error.
        affine: voxel-to-RAS 4x4 affine when ``label`` is a plain array.
        algorithm_name: the AlgorithmName of the segments.
        algorithm_version: the AlgorithmVersion (default: the monai_advseg version).
        series_description: the SeriesDescription of the SEG.
        atol: tolerance in mm when comparing the label grid with the series grid.

    Returns:
        ``output_path``. The file is written to a temporary file next to it and renamed, so a failed write leaves no
        partial file. See the module docstring for what the SEG carries from the source (Patient/Study identity only).

    Raises:
        ImportError: when highdicom is not installed.
        FileExistsError: when ``output_path`` exists and ``overwrite`` is false.
        FileNotFoundError: when the series folder or the label file does not exist.
        ValueError: when ``segment_names`` is empty or names label 0, the label grid differs from the series grid,
            or the series cannot be referenced (blanked UIDs); messages name the file.
    """
    hd = _highdicom()
    from pydicom.sr.codedict import codes

    import monai_advseg

    output_path = Path(output_path)
    if output_path.exists() and not overwrite:
        raise FileExistsError(f"{output_path}: DICOM-SEG output exists; pass overwrite=True to replace it")
    segments = {int(k): str(v) for k, v in dict(segment_names).items()}
    if not segments:
        raise ValueError(f"{output_path}: no segments to write (segment_names is empty)")
    if 0 in segments:
        raise ValueError(f"{output_path}: segment_names maps label 0, the background; segments are labels >= 1")

    info = check_dicom_series(source_series_dir)
    array, label_affine, name = _label_array(label, affine)
    grid = _on_series_grid(array, label_affine, info, name, atol)
    headers = _reduced_headers(info)

    # (column, row, slice) -> (slice, row, column): frame k is info.files[k], the k-th slice along the normal
    frames = np.transpose(grid, (2, 1, 0))
    seg_map = np.zeros(frames.shape, dtype=np.uint16 if len(segments) > 255 else np.uint8)
    for number, value in enumerate(segments, start=1):
        seg_map[frames == value] = number
    if not seg_map.any():
        logger.warning("%s: no voxel of segments %s; the DICOM-SEG holds empty frames", name, sorted(segments))

    algorithm = hd.AlgorithmIdentificationSequence(
        name=algorithm_name,
        version=algorithm_version or monai_advseg.__version__,
        family=codes.DCM.ArtificialIntelligence,
    )
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=segment_name[:64],
            segmented_property_category=codes.SCT.AnatomicalStructure,
            segmented_property_type=_property_type(segment_name),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
        )
        for number, segment_name in enumerate(segments.values(), start=1)
    ]
    with _quiet_and_redacted(headers):
        seg = hd.seg.Segmentation(
            source_images=headers,
            pixel_array=seg_map,
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=descriptions,
            series_instance_uid=hd.UID(),
            series_number=9000,
            sop_instance_uid=hd.UID(),
            instance_number=1,
            manufacturer="monai_advseg",
            manufacturer_model_name=algorithm_name,
            software_versions=monai_advseg.__version__,
            device_serial_number="none",
            series_description=series_description,
        )

    output_path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=output_path.parent, prefix=f".{output_path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        seg.save_as(tmp, enforce_file_format=True)
        if output_path.exists() and not overwrite:  # appeared while we were building the SEG
            raise FileExistsError(f"{output_path}: DICOM-SEG output exists; pass overwrite=True to replace it")
        os.replace(tmp, output_path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    logger.info(
        "wrote DICOM-SEG %s: %d segment(s), %d frame(s), series %s",
        output_path,
        len(segments),
        int(seg.NumberOfFrames),
        info.folder,
    )
    return output_path
