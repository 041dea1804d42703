"""The any-bundle robustness workflow on the MONAI zoo's spleen bundle (a bundle we did not write), unmodified.

The zoo bundle is copied into a temporary folder (never edited in place) and gets random weights; the data are
TotalSegmentator CT crops written as its ``imagesTr/labelsTr``. Two subprocess runs (the sweep and a refused rerun);
every other bad input runs in-process through the same ``main``.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO_ROOT, SHARED_DATA, _skip_or_fail
from monai.bundle import ConfigWorkflow
from monai.networks.nets import UNet

from monai_advseg.handlers import CERTIFY_FILES, REPORT_FILES, load_certification_report
from monai_advseg.robustness import main
from monai_advseg.workflows import PROPERTIES_FILE

ZOO = Path(os.environ.get("MONAI_ADVSEG_ZOO", SHARED_DATA.parent / "zoo")) / "spleen_ct_segmentation"
SPLEEN_UNET = dict(spatial_dims=3, in_channels=1, out_channels=2, channels=(16, 32, 64, 128, 256), strides=(2, 2, 2, 2))


def _crops_module():
    spec = importlib.util.spec_from_file_location("spleen_crops", REPO_ROOT / "docs/examples/totalseg_spleen_crops.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def spleen(tmp_path_factory, shared_dataset):
    """``(bundle copy with random weights, dataset folder)``; small crops: the bundle's 96^3 window pads them."""
    if not ZOO.is_dir():
        _skip_or_fail(f"zoo bundle not found at {ZOO} (set MONAI_ADVSEG_ZOO to its parent folder)")
    root = tmp_path_factory.mktemp("zoo")
    bundle = root / "spleen_ct_segmentation"
    shutil.copytree(ZOO, bundle)
    for path in [bundle, *bundle.rglob("*")]:  # the shared copy is read-only; the temporary one must be writable
        path.chmod(0o755 if path.is_dir() else 0o644)
    (bundle / "models").mkdir()
    torch.manual_seed(0)
    network = UNet(**SPLEEN_UNET, num_res_units=2, norm="batch")
    torch.save({"model": network.state_dict()}, bundle / "models" / "model.pt")
    data = (
        _crops_module()
        .write_spleen_crops(shared_dataset("ct_totalseg_example"), root / "data", count=10, size=(24, 24, 16))[0]
        .parents[1]
    )
    return bundle, data


def _errors(capsys) -> list[str]:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return [line for line in err.splitlines() if line.startswith("error: ")]


def _run_main(capsys, bundle, data, out, *extra) -> tuple[int, list[str]]:
    argv = ["--bundle_root", str(bundle), "--dataset_dir", str(data), "--output_dir", str(out), "--device", "cpu"]
    status = main([*argv, "--max_cases", "1", "--progress", "false", *extra])
    return status, _errors(capsys)


@pytest.mark.slow
@pytest.mark.real_data
def test_spleen_zoo_bundle_sweep_in_hu_from_the_command_line(spleen, tmp_path):
    bundle, data = spleen
    out = tmp_path / "report"
    command = [sys.executable, "-m", "monai_advseg", "robustness", "--bundle_root", str(bundle)]
    command += ["--dataset_dir", str(data), "--output_dir", str(out), "--epsilons", "[5, 10]"]
    command += ["--epsilon_unit", "hu", "--alpha", "2.5", "--device", "cpu", "--max_cases", "1", "--progress", "false"]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    # 10 HU = 10 * 255 / 221 levels = 10 / 221 input units of the bundle's [0, 1] input
    assert "| attack | 11.5385 | 0.045249 | 10 |" in result.stdout
    assert sorted(p.name for p in out.iterdir()) == sorted(REPORT_FILES)  # the report card too, nothing else
    report = json.loads((out / "robustness.json").read_text())
    units = report["config"]["epsilon_units"]
    assert units["given_in"] == "hu" and units["hu"] == pytest.approx([5, 10])
    assert units["input_units"] == pytest.approx([5 / 221, 10 / 221])
    assert units["levels"] == pytest.approx([5 * 255 / 221, 10 * 255 / 221])
    assert units["alpha"]["input_units"] == pytest.approx(2.5 / 221)
    assert units["clip_range"] == [0.0, 1.0] and units["clipped_by_preprocessing"] is True
    assert "ScaleIntensityRanged(a_min=-57, a_max=164, b_min=0, b_max=1, clip=True)" in units["intensity_map"]
    assert report["attack"]["alpha"] == pytest.approx(2.5 / 221)
    assert [row["eps"] for row in report["metrics"]] == pytest.approx([0, 5 / 221, 10 / 221])
    assert report["epsilons"]["input_units"] == pytest.approx([5 / 221, 10 / 221])  # the existing keys are kept
    assert report["config"]["prediction"]["activation"] == "softmax"  # read from the bundle's postprocessing
    assert report["config"]["bundle"] == "Spleen CT segmentation" and report["n_cases"] == 1
    assert report["config"]["network"] == "UNet" and report["config"]["inferer"] == "SlidingWindowInferer"
    header = next(csv.reader((out / "robustness.csv").open()))
    assert header[:5] == ["setting", "eps_levels", "eps", "steps", "mean_dice"]
    for row in report["metrics"]:
        assert 0 <= row["mean_dice"] <= 1

    rerun = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    assert rerun.returncode == 1 and "Traceback" not in rerun.stderr
    errors = [line for line in rerun.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and errors[0].startswith(f"error: {out}: ") and "--overwrite true" in errors[0]


def test_properties_file_fits_the_zoo_bundle(spleen):
    bundle, data = spleen
    configs = [str(bundle / "configs" / name) for name in ("train.json", "evaluate.json")]
    flow = ConfigWorkflow(
        config_file=configs,
        workflow_type="infer",
        properties_path=str(PROPERTIES_FILE),
        bundle_root=str(bundle),
        dataset_dir=str(data),
        **{"validate#dataset#cache_rate": 0, "train#dataset#cache_rate": 0},
    )
    flow.initialize()
    assert flow.check_properties() == []
    assert {"validate::dataset", "validate::inferer", "network_def"} <= {
        p["id"].replace("#", "::") for p in flow.properties.values()
    }


def _edited_bundle(spleen, tmp_path, edit) -> Path:
    bundle = tmp_path / "bundle"
    shutil.copytree(spleen[0], bundle)
    train = bundle / "configs" / "train.json"
    config = json.loads(train.read_text())
    text = edit(config)
    train.write_text(text if isinstance(text, str) else json.dumps(config, indent=1))
    return bundle


def test_bundle_without_configs_folder(spleen, tmp_path, capsys):
    folder = tmp_path / "not_a_bundle"
    folder.mkdir()
    status, errors = _run_main(capsys, folder, spleen[1], tmp_path / "out")
    assert status == 1 and errors == [f"error: {folder.resolve()}: not a MONAI bundle: it has no configs/ folder"]
    assert not (tmp_path / "out").exists()


def test_config_that_does_not_parse_names_file_and_line(spleen, tmp_path, capsys):
    bundle = _edited_bundle(spleen, tmp_path, lambda c: json.dumps(c, indent=1).replace('"epochs"', '"epochs" 800,', 1))
    status, errors = _run_main(capsys, bundle, spleen[1], tmp_path / "out")
    train = bundle.resolve() / "configs" / "train.json"
    line = next(i for i, text in enumerate(train.read_text().splitlines(), 1) if '"epochs" 800' in text)
    assert status == 1 and len(errors) == 1
    assert errors[0].startswith(f"error: {train}: line {line} column ") and "not valid JSON" in errors[0]


def test_each_missing_property_id_is_named(spleen, tmp_path, capsys):
    def drop(config):
        del config["validate"]["inferer"], config["device"], config["network_def"]
        config["network"] = "$None"

    bundle = _edited_bundle(spleen, tmp_path, drop)
    status, errors = _run_main(capsys, bundle, spleen[1], tmp_path / "out")
    assert status == 1 and len(errors) == 2
    assert "missing property id 'device'" in errors[0] and "missing property id 'validate#inferer'" in errors[1]
    assert str(bundle.resolve() / "configs" / "train.json") in errors[0]


def test_network_written_for_an_older_monai_is_named(spleen, tmp_path, capsys):
    # MONAI < 0.9 called spatial_dims "dimensions"; the zoo bundle's metadata says MONAI 1.4.0
    def old(config):
        config["network_def"]["dimensions"] = config["network_def"].pop("spatial_dims")

    bundle = _edited_bundle(spleen, tmp_path, old)
    status, errors = _run_main(capsys, bundle, spleen[1], tmp_path / "out")
    assert status == 1 and len(errors) == 1
    assert errors[0].startswith("error: network_def: cannot build UNet: TypeError: ")
    assert "dimensions" in errors[0] and "written for MONAI 1.4.0" in errors[0]


def test_checkpoint_that_does_not_fit_names_file_and_first_key(spleen, tmp_path, capsys):
    wrong = tmp_path / "small.pt"
    # the bundle's UNet with 3 output channels instead of 2: same keys, the last layers' shapes differ
    torch.save(UNet(**{**SPLEEN_UNET, "out_channels": 3}, num_res_units=2, norm="batch").state_dict(), wrong)
    status, errors = _run_main(capsys, spleen[0], spleen[1], tmp_path / "out", "--ckpt", str(wrong))
    assert status == 1 and len(errors) == 1
    assert errors[0].startswith(f"error: {wrong}: does not match the network UNet: ")
    assert "mismatched keys: model.2.0.adn.N.bias: checkpoint (3,) vs network (2,)" in errors[0]  # the first one
    assert not (tmp_path / "out").exists()


def test_missing_checkpoint(spleen, tmp_path, capsys):
    status, errors = _run_main(capsys, spleen[0], spleen[1], tmp_path / "out", "--ckpt", str(tmp_path / "no.pt"))
    assert status == 1 and errors == [
        f"error: {tmp_path / 'no.pt'}: checkpoint not found; train the bundle first, or pass --ckpt PATH"
    ]


def test_items_without_labels(spleen, tmp_path, capsys):
    items = "$[{'image': i} for i in @images[-9:]]"
    status, errors = _run_main(capsys, *spleen, tmp_path / "out", "--validate#dataset#data", items)
    assert status == 1 and len(errors) == 9
    assert errors[0].endswith("spleen_01.nii.gz: validate#dataset#data[0] has no 'label'; a sweep needs labels")


def test_hu_with_a_per_image_normalisation_suggests_input_units(spleen, tmp_path, capsys):
    normalise = "{'_target_': 'NormalizeIntensityd', 'keys': 'image'}"
    extra = ["--epsilon_unit", "hu", "--epsilons", "[10]", "--train#deterministic_transforms#4", normalise]
    status, errors = _run_main(capsys, *spleen, tmp_path / "out", *extra)
    assert status == 1 and len(errors) == 1
    assert errors[0].startswith("error: validate#preprocessing: NormalizeIntensityd(subtrahend=None, divisor=None)")
    assert "--epsilon_unit input" in errors[0]


@pytest.mark.parametrize(
    "extra, expected",
    [
        (
            ["--epsilon_unit", "kelvin"],
            "error: --epsilon_unit: 'kelvin': unknown unit; choose one of levels, hu, input",
        ),
        (["--attack", "fgsmm"], "error: --attack: unknown attack 'fgsmm': "),
        (["--epsilons", "[1, 1]"], "error: --epsilons: [1.0, 1.0]: give at least one strength, none twice"),
        (["--epsilons", "ten"], "error: --epsilons: 'ten': not a Python / JSON literal"),
        (["--bogus"], "error: --bogus: unknown argument"),
        (["--attack_loss", "dice"], "error: --attack_loss: 'dice': unknown; choose one of default, bundle"),
        (
            ["--attack_loss", "bundle", "--attack", "worst_case"],
            "error: --attack_loss bundle: attack 'worst_case' has its own loss(es)",
        ),
    ],
)
def test_bad_arguments(spleen, tmp_path, capsys, extra, expected):
    status, errors = _run_main(capsys, *spleen, tmp_path / "out", *extra)
    assert status == 1 and len(errors) == 1 and errors[0].startswith(expected)
    assert not (tmp_path / "out").exists()


def test_without_epsilons_the_paper_sweep_runs_in_levels_and_is_reported_in_hu(spleen, tmp_path, capsys):
    from monai_advseg.attacks import PAPER_EPSILON_LEVELS

    out = tmp_path / "out"
    status, errors = _run_main(capsys, *spleen, out, "--epsilon_unit", "hu", "--attack", "fgsm")
    assert status == 0 and errors == []
    config = json.loads((out / "robustness.json").read_text())["config"]
    units = config["epsilon_units"]
    assert units["given_in"] == "hu" and config["epsilons_given"] is None
    assert units["levels"] == pytest.approx(PAPER_EPSILON_LEVELS)  # not taken as HU and converted
    assert units["hu"] == pytest.approx([e * 221 / 255 for e in PAPER_EPSILON_LEVELS])


def test_overlay_and_properties_are_package_data_and_documented():
    import configparser

    from monai_advseg.workflows import OVERLAY_CONFIG

    setup = configparser.ConfigParser()
    setup.read(REPO_ROOT / "setup.cfg")
    pattern = setup["options.package_data"]["monai_advseg.workflows"].strip()
    package = REPO_ROOT / "monai_advseg" / "workflows"
    assert {OVERLAY_CONFIG, PROPERTIES_FILE} <= set(package.glob(pattern))  # what a pip install carries
    assert "python -m monai_advseg robustness" in (REPO_ROOT / "README.md").read_text()
    for readme in (REPO_ROOT / "bundles").glob("*/docs/README.md"):
        assert "(../../../docs/evaluate_any_bundle.md)" in readme.read_text(), readme


def test_yaml_configs_and_their_parse_errors(spleen, tmp_path, capsys):
    yaml = pytest.importorskip("yaml")
    bundle = tmp_path / "bundle"
    shutil.copytree(spleen[0], bundle)
    config = json.loads((bundle / "configs" / "train.json").read_text())
    (bundle / "configs" / "train.json").unlink()
    (bundle / "configs" / "evaluate.json").unlink()
    (bundle / "configs" / "train.yaml").write_text(yaml.safe_dump(config))
    # a YAML bundle is found and read: the run gets as far as the checkpoint
    status, errors = _run_main(capsys, bundle, spleen[1], tmp_path / "out", "--ckpt", str(tmp_path / "none.pt"))
    assert status == 1 and errors == [
        f"error: {tmp_path / 'none.pt'}: checkpoint not found; train the bundle first, or pass --ckpt PATH"
    ]
    broken = bundle / "configs" / "broken.yaml"
    broken.write_text("device: cpu\nnetwork_def: [unclosed\nloss: 1\n")
    status, errors = _run_main(capsys, bundle, spleen[1], tmp_path / "out", "--config_file", str(broken))
    assert status == 1 and len(errors) == 1
    assert errors[0].startswith(f"error: {broken}: line 3 column ") and "does not parse" in errors[0]


CERTIFY = ["--certify", "--epsilon_unit", "hu", "--sigma", "20", "--n0", "2", "--n", "8", "--max_batch", "2"]


@pytest.mark.slow
@pytest.mark.real_data
def test_certify_mode_in_hu_on_the_zoo_bundle(spleen, tmp_path, capsys):
    out = tmp_path / "report"
    out.mkdir()
    (out / "robustness.json").write_text("{}")  # a sweep's report in the folder does not block a certification
    status = main(
        ["--bundle_root", str(spleen[0]), "--dataset_dir", str(spleen[1]), "--output_dir", str(out), "--device", "cpu"]
        + ["--max_cases", "1", "--progress", "false", *CERTIFY, "--radii", "[0, 5]"]
    )
    printed = capsys.readouterr()
    assert status == 0, printed.err[-3000:]
    assert sorted(p.name for p in out.iterdir()) == sorted([*CERTIFY_FILES, "robustness.json"])
    report = load_certification_report(out / "certify.json")
    # 20 HU of the bundle's ScaleIntensityRanged(-57 .. 164 -> 0 .. 1) are 20 / 221 input units, an L2 norm alike
    assert report["certification"]["sigma"] == pytest.approx(20 / 221)
    assert report["radii"] == pytest.approx([0, 5 / 221])
    units = report["config"]["certify_units"]
    assert units["given_in"] == "hu" and units["sigma"]["hu"] == pytest.approx(20)
    assert units["sigma"]["levels"] == pytest.approx(20 * 255 / 221) and units["radii"]["hu"] == pytest.approx([0, 5])
    assert report["config"]["bundle"] == "Spleen CT segmentation" and report["config"]["sigma_given"] == 20
    assert report["config"]["inferer"] == "SlidingWindowInferer" and report["n_cases"] == 1
    assert report["certification"]["n0"] == 2 and report["certification"]["n"] == 8
    # 8 of 8 votes bound a voxel's probability by (alpha / voxels)^(1/8) < 1/2 here: nothing can be certified
    assert all(row["certified_fraction"] == 0 and row["certified_dice"] == 0 for row in report["metrics"])
    assert 0 <= report["base"]["dice"] <= 1
    assert "| 0.022624 | 5 | 0.0000 |" in printed.out


@pytest.mark.parametrize(
    "extra, expected",
    [
        (["--certify"], "error: --sigma: required with --certify"),
        (["--certify", "--sigma", "0"], "error: --sigma: 0.0: expected a finite number > 0"),
        (["--certify", "--sigma", "-1"], "error: --sigma: -1.0: expected a finite number > 0"),
        (["--certify", "--sigma", "0.1", "--n", "0"], "error: --n: 0: expected an integer >= 1"),
        (["--certify", "--sigma", "0.1", "--n0", "0"], "error: --n0: 0: expected an integer >= 1"),
        (["--certify", "--sigma", "0.1", "--certify_alpha", "1.5"], "error: --certify_alpha: 1.5: expected a number"),
        (["--certify", "--sigma", "0.1", "--radii", "[0, -1]"], "error: --radii: [0.0, -1.0]: expected radii"),
        (["--certify", "--sigma", "0.1", "--attack_radii", "[0]"], "error: --attack_radii: [0.0]: expected radii > 0"),
        (["--certify", "--sigma", "0.1", "--epsilons", "[2]"], "error: --epsilons: not used with --certify"),
        (["--sigma", "0.1", "--radii", "[0.1]"], "error: --sigma, --radii: only with --certify"),
        (["--certify", "--sigma", "0.1", "--attack_loss", "bundle"], "error: --attack_loss: only for the sweep"),
    ],
)
def test_bad_certify_arguments(spleen, tmp_path, capsys, extra, expected):
    status, errors = _run_main(capsys, *spleen, tmp_path / "out", *extra)
    assert status == 1 and len(errors) == 1 and errors[0].startswith(expected), errors
    assert not (tmp_path / "out").exists()


def test_certify_mode_refuses_an_existing_certification_report(spleen, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "certify.csv").write_text("earlier")
    status, errors = _run_main(capsys, *spleen, out, *CERTIFY)
    assert status == 1 and len(errors) == 1
    assert errors[0].startswith(f"error: {out}: ") and "certify.csv" in errors[0] and "--overwrite true" in errors[0]
    assert (out / "certify.csv").read_text() == "earlier"


def _multi_label(config: dict) -> None:
    """The zoo bundle turned multi-label: sigmoid + threshold postprocessing, the label as two binary channels."""
    config["validate"]["postprocessing"] = {
        "_target_": "Compose",
        "transforms": [
            {"_target_": "Activationsd", "keys": "pred", "sigmoid": True},
            {"_target_": "AsDiscreted", "keys": "pred", "threshold": 0.5},
        ],
    }
    transforms = [
        *config["train"]["deterministic_transforms"],
        {"_target_": "AsDiscreted", "keys": "label", "to_onehot": 2},
    ]
    config["validate"]["preprocessing"] = {"_target_": "Compose", "transforms": transforms}


def _multi_label_bundle(spleen, folder: Path, edit=None) -> Path:
    def edits(config: dict) -> None:
        _multi_label(config)
        if edit is not None:
            edit(config)

    bundle = _edited_bundle(spleen, folder, edits)
    (bundle / "configs" / "evaluate.json").unlink()  # it restates the softmax postprocessing
    return bundle


def test_a_multi_label_sigmoid_bundle_is_scored_channel_by_channel(spleen, tmp_path, capsys):
    bundle = _multi_label_bundle(spleen, tmp_path)
    out = tmp_path / "out"
    status, errors = _run_main(capsys, bundle, spleen[1], out, "--epsilons", "[2]", "--attack", "fgsm")
    assert status == 0 and errors == []
    report = json.loads((out / "robustness.json").read_text())
    assert report["config"]["prediction"]["activation"] == "sigmoid"
    assert report["config"]["multi_label"] is True and report["config"]["scorer"] == "MultiLabelScorer"
    # the threshold adapter runs inside the bundle's sliding window: the window-by-window input gradient applies
    assert report["config"]["inferer"] == "SlidingWindowInferer" and report["config"]["streamed_gradient"] is True
    assert "binary cross-entropy of each channel" in report["config"]["prediction"]["attack_loss"]
    for row in report["metrics"]:
        assert 0 <= row["mean_dice"] <= 1
    status, errors = _run_main(
        capsys, bundle, spleen[1], tmp_path / "refused", "--epsilons", "[2]", "--attack", "segpgd"
    )
    assert status == 1 and errors[0].startswith("error: multi_label: attack 'segpgd' follows a softmax loss")
    assert not (tmp_path / "refused").exists()


def test_the_bundles_own_loss_as_the_attack_loss(spleen, tmp_path, capsys):
    """``--attack_loss bundle``: the zoo bundle's DiceCELoss drives the attack, recorded in the report's config."""
    out = tmp_path / "out"
    status, errors = _run_main(capsys, *spleen, out, "--epsilons", "[4]", "--attack", "fgsm", "--attack_loss", "bundle")
    assert status == 0 and errors == []
    report = json.loads((out / "robustness.json").read_text())
    config = report["config"]
    expected = "the bundle's loss: monai.losses.dice.DiceCELoss, per sample (monai_advseg.attacks.per_sample_loss)"
    assert config["attack_loss"] == expected and config["prediction"]["attack_loss"] == expected
    # a different loss than the default cross-entropy: a different attack (same bundle, same strength)
    default_out = tmp_path / "default"
    status, errors = _run_main(capsys, *spleen, default_out, "--epsilons", "[4]", "--attack", "fgsm")
    assert status == 0 and "attack_loss" not in json.loads((default_out / "robustness.json").read_text())["config"]


def test_a_multi_label_bundles_own_loss_drives_the_attack_from_the_command_line(spleen, tmp_path, capsys):
    """``--attack_loss bundle`` on the multi-label bundle: its sigmoid DiceCELoss, per channel, per sample."""

    def sigmoid_loss(config):
        config["loss"] = {"_target_": "DiceCELoss", "sigmoid": True}

    bundle = _multi_label_bundle(spleen, tmp_path, sigmoid_loss)
    reports = {}
    for attack_loss in ("bundle", "default"):
        out = tmp_path / attack_loss
        extra = ["--epsilons", "[8]", "--steps", "3", "--attack_loss", attack_loss]
        status, errors = _run_main(capsys, bundle, spleen[1], out, *extra)
        assert status == 0 and errors == []
        reports[attack_loss] = json.loads((out / "robustness.json").read_text())
    config = reports["bundle"]["config"]
    assert config["multi_label"] is True and config["scorer"] == "MultiLabelScorer"
    assert config["attack_loss"].startswith("the bundle's loss: monai.losses.dice.DiceCELoss, per sample")
    assert "binary cross-entropy" in reports["default"]["config"]["prediction"]["attack_loss"]
    clean, attacked = (
        {name: [r for r in report["metrics"] if (r["eps"] > 0) == a][0] for name, report in reports.items()}
        for a in (False, True)
    )
    assert clean["bundle"]["mean_dice"] == clean["default"]["mean_dice"]  # the same clean scores
    assert attacked["bundle"]["mean_dice"] != attacked["default"]["mean_dice"]  # another loss, another attack


def test_a_bundle_loss_that_is_missing_or_not_monais_is_refused(spleen, tmp_path, capsys):
    def without_loss(config):
        del config["loss"]

    def torch_loss(config):
        config["loss"] = {"_target_": "torch.nn.CrossEntropyLoss"}

    for edit, expected in (
        (without_loss, "error: --attack_loss bundle: the bundle's configs define no `loss` id"),
        (torch_loss, "error: loss: torch.nn.modules.loss.CrossEntropyLoss is not a MONAI loss (monai.losses)"),
    ):
        folder = tmp_path / edit.__name__
        bundle = _edited_bundle(spleen, folder, edit)
        status, errors = _run_main(capsys, bundle, spleen[1], folder / "out", "--attack_loss", "bundle")
        assert status == 1 and len(errors) == 1 and errors[0].startswith(expected)
        assert not (folder / "out").exists()
