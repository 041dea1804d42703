"""Small DICOM edits shared by the bad-input tests (tests/data) and the abdomen bundle's tests (tests/bundles)."""

from __future__ import annotations

from pathlib import Path

import pydicom
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

BASIC_TEXT_SR = "1.2.840.10008.5.1.4.1.1.88.11"


def text_sr(path: Path, series_uid: str) -> Path:
    """Write a DICOM object without pixel data (a Basic Text SR) belonging to the series ``series_uid``."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = BASIC_TEXT_SR
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.SeriesInstanceUID = series_uid
    ds.Modality = "SR"
    ds.InstanceNumber = 99
    ds.save_as(path, enforce_file_format=True)
    return Path(path)


def drop_pixel_spacing(path: Path) -> Path:
    """Delete PixelSpacing from the DICOM file at ``path`` in place."""
    ds = pydicom.dcmread(path)
    del ds.PixelSpacing
    ds.save_as(path)
    return Path(path)
