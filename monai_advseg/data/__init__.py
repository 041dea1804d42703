"""Datalists (2D slice folders, NIfTI files, DICOM series folders), input checks and DICOM-SEG output."""

from __future__ import annotations

from typing import Any

from monai_advseg.data.checks import (
    MAX_PROBLEMS,
    DicomSeriesInfo,
    InputError,
    MissingInputError,
    check_datalist_geometry,
    check_dicom_series,
    check_finite,
    check_geometry_match,
    check_image_file,
    check_image_files,
    check_nifti_file,
    is_dicom_file,
    is_nifti_file,
)
from monai_advseg.data.dicom import DicomSeriesReader, dicom_series_affine, find_dicom_series, load_dicom_series
from monai_advseg.data.dicom_seg import PATIENT_STUDY_ATTRIBUTES, check_dicom_seg_source, write_dicom_seg
from monai_advseg.data.folders import (
    MASK_VALUES,
    check_datalist_files,
    check_slice_datalist,
    load_datalist_json,
    paired_folder_datalist,
    split_datalist,
    train_val_items,
)
from monai_advseg.data.output import StagedOutputFolder

__all__ = [
    "MASK_VALUES",
    "MAX_PROBLEMS",
    "PATIENT_STUDY_ATTRIBUTES",
    "DicomSeriesInfo",
    "DicomSeriesReader",
    "InputError",
    "MissingInputError",
    "StagedOutputFolder",
    "build_datalist",
    "check_datalist_files",
    "check_datalist_geometry",
    "check_dicom_seg_source",
    "check_dicom_series",
    "check_finite",
    "check_geometry_match",
    "check_image_file",
    "check_image_files",
    "check_nifti_file",
    "check_slice_datalist",
    "dicom_series_affine",
    "find_dicom_series",
    "find_images",
    "is_dicom_file",
    "is_nifti_file",
    "load_datalist_json",
    "load_dicom_series",
    "paired_folder_datalist",
    "split_datalist",
    "train_val_items",
    "write_datalist_json",
    "write_dicom_seg",
]

# datalist.py is also run as ``python -m monai_advseg.data.datalist``; importing it here eagerly would make runpy warn
# that the module is already in sys.modules, so its names are resolved on first access (PEP 562).
_LAZY = {"build_datalist", "find_images", "write_datalist_json"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from monai_advseg.data import datalist

        return getattr(datalist, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
