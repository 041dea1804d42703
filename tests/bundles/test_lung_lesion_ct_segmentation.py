"""The 2D CT lesion bundle end to end on a few real MedSeg slices, at a reduced image size."""

import csv
import json
import shutil

import nibabel as nib
import numpy as np
import pytest
import torch
from bundle_helpers import (
    assert_dice_and_jaccard_report,
    bundle_cli,
    bundle_run_args,
    link_subset,
    network_def,
    run_workflow,
    workflow,
)
from monai.transforms import LoadImage
from PIL import Image

import monai_advseg.networks
from monai_advseg.workflows import PROPERTIES_FILE

BUNDLE = "lung_lesion_ct_segmentation"
SMALL = {"spatial_size": [32, 32], "batch_size": 2, "epochs": 1}
SMALL_INFER = {"spatial_size": [32, 32]}
NAMES = ["0", "1", "2", "3", "4", "5"]


@pytest.fixture(scope="module")
def slices(shared_dataset, tmp_path_factory):
    source = shared_dataset("ct_covid_medseg_infnet") / "train"
    return link_subset(source, tmp_path_factory.mktemp("medseg"), NAMES)


@pytest.fixture(scope="module")
def trained(slices, tmp_path_factory):
    """One short training run through the real CLI; later tests reuse its checkpoint."""
    out = tmp_path_factory.mktemp("trained")
    result = bundle_cli(
        *bundle_run_args(
            BUNDLE,
            dataset_dir=slices,
            ckpt_dir=out / "models",
            output_dir=out / "eval",
            spatial_size="[32, 32]",
            batch_size=2,
            epochs=1,
        )
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "loss_clean" not in result.stderr  # the per-copy losses are in the output dict, not printed as errors
    return out


def test_properties_of_train_and_infer_workflows(slices):
    assert workflow(BUNDLE, ["train.json"], "train", dataset_dir=str(slices)).check_properties() == []
    assert workflow(BUNDLE, ["inference.json"], "infer", dataset_dir=str(slices)).check_properties() == []
    # what `python -m monai_advseg robustness` reads of a bundle (the any-bundle workflow's MONAI properties file)
    robust = workflow(BUNDLE, ["train.json"], "infer", properties_path=str(PROPERTIES_FILE), dataset_dir=str(slices))
    assert robust.check_properties() == []


def test_training_saves_a_checkpoint_that_loads_into_the_network(trained):
    state = torch.load(trained / "models" / "model.pt", map_location="cpu", weights_only=True)
    network = network_def(BUNDLE)
    network.load_state_dict(state)  # strict: every key present, every shape right


def test_nlce_unet_trains_and_its_checkpoint_loads_for_inference(slices, tmp_path):
    flow = run_workflow(
        BUNDLE,
        ["train.json"],
        dataset_dir=str(slices),
        ckpt_dir=str(tmp_path / "models"),
        output_dir=str(tmp_path / "eval"),
        network="nlce_unet",
        **SMALL,
    )
    trainer = flow.parser.get_parsed_content("train#trainer")
    assert type(trainer.network).__name__ == "NLCEUNet"
    assert trainer.auxiliary_bn  # the default with online copies (docs/results/adversarial_augmentation.md)
    output = trainer.state.output[-1]
    for name in ("loss", "loss_clean", "loss_fgsm", "loss_inverse_fgsm"):  # online FGSM + inverse FGSM by default
        assert np.isfinite(float(output[name])), name
    state = torch.load(tmp_path / "models" / "model.pt", map_location="cpu", weights_only=True)
    infer = workflow(BUNDLE, ["inference.json"], "infer", dataset_dir=str(slices), network="nlce_unet", **SMALL_INFER)
    network = infer.parser.get_parsed_content("network_def")
    assert type(network).__name__ == "NLCEUNet"
    network.load_state_dict(state)  # strict: every key present, every shape right
    network.eval()
    with torch.no_grad():
        assert network(torch.rand(1, 1, 32, 32)).shape == (1, 2, 32, 32)


def test_auxiliary_bn_cli_trains_one_epoch_and_the_model_loads_into_the_plain_network(slices, tmp_path):
    """``--auxiliary_bn true`` through the CLI on real slices: the copies train the twins, model.pt is the plain
    network (strict load into inference.json's network_def, same eval output as the trained network's main batch
    norm), and the resume checkpoint keeps the twins so that a second epoch resumes from them."""
    settings = dict(dataset_dir=slices, ckpt_dir=tmp_path / "models", output_dir=tmp_path / "eval")
    result = bundle_cli(
        *bundle_run_args(BUNDLE, **settings, spatial_size="[32, 32]", batch_size=2, epochs=1, auxiliary_bn="true")
    )
    assert result.returncode == 0, result.stderr[-3000:]
    state = torch.load(tmp_path / "models" / "model.pt", map_location="cpu", weights_only=True)
    infer = workflow(BUNDLE, ["inference.json"], "infer", dataset_dir=str(slices), **SMALL_INFER)
    plain = infer.parser.get_parsed_content("network_def")
    plain.load_state_dict(state)  # strict: the twins are not in the file
    checkpoint = torch.load(tmp_path / "models" / "checkpoint.pt", map_location="cpu", weights_only=True)
    twins = checkpoint["auxiliary_bn"]
    assert twins and all(int(twin["num_batches_tracked"]) == 2 * 3 for twin in twins.values())  # 2 copies x 3 batches
    assert all(int(checkpoint["network"][f"{name}.num_batches_tracked"]) == 3 for name in twins)  # clean batches

    flow = run_workflow(
        BUNDLE,
        ["train.json"],
        **{k: str(v) for k, v in settings.items()},
        **{**SMALL, "epochs": 2},
        auxiliary_bn=True,
        resume=True,
    )
    trainer = flow.parser.get_parsed_content("train#trainer")
    assert trainer.state.epoch == 2 and trainer.auxiliary_bn
    network = trainer.network
    resumed = {name: layer.auxiliary_bn for name, layer in monai_advseg.networks.auxiliary_bn_layers(network).items()}
    assert all(int(twin.num_batches_tracked) == 2 * 3 * 2 for twin in resumed.values())  # the twins were restored
    x = torch.rand(2, 1, 32, 32)
    final = torch.load(tmp_path / "models" / "checkpoint.pt", map_location="cpu", weights_only=True)["network"]
    plain.load_state_dict(final)
    with torch.no_grad():
        torch.testing.assert_close(plain.eval()(x), network.cpu().eval()(x), rtol=0, atol=0)


def test_evaluate_reports_dice_and_jaccard(slices, trained, tmp_path):
    run_workflow(
        BUNDLE,
        ["train.json", "evaluate.json"],
        dataset_dir=str(slices),
        ckpt_dir=str(trained / "models"),
        output_dir=str(tmp_path),
        **SMALL,
    )
    assert_dice_and_jaccard_report(tmp_path / "metrics.csv")


def test_inference_writes_masks_in_the_source_geometry(slices, trained, tmp_path):
    run_workflow(
        BUNDLE,
        ["inference.json"],
        "infer",
        dataset_dir=str(slices),
        ckpt_dir=str(trained / "models"),
        output_dir=str(tmp_path),
        spatial_size=[32, 32],
    )
    for name in NAMES:
        source = LoadImage(image_only=True)(str(slices / "images" / f"{name}.jpg"))
        prediction = nib.load(tmp_path / f"{name}_seg.nii.gz")
        assert prediction.shape[:2] == tuple(source.shape[:2])
        assert set(np.unique(np.asarray(prediction.dataobj))) <= {0, 1}


def test_generate_adversarial_copies_then_train_offline(slices, trained, tmp_path):
    overrides = dict(dataset_dir=str(slices), ckpt_dir=str(trained / "models"), output_dir=str(tmp_path), **SMALL)
    run_workflow(BUNDLE, ["train.json", "generate_adversarial.json"], **overrides)
    datalist = json.loads((tmp_path / "adversarial" / "datalist.json").read_text())["training"]
    train_names = {entry["source"] for entry in datalist}
    # the offline training writes its own checkpoints: a fresh run into the trained ckpt_dir would be refused
    offline = {**overrides, "ckpt_dir": str(tmp_path / "models_offline")}
    train_items = workflow(BUNDLE, ["train.json"], **offline).parser.get_parsed_content("train_items")
    assert train_names == {item["image"] for item in train_items}  # copies of the training split only
    assert len(datalist) == 2 * len(train_items)
    epsilon_levels = 0.1 * 255
    for entry in datalist:
        copy = nib.load(entry["image"])
        source = LoadImage(image_only=True)(entry["source"])
        assert copy.shape == tuple(source.shape)
        assert np.allclose(copy.affine, source.affine)
        difference = np.abs(np.asarray(copy.dataobj) - source.numpy())
        assert difference.max() <= epsilon_levels + 1e-3 and difference.mean() > 1.0
        assert open(entry["label"], "rb").read() == open(slices / "masks" / entry["label"].split("/")[-1], "rb").read()
    # never overwritten unless asked
    stamp = (tmp_path / "adversarial" / "datalist.json").stat().st_mtime_ns
    with pytest.raises(Exception) as error:
        run_workflow(BUNDLE, ["train.json", "generate_adversarial.json"], **overrides)
    assert "output folder exists" in "".join(str(e) for e in _chain(error.value))
    assert (tmp_path / "adversarial" / "datalist.json").stat().st_mtime_ns == stamp
    # offline training reads originals + both copies
    flow = workflow(BUNDLE, ["train.json"], online="false", **offline)
    items = flow.parser.get_parsed_content("train#items")
    assert len(items) == len(train_items) + len(datalist)
    assert flow.parser.get_parsed_content("train#trainer").augmentations == ()
    assert flow.parser.get_parsed_content("train#trainer").auxiliary_bn is False  # the default follows online

    # the README's second stage, as documented: `--online false` alone into the stage-1 ckpt_dir is refused ...
    stage_one = trained / "models" / "model.pt"
    stage_one_bytes = stage_one.read_bytes()
    with pytest.raises(Exception) as error:
        run_workflow(BUNDLE, ["train.json"], online="false", **overrides)
    assert "(or choose another --ckpt_dir)" in "".join(str(e) for e in _chain(error.value))
    # ... a new --ckpt_dir trains on originals + copies (the README command, through the CLI) ...
    cli_overrides = {key: value for key, value in offline.items() if key not in SMALL}
    result = bundle_cli(
        *bundle_run_args(BUNDLE, **cli_overrides, online="false", spatial_size="[32, 32]", batch_size=2, epochs=1)
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "models_offline" / "model.pt").is_file()
    assert stage_one.read_bytes() == stage_one_bytes
    # ... and --overwrite true into the stage-1 folder (a copy of it here) replaces the stage-1 model
    replaced = tmp_path / "models_replaced"
    shutil.copytree(trained / "models", replaced)
    flow = run_workflow(
        BUNDLE, ["train.json"], online="false", overwrite=True, **{**overrides, "ckpt_dir": str(replaced)}
    )
    assert len(flow.parser.get_parsed_content("train#items")) == len(train_items) + len(datalist)
    assert (replaced / "model.pt").read_bytes() != stage_one_bytes


def test_generate_adversarial_with_overwrite_true_replaces_the_copies(slices, trained, tmp_path):
    overrides = dict(dataset_dir=str(slices), ckpt_dir=str(trained / "models"), output_dir=str(tmp_path), **SMALL)
    run_workflow(BUNDLE, ["train.json", "generate_adversarial.json"], augmentation="both", **overrides)
    folder = tmp_path / "adversarial"
    (folder / "stale.txt").write_text("left by the first run")
    before = json.loads((folder / "datalist.json").read_text())["training"]
    assert {entry["augmentation"] for entry in before} == {"fgsm", "inverse_fgsm"}
    run_workflow(BUNDLE, ["train.json", "generate_adversarial.json"], augmentation="fgsm", overwrite=True, **overrides)
    after = json.loads((folder / "datalist.json").read_text())["training"]
    assert {entry["augmentation"] for entry in after} == {"fgsm"}  # the datalist is rewritten
    assert len(after) == len(before) // 2
    assert sorted(path.name for path in folder.iterdir()) == ["datalist.json", "fgsm", "labels"]  # folder replaced
    for entry in after:  # the new copies are readable and in their source's geometry
        copy, source = nib.load(entry["image"]), LoadImage(image_only=True)(entry["source"])
        assert copy.shape == tuple(source.shape)
        assert np.allclose(copy.affine, source.affine)
        assert entry["image"].startswith(f"{folder / 'fgsm'}/")
    assert not any(path.name.startswith(".adversarial.") for path in tmp_path.iterdir())  # no staging left behind


def test_robust_evaluate_writes_the_sweep_report(slices, trained, tmp_path):
    run_workflow(
        BUNDLE,
        ["train.json", "robust_evaluate.json"],
        dataset_dir=str(slices),
        ckpt_dir=str(trained / "models"),
        output_dir=str(tmp_path),
        epsilons=[0.5, 4.0],
        attack="fgsm",  # the default (the paper's targeted I-FGSM) runs in the CXR bundle's test
        **SMALL,
    )
    rows = list(csv.DictReader((tmp_path / "robustness.csv").open()))
    assert [float(row["eps_levels"]) for row in rows] == [0.0, 0.5, 4.0]
    assert [int(row["steps"]) for row in rows] == [0, 1, 1]  # one signed step per eps
    report = json.loads((tmp_path / "robustness.json").read_text())
    assert report["config"]["bundle"] == BUNDLE
    assert report["attack"]["name"] == "fgsm"
    assert report["attack"]["targeted"] is False and report["attack"]["target"] == "ground truth"
    assert (tmp_path / "robustness.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"augmentation": "fgsm_plus"}, "unknown augmentation"),
        ({"epsilon": -0.1}, "epsilon must be a number >= 0"),
        ({"dataset_dir": "/nonexistent/medseg"}, "/nonexistent/medseg: data set folder not found"),
        ({"online": "maybe"}, "online must be true or false"),
        ({"auxiliary_bn": "maybe"}, "auxiliary_bn must be true or false, got 'maybe'"),
        ({"auxiliary_bn": "true", "augmentation": "none"}, "auxiliary_bn=True needs online copies"),
    ],
)
def test_bad_configuration_fails_before_training(slices, tmp_path, overrides, message):
    settings = dict(dataset_dir=str(slices), ckpt_dir=str(tmp_path / "models"), output_dir=str(tmp_path), **SMALL)
    settings.update(overrides)
    with pytest.raises(Exception) as error:
        run_workflow(BUNDLE, ["train.json"], **settings)
    assert message in "".join(str(e) for e in _chain(error.value))
    assert not (tmp_path / "models" / "model.pt").exists()


def test_images_without_masks_fail_naming_the_file(slices, tmp_path):
    broken = tmp_path / "data"
    shutil.copytree(slices, broken, symlinks=True)
    (broken / "masks" / "3.png").unlink()
    with pytest.raises(Exception) as error:
        run_workflow(BUNDLE, ["train.json"], dataset_dir=str(broken), ckpt_dir=str(tmp_path / "m"), **SMALL)
    assert "3.jpg" in "".join(str(e) for e in _chain(error.value))


def _chain(error: BaseException):
    while error is not None:
        yield error
        error = error.__cause__ or error.__context__


def _nifti_slices(slices, folder):
    """The JPEG slices and PNG masks rewritten as NIfTI 2D slices (same pixels), with a relative-path datalist."""
    (folder / "images").mkdir(parents=True)
    (folder / "masks").mkdir()
    items = []
    for name in NAMES:
        image = np.asarray(Image.open(slices / "images" / f"{name}.jpg").convert("L"))
        mask = np.asarray(Image.open(slices / "masks" / f"{name}.png").convert("L"))
        nib.save(nib.Nifti1Image(image, np.eye(4)), folder / "images" / f"{name}.nii.gz")
        nib.save(nib.Nifti1Image(mask, np.eye(4)), folder / "masks" / f"{name}.nii.gz")
        items.append({"image": f"images/{name}.nii.gz", "label": f"masks/{name}.nii.gz"})
    return items


def test_datalist_json_of_nifti_slices_trains_and_the_checkpoint_loads(slices, tmp_path):
    items = _nifti_slices(slices, tmp_path / "nifti")
    datalist = tmp_path / "nifti" / "datalist.json"
    datalist.write_text(json.dumps({"training": items[:4], "validation": items[4:]}))
    settings = dict(ckpt_dir=str(tmp_path / "models"), output_dir=str(tmp_path / "eval"), **SMALL)
    # dataset_dir points nowhere: the datalist replaces the folder pairing
    flow = run_workflow(BUNDLE, ["train.json"], dataset_dir="/nonexistent", datalist=str(datalist), **settings)
    parse = flow.parser.get_parsed_content
    absolute = [{key: str(tmp_path / "nifti" / value) for key, value in item.items()} for item in items]
    assert parse("val_items") == absolute[4:]  # the datalist's own validation list, paths relative to the JSON
    assert sorted(parse("train_items"), key=str) == sorted(absolute[:4], key=str)
    assert parse("train#trainer").state.iteration == 2  # 4 training slices, batch 2
    state = torch.load(tmp_path / "models" / "model.pt", map_location="cpu", weights_only=True)  # after validation
    parse("network_def").load_state_dict(state)
    assert parse("validate#evaluator").state.metrics["val_mean_dice"] >= 0

    # without a validation list the items are split by val_fraction and seed, as the folder pairing is
    datalist.write_text(json.dumps({"training": items}))
    flow = workflow(BUNDLE, ["train.json"], datalist=str(datalist), **{**settings, "ckpt_dir": str(tmp_path / "m2")})
    train, val = flow.parser.get_parsed_content("train_items"), flow.parser.get_parsed_content("val_items")
    assert len(train) == 5 and len(val) == 1 and sorted(train + val, key=str) == sorted(absolute, key=str)
    folder = workflow(
        BUNDLE, ["train.json"], dataset_dir=str(tmp_path / "nifti"), **{**settings, "ckpt_dir": str(tmp_path / "m3")}
    )
    assert [item["image"] for item in folder.parser.get_parsed_content("val_items")] == [v["image"] for v in val]


def test_datalist_with_a_missing_file_fails_naming_it_before_training(slices, tmp_path):
    items = _nifti_slices(slices, tmp_path / "nifti")
    items[2]["label"] = "masks/absent.nii.gz"
    datalist = tmp_path / "nifti" / "datalist.json"
    datalist.write_text(json.dumps({"training": items}))
    settings = dict(ckpt_dir=str(tmp_path / "models"), output_dir=str(tmp_path / "eval"), **SMALL)
    with pytest.raises(Exception) as error:
        run_workflow(BUNDLE, ["train.json"], datalist=str(datalist), **settings)
    text = "".join(str(e) for e in _chain(error.value))
    assert str(tmp_path / "nifti" / "masks" / "absent.nii.gz") in text and str(datalist) in text
    assert not (tmp_path / "models").exists()  # no checkpoint: training never started
