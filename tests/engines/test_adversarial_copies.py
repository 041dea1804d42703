"""Offline adversarial copies of NIfTI sources keep the source header (affine, qform/sform codes, pixdims)."""

import json

import nibabel as nib
import numpy as np
import pytest
from monai.transforms import (
    AsDiscreted,
    Compose,
    EnsureChannelFirstd,
    EnsureTyped,
    Flipd,
    LoadImaged,
    Orientationd,
    Resized,
    ScaleIntensityRanged,
)
from PIL import Image
from tiny_models import small_unet

from monai_advseg.engines import AdversarialCopyGenerator


def _rotated_affine(angle_degrees: float, spacing=(0.7, 0.8, 5.0), origin=(-120.0, 35.5, 12.0)) -> np.ndarray:
    angle = np.deg2rad(angle_degrees)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0.0], [np.sin(angle), np.cos(angle), 0.0], [0.0, 0.0, 1.0]])
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag(spacing)
    affine[:3, 3] = origin
    return affine


@pytest.fixture
def nifti_slice(shared_dataset, tmp_path):
    """A real MedSeg CT slice and its mask as 2D NIfTI files with a rotated affine and non-default header codes."""
    source = shared_dataset("ct_covid_medseg_infnet") / "train"
    image = np.asarray(Image.open(source / "images" / "3.jpg").convert("L"))[::4, ::4].astype(np.int16)
    mask = (np.asarray(Image.open(source / "masks" / "3.png").convert("L"))[::4, ::4] > 127).astype(np.uint8)
    affine = _rotated_affine(30.0)
    paths = {}
    for key, array in (("image", image), ("label", mask)):
        nifti = nib.Nifti1Image(array, affine)
        nifti.header.set_qform(affine, code=1)  # scanner
        nifti.header.set_sform(affine, code=2)  # aligned
        nifti.header.set_xyzt_units("mm", "sec")
        nifti.header["cal_min"], nifti.header["cal_max"] = float(array.min()), float(array.max())
        paths[key] = tmp_path / f"{key}.nii.gz"
        nib.save(nifti, paths[key])
    return {key: str(path) for key, path in paths.items()}


KEYS = ["image", "label"]


def _generator(nifti_slice, output_dir, *extra_loading, device: str = "cpu") -> AdversarialCopyGenerator:
    return AdversarialCopyGenerator(
        network=small_unet(),
        device=device,
        datalist=[nifti_slice],
        loading=Compose([LoadImaged(KEYS, image_only=True), EnsureChannelFirstd(KEYS), *extra_loading]),
        preparation=[
            ScaleIntensityRanged("image", a_min=0, a_max=255, b_min=0.0, b_max=1.0, clip=True),
            AsDiscreted("label", threshold=0.5),
            Resized(KEYS, spatial_size=(32, 32), mode=["bilinear", "nearest"]),
            EnsureTyped(KEYS),
        ],
        output_dir=output_dir,
        augmentations="both",
        epsilon=0.1,
    )


def test_copies_of_a_nifti_slice_keep_its_header(nifti_slice, tmp_path, device):
    generator = _generator(nifti_slice, tmp_path / "adversarial", device=device)
    datalist = json.loads(generator.run().read_text())["training"]
    assert [entry["augmentation"] for entry in datalist] == ["fgsm", "inverse_fgsm"]
    source = nib.load(nifti_slice["image"])
    assert not np.allclose(source.affine, np.diag(np.diag(source.affine)))  # rotated, not axis-aligned
    for entry in datalist:
        copy = nib.load(entry["image"])
        assert copy.shape == source.shape
        assert np.allclose(copy.affine, source.affine)
        assert np.allclose(copy.header.get_qform(), source.header.get_qform())
        assert np.allclose(copy.header.get_sform(), source.header.get_sform())
        assert int(copy.header["qform_code"]) == 1 and int(copy.header["sform_code"]) == 2
        assert np.allclose(copy.header.get_zooms(), source.header.get_zooms())
        assert copy.header.get_xyzt_units() == ("mm", "sec")
        assert copy.get_data_dtype() == np.float32
        difference = np.abs(copy.get_fdata() - source.get_fdata())
        assert difference.max() <= 0.1 * 255 + 1e-3 and difference.mean() > 1.0
        assert open(entry["label"], "rb").read() == open(nifti_slice["label"], "rb").read()


def test_copies_reset_the_sources_display_range(nifti_slice, tmp_path):
    """cal_min / cal_max describe the source's intensities, not the float copy's: the copy's are 0 (unset)."""
    source = nib.load(nifti_slice["image"]).header
    assert float(source["cal_min"]) == 0.0 and float(source["cal_max"]) > 200  # the source sets them
    datalist = json.loads(_generator(nifti_slice, tmp_path / "adversarial").run().read_text())["training"]
    for entry in datalist:
        header = nib.load(entry["image"]).header
        assert float(header["cal_min"]) == 0.0 and float(header["cal_max"]) == 0.0


@pytest.mark.parametrize(
    "reorientation",
    [Flipd(KEYS, spatial_axis=0), Orientationd(KEYS, axcodes="LP", labels=None)],
    ids=["flip", "orientation"],
)
def test_a_loading_pipeline_that_moves_the_voxels_is_refused(nifti_slice, tmp_path, reorientation):
    """A flip keeps the shape, so only the affine shows that the copy (written with the file's header) would be out
    of register with its label: the run stops naming the file, and leaves nothing behind."""
    output = tmp_path / "adversarial"
    with pytest.raises(ValueError, match=r"image\.nii\.gz: the loaded image's affine .* differs from the file's"):
        _generator(nifti_slice, output, reorientation).run()
    assert not output.exists() and list(tmp_path.glob(".adversarial.*")) == []


@pytest.fixture
def hu_slice(shared_dataset, tmp_path):
    """A real abdominal CT slice in Hounsfield units (air about -1000 HU, some voxels exactly -1024) and a mask."""
    source = shared_dataset("ct_totalseg_example") / "nifti"
    ct = nib.load(source / "example_ct_sm.nii.gz")
    z = 15
    image = np.asarray(ct.dataobj)[1:121, :100, z]  # 120 x 100: the small U-Net halves each axis twice
    mask = (np.asarray(nib.load(source / "example_seg.nii.gz").dataobj)[1:121, :100, z] > 0).astype(np.uint8)
    affine = ct.affine.copy()
    affine[:3, 3] = (ct.affine @ np.array([1.0, 0.0, z, 1.0]))[:3]
    paths = {}
    for key, array in (("image", image), ("label", mask)):
        paths[key] = tmp_path / f"{key}.nii.gz"
        nib.save(nib.Nifti1Image(array, affine), paths[key])
    return {key: str(path) for key, path in paths.items()}


WINDOW = (-175.0, 250.0)


def _hu_generator(hu_slice, output_dir, *resize) -> AdversarialCopyGenerator:
    return AdversarialCopyGenerator(
        network=small_unet(),
        datalist=[hu_slice],
        loading=Compose([LoadImaged(KEYS, image_only=True), EnsureChannelFirstd(KEYS)]),
        preparation=[
            ScaleIntensityRanged("image", a_min=WINDOW[0], a_max=WINDOW[1], b_min=0.0, b_max=1.0, clip=True),
            AsDiscreted("label", threshold=0.5),
            *resize,
            EnsureTyped(KEYS),
        ],
        output_dir=output_dir,
        augmentations="both",
        epsilon=0.1,
        intensity_window=WINDOW,
    )


@pytest.mark.parametrize("resample", [False, True], ids=["source_grid", "resized"])
def test_copies_leave_voxels_outside_the_window_as_they_were(hu_slice, tmp_path, resample):
    """The network sees a -1024 HU voxel as the window's edge (-175 HU): the copy keeps it at -1024 (the old code
    wrote -175), and perturbs only the voxels inside the window, each by at most epsilon in HU (0.1 * 425 HU)."""
    resize = [Resized(KEYS, spatial_size=(64, 48), mode=["bilinear", "nearest"])] if resample else []
    datalist = json.loads(_hu_generator(hu_slice, tmp_path / "adversarial", *resize).run().read_text())["training"]
    source = np.asarray(nib.load(hu_slice["image"]).dataobj).astype(np.float64)
    outside = (source < WINDOW[0]) | (source > WINDOW[1])
    assert (source == -1024).sum() >= 5 and outside.mean() > 0.3  # real air around the body
    epsilon_hu = 0.1 * (WINDOW[1] - WINDOW[0])
    steps = {}
    for entry in datalist:
        copy = nib.load(entry["image"]).get_fdata()
        np.testing.assert_array_equal(copy[outside], source[outside])
        inside = copy[~outside]
        assert inside.min() >= WINDOW[0] and inside.max() <= WINDOW[1]
        step = copy - source
        assert np.abs(step).max() <= epsilon_hu * (1 + 1e-5)
        steps[entry["augmentation"]] = step[~outside]
    if not resample:
        # on the source grid each in-window voxel moves by the full +-epsilon unless the window edge stops it,
        # in opposite directions for the two kinds
        full = np.isclose(np.abs(steps["fgsm"]), epsilon_hu, rtol=1e-4)
        assert full.mean() > 0.9
        both = full & np.isclose(np.abs(steps["inverse_fgsm"]), epsilon_hu, rtol=1e-4)
        np.testing.assert_allclose(steps["fgsm"][both], -steps["inverse_fgsm"][both], rtol=1e-4)
