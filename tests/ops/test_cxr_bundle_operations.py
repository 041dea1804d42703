"""Operations of the chest X-ray bundle (NLCEN, deep supervision, plateau schedule) on ten real Montgomery / Shenzhen
images at 64x64: two-process (torchrun, gloo) training with online FGSM + inverse-FGSM copies, and resuming it with
the learning-rate schedule restored."""

from __future__ import annotations

import shutil

import pytest
import torch
from bundle_helpers import BUNDLES, bundle_torchrun, link_subset, network_def

BUNDLE = "lung_cxr_segmentation"
CONFIGS = BUNDLES / BUNDLE / "configs"
# 10 images: 8 train + 2 validation, so each of 2 ranks gets 4 training images (two batches) and 1 validation image.
NAMES = [f"MCUCXR_{i:04d}_0" for i in range(1, 6)] + [f"CHNCXR_{i:04d}_0" for i in range(1, 6)]
SMALL_CLI = ["--spatial_size", "[64, 64]", "--batch_size", "2", "--augmentation", "both"]

pytestmark = [pytest.mark.slow, pytest.mark.real_data]


@pytest.fixture(scope="module")
def cxr(shared_dataset, tmp_path_factory):
    source = shared_dataset("cxr_lung_montgomery_shenzhen")
    data = link_subset(source, tmp_path_factory.mktemp("cxr"), NAMES)
    assert len(list((data / "images").iterdir())) == len(NAMES)
    return data


def _bundle_args(data, out) -> list[str]:
    configs = "[" + ",".join(f"'{CONFIGS / name}'" for name in ("train.json", "multi_gpu_train.json")) + "]"
    return [
        "run",
        "--config_file",
        configs,
        "--bundle_root",
        str(BUNDLES / BUNDLE),
        "--dataset_dir",
        str(data),
        "--ckpt_dir",
        str(out / "models"),
        "--output_dir",
        str(out / "eval"),
        *SMALL_CLI,
    ]


@pytest.fixture(scope="module")
def ddp_trained(cxr, tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    result = bundle_torchrun(*_bundle_args(cxr, out), "--epochs", "1")
    return out, result.stdout + result.stderr


def _plain_network() -> torch.nn.Module:
    return network_def(BUNDLE)


def test_torchrun_training_shards_the_images_and_saves_plain_checkpoints(ddp_trained):
    out, log = ddp_trained
    assert "Epoch: 1/1, Iter: 2/2 -- train_loss" in log  # 8 images / 2 ranks / batch 2
    assert log.count("Epoch: 1/1, Iter: 2/2 -- train_loss") == 1  # StatsHandler only on rank 0
    assert "Key metric: val_mean_dice best value" in log
    for name in ("model.pt", "checkpoint.pt"):
        state = torch.load(out / "models" / name, map_location="cpu", weights_only=True)
        state = state.get("network", state)
        assert not any(key.startswith("module.") for key in state)  # saved unwrapped, not as DDP
        network = _plain_network()
        network.load_state_dict(state)  # strict load into the non-DDP NLCEN
        assert network.eval()(torch.zeros(1, 1, 64, 64)).shape == (1, 2, 64, 64)
    checkpoint = torch.load(out / "models" / "checkpoint.pt", weights_only=True)
    assert checkpoint["lr_scheduler"]["last_epoch"] == 1  # the plateau schedule stepped once, on the epoch loss
    assert sorted(p.name for p in (out / "models").iterdir()) == ["checkpoint.pt", "model.pt"]


def test_resume_restores_the_plateau_schedule_and_continues(cxr, ddp_trained, tmp_path):
    shutil.copytree(ddp_trained[0] / "models", tmp_path / "models")
    before = torch.load(tmp_path / "models" / "checkpoint.pt", weights_only=True)
    result = bundle_torchrun(*_bundle_args(cxr, tmp_path), "--epochs", "2", "--resume", "true")
    log = result.stdout + result.stderr
    assert "Restored all variables from" in log
    assert "Epoch: 2/2, Iter: 2/2 -- train_loss" in log
    assert "Epoch: 1/2" not in log  # the first epoch is not trained again
    after = torch.load(tmp_path / "models" / "checkpoint.pt", weights_only=True)
    assert after["trainer"]["iteration"] == 4
    assert after["lr_scheduler"]["last_epoch"] == 2  # continued from 1, not restarted at 0
    assert after["optimizer"]["state"][0]["step"] == 2 * before["optimizer"]["state"][0]["step"]
