"""The default attack loss is the per-voxel cross-entropy SUMMED, not averaged."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from tiny_models import disk_batch, small_unet

from monai_advseg.attacks import fgsm, summed_cross_entropy


@pytest.mark.parametrize("spatial", [(5, 7), (3, 4, 5)], ids=["2d", "3d"])
@pytest.mark.parametrize("classes", [2, 4])
def test_summed_cross_entropy_is_the_summed_reduction(spatial, classes):
    generator = torch.Generator().manual_seed(3)
    logits = 3 * torch.randn(2, classes, *spatial, generator=generator, dtype=torch.float64)
    indices = torch.randint(0, classes, (2, 1, *spatial), generator=generator)
    expected = F.cross_entropy(logits, indices[:, 0], reduction="sum")
    one_hot = F.one_hot(indices[:, 0], classes).movedim(-1, 1).to(logits.dtype)
    assert torch.allclose(summed_cross_entropy(logits, indices), expected, rtol=1e-12, atol=0)
    assert torch.allclose(summed_cross_entropy(logits, one_hot), expected, rtol=1e-12, atol=0)


def test_summed_cross_entropy_of_half_logits_is_computed_in_float32():
    generator = torch.Generator().manual_seed(4)
    logits = (3 * torch.randn(2, 3, 16, 16, generator=generator)).bfloat16()
    indices = torch.randint(0, 3, (2, 1, 16, 16), generator=generator)
    loss = summed_cross_entropy(logits, indices)
    assert loss.dtype == torch.float32
    assert torch.equal(loss, F.cross_entropy(logits.float(), indices[:, 0], reduction="sum"))


def _mean_cross_entropy(logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, label[:, 0].long())


def test_default_fgsm_loss_keeps_the_fp32_gradient_signs_under_fp16_autocast_where_a_mean_loses_them():
    # A 2 x 256 x 256 batch: the mean divides each voxel's logit gradient by 131072, which in fp16 is subnormal or
    # zero, so the backward through the fp16 network zeroes or flips many input-gradient signs. The sum does not.
    network = small_unet().eval()
    image, label = disk_batch(2, size=256)
    epsilon = 0.01
    reference = (fgsm(network, image, label, epsilon) - image).sign()  # float32, no autocast
    summed_fp32 = fgsm(network, image, label, epsilon, loss_fn=summed_cross_entropy)
    # x + eps * sign up to the one ulp the exact ball takes off where float32 rounding would overshoot epsilon
    assert torch.allclose(summed_fp32, image + epsilon * reference, rtol=0, atol=2 * torch.finfo(torch.float32).eps)
    with torch.autocast("cpu", dtype=torch.float16):
        default = fgsm(network, image, label, epsilon)
        summed = fgsm(network, image, label, epsilon, loss_fn=summed_cross_entropy)
        mean = fgsm(network, image, label, epsilon, loss_fn=_mean_cross_entropy)
    assert torch.equal(default, summed)

    def agreement(result: torch.Tensor) -> float:
        return float(((result - image).sign() == reference).double().mean())

    def zeroed(result: torch.Tensor) -> float:
        return float((result == image).double().mean())

    assert agreement(summed) >= 0.995
    assert agreement(mean) < agreement(summed) - 0.01
    assert zeroed(summed) < 0.001 < 0.01 < zeroed(mean)


def test_per_channel_binary_cross_entropy_is_each_channels_bce_summed_per_sample():
    from monai_advseg.attacks import per_channel_binary_cross_entropy

    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 4, 5, 6, generator=generator, dtype=torch.float64)
    label = (torch.rand(3, 4, 5, 6, generator=generator) > 0.5).double()
    p = torch.sigmoid(logits)
    expected = -(label * torch.log(p) + (1 - label) * torch.log(1 - p)).flatten(1).sum(dim=1)  # the textbook BCE
    loss = per_channel_binary_cross_entropy(logits, label)
    assert loss.shape == (3,) and torch.allclose(loss, expected, rtol=1e-12)
    # each channel on its own: a channel's gradient does not depend on the other channels' logits
    x = logits.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(per_channel_binary_cross_entropy(x, label).sum(), x)
    assert torch.allclose(grad, p - label, rtol=1e-12)
    half = per_channel_binary_cross_entropy(logits.half(), label)
    assert half.dtype == torch.float32  # computed in float32, as the other losses
    with pytest.raises(ValueError, match=r"one label channel per output channel: label shape \(3, 1, 5, 6\)"):
        per_channel_binary_cross_entropy(logits, label[:, :1])


def test_a_named_single_loss_attack_follows_the_given_loss_and_the_others_refuse_one():
    from monai_advseg.attacks import build_attack_spec, per_channel_binary_cross_entropy

    torch.manual_seed(0)
    network = small_unet().eval()
    image, label = disk_batch(2, size=16)
    calls = []

    def counted(logits, target):
        calls.append(tuple(logits.shape))
        return per_channel_binary_cross_entropy(logits, target)

    target = torch.cat([1 - label, label], dim=1).float()  # two binary channels
    for name in ("ifgsm_targeted", "fgsm", "pgd"):
        calls.clear()
        spec = build_attack_spec(name, loss_fn=counted)
        assert spec.loss_fn is counted
        spec.sweep(network, image, target, [2.0], intensity_range=(0, 1), generator=torch.Generator().manual_seed(0))
        assert calls and all(shape == (2, 2, 16, 16) for shape in calls)
    for name in ("segpgd", "worst_case", "random_search", "uniform_noise"):
        with pytest.raises(ValueError, match=f"attack '{name}' has its own loss"):
            build_attack_spec(name, loss_fn=counted)
    with pytest.raises(ValueError, match="give the loss to the component"):
        build_attack_spec(build_attack_spec("pgd"), loss_fn=counted)


def test_per_sample_loss_keeps_each_samples_loss_apart_from_its_batch_mates():
    from monai.losses import DiceCELoss

    from monai_advseg.attacks import per_sample_loss

    generator = torch.Generator().manual_seed(1)
    logits = torch.randn(3, 2, 6, 6, generator=generator, dtype=torch.float64)
    label = (torch.rand(3, 1, 6, 6, generator=generator) > 0.5).double()
    batch_loss = DiceCELoss(to_onehot_y=True, softmax=True, batch=True)
    each = per_sample_loss(batch_loss)
    expected = torch.stack([batch_loss(logits[i : i + 1], label[i : i + 1]) for i in range(3)])
    assert torch.allclose(each(logits, label), expected, rtol=1e-12)
    # a batch-reduced loss mixes the samples; per sample, one sample's gradient ignores the others
    x = logits.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(each(x, label).sum(), x)
    (alone,) = torch.autograd.grad(each(x[:1], label[:1]).sum(), x)
    assert torch.allclose(grad[0], alone[0], rtol=1e-12)
    (mixed,) = torch.autograd.grad(batch_loss(x, label), x)
    (mixed_alone,) = torch.autograd.grad(batch_loss(x[:1], label[:1]), x)
    assert not torch.allclose(mixed[0], mixed_alone[0])
    assert each.__name__ == "per_sample(DiceCELoss)"


def test_multi_label_specs_follow_the_per_channel_loss_and_aim_at_each_channels_inverse():
    from monai_advseg.attacks import build_attack_spec, inverse_mask, per_channel_binary_cross_entropy

    label = (torch.rand(2, 3, 4, 4, generator=torch.Generator().manual_seed(2)) > 0.5).float()
    spec = build_attack_spec("ifgsm_targeted", multi_label=True)
    assert spec.loss_fn is per_channel_binary_cross_entropy and torch.equal(spec.target(label, 3), 1 - label)
    assert torch.equal(spec.target(label[:, :1], 2), inverse_mask(label[:, :1], 2))  # one channel: the binary case
    own = build_attack_spec("fgsm", loss_fn=summed_cross_entropy, multi_label=True)
    assert own.loss_fn is summed_cross_entropy  # a given loss wins
    spec.check_network(3)
    build_attack_spec("uniform_noise", multi_label=True).check_network(3)  # no loss: nothing to refuse
    for name in ("segpgd", "worst_case", "random_search"):
        refusing = build_attack_spec(name, multi_label=True)
        with pytest.raises(ValueError, match=f"multi_label: attack '{name}' follows a softmax loss over the 3"):
            refusing.check_network(3)
    build_attack_spec("worst_case", multi_label=True).check_network(1)  # one sigmoid channel: the binary case
    build_attack_spec("segpgd").check_network(3)  # not multi-label: softmax channels
