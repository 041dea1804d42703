"""Operations of the 3D abdomen bundle on the real TotalSegmentator example CTs (a NIfTI volume and a DICOM series),
with 32^3 patches and a 3-level U-Net: two-process (torchrun, gloo) training and resuming a finished run."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from bundle_helpers import BUNDLES, REPO_ROOT, workflow

BUNDLE = "abdomen_ct_segmentation"
CONFIGS = BUNDLES / BUNDLE / "configs"
TINY_NET = {"network_choices#unet#channels": [8, 16, 32], "network_choices#unet#strides": [2, 2]}
SMALL = {
    "spatial_size": [32, 32, 32],
    "val_interval": 1,
    "batch_size": 1,
    "num_samples": 1,
    "num_workers": 0,
    "sw_batch_size": 2,
    **TINY_NET,
}
# One intra-op thread per process: on a loaded 2-core machine a 3D U-Net step is many times slower with two.
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}

pytestmark = [pytest.mark.slow, pytest.mark.real_data]


@pytest.fixture(scope="module")
def data(shared_dataset, tmp_path_factory) -> Path:
    """A datalist JSON of symbolic links to both example CTs, each in training and validation, so that every one of
    two ranks gets one training and one validation volume (``DistributedSampler`` needs one item per rank)."""
    totalseg = shared_dataset("ct_totalseg_example")
    root = tmp_path_factory.mktemp("abdomen")
    (root / "imagesTr" / "series1").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    (root / "imagesTr" / "example_ct_sm.nii.gz").symlink_to(totalseg / "nifti" / "example_ct_sm.nii.gz")
    (root / "labelsTr" / "example_ct_sm.nii.gz").symlink_to(totalseg / "nifti" / "example_seg.nii.gz")
    for f in sorted((totalseg / "dicom").iterdir()):
        (root / "imagesTr" / "series1" / f.name).symlink_to(f)
    (root / "labelsTr" / "series1.nii.gz").symlink_to(totalseg / "dicom_labels" / "example_seg_dicom.nii.gz")
    nifti = {"image": "imagesTr/example_ct_sm.nii.gz", "label": "labelsTr/example_ct_sm.nii.gz"}
    dicom = {"image": "imagesTr/series1", "label": "labelsTr/series1.nii.gz"}
    datalist = {"training": [dicom, nifti], "validation": [nifti, dicom]}
    (root / "datalist.json").write_text(json.dumps(datalist, indent=4))
    return root / "datalist.json"


def _cli(settings: dict) -> list[str]:
    args = []
    for key, value in settings.items():
        args += [f"--{key}", value if isinstance(value, str) else json.dumps(value)]
    return args


def _bundle_args(datalist: Path, out: Path, *configs: str) -> list[str]:
    files = "[" + ",".join(f"'{CONFIGS / name}'" for name in configs) + "]"
    paths = {"datalist": str(datalist), "ckpt_dir": str(out / "models"), "output_dir": str(out / "eval")}
    return ["run", "--config_file", files, "--bundle_root", str(BUNDLES / BUNDLE), *_cli({**paths, **SMALL})]


def _run(command: list[str], timeout: int = 240) -> str:
    result = subprocess.run(command, cwd=REPO_ROOT, env=ENV, capture_output=True, text=True, timeout=timeout)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-4000:]
    return log


def _torchrun(*args: str) -> str:
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    return _run([*torchrun, "-m", "monai.bundle", *args])


def _epoch(checkpoint: dict) -> int:
    trainer = checkpoint["trainer"]  # ignite saves the iteration count and the epoch length
    return trainer["iteration"] // trainer["epoch_length"]


def _plain_network() -> torch.nn.Module:
    flow = workflow(BUNDLE, ["train.json"], datalist={"training": []}, **TINY_NET)
    return flow.parser.get_parsed_content("network_def")


@pytest.fixture(scope="module")
def ddp_trained(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    log = _torchrun(*_bundle_args(data, out, "train.json", "multi_gpu_train.json"), "--epochs", "1")
    return out, log


def test_torchrun_training_shards_the_volumes_and_saves_plain_checkpoints(ddp_trained):
    out, log = ddp_trained
    # 2 training volumes, batch 1 x 1 patch: one iteration per rank under DistributedSampler (two in one process)
    assert "Epoch: 1/1, Iter: 1/1 -- train_loss" in log
    assert log.count("train_loss:") == 1  # StatsHandler only on rank 0
    assert "Key metric: val_mean_dice best value" in log  # validation ran (sliding window, one volume per rank)
    for name in ("model.pt", "checkpoint.pt"):
        state = torch.load(out / "models" / name, map_location="cpu", weights_only=True)
        state = state.get("network", state)
        assert not any(key.startswith("module.") for key in state)  # saved unwrapped, not as DDP
        network = _plain_network()
        network.load_state_dict(state)  # strict load into the non-DDP network
        assert network.eval()(torch.zeros(1, 1, 32, 32, 32)).shape == (1, 3, 32, 32, 32)
    checkpoint = torch.load(out / "models" / "checkpoint.pt", weights_only=True)
    assert _epoch(checkpoint) == 1 and checkpoint["trainer"]["epoch_length"] == 1
    assert sorted(p.name for p in (out / "models").iterdir()) == ["checkpoint.pt", "model.pt"]  # no stray tmp file


def test_resume_after_a_finished_run_continues_to_the_next_epoch(data, ddp_trained, tmp_path):
    shutil.copytree(ddp_trained[0] / "models", tmp_path / "models")  # leave the fixture's files as they are
    before = torch.load(tmp_path / "models" / "checkpoint.pt", weights_only=True)
    args = _bundle_args(data, tmp_path, "train.json", "multi_gpu_train.json")
    log = _torchrun(*args, "--epochs", "2", "--resume", "true")
    assert "Restored all variables from" in log
    assert "Epoch: 2/2, Iter: 1/1 -- train_loss" in log
    assert "Epoch: 1/2" not in log  # the first epoch is not trained again
    after = torch.load(tmp_path / "models" / "checkpoint.pt", weights_only=True)
    assert _epoch(after) == 2 and after["trainer"]["iteration"] == 2
    weights = [k for k, v in before["network"].items() if v.is_floating_point()]
    assert any(not torch.equal(after["network"][k], before["network"][k]) for k in weights)  # epoch 2 trained
    assert after["optimizer"]["state"][0]["step"] == 2 * before["optimizer"]["state"][0]["step"]  # Adam continued
    _plain_network().load_state_dict(after["network"])
