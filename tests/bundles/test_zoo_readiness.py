"""Model-zoo readiness of every bundle folder in ``bundles/``: metadata against the zoo schema, network input/output
against the metadata, TorchScript (``ckpt_export``) and ONNX (``onnx_export``) export through the ``monai.bundle`` CLI,
and the exported models against the eager network on a real image.

- The checkpoint is the ``state_dict`` of a freshly instantiated ``network_def`` (seed 0; no weights are shipped).
- The real input is a real image of the bundle's data set through the bundle's own inference ``preprocessing``,
  centre-cropped / padded to the ``spatial_shape`` of ``metadata.json`` (a no-op for the 2D bundles, which resize).
- Tolerances, on logits: TorchScript runs the same kernels as eager, atol 1e-4. ONNX is checked with
  ``onnx.checker`` and run with ``onnx.reference.ReferenceEvaluator`` (numpy kernels, other summation order; about
  2 s for a 2D bundle, 20 s for the 3D one at 64^3; onnxruntime is not a dependency): atol 1e-4 x max(1, max |logit|).
  Measured (torch 2.13, CPU): TorchScript identical to eager (difference 0), ONNX within 4e-7, logits up to 0.65.
- ``verify_metadata`` / ``verify_net_in_out`` are called in process (the same functions the CLI dispatches to; each
  CLI start costs about 6 s here); the two exports run as the documented ``python -m monai.bundle`` commands.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from bundle_helpers import BUNDLES, REPO_ROOT
from monai.bundle import ConfigParser, verify_metadata, verify_net_in_out
from monai.transforms import ResizeWithPadOrCrop

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxscript")

# Every folder of bundles/ is checked, so a new bundle is covered (and must add its real sample here) once it lands.
BUNDLE_NAMES = sorted(p.name for p in BUNDLES.iterdir() if p.is_dir() and not p.name.startswith((".", "_")))
# bundle -> (data set folder of ../shared/data, one real image in it)
REAL_IMAGES = {
    "abdomen_ct_segmentation": ("ct_totalseg_example", "nifti/example_ct_sm.nii.gz"),
    "lung_cxr_segmentation": ("cxr_lung_montgomery_shenzhen", "images/CHNCXR_0001_0.png"),
    "lung_lesion_ct_segmentation": ("ct_covid_medseg_infnet", "train/images/0.jpg"),
}
SCHEMA_NAME = "meta_schema_20240725.json"  # in ../shared/schemas, through the shared_schema fixture (tests/conftest.py)
# The zoo layout (../shared/docs/BUNDLES.md) every bundle ships, plus the extra configs of some bundles.
ZOO_FILES = [
    "LICENSE",
    "configs/metadata.json",
    "configs/train.json",
    "configs/evaluate.json",
    "configs/inference.json",
    "configs/multi_gpu_train.json",
    "configs/robust_evaluate.json",
    "configs/multi_gpu_robust_evaluate.json",
    "configs/logging.conf",
    "docs/README.md",
    "docs/data_license.txt",
]
EXTRA_FILES = {
    # offline two-stage augmentation (issue 3); the certified evaluation (issue 15)
    "lung_lesion_ct_segmentation": ["configs/generate_adversarial.json", "configs/certify.json"],
    "lung_cxr_segmentation": ["configs/generate_adversarial.json", "configs/certify.json"],
}
ATOL = 1e-4

pytestmark = [pytest.mark.slow, pytest.mark.real_data]


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module", params=BUNDLE_NAMES)
def bundle(request) -> str:
    return request.param


def _configs(bundle: str) -> tuple[Path, Path]:
    configs = BUNDLES / bundle / "configs"
    return configs / "metadata.json", configs / "inference.json"


def _parser(bundle: str) -> ConfigParser:
    meta, inference = _configs(bundle)
    parser = ConfigParser()
    parser.read_config(str(inference))
    parser.read_meta(str(meta))
    parser["bundle_root"] = str(BUNDLES / bundle)
    return parser


def _data_format(bundle: str) -> tuple[dict, dict]:
    network_format = json.loads(_configs(bundle)[0].read_text())["network_data_format"]
    return network_format["inputs"]["image"], network_format["outputs"]["pred"]


@pytest.fixture(scope="module")
def exported(bundle, tmp_path_factory) -> dict:
    """``ckpt_export`` and ``onnx_export`` of a fresh ``network_def`` through the CLI (run side by side)."""
    out = tmp_path_factory.mktemp(bundle)
    meta, inference = _configs(bundle)
    torch.manual_seed(0)
    torch.save(_parser(bundle).get_parsed_content("network_def").state_dict(), out / "model.pt")
    image, _ = _data_format(bundle)
    input_shape = [1, image["num_channels"], *image["spatial_shape"]]
    common = ["--ckpt_file", str(out / "model.pt"), "--meta_file", str(meta), "--config_file", str(inference)]
    commands = {
        "ts": ["ckpt_export", "network_def", "--filepath", str(out / "model.ts"), *common],
        "onnx": ["onnx_export", "network_def", "--filepath", str(out / "model.onnx"), *common]
        + ["--input_shape", json.dumps(input_shape)],
    }
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    processes = {
        name: subprocess.Popen(
            [sys.executable, "-m", "monai.bundle", *args],
            cwd=REPO_ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for name, args in commands.items()
    }
    logs = {name: process.communicate(timeout=300)[0] for name, process in processes.items()}
    for name, process in processes.items():
        assert process.returncode == 0, f"{commands[name][0]} failed:\n{logs[name][-4000:]}"
    return {"dir": out, "ts": out / "model.ts", "onnx": out / "model.onnx", "ckpt": out / "model.pt"}


@pytest.fixture(scope="module")
def real_input(bundle, shared_dataset) -> torch.Tensor:
    if bundle not in REAL_IMAGES:
        pytest.fail(f"bundle {bundle!r} has no real sample image: add one to REAL_IMAGES in {Path(__file__).name}")
    folder, name = REAL_IMAGES[bundle]
    path = shared_dataset(folder) / name
    image = _parser(bundle).get_parsed_content("preprocessing")({"image": str(path)})["image"]
    spatial = _data_format(bundle)[0]["spatial_shape"]
    image = ResizeWithPadOrCrop(spatial)(image)
    return image.as_tensor()[None].float()  # plain tensor, batch of one


@pytest.fixture(scope="module")
def eager(bundle, exported, real_input) -> tuple[torch.nn.Module, torch.Tensor]:
    network = _parser(bundle).get_parsed_content("network_def")
    network.load_state_dict(torch.load(exported["ckpt"], weights_only=True))
    network.eval()
    with torch.no_grad():
        return network, network(real_input)


def test_bundle_folder_has_the_zoo_files(bundle):
    root = BUNDLES / bundle
    missing = [name for name in ZOO_FILES + EXTRA_FILES.get(bundle, []) if not (root / name).is_file()]
    assert missing == []
    assert (root / "LICENSE").read_text().strip() and (root / "docs" / "data_license.txt").read_text().strip()
    for name in ZOO_FILES + EXTRA_FILES.get(bundle, []):
        if name.endswith(".json"):
            json.loads((root / name).read_text())  # every config is valid JSON


def _targets(node, where: str):
    """Every ``_target_`` value of a parsed JSON config, with its location."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "_target_":
                yield where, value
            else:
                yield from _targets(value, f"{where}#{key}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _targets(value, f"{where}#{index}")


def test_every_target_in_every_bundle_config_is_a_full_dotted_path():
    import pydoc

    configs = sorted(BUNDLES.glob("*/configs/*.json"))
    assert len(configs) >= len(BUNDLE_NAMES) * 4
    bad, count = [], 0
    for config in configs:
        for where, target in _targets(json.loads(config.read_text()), config.relative_to(BUNDLES).as_posix()):
            count += 1
            # a full dotted path that imports: MONAI's short-name lookup also scans monai_advseg (BUNDLES.md)
            if not isinstance(target, str) or "." not in target or target[0] in "$@%" or pydoc.locate(target) is None:
                bad.append(f"{where}: {target!r}")
    assert count > 50
    assert bad == []


@pytest.mark.parametrize("rank", ["0", "1"])
def test_multi_gpu_layers_shard_the_sweep_and_keep_bars_on_rank0(bundle, rank, monkeypatch):
    """The documented four-file torchrun sweep command resolves: the sweep's loader shards the validation data with
    a DistributedSampler, ``run`` is the sweep (not training), and progress bars are on for rank 0 only, even
    when every rank's stderr is the same terminal (torchrun's default)."""
    configs = BUNDLES / bundle / "configs"
    layers = ["train.json", "robust_evaluate.json", "multi_gpu_train.json", "multi_gpu_robust_evaluate.json"]
    parser = ConfigParser()
    parser.read_config([str(configs / name) for name in layers])
    assert parser["robust_evaluate#sampler"]["_target_"] == "monai.data.DistributedSampler"
    assert parser["robust_evaluate#sampler"]["dataset"] == "@validate#dataset"
    assert parser["robust_evaluate#dataloader#sampler"] == "@robust_evaluate#sampler"
    assert parser["run"] == ["$@robust_evaluate#evaluator.run()"]
    monkeypatch.setenv("RANK", rank)
    monkeypatch.setattr(os, "isatty", lambda fd: True)
    assert parser.get_parsed_content("progress") is (rank == "0")
    monkeypatch.setattr(os, "isatty", lambda fd: False)
    parser.parse()  # a fresh resolution: the expression is evaluated again
    assert parser.get_parsed_content("progress") is False


def test_metadata_and_network_io_verify(bundle, tmp_path, shared_schema):
    meta, inference = _configs(bundle)
    schema = tmp_path / SCHEMA_NAME  # a local copy: verify_metadata would download the schema otherwise
    shutil.copy(shared_schema(SCHEMA_NAME), schema)
    verify_metadata(meta_file=str(meta), filepath=str(schema))
    torch.manual_seed(0)
    verify_net_in_out(net_id="network_def", meta_file=str(meta), config_file=str(inference))


def test_real_input_has_the_metadata_input_format(bundle, real_input):
    image, _ = _data_format(bundle)
    assert tuple(real_input.shape) == (1, image["num_channels"], *image["spatial_shape"])
    low, high = image["value_range"]
    assert low <= float(real_input.min()) < float(real_input.max()) <= high  # a real, non-constant image


def test_torchscript_matches_eager_on_a_real_image(bundle, exported, real_input, eager):
    _, expected = eager
    _, pred = _data_format(bundle)
    assert tuple(expected.shape) == (1, pred["num_channels"], *pred["spatial_shape"])
    assert float(expected.std()) > 0
    extra = {"metadata.json": "", "inference.json": ""}
    scripted = torch.jit.load(str(exported["ts"]), map_location="cpu", _extra_files=extra)
    metadata = json.loads(_configs(bundle)[0].read_text())
    assert json.loads(extra["metadata.json"])["version"] == metadata["version"]  # the bundle metadata travels along
    assert "network_def" in json.loads(extra["inference.json"])
    with torch.no_grad():
        actual = scripted(real_input)
    torch.testing.assert_close(actual, expected, rtol=0, atol=ATOL)


def test_onnx_passes_the_checker_and_matches_eager_on_a_real_image(bundle, exported, real_input, eager):
    from onnx.reference import ReferenceEvaluator

    model = onnx.load(str(exported["onnx"]))
    onnx.checker.check_model(model)
    image, pred = _data_format(bundle)
    (graph_input,) = model.graph.input
    dims = [d.dim_value for d in graph_input.type.tensor_type.shape.dim]
    assert dims == [1, image["num_channels"], *image["spatial_shape"]]
    with warnings.catch_warnings():
        # the reference Sigmoid evaluates exp on both branches of a np.where: overflow warnings, finite results
        warnings.simplefilter("ignore", RuntimeWarning)
        (actual,) = ReferenceEvaluator(model).run(None, {graph_input.name: real_input.numpy()})
    _, expected = eager
    assert actual.shape == (1, pred["num_channels"], *pred["spatial_shape"])
    assert np.isfinite(actual).all()
    scale = max(1.0, float(expected.abs().max()))
    torch.testing.assert_close(torch.from_numpy(actual), expected, rtol=0, atol=ATOL * scale)


@pytest.mark.parametrize("name", BUNDLE_NAMES)
@pytest.mark.parametrize("config", ["train.json", "inference.json"])
def test_network_choice_builds_only_the_chosen_network(name, config):
    # "$@network_choices[@network]" used to instantiate every choice, so the chosen network's initial weights depended
    # on which other choices came before it in the dictionary. Each choice is a callable component now.
    from monai.utils import set_determinism

    path = BUNDLES / name / "configs" / config
    choices = ConfigParser.load_config_file(path)["network_choices"]
    for choice in choices:
        weights = []
        for kept in (list(choices), [choice]):  # all choices, then the chosen one alone
            parser = ConfigParser()
            parser.read_config(path)
            parser["network"] = choice
            parser["network_choices"] = {k: choices[k] for k in kept}
            set_determinism(seed=0)
            weights.append(parser.get_parsed_content("network_def").state_dict())
        set_determinism(seed=None)
        assert weights[0].keys() == weights[1].keys()
        assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0]), f"{name} {config} {choice}"
