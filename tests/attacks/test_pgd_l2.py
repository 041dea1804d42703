"""L2 PGD: the L2 ball and the clip range per sample (2D, 3D, HU), its step rule, its start, its strength and its
component in the sweep; it runs in the one loop, whose L-inf path the other attack tests pin."""

from __future__ import annotations

import pytest
import torch
from tiny_models import disk_batch, linear_pixel_model, small_unet, trained_small_unet
from torch import nn

from monai_advseg.attacks import (
    ATTACK_SPECS,
    PGDL2Spec,
    StepContext,
    build_attack_spec,
    input_gradient,
    inverse_mask,
    l2_step_rule,
    levels_to_epsilon,
    pgd_l2,
    project_l2,
    summed_cross_entropy,
)
from monai_advseg.attacks.gradient import attack_mode
from monai_advseg.attacks.iterative import _iterate, _unit_l2_ball_noise


@pytest.fixture(scope="module")
def trained() -> nn.Module:
    return trained_small_unet()


def _norms(result: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    return (result.double() - image.double()).flatten(1).norm(dim=1)


def _seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# the rounding of x + delta in float32: about sqrt(voxels) half-ulps of the image's values (see project_l2)
def _tolerance(image: torch.Tensor) -> float:
    return float(image[0].numel()) ** 0.5 * float(image.abs().max()) * 2**-24 * 2


@pytest.mark.parametrize(
    ("spatial_dims", "lo", "hi"), [(2, 0.0, 1.0), (3, 0.0, 1.0), (2, -1024.0, 3071.0)], ids=["2d", "3d", "hu"]
)
def test_results_stay_in_each_samples_l2_ball_and_the_clip_range(spatial_dims, lo, hi):
    generator = _seeded(spatial_dims)
    shape = (3, 1, *([8] * spatial_dims))
    image = lo + (hi - lo) * torch.rand(shape, generator=generator)
    label = (torch.rand(shape, generator=generator) > 0.5).long()
    width = hi - lo
    epsilon = torch.tensor([0.05, 0.5, 3.0]) * width  # 3 x width: the ball reaches far outside the range
    result = pgd_l2(
        small_unet(spatial_dims),
        image,
        label,
        epsilon,
        alpha=epsilon / 2,
        steps=4,
        generator=_seeded(1),
        clip_range=(lo, hi),
    )
    assert result.shape == image.shape and result.dtype == image.dtype
    assert bool((_norms(result, image) <= epsilon.double() + _tolerance(image)).all())
    assert bool((result >= lo).all()) and bool((result <= hi).all())
    assert bool((_norms(result, image) > 0.5 * epsilon.double()).all()), "the attack must use its ball"


def test_projection_keeps_the_ball_for_voxels_outside_the_range():
    # Voxels that start outside the clip range may stay there (never further), and the ball still holds.
    generator = _seeded(3)
    original = 3 * torch.rand(4, 2, 6, 6, generator=generator) - 1  # partly outside (0, 1)
    candidate = original + 2 * torch.randn(original.shape, generator=generator)
    radius = torch.tensor([0.0, 0.1, 1.0, 100.0]).view(4, 1, 1, 1)
    result = project_l2(candidate, original, radius, (0.0, 1.0))
    assert bool((_norms(result, original) <= radius.flatten().double() + 1e-6).all())
    low, high = original.clamp(max=0.0), original.clamp(min=1.0)
    assert bool((result >= low).all()) and bool((result <= high).all())
    assert torch.equal(result[0], original[0])
    # a candidate inside the ball and the range is returned as it is
    inside = original.clamp(0, 1)
    assert torch.allclose(project_l2(inside, inside + 0, 1e3, (0.0, 1.0)), inside)


def test_projection_scales_the_difference_onto_the_sphere_without_a_clip():
    original = torch.zeros(1, 1, 2, 2)
    candidate = torch.tensor([3.0, 4.0, 0.0, 0.0]).view(1, 1, 2, 2)
    result = project_l2(candidate, original, 1.0, None)
    assert torch.allclose(result.flatten(), torch.tensor([0.6, 0.8, 0.0, 0.0]))


def test_step_rule_is_the_normalized_gradient_and_zero_gradient_takes_no_step():
    x = torch.rand(3, 2, 4, 4, generator=_seeded(4))
    gradient = torch.randn(3, 2, 4, 4, generator=_seeded(5))
    gradient[1] = 0
    gradient[2] *= 1e-30  # 1 / ||g|| overflows float32: computed in float64
    context = StepContext(0, torch.arange(3), torch.ones(3, dtype=torch.long), torch.full((3, 1, 1, 1), -0.5), None)
    candidate = l2_step_rule(x, gradient, context)
    expected = x[0] - 0.5 * gradient[0] / gradient[0].double().norm().float()
    assert torch.allclose(candidate[0], expected, atol=1e-6)
    assert torch.equal(candidate[1], x[1])
    assert float((candidate[2] - x[2]).double().norm()) == pytest.approx(0.5, rel=1e-5)


def test_one_step_without_random_start_follows_the_normalized_gradient(trained):
    image, label = disk_batch(2, seed=6)
    result = pgd_l2(trained, image, label, 10.0, alpha=0.3, steps=1, random_start=False)
    with attack_mode(trained) as module:
        gradient = input_gradient(module, image, label)
    norms = gradient.flatten(1).norm(dim=1).view(2, 1, 1, 1)
    assert torch.allclose(result, image + 0.3 * gradient / norms, atol=1e-6)
    assert _norms(result, image).tolist() == pytest.approx([0.3, 0.3], rel=1e-5)


def test_linear_model_reaches_the_surface_of_the_ball():
    # logits (0, 2x): the gradient's sign is -+1 per voxel by the label at every point, so every step moves each
    # voxel the same way and the attack ends on the sphere.
    image = 0.25 + 0.5 * torch.rand(2, 1, 6, 6, generator=_seeded(7))
    label = (torch.rand(2, 1, 6, 6, generator=_seeded(8)) > 0.5).long()
    epsilon = torch.tensor([0.4, 1.2])
    result = pgd_l2(linear_pixel_model(), image, label, epsilon, alpha=epsilon / 2, steps=6, random_start=False)
    assert _norms(result, image).tolist() == pytest.approx(epsilon.tolist(), rel=1e-5)
    assert torch.equal(torch.sign(result - image), torch.where(label == 1, -1.0, 1.0))


def test_stronger_than_a_random_l2_perturbation_of_the_same_radius(trained):
    image, label = disk_batch(4, seed=9)
    epsilon = 2.0  # L2 over 32 x 32 voxels: an RMS change of 0.06 per voxel
    attacked = pgd_l2(trained, image, label, epsilon, alpha=0.5, steps=10, generator=_seeded(0), clip_range=(0, 1))
    noise = _unit_l2_ball_noise(image, _seeded(1))
    noise = noise / noise.flatten(1).norm(dim=1).view(-1, 1, 1, 1) * epsilon  # on the sphere: the strongest noise
    noisy = project_l2(image + noise, image, epsilon, (0.0, 1.0))
    with torch.no_grad():

        def wrong(batch):
            return (trained(batch).argmax(1, keepdim=True) != label).float().flatten(1).mean(1)

        clean_wrong, attacked_wrong, noisy_wrong = wrong(image), wrong(attacked), wrong(noisy)
    assert bool((attacked_wrong > noisy_wrong).all())
    assert float(attacked_wrong.mean()) > 2 * float(noisy_wrong.mean())
    assert float(attacked_wrong.mean()) > float(clean_wrong.mean()) + 0.03  # measured: 0.050 vs 0.006 clean


def test_per_sample_epsilon_equals_separate_runs(trained):
    # Not bit for bit, unlike the sign step: the normalized gradient keeps the last bits in which a batched
    # convolution differs from a single one.
    image, label = disk_batch(3, seed=10)
    epsilon = torch.tensor([0.5, 1.5, 3.0])
    batched = pgd_l2(trained, image, label, epsilon, alpha=epsilon / 4, steps=5, random_start=False, clip_range=(0, 1))
    for i in range(3):
        alone = pgd_l2(
            trained,
            image[i : i + 1],
            label[i : i + 1],
            float(epsilon[i]),
            alpha=float(epsilon[i]) / 4,
            steps=5,
            random_start=False,
            clip_range=(0, 1),
        )
        assert torch.allclose(batched[i : i + 1], alone, rtol=0, atol=1e-5)
    # with one generator per sample, random starts do not depend on the batch either
    starts = [_seeded(20 + i) for i in range(3)]
    batched = _iterate(trained, image, label, epsilon, alpha=epsilon / 4, steps=5, targeted=False, loss_fn=None,
                       clip_range=(0, 1), random_start=True, generator=starts, norm="l2")  # fmt: skip
    alone = pgd_l2(
        trained, image[1:2], label[1:2], 1.5, alpha=1.5 / 4, steps=5, generator=_seeded(21), clip_range=(0, 1)
    )
    assert torch.allclose(batched[1:2], alone, rtol=0, atol=1e-5)


def test_targeted_attack_moves_towards_the_target(trained):
    image, label = disk_batch(3, seed=12)
    target = inverse_mask(label, 2)
    result = pgd_l2(trained, image, target, 3.0, alpha=0.5, steps=10, generator=_seeded(2), targeted=True)
    with torch.no_grad():
        assert summed_cross_entropy(trained(result), target) < summed_cross_entropy(trained(image), target)
        untargeted = pgd_l2(trained, image, target, 3.0, alpha=0.5, steps=10, generator=_seeded(2))
        assert summed_cross_entropy(trained(untargeted), target) > summed_cross_entropy(trained(image), target)


def test_zero_epsilon_returns_the_input_unchanged():
    image = torch.rand(2, 1, 8, 8) * 5 - 2  # partly outside the clip range: still unchanged
    label = (torch.rand(2, 1, 8, 8) > 0.5).long()
    for epsilon in (0.0, torch.zeros(2)):
        result = pgd_l2(small_unet(), image, label, epsilon, alpha=0.1, steps=3, clip_range=(0, 1))
        assert torch.equal(result, image) and result.data_ptr() != image.data_ptr()
    mixed = pgd_l2(small_unet(), image, label, torch.tensor([0.0, 1.0]), alpha=0.1, steps=3, generator=_seeded(0))
    assert torch.equal(mixed[0], image[0]) and not torch.equal(mixed[1], image[1])


def test_deterministic_with_a_generator(trained):
    image, label = disk_batch(2, seed=13)

    def run(seed):
        return pgd_l2(trained, image, label, 1.0, alpha=0.25, steps=3, generator=_seeded(seed), clip_range=(0, 1))

    assert torch.equal(run(5), run(5))
    assert not torch.equal(run(5), run(6))


def test_random_start_is_uniform_in_the_l2_ball():
    # In d = 3 values the radius of a uniform draw in the unit ball has P(r <= s) = s^3: r^3 is U(0, 1).
    like = torch.zeros(20_000, 1, 3)
    noise = _unit_l2_ball_noise(like, _seeded(0)).double()
    radius = noise.flatten(1).norm(dim=1)
    assert float(radius.max()) <= 1.0 + 1e-6
    cubed = torch.sort(radius**3).values
    uniform = (torch.arange(1, cubed.numel() + 1, dtype=torch.float64)) / cubed.numel()
    assert float((cubed - uniform).abs().max()) < 0.015  # Kolmogorov-Smirnov; the 1% critical value is 0.0115
    assert float(noise.mean(0).abs().max()) < 0.02  # no preferred direction
    # one generator per sample gives each sample the draw it gets alone
    many = _unit_l2_ball_noise(like[:3], [_seeded(i) for i in range(3)])
    assert torch.equal(many[2:3], _unit_l2_ball_noise(like[:1], _seeded(2)))


BAD_INPUTS = [
    ({"epsilon": -0.1}, "epsilon must be >= 0"),
    ({"epsilon": torch.tensor([0.1, -1.0])}, "epsilon must be >= 0"),
    ({"epsilon": float("inf")}, "epsilon must be finite"),
    ({"steps": 0}, "steps must be >= 1"),
    ({"steps": True}, "steps must be an int >= 1"),
    ({"steps": 2.5}, "steps must be an int >= 1"),
    ({"steps": torch.tensor([1, -1])}, "non-negative"),
    ({"alpha": 0.0}, "alpha .* must be finite and > 0"),
    ({"alpha": -0.1}, "alpha .* must be finite and > 0"),
    ({"alpha": float("nan")}, "alpha .* must be finite and > 0"),
    ({"clip_range": (1.0, 0.0)}, "lo < hi"),
    ({"label": torch.zeros(2, 1, 8, 9, dtype=torch.long)}, "does not match image"),
]


@pytest.mark.parametrize(("override", "message"), BAD_INPUTS, ids=[str(o) for o, _ in BAD_INPUTS])
def test_bad_inputs_are_value_errors(override, message):
    arguments = {
        "image": torch.rand(2, 1, 8, 8),
        "label": torch.zeros(2, 1, 8, 8, dtype=torch.long),
        "epsilon": 0.5,
        "alpha": 0.1,
        "steps": 2,
        "clip_range": (0.0, 1.0),
        **override,
    }
    network = small_unet()
    with pytest.raises(ValueError, match=message):
        pgd_l2(network, arguments.pop("image"), arguments.pop("label"), arguments.pop("epsilon"), **arguments)


def test_the_loop_refuses_an_unknown_norm_and_sharing_on_the_l2_ball():
    image, label = torch.rand(2, 1, 8, 8), torch.zeros(2, 1, 8, 8, dtype=torch.long)
    common = {"alpha": 0.1, "steps": 2, "targeted": False, "loss_fn": None, "clip_range": None}
    with pytest.raises(ValueError, match="norm must be one of"):
        _iterate(small_unet(), image, label, 0.5, norm="l1", **common)
    with pytest.raises(ValueError, match="L-inf ball only"):
        _iterate(small_unet(), image, label, 0.5, norm="l2", share=torch.zeros(2), **common)


def test_sweep_component_takes_levels_as_l2_radii_of_the_intensity_range(trained):
    assert ATTACK_SPECS["pgd_l2"] is PGDL2Spec
    spec = build_attack_spec("pgd_l2", alpha_levels=16.0, steps=4)
    image, label = disk_batch(2, seed=14)
    image = image * 4095 - 1024  # HU: a level is 4095 / 255 of L2 radius
    levels = [0.0, 32.0, 128.0]
    swept = spec.sweep(
        linear_pixel_model(slope=1e-3), image, label, levels, intensity_range=(-1024, 3071), generator=_seeded(0)
    )
    radii = levels_to_epsilon(levels, (-1024, 3071))
    for index, radius in enumerate(radii):
        norms = _norms(swept[index], image)
        assert bool((norms <= radius + _tolerance(image)).all())
        assert bool((norms >= 0.9 * radius).all())  # 4 steps of 16 levels cross from anywhere in the 32-level ball
    assert torch.equal(swept[0], image)
    assert spec.step_counts(levels) == [0, 4, 4]
    description = spec.describe((-1024, 3071), seed=7)
    assert description["name"] == "pgd_l2" and description["norm"] == "l2" and description["seed"] == 7
    assert description["alpha"] == pytest.approx(16 / 255 * 4095)
    assert build_attack_spec("pgd_l2").step_counts([8.0]) == [10]  # the Kurakin schedule, as for the L-inf attacks


def test_robustness_evaluator_runs_pgd_l2_by_name(trained):
    from monai_advseg.engines import RobustnessEvaluator

    images, labels = disk_batch(2, seed=15)
    loader = [{"image": images, "label": labels}]
    evaluator = RobustnessEvaluator(
        "cpu", loader, trained, epsilons=[255], attack="pgd_l2", alpha_levels=64, steps=6, seed=1, progress=False
    )
    evaluator.run()
    assert evaluator.results["attack"]["norm"] == "l2"
    clean, attacked = (row["mean_dice"] for row in evaluator.results["metrics"])
    assert attacked < clean - 0.01  # an L2 radius of 1.0 on [0, 1] (255 levels) costs Dice
    swept = evaluator.attack_sweep(images, labels, 2, torch.Generator().manual_seed(1))
    assert bool((_norms(swept[0], images) <= 1.0 + _tolerance(images)).all())
