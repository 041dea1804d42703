"""Noise training: the ``"gaussian"`` copy of :class:`AdversarialAugmentationTrainer` (randomized smoothing's noise)."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from monai.data import DataLoader, Dataset
from monai.utils import set_determinism
from tiny_models import disk_batch, small_unet

from monai_advseg.engines import (
    AdversarialAugmentationTrainer,
    AdversarialCopyGenerator,
    adversarial_augmentations,
    parse_augmentations,
    training_items,
)


def _loader(batch: int = 4, size: int = 32) -> DataLoader:
    images, labels = disk_batch(batch, size=size, seed=2)
    data = [{"image": image, "label": label} for image, label in zip(images, labels, strict=True)]
    return DataLoader(Dataset(data), batch_size=batch, shuffle=False)


def _trainer(network, loader=None, **kwargs) -> AdversarialAugmentationTrainer:
    loss = torch.nn.CrossEntropyLoss()
    return AdversarialAugmentationTrainer(
        device=torch.device("cpu"),
        max_epochs=1,
        train_data_loader=_loader() if loader is None else loader,
        network=network,
        optimizer=torch.optim.SGD(network.parameters(), lr=0.01),
        loss_function=lambda pred, label: loss(pred, label[:, 0].long()),
        **kwargs,
    )


def _forward_inputs(network) -> list[torch.Tensor]:
    inputs = []
    network.register_forward_hook(lambda module, args, output: inputs.append(args[0].detach().clone()))
    return inputs


def test_the_noise_has_the_std_sigma_and_is_not_clipped():
    sigma = 0.25
    trainer = _trainer(
        small_unet(), loader=_loader(8, 64), augmentations="gaussian", noise_sigma=sigma, clip_range=(0, 1)
    )
    inputs = _forward_inputs(trainer.network)
    trainer.run()
    assert len(inputs) == 2  # the clean pass and the noisy copy: no attack pass, no gradient for the copy
    clean, noisy = inputs
    noise = (noisy - clean).double().flatten()
    # 8 x 64 x 64 = 32768 draws: the sample std's standard error is sigma / sqrt(2n) = 0.001, the mean's 0.0014
    assert float(noise.std()) == pytest.approx(sigma, abs=0.005)
    assert abs(float(noise.mean())) < 0.006
    excess_kurtosis = float(((noise - noise.mean()) ** 4).mean() / noise.var() ** 2) - 3
    assert abs(excess_kurtosis) < 0.15  # Gaussian, not uniform (-1.2): standard error sqrt(24 / n) = 0.027
    assert float(noisy.min()) < -0.3 and float(noisy.max()) > 1.3  # outside clip_range (0, 1): not clipped
    output = trainer.state.output[0]
    assert output["loss"] == pytest.approx((output["loss_clean"] + output["loss_gaussian"]) / 2, rel=1e-5)


def test_gaussian_is_weighted_like_the_other_copies_and_leaves_their_semantics_alone():
    torch.manual_seed(0)
    start = small_unet()
    weights = {"fgsm": 0.5, "gaussian": 2.0}
    trainer = _trainer(
        copy.deepcopy(start), augmentations=["fgsm", "gaussian"], loss_weights=weights, epsilon=0.05, clip_range=(0, 1)
    )
    inputs = _forward_inputs(trainer.network)
    trainer.run()
    output = trainer.state.output[0]
    expected = (output["loss_clean"] + 0.5 * output["loss_fgsm"] + 2.0 * output["loss_gaussian"]) / 3.5
    assert output["loss"] == pytest.approx(expected, rel=1e-5)
    assert len(inputs) == 3  # clean (its backward gives the FGSM copy), FGSM, gaussian
    # the FGSM copy (and its loss) is the one a trainer without the gaussian copy makes
    alone = _trainer(copy.deepcopy(start), augmentations="fgsm", epsilon=0.05, clip_range=(0, 1))
    alone_inputs = _forward_inputs(alone.network)
    alone.run()
    assert torch.equal(inputs[1], alone_inputs[1])
    assert float(output["loss_fgsm"]) == pytest.approx(float(alone.state.output[0]["loss_fgsm"]), rel=1e-6)


def test_reuse_gradient_false_with_only_gaussian_runs_no_attack():
    trainer = _trainer(small_unet(), augmentations="gaussian", reuse_gradient=False)
    inputs = _forward_inputs(trainer.network)
    trainer.run()
    assert len(inputs) == 2


def test_noise_is_repeatable_with_set_determinism():
    def noisy_input(seed):
        torch.manual_seed(0)
        network = small_unet()  # the same weights every time: only the run's seed differs
        set_determinism(seed=seed)
        trainer = _trainer(network, augmentations="gaussian")
        inputs = _forward_inputs(trainer.network)
        trainer.run()
        set_determinism(None)
        return inputs[1]

    assert torch.equal(noisy_input(3), noisy_input(3))
    assert not torch.equal(noisy_input(3), noisy_input(4))


def test_auxiliary_bn_sends_the_noisy_copy_through_the_main_batch_norm():
    from monai_advseg.networks import auxiliary_bn_layers, convert_to_auxiliary_bn

    network = convert_to_auxiliary_bn(small_unet())
    trainer = _trainer(network, augmentations=["fgsm", "gaussian"], auxiliary_bn=True, clip_range=(0, 1))
    trainer.run()
    layers = auxiliary_bn_layers(network)
    assert all(int(m.num_batches_tracked) == 2 for m in layers.values())  # clean + gaussian
    assert all(int(m.auxiliary_bn.num_batches_tracked) == 1 for m in layers.values())  # fgsm
    with pytest.raises(ValueError, match="auxiliary_bn=True needs online copies that are adversarial.*main batch norm"):
        _trainer(convert_to_auxiliary_bn(small_unet()), augmentations="gaussian", auxiliary_bn=True)


@pytest.mark.parametrize("sigma", [0.0, -0.25, float("nan"), float("inf"), "abc", None])
def test_bad_noise_sigma_is_a_clear_error(sigma):
    with pytest.raises(ValueError, match="noise_sigma must be a"):
        _trainer(small_unet(), augmentations="gaussian", noise_sigma=sigma)


def test_names_and_offline_copies_refuse_gaussian(tmp_path):
    assert parse_augmentations("gaussian") == ("gaussian",)
    assert parse_augmentations("both") == ("fgsm", "inverse_fgsm")  # "both" stays the two FGSM copies
    assert adversarial_augmentations(["gaussian", "inverse_fgsm"]) == ("inverse_fgsm",)
    items = [{"image": "a.png", "label": "a_mask.png"}]
    assert training_items(items, "gaussian", True, None) == items
    with pytest.raises(ValueError, match="'gaussian' is online only"):
        training_items(items, "gaussian", False, tmp_path / "datalist.json")
    with pytest.raises(ValueError, match="AdversarialCopyGenerator: augmentation 'gaussian' is online only"):
        AdversarialCopyGenerator(small_unet(), items, lambda x: x, [], tmp_path / "copies", augmentations="gaussian")
    assert not (tmp_path / "copies").exists()


def test_the_copy_has_no_gradient_to_the_input():
    # the copy is x + noise from the detached input: the clean pass's input gradient is not requested for it
    trainer = _trainer(small_unet(), augmentations="gaussian")
    seen = []
    trainer.network.register_forward_hook(lambda module, args, output: seen.append(args[0].requires_grad))
    trainer.run()
    assert seen == [False, False]
    assert math.isfinite(float(trainer.state.output[0]["loss_gaussian"]))
