"""DICOM-SEG output on the real DICOM series: frames land on the source instance found by geometry, privacy, errors.

The expected frame of each source instance is computed here from first principles (the instance's
ImagePositionPatient, ImageOrientationPatient and PixelSpacing, mapped through the label NIfTI's affine), not with
the package's ordering code. The shipped TotalSegmentator series has blanked Study/Series/SOP UIDs in its data sets
(the file meta keeps the SOP UIDs), so the tests write copies with Study and Series UIDs set.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch
from monai.data import MetaTensor

from monai_advseg.data import check_dicom_seg_source, write_dicom_seg
from monai_advseg.transforms import WriteDicomSegd

hd = pytest.importorskip("highdicom")

pytestmark = pytest.mark.real_data

STUDY_UID = "1.2.826.0.1.3680043.8.498.1001"
SERIES_UID = "1.2.826.0.1.3680043.8.498.1002"
SECRET = "ZZSECRETNAME"  # one name component: highdicom's person-name check would quote it in a warning
LEAKS = {"InstitutionName": "ZZINSTITUTE", "OperatorsName": "ZZOPERATOR^X", "ReferringPhysicianName": "ZZREFERRER^Y"}
LEAKS_TOO = {"PatientComments": "ZZCOMMENT", "PatientAge": "077Y", "StationName": "ZZSTATION"}


def _copy_series(source: Path, target: Path, **attributes) -> Path:
    target.mkdir(parents=True)
    for f in sorted(p for p in source.iterdir() if p.is_file()):
        ds = pydicom.dcmread(f)
        for keyword, value in attributes.items():
            setattr(ds, keyword, value)
        ds.save_as(target / f.name)
    return target


@pytest.fixture(scope="module")
def totalseg(shared_dataset):
    return shared_dataset("ct_totalseg_example")


@pytest.fixture(scope="module")
def dcmqi(shared_dataset):
    return shared_dataset("ct_dicom_3slice_dcmqi")


@pytest.fixture(scope="module")
def totalseg_series(totalseg, tmp_path_factory):
    """The 20-slice JPEG 2000 series with Study and Series UIDs (SOPInstanceUID stays blank: file meta only)."""
    target = tmp_path_factory.mktemp("totalseg") / "series"
    return _copy_series(totalseg / "dicom", target, StudyInstanceUID=STUDY_UID, SeriesInstanceUID=SERIES_UID)


def _sop_uid(ds) -> str:
    return str(ds.get("SOPInstanceUID", "") or ds.file_meta.MediaStorageSOPInstanceUID)


def _expected_frame(ds, label: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """The label values under every pixel of one source instance, from its header and the label's affine."""
    rows, cols = int(ds.Rows), int(ds.Columns)
    row_dir, col_dir = np.asarray(ds.ImageOrientationPatient, dtype=float).reshape(2, 3)
    dr, dc = (float(s) for s in ds.PixelSpacing)
    r, c = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
    lps = np.asarray(ds.ImagePositionPatient, dtype=float) + c[..., None] * dc * row_dir + r[..., None] * dr * col_dir
    ras = lps * np.array([-1.0, -1.0, 1.0])
    voxel = np.einsum("ij,...j->...i", np.linalg.inv(affine)[:3, :3], ras) + np.linalg.inv(affine)[:3, 3]
    ijk = np.rint(voxel).astype(int)
    assert np.abs(voxel - ijk).max() < 1e-2  # pixel centres sit on label voxel centres
    return label[ijk[..., 0], ijk[..., 1], ijk[..., 2]]


def _check_frames(seg_file: Path, series: Path, label: np.ndarray, affine: np.ndarray, ids: list[int]) -> int:
    """Every source instance's SEG frames equal the label slice found by geometry; returns the foreground pixels."""
    seg = hd.seg.segread(seg_file)
    headers = [pydicom.dcmread(f, stop_before_pixels=True) for f in sorted(series.iterdir())]
    uids = [_sop_uid(ds) for ds in headers]
    referenced = seg.ReferencedSeriesSequence[0]
    assert {i.ReferencedSOPInstanceUID for i in referenced.ReferencedInstanceSequence} == set(uids)
    pixels = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=uids, segment_numbers=list(range(1, len(ids) + 1))
    )
    total = 0
    for ds, frames in zip(headers, pixels, strict=True):
        expected = _expected_frame(ds, label, affine)
        for number, label_id in enumerate(ids):
            np.testing.assert_array_equal(frames[..., number], expected == label_id, err_msg=_sop_uid(ds))
            total += int((expected == label_id).sum())
    return total


def test_totalseg_series_frames_match_the_label_by_geometry(totalseg, totalseg_series, tmp_path):
    label_file = totalseg / "dicom_labels" / "example_seg_dicom.nii.gz"
    names = {5: "liver", 1: "spleen", 2: "kidney_right"}
    out = write_dicom_seg(label_file, totalseg_series, tmp_path / "seg.dcm", names)
    assert out == tmp_path / "seg.dcm" and sorted(p.name for p in tmp_path.iterdir()) == ["seg.dcm"]
    img = nib.load(label_file)
    label = np.asarray(img.dataobj)
    assert _check_frames(out, totalseg_series, label, img.affine, list(names)) > 10000
    seg = hd.seg.segread(out)
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == SERIES_UID
    assert seg.StudyInstanceUID == STUDY_UID and seg.SeriesInstanceUID != SERIES_UID
    assert seg.SegmentationType == "BINARY" and seg.Modality == "SEG"
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["liver", "spleen", "kidney_right"]
    types = [s.SegmentedPropertyTypeCodeSequence[0].CodeValue for s in seg.SegmentSequence]
    assert types == ["10200004", "78961009", "91772007"]  # SNOMED liver, spleen; generic "Organ"
    ref = pydicom.dcmread(next(totalseg_series.iterdir()), stop_before_pixels=True)
    assert seg.FrameOfReferenceUID == ref.FrameOfReferenceUID


def test_three_slice_series_reversed_file_order(dcmqi, tmp_path):
    """File names and InstanceNumber run against the slice positions; the npy masks are in ascending position."""
    series = dcmqi / "dicom"
    liver = np.load(dcmqi / "masks_npy" / "liver_seg.npy")  # (z, row, col), z ascending
    order = next(iter(json.loads((dcmqi / "masks_npy" / "slice_order.json").read_text()).values()))
    first = pydicom.dcmread(series / order[0], stop_before_pixels=True)
    # the label's affine from the lowest slice's header (RAS, axes column, row, slice)
    row_dir, col_dir = np.asarray(first.ImageOrientationPatient, dtype=float).reshape(2, 3)
    dr, dc = (float(s) for s in first.PixelSpacing)
    lps = np.eye(4)
    lps[:3, 0], lps[:3, 1], lps[:3, 2] = row_dir * dc, col_dir * dr, np.cross(row_dir, col_dir) * 1.0
    lps[:3, 3] = first.ImagePositionPatient
    affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps
    label = np.transpose(liver, (2, 1, 0))  # (column, row, slice)
    tensor = MetaTensor(torch.as_tensor(label[None]), affine=torch.as_tensor(affine))
    out = write_dicom_seg(tensor, series, tmp_path / "liver.dcm", {1: "liver"})
    assert _check_frames(out, series, label, affine, [1]) == int(liver.sum())
    # per file: 01.dcm (InstanceNumber 1, highest position) carries the last npy slice
    seg = hd.seg.segread(out)
    for z, name in enumerate(order):
        uid = pydicom.dcmread(series / name, stop_before_pixels=True).SOPInstanceUID
        frame = seg.get_pixels_by_source_instance(source_sop_instance_uids=[uid], segment_numbers=[1])[0, ..., 0]
        np.testing.assert_array_equal(frame, liver[z].astype(bool))
    assert not np.array_equal(liver[0], liver[2])  # the check above could tell the slices apart
    # the same label flipped along z (a differently stored NIfTI) gives the same frames
    flipped = label[:, :, ::-1]
    flip_affine = affine @ np.array([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, -1, 2], [0, 0, 0, 1.0]])
    out2 = write_dicom_seg(flipped, series, tmp_path / "flipped.dcm", {1: "liver"}, affine=flip_affine)
    assert _check_frames(out2, series, flipped, flip_affine, [1]) == int(liver.sum())


def test_seg_carries_only_patient_and_study_identity(dcmqi, tmp_path, caplog, recwarn, capfd):
    series = _copy_series(dcmqi / "dicom", tmp_path / "private", PatientName=SECRET, **LEAKS, **LEAKS_TOO)
    assert pydicom.dcmread(next(series.iterdir())).InstitutionName == LEAKS["InstitutionName"]
    liver = np.transpose(np.load(dcmqi / "masks_npy" / "liver_seg.npy"), (2, 1, 0))
    info = check_dicom_seg_source(series)
    from monai_advseg.data import dicom_series_affine

    caplog.set_level(logging.DEBUG)
    out = write_dicom_seg(liver, series, tmp_path / "out" / "seg.dcm", {1: "liver"}, affine=dicom_series_affine(info))
    seg = pydicom.dcmread(out)
    source = pydicom.dcmread(series / "01.dcm", stop_before_pixels=True)
    assert str(seg.PatientName) == SECRET and seg.PatientID == source.PatientID  # same patient and study
    assert seg.AccessionNumber == source.AccessionNumber and seg.StudyInstanceUID == source.StudyInstanceUID
    for keyword in ("InstitutionName", "OperatorsName", "PatientComments", "PatientAge", "StationName"):
        assert keyword not in seg, keyword
    assert not seg.get("ReferringPhysicianName")  # Type 2: present and empty
    assert "ContributingEquipmentSequence" not in seg or all(
        "InstitutionName" not in item for item in seg.ContributingEquipmentSequence
    )
    content = out.read_bytes()
    for value in (*LEAKS.values(), *LEAKS_TOO.values()):
        assert value.split("^")[0].encode() not in content, value
    assert "wrote DICOM-SEG" in caplog.text
    logs = caplog.text + capfd.readouterr().err + " ".join(str(w.message) for w in recwarn)
    assert SECRET not in logs and source.PatientID not in logs


def test_refuses_to_overwrite_and_writes_atomically(dcmqi, tmp_path):
    liver = np.transpose(np.load(dcmqi / "masks_npy" / "liver_seg.npy"), (2, 1, 0))
    from monai_advseg.data import check_dicom_series, dicom_series_affine

    affine = dicom_series_affine(check_dicom_series(dcmqi / "dicom"))
    target = tmp_path / "seg.dcm"
    target.write_bytes(b"an earlier result")
    with pytest.raises(FileExistsError, match=str(target)):
        write_dicom_seg(liver, dcmqi / "dicom", target, {1: "liver"}, affine=affine)
    assert target.read_bytes() == b"an earlier result"
    write_dicom_seg(liver, dcmqi / "dicom", target, {1: "liver"}, affine=affine, overwrite=True)
    assert hd.seg.segread(target).NumberOfFrames == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["seg.dcm"]  # no temporary file left


def test_bad_inputs_fail_naming_the_file(totalseg, totalseg_series, dcmqi, tmp_path):
    label_file = totalseg / "dicom_labels" / "example_seg_dicom.nii.gz"
    # the shipped series has blanked Study/Series UIDs: it cannot be referenced
    with pytest.raises(ValueError, match="StudyInstanceUID, SeriesInstanceUID") as error:
        write_dicom_seg(label_file, totalseg / "dicom", tmp_path / "a.dcm", {5: "liver"})
    assert str(totalseg / "dicom") in str(error.value)
    with pytest.raises(ValueError, match="StudyInstanceUID"):
        check_dicom_seg_source(totalseg / "dicom")
    # a label of another series (3 slices vs 20)
    with pytest.raises(ValueError, match="does not match") as error:
        write_dicom_seg(label_file, dcmqi / "dicom", tmp_path / "b.dcm", {5: "liver"})
    assert str(label_file) in str(error.value) and str(dcmqi / "dicom") in str(error.value)
    # the right shape, shifted by 15 mm
    img = nib.load(label_file)
    shifted = img.affine.copy()
    shifted[:3, 3] += 15.0
    with pytest.raises(ValueError, match="geometry differs"):
        write_dicom_seg(np.asarray(img.dataobj), totalseg_series, tmp_path / "c.dcm", {5: "liver"}, affine=shifted)
    missing = tmp_path / "absent"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        write_dicom_seg(label_file, missing, tmp_path / "d.dcm", {5: "liver"})
    with pytest.raises(FileNotFoundError, match="missing.nii.gz"):
        write_dicom_seg(tmp_path / "missing.nii.gz", totalseg_series, tmp_path / "e.dcm", {5: "liver"})
    for names, message in (({}, "no segments"), ({0: "background"}, "label 0")):
        with pytest.raises(ValueError, match=message) as error:
            write_dicom_seg(label_file, totalseg_series, tmp_path / "f.dcm", names)
        assert str(tmp_path / "f.dcm") in str(error.value)
    assert list(tmp_path.iterdir()) == []


def test_transform_writes_next_to_the_nifti_and_skips_nifti_inputs(dcmqi, tmp_path, caplog):
    from monai_advseg.data import load_dicom_series

    _, meta = load_dicom_series(dcmqi / "dicom")
    liver = np.transpose(np.load(dcmqi / "masks_npy" / "liver_seg.npy"), (2, 1, 0))
    saved = tmp_path / "dicom_seg.nii.gz"
    pred = MetaTensor(torch.as_tensor(liver[None], dtype=torch.float32), affine=torch.as_tensor(meta["affine"]))
    pred.meta.update({"filename_or_obj": str(dcmqi / "dicom"), "saved_to": str(saved)})
    transform = WriteDicomSegd("pred", {1: "liver"})
    transform({"pred": pred})
    assert hd.seg.segread(tmp_path / "dicom_seg.dcm").NumberOfFrames == 3
    nifti_pred = MetaTensor(torch.zeros(1, 4, 4, 4))
    nifti_pred.meta.update(
        {"filename_or_obj": str(tmp_path / "ct.nii.gz"), "saved_to": str(tmp_path / "ct_seg.nii.gz")}
    )
    caplog.clear()  # an earlier bundle run may have set INFO logging; only this call's warnings count
    with caplog.at_level(logging.WARNING):
        transform({"pred": nifti_pred})
    warnings = [record for record in caplog.records if record.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "not a DICOM series folder" in warnings[0].getMessage()
    WriteDicomSegd("pred", {1: "liver"}, enabled=False)({"pred": pred})  # no-op: no FileExistsError
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dicom_seg.dcm"]


def test_missing_highdicom_names_the_extra(dcmqi, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "highdicom", None)  # import highdicom now raises ImportError
    with pytest.raises(ImportError, match=r"pip install monai_advseg\[dicom\]"):
        write_dicom_seg(np.zeros((512, 512, 3)), dcmqi / "dicom", tmp_path / "a.dcm", {1: "liver"}, affine=np.eye(4))
    with pytest.raises(ImportError, match="highdicom"):
        check_dicom_seg_source(dcmqi / "dicom")
    assert list(tmp_path.iterdir()) == []
