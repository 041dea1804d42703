"""Bad input: one clear error naming the file and the reason; the CLI exits non-zero and writes nothing."""

from __future__ import annotations

import json
import logging
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from dicom_helpers import drop_pixel_spacing, text_sr
from pydicom.encaps import encapsulate, generate_frames

from monai_advseg.data import (
    build_datalist,
    check_dicom_series,
    check_image_file,
    check_nifti_file,
    load_dicom_series,
    write_datalist_json,
)
from monai_advseg.data.datalist import main

AFFINE = np.diag([2.0, 2.0, 3.0, 1.0])


def _nifti(path: Path, data: np.ndarray, affine: np.ndarray = AFFINE) -> Path:
    nib.save(nib.Nifti1Image(data, affine), path)
    return path


def _run_cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def series20(shared_dataset, tmp_path) -> Path:
    return Path(shutil.copytree(shared_dataset("ct_totalseg_example") / "dicom", tmp_path / "series20"))


@pytest.fixture
def series3(shared_dataset, tmp_path) -> Path:
    return Path(shutil.copytree(shared_dataset("ct_dicom_3slice_dcmqi") / "dicom", tmp_path / "series3"))


@pytest.mark.real_data
def test_truncated_nifti(shared_dataset, tmp_path, capsys):
    src = shared_dataset("ct_totalseg_example") / "nifti" / "example_ct_sm.nii.gz"
    data = src.read_bytes()
    bad = tmp_path / "truncated.nii.gz"
    bad.write_bytes(data[: len(data) // 2])
    # the header still parses; only reading the voxels finds the damage
    assert check_nifti_file(bad, check_values=False)[0] == (122, 101, 30)
    with pytest.raises(ValueError, match=r"truncated\.nii\.gz: NIfTI data is truncated or corrupt"):
        check_nifti_file(bad)
    header_only = tmp_path / "stub.nii.gz"
    header_only.write_bytes(data[:40])
    with pytest.raises(ValueError, match=r"stub\.nii\.gz: not a readable NIfTI file"):
        check_image_file(header_only)
    out = tmp_path / "out.json"
    code, _, err = _run_cli(capsys, bad, "-o", out)
    assert code == 1 and "truncated.nii.gz" in err and "truncated or corrupt" in err
    assert not out.exists() and list(tmp_path.glob(".out.json*")) == []


@pytest.mark.real_data
def test_missing_slice_is_irregular_spacing(series20):
    files = sorted(series20.iterdir())
    (series20 / files[10].name).unlink()
    with pytest.raises(ValueError, match=r"series20: irregular slice spacing: 4\.000 mm between .* steps 2\.000 mm"):
        check_dicom_series(series20)


@pytest.mark.real_data
def test_two_series_in_one_folder(series20, series3):
    for f in series3.iterdir():
        shutil.copy(f, series20 / f.name)
    with pytest.raises(ValueError, match=r"series20: 2 DICOM series are mixed in one folder.*3 files"):
        check_dicom_series(series20)


@pytest.mark.real_data
def test_non_image_dicom_in_series_folder(series3):
    uid = pydicom.dcmread(series3 / "01.dcm", stop_before_pixels=True).SeriesInstanceUID
    text_sr(series3 / "report.dcm", uid)
    with pytest.raises(ValueError, match=r"report\.dcm: not an image slice \(SOP class Basic Text SR.*no pixel data"):
        check_dicom_series(series3)
    with pytest.raises(ValueError, match=r"report\.dcm: not an image slice"):
        build_datalist(series3)


@pytest.mark.real_data
def test_slice_without_pixel_spacing(series3, tmp_path, capsys):
    """No 1 x 1 mm default: a slice without PixelSpacing stops the series with its file and the attribute named."""
    assert check_dicom_series(series3).pixel_spacing == pytest.approx((0.810547, 0.810547))
    victim = drop_pixel_spacing(series3 / "02.dcm")
    reason = r"02\.dcm: slice lacks PixelSpacing \(SOP class CT Image Storage"
    for check in (check_dicom_series, load_dicom_series, build_datalist):
        with pytest.raises(ValueError, match=reason):
            check(series3)
    out = tmp_path / "datalist.json"
    code, stdout, err = _run_cli(capsys, series3, "-o", out)
    assert code == 1 and err.startswith(f"error: {victim}: slice lacks PixelSpacing") and stdout == ""
    assert not out.exists()


@pytest.mark.real_data
def test_undecodable_jpeg2000_slice(series20):
    victim = sorted(series20.iterdir())[5]
    ds = pydicom.dcmread(victim)
    frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    # a well-formed file whose JPEG 2000 code stream stops after 200 bytes: only decoding finds it
    ds.PixelData = encapsulate([frame[:200]])
    ds.save_as(victim)
    assert check_dicom_series(series20).shape == (512, 512, 20)
    with pytest.raises(ValueError, match=rf"{victim.name}: cannot decode the DICOM pixel data"):
        load_dicom_series(series20)


@pytest.mark.real_data
def test_label_shape_or_geometry_differs(shared_dataset, tmp_path):
    nifti = shared_dataset("ct_totalseg_example") / "nifti"
    with pytest.raises(ValueError, match=r"example_seg\.nii\.gz: label shape \(122, 101, 30\) does not match"):
        build_datalist(nifti / "example_ct.nii.gz", nifti / "example_seg.nii.gz")
    img = nib.load(nifti / "example_ct_sm.nii.gz")
    moved = img.affine.copy()
    moved[:3, 3] += [0.0, 3.0, 0.0]
    label = _nifti(tmp_path / "moved.nii.gz", np.zeros(img.shape, np.uint8), moved)
    with pytest.raises(ValueError, match=r"moved\.nii\.gz: label geometry differs from image .* by up to 3 mm"):
        build_datalist(nifti / "example_ct_sm.nii.gz", label)
    # a flipped storage order of the same grid is fine: Orientationd resolves it
    flip = np.eye(4)
    flip[0, 0], flip[0, 3] = -1.0, img.shape[0] - 1  # voxel i of the copy is voxel n-1-i of the image
    _nifti(tmp_path / "flipped.nii.gz", np.zeros(img.shape, np.uint8), img.affine @ flip)
    assert build_datalist(nifti / "example_ct_sm.nii.gz", tmp_path / "flipped.nii.gz")["training"]


def test_nan_inf_voxels(tmp_path):
    data = np.zeros((4, 5, 6), np.float32)
    data[1, 2, 3] = np.nan
    data[0, 0, 0] = np.inf
    path = _nifti(tmp_path / "nan.nii.gz", data)
    with pytest.raises(ValueError, match=r"nan\.nii\.gz: image holds non-finite voxels \(1 NaN, 1 Inf of 120\)"):
        check_image_file(path)


def test_four_d_image(tmp_path, capsys):
    path = _nifti(tmp_path / "dwi.nii.gz", np.zeros((4, 5, 6, 2), np.int16))
    with pytest.raises(ValueError, match=r"dwi\.nii\.gz: image has 4 dimensions, shape \(4, 5, 6, 2\); expected a 3D"):
        check_image_file(path)
    assert check_image_file(path, expected_ndim=4)[0] == (4, 5, 6, 2)


def test_empty_folder(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"empty: DICOM series folder is empty"):
        check_dicom_series(tmp_path / "empty")
    code, _, err = _run_cli(capsys, tmp_path / "empty", "-o", tmp_path / "out.json")
    assert code == 1 and "empty: folder holds no NIfTI file and no DICOM series" in err
    assert not (tmp_path / "out.json").exists()


def test_missing_input_and_unpaired_labels(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing_here"):
        build_datalist(tmp_path / "nothing_here")
    (tmp_path / "img").mkdir()
    (tmp_path / "lab").mkdir()
    for name in ("a", "b"):
        _nifti(tmp_path / "img" / f"{name}.nii.gz", np.zeros((4, 5, 6), np.int16))
    _nifti(tmp_path / "lab" / "a.nii.gz", np.zeros((4, 5, 6), np.uint8))
    _nifti(tmp_path / "lab" / "c.nii.gz", np.zeros((4, 5, 6), np.uint8))
    with pytest.raises(ValueError, match=r"lab: no label named like 1 image\(s\): .*b\.nii\.gz"):
        build_datalist(tmp_path / "img", tmp_path / "lab")
    (tmp_path / "lab" / "c.nii.gz").rename(tmp_path / "lab" / "b.nii.gz")
    datalist = build_datalist(tmp_path / "img", tmp_path / "lab", val_fraction=0.5, seed=1)
    pairs = datalist["training"] + datalist["validation"]
    assert len(datalist["validation"]) == 1
    assert sorted((Path(i["image"]).name, Path(i["label"]).parent.name) for i in pairs) == [
        ("a.nii.gz", "lab"),
        ("b.nii.gz", "lab"),
    ]


def test_existing_output_kept_unless_overwrite(tmp_path, capsys):
    img = _nifti(tmp_path / "ct.nii.gz", np.zeros((4, 5, 6), np.int16))
    out = tmp_path / "datalist.json"
    out.write_text("precious")
    code, _, err = _run_cli(capsys, img, "-o", out)
    assert code == 1 and "datalist.json: output exists; pass --overwrite" in err
    assert out.read_text() == "precious"
    with pytest.raises(FileExistsError):
        write_datalist_json({"training": []}, out)
    assert out.read_text() == "precious"
    code, stdout, _ = _run_cli(capsys, img, "-o", out, "--overwrite")
    assert code == 0 and "1 training" in stdout
    assert json.loads(out.read_text()) == {"training": [{"image": str(img)}], "validation": []}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ct.nii.gz", "datalist.json"]  # no temp file left
    # a bad input after --overwrite still leaves the previous output intact
    _nifti(tmp_path / "nan.nii.gz", np.full((4, 5, 6), np.nan, np.float32))
    code, _, err = _run_cli(capsys, tmp_path / "nan.nii.gz", "-o", out, "--overwrite")
    assert code == 1 and "non-finite" in err
    assert json.loads(out.read_text())["training"] == [{"image": str(img)}]


@pytest.mark.real_data
def test_patient_identifiers_never_leak(series3, tmp_path, caplog):
    secrets = {"PatientName": "Secretname^Jane", "PatientID": "PID-7731-SECRET", "PatientBirthDate": "19230417"}
    for f in series3.iterdir():
        ds = pydicom.dcmread(f)
        for tag, value in secrets.items():
            setattr(ds, tag, value)
        ds.save_as(f)
    caplog.set_level(logging.DEBUG)
    out = tmp_path / "datalist.json"
    assert main([str(series3), "-o", str(out)]) == 0
    _, meta = load_dicom_series(series3)
    # make the series fail too, so error messages are covered
    text_sr(series3 / "report.dcm", pydicom.dcmread(series3 / "01.dcm").SeriesInstanceUID)
    with pytest.raises(ValueError) as err:
        build_datalist(series3)
    texts = [out.read_text(), caplog.text, str(err.value), repr(meta)]
    for value in secrets.values():
        for text in texts:
            assert value not in text and value.split("^")[0] not in text


@pytest.mark.real_data
def test_cli_on_real_folders(shared_dataset, tmp_path):
    """End to end in a fresh interpreter: exit code, JSON readable by MONAI, messages on stderr."""
    from monai.data import load_decathlon_datalist

    root = shared_dataset("ct_totalseg_example")
    out = tmp_path / "datalist.json"
    cmd = [sys.executable, "-m", "monai_advseg.data.datalist", str(root / "dicom"), str(root / "dicom_labels")]
    done = subprocess.run([*cmd, "-o", str(out)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    items = load_decathlon_datalist(out, data_list_key="training")
    label = root / "dicom_labels" / "example_seg_dicom.nii.gz"
    assert items == [{"image": str((root / "dicom").resolve()), "label": str(label.resolve())}]  # absolute, resolved
    again = subprocess.run([*cmd, "-o", str(out)], capture_output=True, text=True, timeout=120)
    assert again.returncode == 1 and "output exists" in again.stderr and "Traceback" not in again.stderr


@pytest.mark.real_data
@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        ("missing_slice", r": irregular slice spacing: 4\.000 mm between .* steps 2\.000 mm"),
        ("two_series", r": 2 DICOM series are mixed in one folder"),
        ("non_image", r"/report\.dcm: not an image slice \(SOP class Basic Text SR"),
        ("no_pixel_spacing", r"/CT\.[\d.]+: slice lacks PixelSpacing"),
    ],
)
def test_cli_exits_non_zero_on_a_bad_series_and_writes_nothing(series20, series3, tmp_path, kind, reason):
    """``python -m monai_advseg.data.datalist`` in a fresh interpreter: exit status 1, one message naming the series
    folder (or the file in it) and the reason on stderr, no traceback, and no output (nor a temporary file) in the
    output folder."""
    if kind == "missing_slice":
        sorted(series20.iterdir())[10].unlink()
    elif kind == "two_series":
        for f in series3.iterdir():
            shutil.copy(f, series20 / f.name)
    elif kind == "non_image":
        first = pydicom.dcmread(sorted(series20.iterdir())[0], stop_before_pixels=True)
        text_sr(series20 / "report.dcm", str(first.get("SeriesInstanceUID", "") or ""))
    else:
        drop_pixel_spacing(sorted(series20.iterdir())[3])
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    cmd = [sys.executable, "-m", "monai_advseg.data.datalist", str(series20), "-o", str(out_dir / "datalist.json")]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stdout + done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and re.search(rf"^error: {re.escape(str(series20))}{reason}", errors[0]), done.stderr
    assert "Traceback" not in done.stderr
    assert list(out_dir.iterdir()) == []
