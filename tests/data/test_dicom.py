"""DICOM series on the real data: slice order, spacing from positions, HU, agreement with MONAI and NIfTI readers."""

from __future__ import annotations

import json
import shutil

import nibabel as nib
import numpy as np
import pydicom
import pytest
from monai.transforms import Compose, EnsureChannelFirstd, LoadImage, LoadImaged, Orientation, Orientationd

from monai_advseg.data import (
    DicomSeriesReader,
    check_dicom_series,
    check_geometry_match,
    check_nifti_file,
    load_dicom_series,
)

pytestmark = pytest.mark.real_data

READER = "monai_advseg.data.dicom.DicomSeriesReader"


def _zyx(array: np.ndarray) -> np.ndarray:
    """(column, row, slice) -> (slice, row, column), the layout of the masks_npy files and of SOURCE.md."""
    return np.transpose(array, (2, 1, 0))


def test_three_slice_order_spacing_and_liver_hu(shared_dataset):
    root = shared_dataset("ct_dicom_3slice_dcmqi")
    info = check_dicom_series(root / "dicom")
    order = json.loads((root / "masks_npy" / "slice_order.json").read_text())
    # file name and InstanceNumber order is 01, 02, 03: the opposite of ascending position
    assert [f.name for f in info.files] == next(iter(order.values())) == ["03.dcm", "02.dcm", "01.dcm"]
    array, meta = load_dicom_series(root / "dicom")
    assert array.shape == (512, 512, 3)
    # 1.0 mm from positions, not SliceThickness 1.25 mm
    np.testing.assert_allclose(meta["spacing"], [0.810547, 0.810547, 1.0], atol=1e-5)
    np.testing.assert_allclose(meta["affine"][:3, 3], [235.2, 226.8, -128.69], atol=1e-3)  # RAS of 03.dcm
    vol = _zyx(array)
    assert vol.min() < -1000  # rescale applied: HU, not stored values
    liver = np.load(root / "masks_npy" / "liver_seg.npy").astype(bool)
    spine = np.load(root / "masks_npy" / "spine_seg.npy").astype(bool)
    assert vol[liver].mean() == pytest.approx(37, abs=1.5)
    assert vol[spine].mean() == pytest.approx(328, abs=5)


def test_twenty_slice_jpeg2000_order_spacing_and_liver(shared_dataset):
    root = shared_dataset("ct_totalseg_example")
    info = check_dicom_series(root / "dicom")
    np.testing.assert_allclose(info.positions, np.arange(-804.5, -766.4, 2.0))
    instance = [int(pydicom.dcmread(f, stop_before_pixels=True).InstanceNumber) for f in info.files]
    assert instance == list(range(286, 266, -1))  # InstanceNumber falls along ascending z
    array, meta = load_dicom_series(root / "dicom")
    assert array.shape == (512, 512, 20) and array.dtype == np.int16
    np.testing.assert_allclose(meta["spacing"], [0.9765625, 0.9765625, 2.0])  # SliceThickness says 3
    np.testing.assert_allclose(np.diag(meta["affine"])[:3], [-0.9765625, -0.9765625, 2.0])

    lab = np.asarray(nib.load(root / "dicom_labels" / "example_seg_dicom.nii.gz").dataobj)
    lab_zyx = np.transpose(lab, (2, 1, 0))[:, ::-1, :]  # axis mapping from SOURCE.md
    vol = _zyx(array)
    liver = lab_zyx == 5
    per_slice = [vol[k][liver[k]].mean() for k in range(20) if liver[k].any()]
    # reversed slice order gives a liver mean of 77 HU and one slice at 48 HU
    assert vol[liver].mean() == pytest.approx(89, abs=3)
    assert min(per_slice) > 75


def test_jpeg2000_decoders_agree(shared_dataset):
    """SimpleITK's GDCM decoder and pydicom's (Pillow/OpenJPEG) give the same lossless pixels."""
    info = check_dicom_series(shared_dataset("ct_totalseg_example") / "dicom")
    array, _ = load_dicom_series(info.folder)
    for k in (0, 19):
        ds = pydicom.dcmread(info.files[k])
        assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.90"
        hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        np.testing.assert_array_equal(array[:, :, k].T, hu)


@pytest.mark.parametrize("name", ["ct_dicom_3slice_dcmqi", "ct_totalseg_example"])
def test_reader_matches_monai_pydicomreader_in_ras(shared_dataset, name):
    """Where InstanceNumber is monotonic (both real series), MONAI's PydicomReader and ours give one volume."""
    folder = shared_dataset(name) / "dicom"
    ours = LoadImage(reader=READER, image_only=True, ensure_channel_first=True)(folder)
    ref = LoadImage(reader="PydicomReader", image_only=True, ensure_channel_first=True)(folder)
    ours, ref = Orientation(axcodes="RAS")(ours), Orientation(axcodes="RAS")(ref)
    np.testing.assert_array_equal(ours.numpy(), ref.numpy())
    np.testing.assert_allclose(ours.affine.numpy(), ref.affine.numpy(), atol=1e-4)


def test_pydicomreader_trusts_instance_number_ours_does_not(shared_dataset, tmp_path):
    """Shuffled InstanceNumbers scramble MONAI's PydicomReader (it sorts by them); ours sorts by position."""
    src = shared_dataset("ct_dicom_3slice_dcmqi") / "dicom"
    for name, number in (("01.dcm", 2), ("02.dcm", 1), ("03.dcm", 3)):
        ds = pydicom.dcmread(src / name)
        ds.InstanceNumber = number
        ds.save_as(tmp_path / name)
    ours = Orientation(axcodes="RAS")(LoadImage(reader=READER, image_only=True, ensure_channel_first=True)(tmp_path))
    good = Orientation(axcodes="RAS")(LoadImage(reader=READER, image_only=True, ensure_channel_first=True)(src))
    ref = LoadImage(reader="PydicomReader", image_only=True, ensure_channel_first=True)(tmp_path)
    ref = Orientation(axcodes="RAS")(ref)
    np.testing.assert_array_equal(ours.numpy(), good.numpy())
    assert not np.array_equal(ref.numpy(), good.numpy())


def test_dicom_label_nifti_geometry_and_loadimaged(shared_dataset):
    """The LAS label NIfTI lies on the DICOM grid; LoadImaged + Orientationd put both on one RAS voxel grid."""
    root = shared_dataset("ct_totalseg_example")
    label_path = root / "dicom_labels" / "example_seg_dicom.nii.gz"
    array, meta = load_dicom_series(root / "dicom")
    shape, affine = check_nifti_file(label_path)
    check_geometry_match(array.shape, meta["affine"], shape, affine)
    with pytest.raises(ValueError, match="geometry differs"):
        shifted = affine.copy()
        shifted[2, 3] += 2.0  # one slice off
        check_geometry_match(array.shape, meta["affine"], shape, shifted)

    load = Compose(
        [
            LoadImaged(keys="image", reader=DicomSeriesReader()),
            LoadImaged(keys="label", reader="NibabelReader"),
            EnsureChannelFirstd(keys=["image", "label"]),
            Orientationd(keys=["image", "label"], axcodes="RAS"),
        ]
    )
    data = load({"image": str(root / "dicom"), "label": str(label_path)})
    image, label = data["image"], data["label"]
    assert image.shape == label.shape == (1, 512, 512, 20)
    np.testing.assert_allclose(image.affine.numpy(), label.affine.numpy(), atol=1e-3)
    assert float(image[label == 5].mean()) == pytest.approx(89, abs=3)
    assert image.meta["filename_or_obj"] == str(root / "dicom")


def test_dicom_and_nifti_copy_are_one_volume(shared_dataset, tmp_path):
    """A NIfTI written from the loaded series reads back (NibabelReader) as the same RAS volume."""
    folder = shared_dataset("ct_dicom_3slice_dcmqi") / "dicom"
    array, meta = load_dicom_series(folder)
    nib.save(nib.Nifti1Image(array.astype(np.int16), meta["affine"]), tmp_path / "ct.nii.gz")
    from_nifti = LoadImage(reader="NibabelReader", image_only=True, ensure_channel_first=True)(tmp_path / "ct.nii.gz")
    from_dicom = LoadImage(reader=READER, image_only=True, ensure_channel_first=True)(folder)
    np.testing.assert_array_equal(from_nifti.numpy(), from_dicom.numpy())
    np.testing.assert_allclose(from_nifti.affine.numpy(), from_dicom.affine.numpy(), atol=1e-4)


def test_series_folder_with_extra_non_dicom_file(shared_dataset, tmp_path):
    shutil.copytree(shared_dataset("ct_dicom_3slice_dcmqi") / "dicom", tmp_path / "s")
    (tmp_path / "s" / "README.txt").write_text("exported by a PACS")
    info = check_dicom_series(tmp_path / "s")
    assert len(info.files) == 3 and [p.name for p in info.ignored_files] == ["README.txt"]


def test_loaded_geometry_is_simpleitks_and_a_disagreement_is_refused(shared_dataset, monkeypatch):
    """The decoded volume takes SimpleITK's origin / direction / spacing; when they disagree with the slice
    positions by more than 1e-3 mm (simulated: SimpleITK's origin moved by 0.5 mm), loading stops."""
    import SimpleITK as sitk

    from monai_advseg.data import dicom_series_affine

    series = shared_dataset("ct_totalseg_example") / "dicom"
    _, meta = load_dicom_series(series)
    np.testing.assert_allclose(meta["affine"], dicom_series_affine(check_dicom_series(series)), atol=1e-3)
    execute = sitk.ImageSeriesReader.Execute

    def shifted(reader):
        image = execute(reader)
        image.SetOrigin([value + 0.5 for value in image.GetOrigin()])
        return image

    monkeypatch.setattr(sitk.ImageSeriesReader, "Execute", shifted)
    with pytest.raises(ValueError, match="SimpleITK geometry disagrees with the slice positions") as error:
        load_dicom_series(series)
    assert str(series) in str(error.value)
