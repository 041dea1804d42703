"""``configs/certify.json`` of the CXR and lesion bundles: ``python -m monai.bundle run`` on a few real slices.

The checkpoint is a freshly initialised ``network_def`` (seed 0): the test is about the workflow and its report, not
about a trained model. With ``n`` noisy samples a voxel's Clopper-Pearson bound at level ``alpha / voxels`` is at
most ``(alpha / voxels)^(1 / n)``, so ``n`` must be large enough for that to clear 1/2 (32 at 32x32 and 64x64 with
alpha 0.001) or nothing can be certified.
"""

from __future__ import annotations

import csv
import json

import pytest
import torch
from bundle_helpers import bundle_cli, bundle_run_args, link_subset, network_def, run_workflow
from scipy.stats import norm

from monai_advseg.handlers import CERTIFY_FILES

pytestmark = [pytest.mark.slow, pytest.mark.real_data]

CASES = {
    "lung_cxr_segmentation": ("cxr_lung_montgomery_shenzhen", ".", ["MCUCXR_0001_0", "CHNCXR_0001_0", "CHNCXR_0002_0"]),
    "lung_lesion_ct_segmentation": ("ct_covid_medseg_infnet", "train", ["0", "1", "2", "3", "4"]),
}
SIZE = {"lung_cxr_segmentation": 64, "lung_lesion_ct_segmentation": 32}
SIGMA, N0, N, ALPHA = 0.12, 2, 32, 0.001


@pytest.fixture(scope="module", params=sorted(CASES))
def prepared(request, shared_dataset, tmp_path_factory):
    """``(bundle, settings)``: linked real slices and a checkpoint of a fresh network."""
    bundle = request.param
    name, folder, names = CASES[bundle]
    root = tmp_path_factory.mktemp(bundle)
    data = link_subset(shared_dataset(name) / folder, root / "data", names)
    (root / "models").mkdir()
    torch.manual_seed(0)
    torch.save(network_def(bundle).state_dict(), root / "models" / "model.pt")
    size = SIZE[bundle]
    settings = {"dataset_dir": data, "ckpt_dir": root / "models", "spatial_size": f"[{size}, {size}]"}
    return bundle, settings


def test_certify_json_writes_the_certification_report(prepared, tmp_path):
    bundle, settings = prepared
    out = tmp_path / "eval"
    args = bundle_run_args(
        bundle,
        ["train.json", "certify.json"],
        **settings,
        output_dir=out,
        sigma=SIGMA,
        n0=N0,
        n=N,
        certify_alpha=ALPHA,
        radii="[0, 0.02, 0.1]",
        attack_radii="[0.5]",
        attack_steps=2,
    )
    result = bundle_cli(*args)
    assert result.returncode == 0, result.stderr[-3000:]
    assert set(CERTIFY_FILES) <= {p.name for p in out.iterdir()}
    report = json.loads((out / "certify.json").read_text())
    certification = report["certification"]
    assert (certification["sigma"], certification["n0"], certification["n"]) == (SIGMA, N0, N)
    assert certification["alpha"] == ALPHA and certification["correction"] == "bonferroni"
    assert report["config"]["bundle"] == bundle and report["radii"] == [0.0, 0.02, 0.1, 0.5]
    assert report["attack"]["name"] == "pgd_l2" and report["attack"]["clip_range"] == [0.0, 1.0]
    assert isinstance(report["check"]["passed"], bool)
    rows = report["metrics"]
    dice = [row["certified_dice"] for row in rows]
    fraction = [row["certified_fraction"] for row in rows]
    assert all(b <= a for a, b in zip(dice, dice[1:], strict=False))
    assert all(b <= a for a, b in zip(fraction, fraction[1:], strict=False))
    assert fraction[0] == pytest.approx(1 - rows[0]["abstain_rate"])
    # no voxel can be certified beyond sigma * Phi^-1((alpha / voxels)^(1 / n)) with n samples
    largest = SIGMA * norm.ppf((ALPHA / SIZE[bundle] ** 2) ** (1 / N))
    assert 0.02 < largest < 0.1
    assert fraction[2] == 0 and dice[2] == 0 and fraction[0] > 0
    assert rows[-1]["attack_dice_base"] is not None and rows[0]["attack_dice_base"] is None
    with (out / "certify_cases.csv").open() as stream:
        cases = list(csv.DictReader(stream))
    assert len(cases) == report["n_cases"] * len(rows) and report["n_cases"] >= 1


def test_certify_json_refuses_an_existing_report_before_it_runs(prepared, tmp_path):
    bundle, settings = prepared
    out = tmp_path / "eval"
    out.mkdir()
    (out / "certify.json").write_text("{}")
    overrides = {key: str(value) for key, value in settings.items()}
    overrides["spatial_size"] = json.loads(overrides["spatial_size"])
    with pytest.raises(Exception) as error:  # noqa: B017 - MONAI wraps the FileExistsError; the chain is checked
        run_workflow(bundle, ["train.json", "certify.json"], output_dir=str(out), sigma=SIGMA, **overrides)
    chain, found = error.value, []
    while chain is not None:
        found.append(chain)
        chain = chain.__cause__ or chain.__context__
    assert any(isinstance(e, FileExistsError) and "certify.json" in str(e) for e in found)
    assert (out / "certify.json").read_text() == "{}"


@pytest.mark.parametrize("bundle", sorted(CASES))
def test_the_certificate_sigma_defaults_to_the_training_noise_sigma(bundle):
    from bundle_helpers import BUNDLES
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([str(BUNDLES / bundle / "configs" / name) for name in ("train.json", "certify.json")])
    assert parser.get_parsed_content("sigma") == parser.get_parsed_content("noise_sigma") == 0.25
    parser["noise_sigma"] = 0.12  # --noise_sigma 0.12, as the model was trained with --augmentation gaussian
    assert parser.get_parsed_content("certify#evaluator#sigma") == 0.12
    assert [r.replace("::", "#") for r in parser["run"]] == ["$@certify#evaluator.run()"]
    assert parser["check_ckpt_dir"] is None
