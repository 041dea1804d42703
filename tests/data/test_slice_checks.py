"""The up-front check of 2D slice folders (check_slice_datalist): every kind of bad input named with its file and the
reason, all problems at once up to a cap, on a few real MedSeg and chest X-ray slices."""

from __future__ import annotations

import logging

import nibabel as nib
import numpy as np
import pytest
from bad_slices import KINDS, break_slice_folder
from bundle_helpers import link_subset
from PIL import Image

from monai_advseg.data import (
    InputError,
    MissingInputError,
    check_image_files,
    check_slice_datalist,
    paired_folder_datalist,
)

MEDSEG = ("ct_covid_medseg_infnet", "train", ["0", "1", "2", "3"])
CXR = ("cxr_lung_montgomery_shenzhen", "", ["MCUCXR_0001_0", "MCUCXR_0002_0", "CHNCXR_0001_0"])


def _folder(shared_dataset, tmp_path, which=MEDSEG):
    name, sub, names = which
    source = shared_dataset(name) / sub if sub else shared_dataset(name)
    return source, link_subset(source, tmp_path / "data", names), names


def _check_folder(folder):
    check_slice_datalist(paired_folder_datalist(folder))


@pytest.mark.real_data
@pytest.mark.parametrize("which", [MEDSEG, CXR], ids=["medseg", "cxr"])
def test_real_folders_pass(shared_dataset, tmp_path, which, caplog):
    _, folder, names = _folder(shared_dataset, tmp_path, which)
    caplog.set_level(logging.INFO)
    assert check_slice_datalist(paired_folder_datalist(folder)) is None
    assert f"checked {2 * len(names)} 2D image/mask file(s) of {len(names)} item(s)" in caplog.text
    assert "bad input" not in caplog.text


@pytest.mark.real_data
@pytest.mark.parametrize("which", [MEDSEG, CXR], ids=["medseg", "cxr"])
@pytest.mark.parametrize("kind", KINDS)
def test_each_bad_input_is_named_with_the_reason(shared_dataset, tmp_path, which, kind, caplog):
    source, folder, names = _folder(shared_dataset, tmp_path, which)
    bad, reason = break_slice_folder(kind, folder, names[1], source)
    with pytest.raises(InputError) as error:
        _check_folder(folder)
    assert len(error.value.problems) == 1
    assert str(error.value).startswith(f"{bad}: ") and reason in str(error.value)
    assert isinstance(error.value, ValueError)  # callers catching ValueError keep working
    assert isinstance(error.value, FileNotFoundError) == (kind == "no_mask_folder")
    # one ERROR line in the log (what a bundle run shows before MONAI's traceback)
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR] == [f"bad input: {error.value}"]


@pytest.mark.real_data
def test_all_problems_are_reported_at_once_in_file_order(shared_dataset, tmp_path):
    source, folder, names = _folder(shared_dataset, tmp_path)
    found = [
        break_slice_folder(kind, folder, name, source)
        for kind, name in zip(("mask_values", "not_an_image", "size_mismatch"), names[:3], strict=True)
    ]
    with pytest.raises(InputError) as error:
        _check_folder(folder)
    lines = str(error.value).splitlines()
    assert len(lines) == 3 and not error.value.truncated
    for line, (bad, reason) in zip(lines, found, strict=True):
        assert line.startswith(f"{bad}: ") and reason in line


@pytest.mark.real_data
def test_the_report_stops_at_the_cap_and_says_so(shared_dataset, tmp_path):
    source, folder, names = _folder(shared_dataset, tmp_path)
    for kind, name in zip(("truncated_image", "truncated_mask", "rgb_mask"), names[:3], strict=True):
        break_slice_folder(kind, folder, name, source)
    with pytest.raises(InputError) as error:
        check_slice_datalist(paired_folder_datalist(folder), max_problems=2)
    assert error.value.truncated and len(error.value.problems) == 2
    assert error.value.lines[-1] == "stopped after the first 2 problems; the remaining inputs were not checked"
    # the same cap in check_image_files, which the 3D bundle uses
    images = [item["image"] for item in paired_folder_datalist(folder)]
    with pytest.raises(InputError) as error:
        check_image_files([*images, "/nonexistent/a.png", "/nonexistent/b.png"], expected_ndim=2, max_problems=2)
    first, second = error.value.problems  # b.png was not checked
    assert first.startswith(f"{images[0]}: not a readable image file") and "truncated" in first
    assert second == "/nonexistent/a.png: image file not found"
    assert error.value.truncated


def test_missing_folders_are_file_not_found_and_input_errors(tmp_path):
    with pytest.raises(MissingInputError, match="nowhere: data set folder not found"):
        paired_folder_datalist(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError):
        paired_folder_datalist(tmp_path / "nowhere")


@pytest.mark.real_data
def test_nifti_slices_are_checked_like_image_files(shared_dataset, tmp_path):
    """NIfTI 2D slices (datalist JSON input): NaN pixels, a 3D volume, and an image/mask pair whose axes MONAI loads
    in different orders (a NIfTI of the PNG's rows and columns next to the PNG mask) are reported."""
    source = shared_dataset("ct_covid_medseg_infnet") / "train"
    pixels = np.asarray(Image.open(source / "images" / "0.jpg").convert("L"), dtype=np.float32)
    mask = np.asarray(Image.open(source / "masks" / "0.png"))
    paths = {}
    for name, data in {"nan": np.where(pixels > 200, np.nan, pixels), "vol": pixels[..., None].repeat(3, -1)}.items():
        paths[name] = tmp_path / f"{name}.nii.gz"
        nib.save(nib.Nifti1Image(data, np.eye(4)), paths[name])
    good_image, good_mask = tmp_path / "good.nii.gz", tmp_path / "good_mask.nii.gz"
    nib.save(nib.Nifti1Image(pixels.T.copy(), np.eye(4)), good_image)  # (width, height), as LoadImage reads the PNG
    nib.save(nib.Nifti1Image(mask.T.copy(), np.eye(4)), good_mask)
    transposed = tmp_path / "rows_first.nii.gz"
    nib.save(nib.Nifti1Image(pixels, np.eye(4)), transposed)
    png_mask = str(source / "masks" / "0.png")
    check_slice_datalist(
        [{"image": str(good_image), "label": png_mask}, {"image": str(good_image), "label": str(good_mask)}]
    )
    items = [
        {"image": str(paths["nan"]), "label": png_mask},
        {"image": str(paths["vol"])},
        {"image": str(transposed), "label": png_mask},
    ]
    with pytest.raises(InputError) as error:
        check_slice_datalist(items)
    nan, vol, shape = error.value.problems
    assert nan.startswith(f"{paths['nan']}: image holds non-finite voxels")
    assert vol.startswith(f"{paths['vol']}: image has 3 dimensions") and "expected a 2D image" in vol
    height, width = pixels.shape
    assert (
        shape == f"{png_mask}: mask size ({width}, {height}) differs from image {transposed} size ({height}, {width})"
    )


@pytest.mark.real_data
def test_mask_values_can_be_configured_or_skipped(shared_dataset, tmp_path):
    source, folder, names = _folder(shared_dataset, tmp_path)
    bad, _ = break_slice_folder("mask_values", folder, names[0], source)
    items = paired_folder_datalist(folder)
    with pytest.raises(InputError, match=r"mask values 0, 1, 2; expected only \{0, 255\}$"):
        check_slice_datalist(items, mask_values=[[0, 255]])
    check_slice_datalist(items, mask_values=[[0, 1, 2], [0, 255]])  # a multi-class convention, declared
    check_slice_datalist(items, mask_values=None)


def test_mask_value_messages_for_bilevel_and_grey_masks(tmp_path):
    """A bilevel (mode "1") PNG reads as bool; a grey mask lists its first values and how many there are."""
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(tmp_path / "image.png")
    Image.fromarray(np.eye(10, dtype=bool)).convert("1").save(tmp_path / "bilevel.png")
    Image.fromarray(np.arange(100, dtype=np.uint8).reshape(10, 10)).save(tmp_path / "grey.png")
    image = str(tmp_path / "image.png")
    check_slice_datalist([{"image": image, "label": str(tmp_path / "bilevel.png")}])  # {False, True} is {0, 1}
    with pytest.raises(InputError) as error:
        check_slice_datalist(
            [{"image": image, "label": str(tmp_path / name)} for name in ("bilevel.png", "grey.png")],
            mask_values=[[0, 255]],
        )
    assert error.value.problems == [
        f"{tmp_path / 'bilevel.png'}: mask values 0, 1; expected only {{0, 255}}",
        f"{tmp_path / 'grey.png'}: mask values 0, 1, 2, 3, 4, 5, 6, 7, ... (100 distinct); expected only {{0, 255}}",
    ]
