"""The 2D bundles check every slice and mask of a run before it starts: a bad input stops train / evaluate / inference
(and the robustness sweep and the adversarial copies) in ``initialize``, naming the file and the reason in the log and
in the first line of the error, with all problems at once; nothing is written. Every config and kind of bad input
in-process (cheap: the check runs in ``initialize``), a few as a user runs them (``python -m monai.bundle run``)."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from bad_slices import break_slice_folder
from bundle_helpers import bundle_cli, bundle_run_args, link_subset, workflow
from PIL import Image

from monai_advseg.data import InputError

LESION, CXR = "lung_lesion_ct_segmentation", "lung_cxr_segmentation"
NAMES = {
    LESION: ["0", "1", "2", "3", "4", "5"],
    CXR: ["MCUCXR_0001_0", "MCUCXR_0002_0", "CHNCXR_0001_0", "CHNCXR_0002_0"],
}
SOURCES = {LESION: ("ct_covid_medseg_infnet", "train"), CXR: ("cxr_lung_montgomery_shenzhen", "")}
SMALL = {LESION: {"spatial_size": [32, 32]}, CXR: {"spatial_size": [64, 64], "network": "unet"}}
TRAIN, EVALUATE, INFERENCE = ["train.json"], ["train.json", "evaluate.json"], ["inference.json"]
ROBUST, COPIES = ["train.json", "robust_evaluate.json"], ["train.json", "generate_adversarial.json"]


@pytest.fixture
def data(shared_dataset, tmp_path):
    """``(source, folder)`` of linked real slices per bundle, made on first use."""

    def make(bundle):
        name, sub = SOURCES[bundle]
        source = shared_dataset(name) / sub if sub else shared_dataset(name)
        return source, link_subset(source, tmp_path / bundle, NAMES[bundle])

    return make


def _first_input_error(error: BaseException) -> InputError:
    """The InputError under MONAI's ``RuntimeError`` wrappers."""
    while error is not None and not isinstance(error, InputError):
        error = error.__cause__ or error.__context__
    assert error is not None, "no InputError in the chain"
    return error


def _datalist_with_validation(folder, validation_names, path):
    """A datalist JSON of the folder's pairs whose ``"validation"`` list holds ``validation_names``: the items that
    evaluate.json and robust_evaluate.json check."""
    pairs = [
        {"image": str(next((folder / "images").glob(f"{n}.*"))), "label": str(next((folder / "masks").glob(f"{n}.*")))}
        for n in sorted({p.name.split(".")[0] for p in (folder / "images").iterdir()})
    ]
    val = [p for p in pairs if p["image"].split("/")[-1].split(".")[0] in validation_names]
    path.write_text(json.dumps({"training": [p for p in pairs if p not in val], "validation": val}))
    return path


# (bundle, configs, kind): each config of both bundles meets several kinds; together they cover every kind
CASES = [
    (LESION, TRAIN, "truncated_image"),
    (LESION, TRAIN, "mask_values"),
    (LESION, TRAIN, "unmatched_names"),
    (CXR, TRAIN, "size_mismatch"),
    (CXR, TRAIN, "rgb_mask"),
    (CXR, TRAIN, "no_mask_folder"),
    (LESION, EVALUATE, "truncated_mask"),
    (CXR, EVALUATE, "not_an_image"),
    (LESION, ROBUST, "rgb_mask"),
    (CXR, ROBUST, "truncated_mask"),
    (LESION, COPIES, "not_an_image"),
    (CXR, COPIES, "mask_values"),
    (LESION, INFERENCE, "truncated_image"),
    (LESION, INFERENCE, "empty_image_folder"),
    (CXR, INFERENCE, "not_an_image"),
]


@pytest.mark.real_data
@pytest.mark.parametrize(("bundle", "configs", "kind"), CASES, ids=[f"{b[5:8]}-{c[-1][:-5]}-{k}" for b, c, k in CASES])
def test_initialize_stops_on_a_bad_input_before_anything_is_written(data, tmp_path, bundle, configs, kind):
    source, folder = data(bundle)
    name = NAMES[bundle][1]
    bad, reason = break_slice_folder(kind, folder, name, source)
    settings = {"ckpt_dir": str(tmp_path / "models"), "output_dir": str(tmp_path / "eval"), **SMALL[bundle]}
    if configs in (EVALUATE, ROBUST) and kind not in ("unmatched_names", "no_mask_folder", "empty_image_folder"):
        # these read the validation split: put the damaged slice there
        settings["datalist"] = str(_datalist_with_validation(folder, [name], tmp_path / "datalist.json"))
    else:
        settings["dataset_dir"] = str(folder)
    kind_of_run = "infer" if configs == INFERENCE else "train"
    with pytest.raises(RuntimeError) as error:  # MONAI wraps what an expression raises
        workflow(bundle, configs, kind_of_run, **settings)
    found = _first_input_error(error.value)
    assert str(found).splitlines()[0].startswith(f"{bad}: ") and reason in str(found)
    assert not (tmp_path / "models").exists() and not (tmp_path / "eval").exists()


def _bad_input_lines(log: str) -> list[str]:
    return re.findall(r" - ERROR - bad input: (.*)", log)


@pytest.mark.real_data
@pytest.mark.parametrize(
    ("bundle", "configs", "kinds"),
    [
        (LESION, TRAIN, ["not_an_image"]),  # the case: no LoadImaged / PIL traceback mid-caching
        (CXR, TRAIN, ["size_mismatch", "rgb_mask", "mask_values"]),  # all problems at once
        (LESION, EVALUATE, ["mask_values"]),
        (CXR, EVALUATE, ["truncated_mask"]),
        (LESION, INFERENCE, ["truncated_image"]),
        (CXR, INFERENCE, ["not_an_image"]),
    ],
    ids=["lesion-train", "cxr-train-3", "lesion-evaluate", "cxr-evaluate", "lesion-inference", "cxr-inference"],
)
def test_bundle_cli_exits_1_naming_each_bad_file_and_writes_nothing(data, tmp_path, bundle, configs, kinds):
    source, folder = data(bundle)
    names = NAMES[bundle][1 : 1 + len(kinds)]
    found = [break_slice_folder(kind, folder, name, source) for kind, name in zip(kinds, names, strict=True)]
    out = tmp_path / "run"
    overrides = {"ckpt_dir": out / "models", "output_dir": out / "eval", "spatial_size": SMALL[bundle]["spatial_size"]}
    if configs == EVALUATE:
        overrides["datalist"] = _datalist_with_validation(folder, names, tmp_path / "datalist.json")
    else:
        overrides["dataset_dir"] = folder
    result = bundle_cli(*bundle_run_args(bundle, configs, **overrides))
    assert result.returncode == 1, (result.stdout + result.stderr)[-3000:]
    lines = _bad_input_lines(result.stdout)
    by_file = {line.split(": ")[0]: line for line in lines}  # in datalist order: the training split is shuffled
    assert len(lines) == len(found) and set(by_file) == {str(bad) for bad, _ in found}, result.stdout[-3000:]
    for bad, reason in found:  # one log line per bad file
        assert reason in by_file[str(bad)]
    # the error MONAI prints first names the first file and the reason (the whole list follows it)
    assert f"monai_advseg.data.checks.InputError: {lines[0]}" in result.stderr
    assert "LoadImaged" not in result.stderr  # found up front, not by the loader
    assert not out.exists()


@pytest.mark.real_data
def test_multiclass_masks_are_refused_unless_declared_in_mask_values(data, tmp_path):
    """The Inf-Net multi-class masks (0, 1 = ground glass, 2 = consolidation) next to the binary ones: pointing
    ``label_folder`` at them is refused, naming each mask that holds a 2; declaring the values lets the run start."""
    source, folder = data(LESION)
    link_subset(source, tmp_path / "multi", NAMES[LESION], folders=("masks_multiclass",))
    (folder / "masks_multiclass").symlink_to(tmp_path / "multi" / "masks_multiclass")
    settings = {"dataset_dir": str(folder), "label_folder": "masks_multiclass", "ckpt_dir": str(tmp_path / "models")}
    with pytest.raises(RuntimeError) as error:
        workflow(LESION, TRAIN, output_dir=str(tmp_path / "eval"), **settings)
    problems = _first_input_error(error.value).problems
    assert all(p.endswith("mask values 0, 1, 2; expected only {0, 255} or {0, 1}") for p in problems)
    # a slice with ground glass only is {0, 1}, a valid binary mask: only those with consolidation are named
    with_consolidation = {
        n for n in NAMES[LESION] if 2 in np.asarray(Image.open(source / "masks_multiclass" / f"{n}.png"))
    }
    assert {p.split(": ")[0] for p in problems} == {
        str(folder / "masks_multiclass" / f"{n}.png") for n in with_consolidation
    }
    assert 0 < len(with_consolidation) < len(NAMES[LESION])
    flow = workflow(LESION, TRAIN, mask_values=[[0, 1, 2]], output_dir=str(tmp_path / "eval"), **settings)
    assert len(flow.parser.get_parsed_content("train_items")) == 5
