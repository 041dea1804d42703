"""Noise training through the bundles: ``--augmentation gaussian --noise_sigma S`` in every train.json (alone and
merged with multi_gpu_train.json), one real epoch through the CLI, and a bad sigma named in the error."""

from __future__ import annotations

import math

import pytest
import torch
from bundle_helpers import BUNDLES, bundle_cli, bundle_run_args, link_subset, run_workflow
from monai.bundle import ConfigParser

ALL = ["lung_lesion_ct_segmentation", "lung_cxr_segmentation", "abdomen_ct_segmentation"]
CXR_NAMES = ["MCUCXR_0001_0", "MCUCXR_0002_0", "CHNCXR_0001_0", "CHNCXR_0002_0"]
LESION_NAMES = ["0", "1", "2", "3"]


def _parser(bundle: str, configs: list[str], **overrides) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config([str(BUNDLES / bundle / "configs" / name) for name in configs])
    parser.update(overrides)
    return parser


@pytest.mark.parametrize("configs", [["train.json"], ["train.json", "multi_gpu_train.json"]], ids=["single", "ddp"])
@pytest.mark.parametrize("bundle", ALL)
def test_every_train_config_passes_gaussian_and_its_sigma_to_the_trainer(bundle, configs):
    parser = _parser(bundle, configs, augmentation="gaussian")
    assert parser.get_parsed_content("noise_sigma") == 0.25
    assert parser["train"]["trainer"]["noise_sigma"] == "@noise_sigma"
    assert parser.get_parsed_content("train#trainer#noise_sigma") == 0.25
    assert parser.get_parsed_content("train#trainer#augmentations") == ("gaussian",)
    combined = _parser(bundle, configs, augmentation=["fgsm", "gaussian"])
    assert combined.get_parsed_content("train#trainer#augmentations") == ("fgsm", "gaussian")
    if bundle == "lung_lesion_ct_segmentation":  # its auxiliary_bn default follows the adversarial copies only
        assert parser.get_parsed_content("auxiliary_bn") is False
        assert _parser(bundle, configs, augmentation="both").get_parsed_content("auxiliary_bn") is True


@pytest.fixture(scope="module")
def slices(shared_dataset, tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("noise")
    return {
        "lung_cxr_segmentation": str(
            link_subset(shared_dataset("cxr_lung_montgomery_shenzhen"), root / "cxr", CXR_NAMES)
        ),
        "lung_lesion_ct_segmentation": str(
            link_subset(shared_dataset("ct_covid_medseg_infnet") / "train", root / "lesion", LESION_NAMES)
        ),
    }


def test_the_cli_trains_one_epoch_with_gaussian_noise_on_real_slices(slices, tmp_path):
    bundle = "lung_cxr_segmentation"
    result = bundle_cli(
        *bundle_run_args(
            bundle,
            dataset_dir=slices[bundle],
            ckpt_dir=tmp_path / "models",
            output_dir=tmp_path / "eval",
            network="unet",
            spatial_size="[64, 64]",
            batch_size=2,
            epochs=1,
            augmentation="gaussian",
            noise_sigma=0.5,
        )
    )
    assert result.returncode == 0, result.stderr[-3000:]
    state = torch.load(tmp_path / "models" / "model.pt", map_location="cpu", weights_only=True)
    network = _parser(bundle, ["train.json"], network="unet").get_parsed_content("network_def")
    network.load_state_dict(state)  # strict: the plain network


def test_the_lesion_bundle_trains_on_its_noisy_copies_through_the_main_batch_norm(slices, tmp_path):
    bundle = "lung_lesion_ct_segmentation"
    flow = run_workflow(
        bundle,
        ["train.json"],
        dataset_dir=slices[bundle],
        ckpt_dir=str(tmp_path),
        spatial_size=[32, 32],
        batch_size=2,
        epochs=1,
        augmentation="gaussian",
    )
    trainer = flow.parser.get_parsed_content("train#trainer")
    assert trainer.augmentations == ("gaussian",) and trainer.noise_sigma == 0.25 and not trainer.auxiliary_bn
    output = trainer.state.output[0]
    assert math.isfinite(float(output["loss_gaussian"]))
    assert float(output["loss"]) == pytest.approx((float(output["loss_clean"]) + float(output["loss_gaussian"])) / 2)


def test_a_bad_noise_sigma_stops_the_cli_naming_the_key(slices, tmp_path):
    bundle = "lung_cxr_segmentation"
    result = bundle_cli(
        *bundle_run_args(
            bundle,
            dataset_dir=slices[bundle],
            ckpt_dir=tmp_path / "models",
            output_dir=tmp_path / "eval",
            network="unet",
            spatial_size="[64, 64]",
            epochs=1,
            augmentation="gaussian",
            noise_sigma=0,
        )
    )
    assert result.returncode != 0
    assert "noise_sigma must be a finite number > 0" in result.stderr
    assert not (tmp_path / "models" / "model.pt").exists()
