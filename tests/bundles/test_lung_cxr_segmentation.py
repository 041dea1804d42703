"""The chest X-ray lung bundle (NLCEN by default) end to end on a few real Montgomery / Shenzhen images, at 64x64."""

import copy
import csv
import json
import math
import shutil

import numpy as np
import pytest
import torch
from bundle_helpers import (
    BUNDLES,
    assert_dice_and_jaccard_report,
    bundle_cli,
    bundle_run_args,
    link_subset,
    network_def,
    run_workflow,
    workflow,
)
from ignite.engine import Events
from monai.handlers import from_engine
from monai.transforms import LoadImage

from monai_advseg.workflows import PROPERTIES_FILE

BUNDLE = "lung_cxr_segmentation"
SMALL = {"spatial_size": [64, 64], "batch_size": 2, "epochs": 1}
NAMES = ["MCUCXR_0001_0", "MCUCXR_0002_0", "MCUCXR_0003_0", "CHNCXR_0001_0", "CHNCXR_0002_0", "CHNCXR_0003_0"]
EPSILONS = [0.5, 2, 8]


@pytest.fixture(scope="module")
def cxr(shared_dataset, tmp_path_factory):
    source = shared_dataset("cxr_lung_montgomery_shenzhen")
    data = link_subset(source, tmp_path_factory.mktemp("cxr"), NAMES)
    assert len(list((data / "images").iterdir())) == len(NAMES)
    return data


@pytest.fixture(scope="module")
def trained(cxr, tmp_path_factory):
    """One short NLCEN training run through the real CLI; later tests reuse its checkpoint."""
    out = tmp_path_factory.mktemp("trained")
    result = bundle_cli(
        *bundle_run_args(
            BUNDLE,
            dataset_dir=cxr,
            ckpt_dir=out / "models",
            output_dir=out / "eval",
            spatial_size="[64, 64]",
            batch_size=2,
            epochs=1,
        )
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "train_loss" in result.stdout + result.stderr  # the epoch loss that drives the plateau schedule is logged
    return out


def test_properties_of_train_and_infer_workflows(cxr):
    assert workflow(BUNDLE, ["train.json"], "train", dataset_dir=str(cxr)).check_properties() == []
    assert workflow(BUNDLE, ["inference.json"], "infer", dataset_dir=str(cxr)).check_properties() == []
    # what `python -m monai_advseg robustness` reads of a bundle (the any-bundle workflow's MONAI properties file)
    robust = workflow(BUNDLE, ["train.json"], "infer", properties_path=str(PROPERTIES_FILE), dataset_dir=str(cxr))
    assert robust.check_properties() == []


def test_training_recipe_is_the_papers(cxr):
    flow = workflow(BUNDLE, ["train.json"], dataset_dir=str(cxr))
    parse = flow.parser.get_parsed_content
    assert type(parse("network_def")).__name__ == "NLCEN"
    assert parse("spatial_size") == [256, 256]  # inputs resized to 256 x 256
    assert parse("network_choices#nlcen#backbone") == "resnet18"  # ResNet-18 for the small data sets
    backbone = parse("network_def").backbone  # resnet18: basic blocks, [2, 2, 2, 2] per stage
    assert [len(layer) for layer in (backbone.layer1, backbone.layer2, backbone.layer3, backbone.layer4)] == [2] * 4
    assert type(backbone.layer1[0]).__name__ == "ResNetBlock"
    optimizer = parse("optimizer")
    assert optimizer.defaults["lr"] == 1e-3 and optimizer.defaults["weight_decay"] == 1e-4
    scheduler = parse("lr_scheduler")
    assert scheduler.factor == 0.9 and scheduler.min_lrs == [1e-4]
    assert parse("train#dataloader").batch_size == 8
    assert parse("train#trainer").augmentations == ()  # augmentation "none" by default
    # deep supervision: 1/4 sum of the four coarse losses + 0.25 * refined loss
    loss = parse("loss")
    label = torch.randint(0, 2, (2, 1, 8, 8)).float()
    outputs = [torch.randn(2, 2, 8, 8) for _ in range(5)]
    single = parse("loss#loss")
    expected = 0.25 * sum(single(o, label) for o in outputs)
    assert torch.allclose(loss(outputs, label), expected)


def _train_recording_iterations(**overrides):
    """Run train.json; per iteration, record the batch, the network's weights before its step and the logged loss."""
    flow = workflow(BUNDLE, ["train.json"], **overrides)
    trainer = flow.parser.get_parsed_content("train#trainer")
    iterations = []

    @trainer.on(Events.ITERATION_STARTED)
    def _before_step(engine):
        iterations.append({"batch": engine.state.batch, "weights": copy.deepcopy(engine.network.state_dict())})

    @trainer.on(Events.ITERATION_COMPLETED)
    def _after_step(engine):
        iterations[-1]["loss"] = float(from_engine(["loss"], first=True)(engine.state.output))

    flow.run()
    flow.finalize()
    expected = math.ceil(len(flow.parser.get_parsed_content("train#items")) / SMALL["batch_size"]) * SMALL["epochs"]
    assert len(iterations) == expected
    return flow, trainer, iterations


def test_plateau_schedule_steps_on_the_epoch_mean_training_loss(cxr, tmp_path):
    flow, trainer, iterations = _train_recording_iterations(dataset_dir=str(cxr), ckpt_dir=str(tmp_path), **SMALL)
    epoch_loss = trainer.state.metrics["train_epoch_loss"]
    assert len(iterations) > 1  # a mean over several iterations, not just the last one
    assert epoch_loss == pytest.approx(np.mean([it["loss"] for it in iterations]), rel=1e-6)
    # ReduceLROnPlateau saw the epoch's mean loss
    assert flow.parser.get_parsed_content("lr_scheduler").best == pytest.approx(epoch_loss, rel=1e-6)


@pytest.mark.parametrize("auxiliary_bn", ["false", "true"])
def test_online_adversarial_augmentation_trains_the_deep_supervision_network(cxr, tmp_path, auxiliary_bn):
    # The last iteration's FGSM-vs-inverse loss order is a property of this short run's weights, which depend on the
    # thread count's rounding (with one thread it flipped, 0.734 vs 0.741): pinned, so that it is the same run on
    # every machine.
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        flow = run_workflow(
            BUNDLE,
            ["train.json"],
            dataset_dir=str(cxr),
            ckpt_dir=str(tmp_path),
            augmentation="both",
            auxiliary_bn=auxiliary_bn,
            **SMALL,
        )
    finally:
        torch.set_num_threads(threads)
    trainer = flow.parser.get_parsed_content("train#trainer")
    # with --auxiliary_bn true the copies trained the twins; model.pt is the plain network either way
    twins = [m.auxiliary_bn for m in trainer.network.modules() if hasattr(m, "auxiliary_bn")]
    assert bool(twins) == (auxiliary_bn == "true") and all(int(t.num_batches_tracked) > 0 for t in twins)
    state = torch.load(tmp_path / "model.pt", map_location="cpu", weights_only=True)
    flow.parser.get_parsed_content("network_def").load_state_dict(state)  # strict
    output = trainer.state.output[0]
    for name in ("loss_clean", "loss_fgsm", "loss_inverse_fgsm"):
        assert np.isfinite(float(output[name])), name
    assert output["loss_fgsm"] > output["loss_inverse_fgsm"]  # FGSM ascends the loss, inverse FGSM descends it


def test_unet_trains_through_train_json_and_its_checkpoint_loads_for_inference(cxr, tmp_path):
    # a plain-tensor network through the DeepSupervisionLoss wiring of train.json (one output: the loss is DiceCE)
    _, trainer, iterations = _train_recording_iterations(
        dataset_dir=str(cxr),
        ckpt_dir=str(tmp_path / "models"),
        output_dir=str(tmp_path / "eval"),
        network="unet",
        **SMALL,
    )
    assert type(trainer.network).__name__ == "UNet"
    # each logged loss is the cross-entropy (train.json: DiceCE with lambda_dice 0) of the network's single output
    # with the weights it had before that step; and training lowered the loss on the first batch
    replay = copy.deepcopy(trainer.network).train()
    for it in iterations:
        replay.load_state_dict(it["weights"])
        image, label = it["batch"]["image"].as_tensor(), it["batch"]["label"].as_tensor()
        with torch.no_grad():
            logits = replay(image)
        expected = torch.nn.functional.cross_entropy(logits, label[:, 0].long())
        assert it["loss"] == pytest.approx(float(expected), rel=1e-4)
    first = iterations[0]["batch"]
    replay.load_state_dict(trainer.network.state_dict())
    with torch.no_grad():
        final = replay(first["image"].as_tensor())
    after = float(torch.nn.functional.cross_entropy(final, first["label"].as_tensor()[:, 0].long()))
    assert after < 0.95 * iterations[0]["loss"]  # 0.69 after vs 0.95 before on the run of 2026-11-26
    assert trainer.state.metrics["train_epoch_loss"] == pytest.approx(np.mean([it["loss"] for it in iterations]))
    state = torch.load(tmp_path / "models" / "model.pt", map_location="cpu", weights_only=True)
    network = workflow(BUNDLE, ["inference.json"], "infer", datalist=[], network="unet").parser.get_parsed_content(
        "network_def"
    )
    assert type(network).__name__ == "UNet"
    network.load_state_dict(state)  # strict
    network.eval()
    with torch.no_grad():
        assert network(torch.rand(1, 1, 64, 64)).shape == (1, 2, 64, 64)


def test_training_saves_a_checkpoint_that_loads_into_the_network(trained):
    state = torch.load(trained / "models" / "model.pt", map_location="cpu", weights_only=True)
    network = network_def(BUNDLE)
    network.load_state_dict(state)  # strict: every key present, every shape right
    network.eval()
    with torch.no_grad():
        assert network(torch.rand(1, 1, 64, 64)).shape == (1, 2, 64, 64)


def test_evaluate_reports_dice_and_jaccard(cxr, trained, tmp_path):
    run_workflow(
        BUNDLE,
        ["train.json", "evaluate.json"],
        dataset_dir=str(cxr),
        ckpt_dir=str(trained / "models"),
        output_dir=str(tmp_path),
        **SMALL,
    )
    assert_dice_and_jaccard_report(tmp_path / "metrics.csv")


def test_inference_writes_png_masks_in_the_source_geometry(cxr, trained, tmp_path):
    run_workflow(
        BUNDLE,
        ["inference.json"],
        "infer",
        dataset_dir=str(cxr),
        ckpt_dir=str(trained / "models"),
        output_dir=str(tmp_path),
        spatial_size=[64, 64],
    )
    for name in NAMES[:2]:
        source = LoadImage(image_only=True)(str(cxr / "images" / f"{name}.png"))
        prediction = LoadImage(image_only=True)(str(tmp_path / f"{name}_seg.png"))
        assert tuple(prediction.shape[:2]) == tuple(source.shape[:2]) == (512, 512)
        assert set(np.unique(np.asarray(prediction))) <= {0, 255}


def test_robust_evaluate_writes_reports_with_a_clean_row(cxr, trained, tmp_path):
    overrides = dict(dataset_dir=str(cxr), ckpt_dir=str(trained / "models"), output_dir=str(tmp_path), **SMALL)
    run_workflow(BUNDLE, ["train.json", "robust_evaluate.json"], epsilons=EPSILONS, **overrides)
    for name in ("robustness.csv", "robustness.json", "robustness.png"):
        assert (tmp_path / name).stat().st_size > 0
    report = json.loads((tmp_path / "robustness.json").read_text())
    rows = report["metrics"]
    assert [row["setting"] for row in rows] == ["clean"] + ["attack"] * len(EPSILONS)
    assert [row["eps_levels"] for row in rows] == [0.0, *EPSILONS]
    assert [row["steps"] for row in rows] == [0, 1, 3, 10]  # min(eps + 4, ceil(1.25 eps))
    assert report["config"]["bundle"] == BUNDLE and report["config"]["network"] == "nlcen"
    assert report["attack"]["name"] == "ifgsm_targeted"
    with (tmp_path / "robustness.csv").open() as f:
        assert next(csv.DictReader(f))["setting"] == "clean"
    # the reports are never replaced silently
    stamp = (tmp_path / "robustness.json").stat().st_mtime_ns
    with pytest.raises(Exception) as error:  # noqa: B017 - MONAI wraps the FileExistsError; the chain is checked
        run_workflow(BUNDLE, ["train.json", "robust_evaluate.json"], epsilons=EPSILONS, **overrides)
    assert any(isinstance(e, FileExistsError) for e in _chain(error.value))
    assert (tmp_path / "robustness.json").stat().st_mtime_ns == stamp


def test_verify_metadata_and_net_in_out(tmp_path, shared_schema):
    schema = tmp_path / "meta_schema_20240725.json"
    shutil.copy(shared_schema(schema.name), schema)
    root = BUNDLES / BUNDLE
    result = bundle_cli(
        "verify_metadata", "--meta_file", str(root / "configs" / "metadata.json"), "--filepath", str(schema)
    )
    assert result.returncode == 0 and "metadata is verified with no error" in result.stdout + result.stderr
    result = bundle_cli(
        "verify_net_in_out",
        "--net_id",
        "network_def",
        "--meta_file",
        "configs/metadata.json",
        "--config_file",
        "configs/inference.json",
        cwd=root,
    )
    assert result.returncode == 0 and "verified with no error" in result.stdout + result.stderr, result.stderr[-2000:]


@pytest.mark.parametrize("network, expected", [("unet", "UNet"), ("nlce_unet", "NLCEUNet"), ("nlcen", "NLCEN")])
def test_network_override(network, expected):
    # no inputs: initialize checks the outputs of the datalist's inputs, and an absent dataset_dir is an error there
    flow = workflow(BUNDLE, ["inference.json"], "infer", datalist=[], network=network)
    net = flow.parser.get_parsed_content("network_def")
    assert type(net).__name__ == expected
    net.eval()
    with torch.no_grad():
        assert net(torch.rand(2, 1, 64, 64)).shape == (2, 2, 64, 64)
    net.train()
    out = net(torch.rand(2, 1, 64, 64))
    heads = out if isinstance(out, list) else [out]
    assert len(heads) == (5 if network == "nlcen" else 1)
    assert all(h.shape == (2, 2, 64, 64) for h in heads)


def _chain(error: BaseException):
    while error is not None:
        yield error
        error = error.__cause__ or error.__context__


def test_datalist_json_replaces_the_folder_pairing(cxr, tmp_path):
    items = [{"image": str(cxr / "images" / f"{n}.png"), "label": str(cxr / "masks" / f"{n}.png")} for n in NAMES]
    datalist = tmp_path / "datalist.json"
    datalist.write_text(json.dumps({"training": items[:4], "validation": items[4:]}))
    flow = workflow(BUNDLE, ["train.json"], dataset_dir="/nonexistent", datalist=str(datalist), ckpt_dir=str(tmp_path))
    assert flow.parser.get_parsed_content("val_items") == items[4:]
    assert sorted(flow.parser.get_parsed_content("train_items"), key=str) == sorted(items[:4], key=str)
    datalist.write_text(
        json.dumps({"training": [*items, {"image": str(tmp_path / "gone.png"), "label": items[0]["label"]}]})
    )
    with pytest.raises(Exception) as error:  # noqa: B017 - MONAI wraps the FileNotFoundError; the chain is checked
        workflow(BUNDLE, ["train.json"], datalist=str(datalist), ckpt_dir=str(tmp_path))  # initialize checks inputs
    assert f"{datalist} [training]: 1 path(s) do not exist: image={tmp_path / 'gone.png'}" in "".join(
        str(e) for e in _chain(error.value)
    )


def test_robust_evaluate_by_name_worst_case_writes_the_report_card_with_diagnostics(cxr, trained, tmp_path):
    overrides = dict(dataset_dir=str(cxr), ckpt_dir=str(trained / "models"), output_dir=str(tmp_path), **SMALL)
    run_workflow(BUNDLE, ["train.json", "robust_evaluate.json"], epsilons=[8], attack="worst_case", **overrides)
    report = json.loads((tmp_path / "robustness.json").read_text())
    assert report["attack"]["name"] == "worst_case" and "wins_apgd_js" in report["metrics"][1]
    assert report["diagnostics"]["transfer"]["passed"] is None  # no surrogate configured: skipped, with the reason
    assert {report["diagnostics"][name]["passed"] for name in ("monotone", "unbounded", "noise")} <= {True, False}
    card = (tmp_path / "robustness.md").read_text()
    assert "## Gradient-masking diagnostics" in card and (tmp_path / "robustness_gallery.png").stat().st_size > 0
