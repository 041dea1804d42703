import pytest
import torch
from tiny_models import disk_batch, linear_pixel_model, small_unet, trained_small_unet

from monai_advseg.attacks import (
    fgsm,
    fgsm_pair,
    inverse_fgsm,
    iterative_fgsm,
    pgd,
    pgd_l2,
    segpgd,
    summed_cross_entropy,
)


@pytest.fixture(scope="module")
def trained():
    return trained_small_unet()


def _expected_sign(label: torch.Tensor) -> torch.Tensor:
    # For logits (0, 2x) the cross-entropy falls as x rises where y = 1 and rises where y = 0.
    return torch.where(label == 1, -1.0, 1.0)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_fgsm_and_inverse_match_the_analytic_gradient_sign(spatial_dims):
    network = linear_pixel_model(spatial_dims)
    shape = (3, 1) + (5,) * spatial_dims
    image = torch.rand(shape)
    label = (torch.rand(shape) > 0.5).long()
    sign = _expected_sign(label)
    assert torch.allclose(fgsm(network, image, label, 0.1), image + 0.1 * sign)
    assert torch.allclose(inverse_fgsm(network, image, label, 0.1), image - 0.1 * sign)
    assert torch.allclose(fgsm(network, image, label, 0.1, targeted=True), image - 0.1 * sign)


def test_one_hot_label_gives_the_same_attack_as_indices():
    network = linear_pixel_model()
    image, label = torch.rand(2, 1, 6, 6), (torch.rand(2, 1, 6, 6) > 0.5).long()
    one_hot = torch.cat([1 - label, label], dim=1).float()
    assert torch.equal(fgsm(network, image, label, 0.05), fgsm(network, image, one_hot, 0.05))


def test_fgsm_pair_equals_the_two_single_attacks():
    network = small_unet().eval()
    image, label = disk_batch(2)
    adversarial, inverse = fgsm_pair(network, image, label, 0.03, clip_range=(0, 1))
    assert torch.equal(adversarial, fgsm(network, image, label, 0.03, clip_range=(0, 1)))
    assert torch.equal(inverse, inverse_fgsm(network, image, label, 0.03, clip_range=(0, 1)))


def test_fgsm_pair_computes_one_gradient():
    network = small_unet()
    calls = []
    network.register_forward_hook(lambda *args: calls.append(1))
    fgsm_pair(network, *disk_batch(2), 0.03)
    assert len(calls) == 1


def test_fgsm_raises_and_inverse_lowers_the_loss_of_a_trained_model(trained):
    image, label = disk_batch(8, seed=7)
    with torch.no_grad():
        clean = summed_cross_entropy(trained(image), label)
        adversarial, inverse = fgsm_pair(trained, image, label, 0.05, clip_range=(0, 1))
        assert summed_cross_entropy(trained(adversarial), label) > 1.5 * clean
        assert summed_cross_entropy(trained(inverse), label) < clean


def test_per_sample_epsilon_scales_each_sample():
    network = linear_pixel_model()
    image, label = torch.rand(3, 1, 4, 4), (torch.rand(3, 1, 4, 4) > 0.5).long()
    epsilon = torch.tensor([0.0, 0.1, 0.3])
    result = fgsm(network, image, label, epsilon)
    expected = image + epsilon.view(3, 1, 1, 1) * _expected_sign(label)
    assert torch.allclose(result, expected)
    assert torch.equal(result[0], image[0])


def test_hounsfield_input_is_not_squashed_to_unit_range():
    network = linear_pixel_model(slope=1e-3)
    image = torch.empty(2, 1, 8, 8).uniform_(-1024, 3071)
    label = (torch.rand(2, 1, 8, 8) > 0.5).long()
    epsilon = 4095 / 255 * 8
    result = fgsm(network, image, label, epsilon, clip_range=(-1024, 3071))
    unclipped = image + epsilon * _expected_sign(label)
    assert torch.allclose(result, unclipped.clamp(-1024, 3071))
    assert result.min() < 0 and result.max() > 1000


def test_epsilon_zero_returns_the_input_unchanged():
    image = torch.rand(2, 1, 8, 8) * 5 - 2  # partly outside the clip range: still unchanged
    label = torch.zeros(2, 1, 8, 8, dtype=torch.long)
    for result in (*fgsm_pair(small_unet(), image, label, 0.0, clip_range=(0, 1)),):
        assert torch.equal(result, image)
        assert result.data_ptr() != image.data_ptr()


ATTACKS = {
    "fgsm": lambda network, image, label: fgsm(network, image, label, 0.1),
    "iterative_fgsm": lambda network, image, label: iterative_fgsm(network, image, label, 0.1, alpha=0.03, steps=3),
    "pgd": lambda network, image, label: pgd(
        network, image, label, 0.1, alpha=0.03, steps=3, generator=torch.Generator().manual_seed(0)
    ),
    "pgd_l2": lambda network, image, label: pgd_l2(
        network, image, label, 1.0, alpha=0.3, steps=3, generator=torch.Generator().manual_seed(0)
    ),
    "segpgd": lambda network, image, label: segpgd(
        network, image, label, 0.1, alpha=0.03, steps=3, generator=torch.Generator().manual_seed(0)
    ),
}


@pytest.mark.parametrize("fails", [False, True], ids=["returns", "raises"])
@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_network_modes_and_parameter_grads_are_untouched(attack, fails):
    """Every attack restores each submodule's own mode and leaves parameter ``.grad`` and the state alone, also when
    the network raises in the middle of the attack (here on its second forward pass, after a gradient was taken)."""
    network = small_unet().train()
    network.model[0].eval()  # a mixed-mode network must come back mixed
    modes = [m.training for m in network.modules()]
    for p in network.parameters():
        p.grad = torch.full_like(p, 7.0)
    state = {k: v.clone() for k, v in network.state_dict().items()}
    calls = []

    def forward_hook(module, args, output):
        calls.append(module.training)
        if fails and len(calls) == (1 if attack == "fgsm" else 2):
            raise RuntimeError("network failed")

    network.register_forward_hook(forward_hook)
    if fails:
        with pytest.raises(RuntimeError, match="network failed"):
            ATTACKS[attack](network, *disk_batch(2))
    else:
        ATTACKS[attack](network, *disk_batch(2))
    assert calls and not any(calls)  # the attack ran, in eval mode
    assert [m.training for m in network.modules()] == modes
    assert all(torch.equal(p.grad, torch.full_like(p, 7.0)) for p in network.parameters())
    assert all(torch.equal(v, network.state_dict()[k]) for k, v in state.items())  # BN running stats included


def test_batch_norm_batch_mates_do_not_change_an_example():
    network = small_unet().train()
    image, label = disk_batch(4)
    alone = fgsm(network, image[:1], label[:1], 0.1)
    together = fgsm(network, image, label, 0.1)
    assert torch.allclose(alone, together[:1], atol=1e-6)


def test_works_under_no_grad_and_inference_mode():
    network = small_unet()
    image, label = disk_batch(2)
    reference = fgsm(network, image, label, 0.1)
    with torch.no_grad():
        assert torch.equal(fgsm(network, image, label, 0.1), reference)
    with torch.inference_mode():
        inference_image, inference_label = image.clone(), label.clone()
        result = fgsm(network, inference_image, inference_label, 0.1)
    assert torch.equal(result, reference)
    assert not result.requires_grad


def test_custom_monai_loss_is_accepted():
    from monai.losses import DiceCELoss

    network = small_unet()
    image, label = disk_batch(2)
    result = fgsm(network, image, label, 0.1, loss_fn=DiceCELoss(to_onehot_y=True, softmax=True))
    assert torch.allclose((result - image).abs(), torch.full_like(image, 0.1))


def test_sigmoid_single_channel_network():
    network = torch.nn.Conv2d(1, 1, 1)
    with torch.no_grad():
        network.weight.fill_(2.0)
        network.bias.zero_()
    image, label = torch.rand(2, 1, 4, 4), (torch.rand(2, 1, 4, 4) > 0.5).long()
    assert torch.allclose(fgsm(network, image, label, 0.1), image + 0.1 * _expected_sign(label))
