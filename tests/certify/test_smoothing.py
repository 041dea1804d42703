"""smoothed_segmentation: closed-form certificates, abstention, the sigma -> 0 limit, determinism, inferers."""

from __future__ import annotations

import math

import pytest
import torch
from monai.inferers import SlidingWindowInferer
from monai.networks.nets import UNet
from scipy import stats
from tiny_models import disk_batch, linear_pixel_model, small_unet
from torch import nn

from monai_advseg.certify import ABSTAIN, smoothed_segmentation


def constant_network(spatial_dims: int = 2, logits: tuple[float, ...] = (0.0, 2.0)) -> nn.Module:
    """A 1x1 convolution with zero weights: the same logits at every voxel whatever the input."""
    conv = (nn.Conv2d if spatial_dims == 2 else nn.Conv3d)(1, len(logits), kernel_size=1)
    with torch.no_grad():
        conv.weight.zero_()
        conv.bias.copy_(torch.tensor(logits))
    return conv


def _generator(seed: int = 0, device: str | torch.device = "cpu") -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


@pytest.mark.parametrize("spatial", [(16, 16), (6, 8, 10)])
def test_constant_network_is_certified_everywhere_with_the_closed_form_radius(spatial):
    image = torch.rand(2, 1, *spatial)
    sigma, n, alpha = 0.25, 100, 0.01
    labels, radius = smoothed_segmentation(
        constant_network(len(spatial)), image, sigma=sigma, n0=5, n=n, alpha=alpha, generator=_generator()
    )
    assert labels.shape == radius.shape == (2, 1, *spatial)
    assert labels.dtype == torch.long and radius.dtype == torch.float32
    assert bool((labels == 1).all())
    # k = n successes: the Clopper-Pearson bound at level alpha / m is (alpha / m)^(1 / n)
    expected = sigma * stats.norm.ppf((alpha / math.prod(spatial)) ** (1 / n))
    torch.testing.assert_close(radius, torch.full_like(radius, expected), rtol=1e-6, atol=0)


def test_constant_network_with_tau_gets_sigma_times_phi_inverse_tau():
    sigma, tau = 0.5, 0.9
    labels, radius = smoothed_segmentation(
        constant_network(), torch.rand(1, 1, 16, 16), sigma=sigma, n0=3, n=100, alpha=0.01, tau=tau
    )
    assert bool((labels == 1).all())  # p-value tau^n = 2.7e-5 passes even Bonferroni's 0.01 / 256
    torch.testing.assert_close(radius, torch.full_like(radius, sigma * stats.norm.ppf(tau)), rtol=1e-6, atol=0)


def test_constant_network_radius_is_proportional_to_sigma():
    image = torch.rand(1, 1, 12, 12)
    radii = []
    for sigma in (0.12, 0.25, 0.5):
        labels, radius = smoothed_segmentation(constant_network(), image, sigma=sigma, n0=2, n=50, alpha=0.05)
        assert bool((labels == 1).all())
        radii.append(radius)
    assert bool((radii[0] < radii[1]).all() and (radii[1] < radii[2]).all())
    torch.testing.assert_close(radii[1] / 0.25, radii[0] / 0.12)
    torch.testing.assert_close(radii[2] / 0.5, radii[0] / 0.12)


@pytest.mark.parametrize("tau", [None, 0.5, 0.75])
def test_noise_dominated_network_abstains_almost_everywhere(tau):
    # a pixelwise linear model at its decision boundary (x = 0): each noisy copy votes class 0 or 1 with probability 1/2
    labels, radius = smoothed_segmentation(
        linear_pixel_model(), torch.zeros(2, 1, 16, 16), sigma=0.5, n0=10, n=100, alpha=0.01, tau=tau
    )
    abstained = labels == ABSTAIN
    assert abstained.double().mean().item() >= 0.99
    assert bool((radius[abstained] == 0).all())


@pytest.mark.parametrize("tau", [None, 0.8])
def test_radius_never_exceeds_the_exact_distance_to_the_smoothed_boundary(tau):
    # pixelwise linear model: at a voxel of value x the smoothed class is 1 iff x > 0, with probability Phi(|x| /
    # sigma), and moving that voxel by |x| flips it, so |x| is the exact L2 robustness radius (Cohen's bound is tight)
    image = torch.linspace(-1.0, 1.0, 256).reshape(1, 1, 16, 16)
    sigma = 0.5
    labels, radius = smoothed_segmentation(
        linear_pixel_model(), image, sigma=sigma, n0=10, n=300, alpha=0.01, tau=tau, generator=_generator()
    )
    certified = labels != ABSTAIN
    assert torch.equal(labels[certified], (image[certified] > 0).long())
    assert bool((radius[certified] <= image[certified].abs() + 1e-6).all())
    assert certified.double().mean().item() > 0.3  # tau 0.8 needs |x| > 0.42 (p > 0.8), tau None about |x| > 0.2
    if tau is None:  # the bound is not vacuous: far from the boundary it certifies most of the exact radius
        far = certified & (image.abs() > 0.6)
        assert bool(far.any()) and bool((radius[far] > 0.5 * image[far].abs()).all())


def test_sigmoid_network_labels_class_one_where_the_logit_is_non_negative():
    conv = nn.Conv2d(1, 1, kernel_size=1)
    with torch.no_grad():
        conv.weight.fill_(5.0)
        conv.bias.zero_()
    image = torch.ones(1, 1, 8, 8)
    image[..., 4:] = -1.0  # logit +5 on the left half, -5 on the right
    labels, radius = smoothed_segmentation(conv, image, sigma=0.1, n0=5, n=50, alpha=0.05, generator=_generator())
    assert bool((labels[..., :4] == 1).all() and (labels[..., 4:] == 0).all())
    assert bool((radius > 0).all())


def test_tiny_sigma_reproduces_the_base_prediction_on_certified_voxels():
    torch.manual_seed(0)
    network = small_unet().eval()
    image, _ = disk_batch(2)
    base = network(image).argmax(dim=1, keepdim=True)
    labels, _ = smoothed_segmentation(network, image, sigma=1e-4, n0=4, n=30, alpha=0.05, generator=_generator())
    certified = labels != ABSTAIN
    assert certified.double().mean().item() > 0.9  # only voxels within ~1e-4 of a tie may flip
    assert torch.equal(labels[certified], base[certified])


def test_through_a_sliding_window_on_a_3d_volume():
    torch.manual_seed(0)
    network = UNet(3, 1, 2, channels=(4, 8), strides=(2,), num_res_units=1).eval()
    inferer = SlidingWindowInferer(roi_size=(8, 8, 8), sw_batch_size=4, overlap=0.25)
    volume = torch.rand(1, 1, 12, 14, 10)
    with torch.no_grad():
        base = inferer(volume, network).argmax(dim=1, keepdim=True)
    labels, radius = smoothed_segmentation(
        network, volume, sigma=1e-4, n0=3, n=20, alpha=0.05, batch_size=8, inferer=inferer, generator=_generator()
    )
    assert labels.shape == (1, 1, 12, 14, 10)
    certified = labels != ABSTAIN
    assert certified.double().mean().item() > 0.9
    assert torch.equal(labels[certified], base[certified])
    # a pointwise model gives the same logits through the window (constant blending of equal values is exact), so the
    # certificate is the same as without the window
    image = 0.3 * (2 * torch.rand(1, 1, 12, 14, 10) - 1)
    arguments = {"sigma": 0.25, "n0": 5, "n": 60, "alpha": 0.05, "batch_size": 16}
    windowed = smoothed_segmentation(
        linear_pixel_model(3), image, inferer=SlidingWindowInferer((8, 8, 8), 4), generator=_generator(3), **arguments
    )
    plain = smoothed_segmentation(linear_pixel_model(3), image, generator=_generator(3), **arguments)
    assert torch.equal(windowed[0], plain[0]) and torch.equal(windowed[1], plain[1])
    assert 0 < (plain[0] == ABSTAIN).sum() < plain[0].numel()  # a mixed map, so the comparison says something


class _BatchRecorder(nn.Module):
    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network
        self.batches: list[int] = []

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        self.batches.append(image.shape[0])
        return self.network(image)


@pytest.mark.parametrize("tau", [None, 0.75])
def test_same_generator_same_certificate_whatever_the_batch_size(tau):
    image = 0.3 * (2 * torch.rand(2, 1, 10, 10) - 1)
    arguments = {"sigma": 0.25, "n0": 7, "n": 50, "alpha": 0.05, "tau": tau}
    results = {}
    for batch_size in (1, 4, 64):
        network = _BatchRecorder(linear_pixel_model())
        results[batch_size] = smoothed_segmentation(
            network, image, batch_size=batch_size, generator=_generator(5), **arguments
        )
        assert max(network.batches) == min(batch_size, 50)
        assert sum(network.batches) == 2 * (7 + 50)
    for batch_size in (4, 64):
        assert torch.equal(results[batch_size][0], results[1][0])
        assert torch.equal(results[batch_size][1], results[1][1])
    again = smoothed_segmentation(linear_pixel_model(), image, generator=_generator(5), **arguments)
    assert torch.equal(again[0], results[1][0]) and torch.equal(again[1], results[1][1])
    other = smoothed_segmentation(linear_pixel_model(), image, generator=_generator(6), **arguments)
    assert not torch.equal(other[1], results[1][1])  # the noise comes from the generator


def test_modes_are_restored_and_batch_norm_statistics_untouched():
    network = small_unet().train()
    network.model[1].eval()  # a deliberately frozen submodule stays frozen
    modes = [module.training for module in network.modules()]
    state = {key: value.clone() for key, value in network.state_dict().items()}
    smoothed_segmentation(network, torch.rand(1, 1, 16, 16), sigma=0.1, n0=2, n=4, alpha=0.1, batch_size=3)
    assert [module.training for module in network.modules()] == modes
    for key, value in network.state_dict().items():
        assert torch.equal(value, state[key]), key


def test_outputs_on_the_image_device_with_the_generator_elsewhere(device):
    # noise is drawn on the generator's device (CPU here) and moved to the image's
    sigma, n, alpha = 0.25, 40, 0.05
    labels, radius = smoothed_segmentation(
        constant_network().to(device),
        torch.rand(1, 1, 8, 8, device=device),
        sigma=sigma,
        n0=2,
        n=n,
        alpha=alpha,
        generator=_generator(),
    )
    assert labels.device.type == radius.device.type == device.type
    assert bool((labels == 1).all())
    expected = sigma * stats.norm.ppf((alpha / 64) ** (1 / n))
    torch.testing.assert_close(radius.cpu(), torch.full((1, 1, 8, 8), expected, dtype=torch.float32))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"sigma": 0.0}, "sigma"),
        ({"sigma": -0.1}, "sigma"),
        ({"sigma": float("nan")}, "sigma"),
        ({"sigma": float("inf")}, "sigma"),
        ({"n0": 0}, "n0"),
        ({"n": 0}, "n "),
        ({"n": 2.5}, "n "),
        ({"alpha": 0.0}, "alpha"),
        ({"alpha": 1.0}, "alpha"),
        ({"alpha": 1.5}, "alpha"),
        ({"tau": 0.4}, "tau"),
        ({"tau": 1.0}, "tau"),
        ({"batch_size": 0}, "batch_size"),
        ({"image": torch.rand(8, 8)}, r"\(B, C, \*spatial\)"),
        ({"image": torch.rand(2, 1)}, r"\(B, C, \*spatial\)"),
        ({"image": torch.ones(1, 1, 4, 4, dtype=torch.long)}, "floating-point"),
    ],
)
def test_bad_inputs_are_value_errors_naming_the_value(overrides, message):
    arguments = {"image": torch.rand(1, 1, 4, 4), "sigma": 0.1, "n0": 2, "n": 4, "alpha": 0.1, **overrides}
    image = arguments.pop("image")
    with pytest.raises(ValueError, match=message):
        smoothed_segmentation(constant_network(), image, **arguments)


def test_network_output_of_another_shape_is_a_value_error():
    pooled = nn.Sequential(constant_network(), nn.AvgPool2d(2))
    with pytest.raises(ValueError, match="does not match"):
        smoothed_segmentation(pooled, torch.rand(1, 1, 8, 8), sigma=0.1, n0=2, n=4, alpha=0.1)


@pytest.mark.parametrize("classes", [2, 3, 5, 300])
def test_predicted_classes_are_torch_argmax_ties_included(classes):
    from monai_advseg.certify.smoothing import _predicted_classes

    logits = torch.randint(0, 3, (4, classes, 6, 7)).float()  # few values: many ties
    assert torch.equal(_predicted_classes(logits).long(), logits.argmax(dim=1))
    equal = constant_network(logits=(1.0,) * classes)
    labels, _ = smoothed_segmentation(equal, torch.rand(1, 1, 4, 4), sigma=0.1, n0=2, n=20, alpha=0.1)
    assert bool((labels == 0).all())  # a tie everywhere goes to class 0, certified
