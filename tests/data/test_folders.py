"""2D slice folder datalists, train/validation splits and checked datalist JSON loading."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from monai_advseg.data import check_image_file, load_datalist_json, paired_folder_datalist, split_datalist


def _touch(folder: Path, *names: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(b"x")


@pytest.mark.real_data
def test_covid_train_pairs_by_stem(shared_dataset):
    root = shared_dataset("ct_covid_medseg_infnet") / "train"
    items = paired_folder_datalist(root)
    assert len(items) == 50
    for item in items:
        assert Path(item["image"]).suffix == ".jpg" and Path(item["label"]).suffix == ".png"
        assert Path(item["image"]).stem == Path(item["label"]).stem
        assert Path(item["label"]).parent.name == "masks"  # not masks_multiclass
    assert [Path(i["image"]).name for i in items] == sorted(Path(i["image"]).name for i in items)
    # the 2D check decodes the files and reports spatial shape (H, W)
    shape, affine = check_image_file(items[0]["image"], expected_ndim=2)
    assert affine is None and len(shape) == 2 and min(shape) > 100


@pytest.mark.real_data
def test_cxr_pairs_and_multiclass_folder(shared_dataset):
    items = paired_folder_datalist(shared_dataset("cxr_lung_montgomery_shenzhen"))
    assert len(items) == 250
    assert all(Path(i["image"]).name == Path(i["label"]).name for i in items)
    covid = shared_dataset("ct_covid_medseg_infnet") / "train"
    multi = paired_folder_datalist(covid, label_folder="masks_multiclass")
    assert all(Path(i["label"]).parent.name == "masks_multiclass" for i in multi)


def test_image_only_and_nifti_suffix(tmp_path):
    _touch(tmp_path / "images", "b.nii.gz", "a.png", "notes.txt")
    items = paired_folder_datalist(tmp_path, label_folder=None)
    assert items == [{"image": str(tmp_path / "images" / "a.png")}, {"image": str(tmp_path / "images" / "b.nii.gz")}]


def test_missing_and_empty_folders(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        paired_folder_datalist(tmp_path / "nowhere")
    (tmp_path / "images").mkdir()
    with pytest.raises(ValueError, match=r"images: image folder holds no file"):
        paired_folder_datalist(tmp_path)
    _touch(tmp_path / "images", "0.jpg")
    with pytest.raises(FileNotFoundError, match=r"masks: mask folder not found"):
        paired_folder_datalist(tmp_path)


def test_image_without_mask_names_the_files(tmp_path):
    _touch(tmp_path / "images", "0.jpg", "1.jpg", "7.jpg")
    _touch(tmp_path / "masks", "0.png", "9.png")
    with pytest.raises(ValueError, match=r"no mask for 2 image\(s\): 1\.jpg, 7\.jpg"):
        paired_folder_datalist(tmp_path)


def test_duplicate_stems_are_ambiguous(tmp_path):
    _touch(tmp_path / "images", "0.jpg", "0.png")
    _touch(tmp_path / "masks", "0.png")
    with pytest.raises(ValueError, match=r"share the name '0'"):
        paired_folder_datalist(tmp_path)


def test_split_reproducible_disjoint_complete():
    items = [{"image": f"{i}.png"} for i in range(50)]
    train, val = split_datalist(items, 0.2, seed=3)
    assert len(val) == 10 and len(train) == 40
    assert sorted(i["image"] for i in train + val) == sorted(i["image"] for i in items)
    assert split_datalist(items, 0.2, seed=3) == (train, val)
    assert split_datalist(items, 0.2, seed=4)[1] != val


def test_split_edge_cases():
    items = [{"image": f"{i}"} for i in range(3)]
    assert split_datalist(items, 0.0) == (items, [])
    train, val = split_datalist(items, 0.05)  # rounds to 0 validation items; one is kept anyway
    assert len(val) == 1 and len(train) == 2
    with pytest.raises(ValueError, match="val_fraction"):
        split_datalist(items, 1.0)
    with pytest.raises(ValueError, match="cannot split 1"):
        split_datalist(items[:1], 0.5)


def test_load_datalist_json(tmp_path):
    _touch(tmp_path / "data", "a.nii.gz", "a_seg.nii.gz")
    path = tmp_path / "datalist.json"
    path.write_text(
        json.dumps(
            {
                "training": [{"image": "data/a.nii.gz", "label": "data/a_seg.nii.gz"}],
                "validation": [{"image": "data/a.nii.gz", "label": "data/gone_seg.nii.gz"}],
            }
        )
    )
    items = load_datalist_json(path)
    assert items == [{"image": str(tmp_path / "data/a.nii.gz"), "label": str(tmp_path / "data/a_seg.nii.gz")}]
    with pytest.raises(FileNotFoundError) as err:
        load_datalist_json(path, "validation")
    assert str(path) in str(err.value) and "gone_seg.nii.gz" in str(err.value)
    with pytest.raises(ValueError, match=r"datalist.json.*testing"):
        load_datalist_json(path, "testing")
    with pytest.raises(FileNotFoundError, match="missing.json"):
        load_datalist_json(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="bad.json"):
        load_datalist_json(tmp_path / "bad.json")
