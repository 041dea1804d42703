"""Epsilon units (levels, input units, HU) read from a bundle's intensity preprocessing, and the prediction rule."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from monai.inferers import SimpleInferer, SlidingWindowInferer
from monai.networks.nets import UNet
from monai.transforms import (
    Activationsd,
    AsDiscreted,
    Compose,
    EnsureTyped,
    NormalizeIntensityd,
    ScaleIntensityd,
    ScaleIntensityRanged,
    ScaleIntensityRangePercentilesd,
)

from monai_advseg.attacks.losses import summed_cross_entropy
from monai_advseg.data import InputError
from monai_advseg.engines import RobustnessEvaluator
from monai_advseg.workflows import EpsilonUnits, PredictionRule, SigmoidPrediction, intensity_map

SPLEEN = Compose(
    [ScaleIntensityRanged("image", a_min=-57, a_max=164, b_min=0, b_max=1, clip=True), EnsureTyped("image")]
)


def test_spleen_window_10_hu_is_10_221_of_the_input():
    mapping = intensity_map(SPLEEN)
    assert mapping.fixed and mapping.clipped and mapping.input_range == (0.0, 1.0)
    assert mapping.scale == pytest.approx(1 / 221) and mapping.offset == pytest.approx(57 / 221)
    units = EpsilonUnits("hu", mapping)
    levels = units.to_levels([10, 2.5])
    assert levels == pytest.approx([10 * 255 / 221, 2.5 * 255 / 221])
    converted = units.all_units(levels)
    assert converted["input_units"] == pytest.approx([10 / 221, 2.5 / 221])
    assert converted["hu"] == pytest.approx([10, 2.5])
    assert units.describe()["hu_per_level"] == pytest.approx(221 / 255)


def test_levels_and_input_units_keep_their_meaning():
    units = EpsilonUnits("levels", intensity_map(SPLEEN))
    assert units.to_levels([8]) == [8.0]
    assert units.all_units([8])["input_units"] == pytest.approx([8 / 255])
    assert EpsilonUnits("input", intensity_map(SPLEEN)).to_levels([8 / 255]) == pytest.approx([8.0])


def test_window_on_a_minus_one_one_range_and_no_clip():
    mapping = intensity_map(ScaleIntensityRanged("image", a_min=-1000, a_max=1000, b_min=-1, b_max=1, clip=False))
    assert mapping.input_range == (-1.0, 1.0) and not mapping.clipped
    units = EpsilonUnits("hu", mapping)
    assert units.all_units(units.to_levels([10]))["input_units"] == pytest.approx([10 / 1000])
    assert units.to_levels([10]) == pytest.approx([10 / 1000 * 255 / 2])


def test_fixed_normalisation_needs_an_input_range_and_composes():
    normalise = NormalizeIntensityd("image", subtrahend=40.0, divisor=80.0)
    with pytest.raises(InputError, match=r"does not bound the network input.*--intensity_range"):
        EpsilonUnits("hu", intensity_map(normalise))
    units = EpsilonUnits("hu", intensity_map(normalise), input_range=(-3, 3))
    assert units.all_units(units.to_levels([8]))["input_units"] == pytest.approx([0.1])
    # a window then a fixed normalisation: the range is carried through the second map
    both = intensity_map(
        Compose([ScaleIntensityRanged("image", 0, 100, 0, 1, clip=True), NormalizeIntensityd("image", 0.5, 0.25)])
    )
    assert both.scale == pytest.approx(0.04) and both.input_range == pytest.approx((-2.0, 2.0)) and both.clipped
    assert EpsilonUnits("hu", both).all_units([255])["hu"] == pytest.approx([100.0])


@pytest.mark.parametrize(
    "transform",
    [
        ScaleIntensityd("image"),
        ScaleIntensityRangePercentilesd("image", lower=5, upper=95, b_min=0, b_max=1),
        NormalizeIntensityd("image"),
        NormalizeIntensityd("image", subtrahend=40.0, divisor=80.0, nonzero=True),
    ],
)
def test_hu_with_a_per_image_normalisation_is_refused(transform):
    mapping = intensity_map(Compose([transform]))
    assert not mapping.fixed
    with pytest.raises(InputError, match=rf"{type(transform).__name__}.*--epsilon_unit input"):
        EpsilonUnits("hu", mapping, input_range=(0, 1))
    units = EpsilonUnits("input", mapping, input_range=(0, 1))  # input units still work, with no HU in the report
    assert units.all_units([1.0])["hu"] is None


def test_other_keys_and_no_preprocessing():
    assert intensity_map(ScaleIntensityRanged("label", 0, 10, 0, 1)).transforms == []
    assert intensity_map(None).scale == 1.0  # no intensity transform: the network sees HU
    with pytest.raises(InputError, match="unknown unit"):
        EpsilonUnits("kelvin", intensity_map(SPLEEN))


def test_prediction_rule_from_postprocessing():
    spleen = Compose(
        [Activationsd("pred", softmax=True), AsDiscreted(["pred", "label"], argmax=[True, False], to_onehot=2)]
    )
    assert PredictionRule.from_postprocessing(spleen).activation == "softmax"
    sigmoid = Compose([Activationsd("pred", sigmoid=True), AsDiscreted("pred", threshold=0.3)])
    rule = PredictionRule.from_postprocessing(sigmoid)
    assert (rule.activation, rule.threshold) == ("sigmoid", 0.3)
    assert PredictionRule.from_postprocessing(None).activation == "auto"


def test_sigmoid_prediction_is_bce_at_the_threshold():
    torch.manual_seed(0)
    logits = torch.randn(2, 1, 5, 5)
    label = (torch.rand(2, 1, 5, 5) > 0.5).float()
    shifted = SigmoidPrediction(torch.nn.Identity(), threshold=0.3)(logits)
    assert torch.equal(shifted >= 0, torch.sigmoid(logits) >= 0.3)  # what the evaluator scores as foreground
    expected = F.binary_cross_entropy_with_logits(logits - torch.logit(torch.tensor(0.3)), label, reduction="sum")
    assert summed_cross_entropy(shifted, label) == pytest.approx(float(expected), rel=1e-5)
    with pytest.raises(InputError, match="multi-label"):  # without multi_label (e.g. the certificate's argmax)
        SigmoidPrediction(torch.nn.Identity())(torch.randn(1, 3, 5, 5))
    several = torch.randn(1, 3, 5, 5)  # multi-label: every channel shifted by the same threshold
    multi = SigmoidPrediction(torch.nn.Identity(), 0.3, multi_label=True)
    assert torch.equal(multi(several) >= 0, several.sigmoid() >= 0.3)
    assert PredictionRule("sigmoid", 0.3).multi_label and not PredictionRule("softmax").multi_label


def test_the_threshold_shift_per_window_is_the_shift_of_the_stitched_logits():
    torch.manual_seed(0)
    network = UNet(3, 1, 2, channels=(4, 8), strides=(2,), num_res_units=0).eval()
    image = torch.rand(1, 1, 20, 18, 13)
    shifted = SigmoidPrediction(network, 0.3, multi_label=True)
    for mode in ("constant", "gaussian"):
        inferer = SlidingWindowInferer(roi_size=(12, 12, 8), sw_batch_size=2, overlap=0.5, mode=mode)
        with torch.no_grad():
            outside = inferer(image, network) - math.log(0.3 / 0.7)
            inside = inferer(image, shifted)
        assert torch.allclose(inside, outside, atol=1e-6)


def test_sigmoid_bundle_runs_through_the_evaluator():
    torch.manual_seed(0)
    network = UNet(2, 1, 1, channels=(4, 8), strides=(2,), num_res_units=0)
    data = [{"image": torch.rand(2, 1, 16, 16), "label": (torch.rand(2, 1, 16, 16) > 0.5).float()}]
    rule = PredictionRule("sigmoid", 0.7)
    wrapped = rule.network(network)
    evaluator = RobustnessEvaluator("cpu", data, wrapped, epsilons=[8], inferer=SimpleInferer(), progress=False)
    evaluator.run()
    clean, attacked = evaluator.results["metrics"]
    assert attacked["mean_dice"] <= clean["mean_dice"]
    with torch.no_grad():  # the clean score is the bundle's own decision, sigmoid >= 0.7
        prediction = torch.sigmoid(network(data[0]["image"])) >= 0.7
    truth = data[0]["label"].bool()
    dice = 2 * (prediction & truth).flatten(1).sum(1) / (prediction.flatten(1).sum(1) + truth.flatten(1).sum(1))
    assert clean["mean_dice"] == pytest.approx(float(dice.mean()), rel=1e-5)


def test_an_l2_norm_converts_to_input_units_with_the_epsilon_factor():
    # the map is linear, so ||scale * d||_2 = |scale| * ||d||_2: a noise std or radius scales like an epsilon
    assert EpsilonUnits("hu", intensity_map(SPLEEN)).to_input_units([20, 5], "--sigma") == pytest.approx(
        [20 / 221, 5 / 221]
    )
    assert EpsilonUnits("levels", intensity_map(SPLEEN)).to_input_units([25.5]) == pytest.approx([0.1])
    assert EpsilonUnits("input", intensity_map(SPLEEN)).to_input_units([0.12]) == [0.12]  # exactly, no round trip
    wide = EpsilonUnits("levels", intensity_map(SPLEEN), input_range=(-1, 1))
    assert wide.to_input_units([255]) == pytest.approx([2.0])
    with pytest.raises(InputError, match="--radii"):
        EpsilonUnits("hu", intensity_map(SPLEEN)).to_input_units([-1], "--radii")
