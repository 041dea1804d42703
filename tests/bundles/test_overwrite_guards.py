"""No bundle silently replaces an earlier run's outputs: training over ``model.pt`` / ``checkpoint.pt``, evaluation over
``metrics.csv`` and the per-metric CSVs, inference over existing masks. Each refuses before it runs, naming the files,
unless ``--resume true`` (training) or ``--overwrite true``; on real data at small sizes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from bundle_helpers import BUNDLES, bundle_cli, link_subset, run_workflow, workflow
from monai.bundle import ConfigParser

from monai_advseg.handlers import metrics_saver_files, saved_image_files

ALL = ["lung_lesion_ct_segmentation", "lung_cxr_segmentation", "abdomen_ct_segmentation"]
LESION_NAMES = ["0", "1", "2", "3", "4", "5"]
CXR_NAMES = ["MCUCXR_0001_0", "MCUCXR_0002_0", "CHNCXR_0001_0", "CHNCXR_0002_0"]
TINY_3D = {"network_choices#unet#channels": [8, 16, 32], "network_choices#unet#strides": [2, 2]}
SMALL = {
    "lung_lesion_ct_segmentation": {"spatial_size": [32, 32], "batch_size": 2, "epochs": 1},
    "lung_cxr_segmentation": {"spatial_size": [64, 64], "batch_size": 2, "epochs": 1, "network": "unet"},
    "abdomen_ct_segmentation": {"spatial_size": [32, 32, 32], "batch_size": 1, "num_samples": 1, "num_workers": 0},
}
EARLIER = b"an earlier run's file"


@pytest.fixture(scope="module")
def data(shared_dataset, tmp_path_factory) -> dict[str, dict]:
    """Per bundle: the data override (``dataset_dir`` of linked real slices, or a datalist JSON of a real CT)."""
    root = tmp_path_factory.mktemp("data")
    lesion = link_subset(shared_dataset("ct_covid_medseg_infnet") / "train", root / "lesion", LESION_NAMES)
    cxr = link_subset(shared_dataset("cxr_lung_montgomery_shenzhen"), root / "cxr", CXR_NAMES)
    ct = shared_dataset("ct_totalseg_example") / "nifti"
    item = {"image": str(ct / "example_ct_sm.nii.gz"), "label": str(ct / "example_seg.nii.gz")}
    (root / "abdomen.json").write_text(json.dumps({"training": [item], "validation": [item]}))
    return {
        "lung_lesion_ct_segmentation": {"dataset_dir": str(lesion)},
        "lung_cxr_segmentation": {"dataset_dir": str(cxr)},
        "abdomen_ct_segmentation": {"datalist": str(root / "abdomen.json"), **TINY_3D},
    }


def _settings(bundle: str, data: dict, tmp_path: Path) -> dict:
    return {**data[bundle], "ckpt_dir": str(tmp_path / "models"), "output_dir": str(tmp_path / "eval"), **SMALL[bundle]}


def _messages(error: BaseException) -> str:
    texts = []
    while error is not None:
        texts.append(f"{type(error).__name__}: {error}")
        error = error.__cause__ or error.__context__
    return "\n".join(texts)


# --------------------------------------------------------------------------------------------------- training
@pytest.mark.parametrize("bundle", ALL)
@pytest.mark.parametrize("configs", [["train.json"], ["train.json", "multi_gpu_train.json"]])
def test_fresh_training_refuses_existing_checkpoints_before_it_starts(bundle, configs, data, tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    for name in ("model.pt", "checkpoint.pt"):
        (models / name).write_bytes(EARLIER)
    # multi_gpu_train.json checks before it initialises the process group (which would need torchrun's variables)
    with pytest.raises(Exception) as error:
        run_workflow(bundle, configs, **_settings(bundle, data, tmp_path))
    text = _messages(error.value)
    assert "FileExistsError" in text
    assert str(models / "model.pt") in text and str(models / "checkpoint.pt") in text
    assert "--resume true" in text and "--overwrite true" in text
    assert all((models / name).read_bytes() == EARLIER for name in ("model.pt", "checkpoint.pt"))
    assert not (tmp_path / "eval").exists()  # refused before any handler (TensorBoard) was made


@pytest.mark.parametrize("bundle", ALL)
def test_only_a_best_model_left_names_overwrite_and_the_missing_resume_file(bundle, data, tmp_path):
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "model.pt").write_bytes(EARLIER)
    with pytest.raises(Exception) as error:
        run_workflow(bundle, ["train.json"], **_settings(bundle, data, tmp_path))
    text = _messages(error.value)
    assert str(tmp_path / "models" / "model.pt") in text and "--overwrite true" in text
    assert f"--resume true needs {tmp_path / 'models' / 'checkpoint.pt'}, which does not exist" in text


@pytest.mark.parametrize("bundle", ALL)
def test_resume_and_overwrite_together_are_refused(bundle, data, tmp_path):
    with pytest.raises(Exception) as error:
        run_workflow(bundle, ["train.json"], resume="true", overwrite="true", **_settings(bundle, data, tmp_path))
    assert "contradict each other" in _messages(error.value)
    assert not (tmp_path / "models").exists()


CHECKPOINT_READERS = [
    (bundle, reader)
    for bundle in ALL
    for reader in ("evaluate.json", "robust_evaluate.json", "generate_adversarial.json", "certify.json")
    if (BUNDLES / bundle / "configs" / reader).exists()
]


@pytest.mark.parametrize(("bundle", "reader"), CHECKPOINT_READERS)
def test_configs_that_read_checkpoints_drop_the_training_check(bundle, reader):
    """Layered with multi_gpu_train.json (as the documented multi-GPU sweep is), a reading config must not refuse
    the checkpoints it reads: it sets ``check_ckpt_dir`` to null, whose place in ``initialize`` is then a no-op."""
    configs = BUNDLES / bundle / "configs"
    parser = ConfigParser()
    parser.read_config([str(configs / name) for name in ("train.json", reader, "multi_gpu_train.json")])
    assert "@check_ckpt_dir" in parser["initialize"]
    assert parser["check_ckpt_dir"] is None
    train_only = ConfigParser()
    train_only.read_config(str(configs / "train.json"))
    assert "@check_ckpt_dir" in train_only["initialize"] and train_only["overwrite"] is False


def test_overwrite_true_trains_afresh_and_replaces_the_files(data, tmp_path):
    bundle = "lung_lesion_ct_segmentation"
    settings = _settings(bundle, data, tmp_path)
    (tmp_path / "models").mkdir()
    for name in ("model.pt", "checkpoint.pt"):
        (tmp_path / "models" / name).write_bytes(EARLIER)
    flow = run_workflow(bundle, ["train.json"], overwrite="true", **settings)
    checkpoint = torch.load(tmp_path / "models" / "checkpoint.pt", weights_only=True)
    assert checkpoint["trainer"]["iteration"] == checkpoint["trainer"]["epoch_length"]  # one fresh epoch
    network = flow.parser.get_parsed_content("network_def")
    network.load_state_dict(torch.load(tmp_path / "models" / "model.pt", weights_only=True))


def test_cli_refusal_names_the_files_and_exits_nonzero(data, tmp_path):
    bundle = "lung_lesion_ct_segmentation"
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "checkpoint.pt").write_bytes(EARLIER)
    settings = _settings(bundle, data, tmp_path)
    args = [f"--{key}={value if isinstance(value, str) else json.dumps(value)}" for key, value in settings.items()]
    config = str(BUNDLES / bundle / "configs" / "train.json")
    result = bundle_cli("run", "--config_file", config, "--bundle_root", str(BUNDLES / bundle), *args)
    assert result.returncode != 0
    assert "a fresh training run would replace the existing checkpoint(s)" in result.stderr
    assert str(tmp_path / "models" / "checkpoint.pt") in result.stderr
    assert (tmp_path / "models" / "checkpoint.pt").read_bytes() == EARLIER


# --------------------------------------------------------------------------------------------------- evaluation
@pytest.mark.parametrize("bundle", ALL)
@pytest.mark.parametrize("name", ["metrics.csv", "val_mean_iou_raw.csv"])
def test_evaluate_refuses_an_earlier_metrics_file(bundle, name, data, tmp_path):
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / name).write_bytes(EARLIER)
    with pytest.raises(Exception) as error:
        run_workflow(bundle, ["train.json", "evaluate.json"], **_settings(bundle, data, tmp_path))
    text = _messages(error.value)
    assert "FileExistsError" in text and str(tmp_path / "eval" / name) in text and "--overwrite true" in text
    assert (tmp_path / "eval" / name).read_bytes() == EARLIER


def _untrained_model(bundle: str, settings: dict, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    network = workflow(bundle, ["train.json"], **settings).parser.get_parsed_content("network_def")
    torch.save(network.state_dict(), folder / "model.pt")


def test_evaluate_writes_what_it_checks_and_overwrite_replaces_it(data, tmp_path):
    bundle = "lung_lesion_ct_segmentation"
    settings = _settings(bundle, data, tmp_path)
    _untrained_model(bundle, settings, tmp_path / "models")
    (tmp_path / "eval" / "tensorboard").mkdir(parents=True)  # other files in output_dir do not count
    flow = run_workflow(bundle, ["train.json", "evaluate.json"], **settings)
    checked = metrics_saver_files(flow.parser.get_parsed_content("validate#handlers#2"))
    written = {p for p in (tmp_path / "eval").iterdir() if p.is_file()}
    assert written == set(checked) and len(written) == 5  # metrics.csv, raw + summary for Dice and IoU
    (tmp_path / "eval" / "metrics.csv").write_bytes(EARLIER)
    run_workflow(bundle, ["train.json", "evaluate.json"], overwrite="true", **settings)
    assert (tmp_path / "eval" / "metrics.csv").read_bytes() != EARLIER


# --------------------------------------------------------------------------------------------------- inference
@pytest.mark.parametrize(
    "bundle, first, ext",
    [("lung_lesion_ct_segmentation", "0", ".nii.gz"), ("lung_cxr_segmentation", "CHNCXR_0001_0", ".png")],
)
def test_inference_refuses_an_earlier_mask_and_overwrite_replaces_it(bundle, first, ext, data, tmp_path):
    settings = _settings(bundle, data, tmp_path)
    settings.pop("epochs"), settings.pop("batch_size")
    _untrained_model(bundle, settings, tmp_path / "models")
    earlier = tmp_path / "eval" / f"{first}_seg{ext}"
    earlier.parent.mkdir()
    earlier.write_bytes(EARLIER)
    (tmp_path / "eval" / "unrelated.txt").write_text("kept")
    with pytest.raises(Exception) as error:
        run_workflow(bundle, ["inference.json"], "infer", **settings)
    text = _messages(error.value)
    assert "FileExistsError" in text and str(earlier) in text and "--overwrite true" in text
    assert earlier.read_bytes() == EARLIER and sorted(p.name for p in earlier.parent.iterdir()) == [
        earlier.name,
        "unrelated.txt",
    ]  # nothing written

    earlier.unlink()  # only the masks count: the unrelated file does not stop a run
    flow = run_workflow(bundle, ["inference.json"], "infer", **settings)
    parse = flow.parser.get_parsed_content
    expected = set(saved_image_files(parse("datalist"), parse("postprocessing")))
    assert {p for p in earlier.parent.iterdir() if p.name != "unrelated.txt"} == expected
    assert len(expected) == len(parse("datalist"))
    earlier.write_bytes(EARLIER)
    run_workflow(bundle, ["inference.json"], "infer", overwrite="true", **settings)
    assert earlier.read_bytes() != EARLIER
