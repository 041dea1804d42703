import pytest
import torch
from tiny_models import disk_batch, linear_pixel_model, small_unet, trained_small_unet
from torch import nn

from monai_advseg.attacks import (
    PAPER_EPSILON_LEVELS,
    fgsm,
    inverse_mask,
    iterative_fgsm,
    kurakin_steps,
    levels_to_epsilon,
    pgd,
    segpgd,
    segpgd_loss,
    summed_cross_entropy,
)


@pytest.fixture(scope="module")
def trained():
    return trained_small_unet()


def test_one_step_iterative_fgsm_is_fgsm():
    network = small_unet()
    image, label = disk_batch(2)
    assert torch.equal(iterative_fgsm(network, image, label, 0.1, alpha=0.1, steps=1), fgsm(network, image, label, 0.1))


def test_iterative_fgsm_on_linear_model_saturates_at_epsilon():
    image = torch.rand(2, 1, 5, 5)
    label = (torch.rand(2, 1, 5, 5) > 0.5).long()
    result = iterative_fgsm(linear_pixel_model(), image, label, 0.1, alpha=0.03, steps=10)
    assert torch.allclose(result, image + 0.1 * torch.where(label == 1, -1.0, 1.0), atol=1e-6)


def test_kurakin_schedule_counts_forward_passes():
    network = small_unet()
    calls = []
    network.register_forward_hook(lambda module, args, out: calls.append(args[0].shape[0]))
    image, label = disk_batch(1)
    iterative_fgsm(network, image, label, levels_to_epsilon(8, (0, 1)), alpha=1 / 255)
    assert len(calls) == kurakin_steps(8) == 10


def test_targeted_attack_moves_towards_the_inverse_mask(trained):
    image, label = disk_batch(4, seed=3)
    target = inverse_mask(label, 2)
    epsilon = levels_to_epsilon(16, (0, 1))
    adversarial = iterative_fgsm(trained, image, target, epsilon, alpha=1 / 255, targeted=True, clip_range=(0, 1))
    with torch.no_grad():
        assert summed_cross_entropy(trained(adversarial), target) < summed_cross_entropy(trained(image), target)
        clean_agreement = (trained(image).argmax(1, keepdim=True) == label).float().mean()
        attacked_agreement = (trained(adversarial).argmax(1, keepdim=True) == label).float().mean()
    assert attacked_agreement < clean_agreement


def test_batched_strengths_equal_separate_runs_bit_for_bit(trained):
    image, label = disk_batch(3, seed=5)
    target = inverse_mask(label, 2)
    levels = [0.5, 4.0, 12.0]
    epsilon = torch.tensor(levels_to_epsilon(levels, (0, 1)))
    batched = iterative_fgsm(trained, image, target, epsilon, alpha=1 / 255, targeted=True, clip_range=(0, 1))
    for i, eps in enumerate(epsilon.tolist()):
        alone = iterative_fgsm(
            trained, image[i : i + 1], target[i : i + 1], eps, alpha=1 / 255, targeted=True, clip_range=(0, 1)
        )
        assert torch.equal(batched[i : i + 1], alone)


def test_per_sample_steps_and_active_set_compaction():
    network = small_unet()
    sizes = []
    network.register_forward_hook(lambda module, args, out: sizes.append(args[0].shape[0]))
    image, label = disk_batch(3)
    iterative_fgsm(network, image, label, 0.1, alpha=0.01, steps=torch.tensor([1, 3, 0]))
    assert sizes == [2, 1, 1]


@pytest.mark.parametrize("spatial_dims", [3])
def test_three_dimensional_attack_stays_in_the_ball(spatial_dims):
    network = small_unet(spatial_dims)
    image, label = disk_batch(1, size=16, spatial_dims=3)
    for result in (
        iterative_fgsm(network, image, label, 0.05, alpha=0.01, clip_range=(0, 1)),
        pgd(network, image, label, 0.05, alpha=0.01, steps=3, generator=torch.Generator().manual_seed(1)),
    ):
        assert result.shape == image.shape
        assert float((result - image).abs().max()) <= 0.05 + 1e-6


def test_pgd_is_deterministic_with_a_generator_and_random_without_equal_seeds():
    network = small_unet()
    image, label = disk_batch(2)

    def run(seed):
        return pgd(network, image, label, 0.05, alpha=0.01, steps=2, generator=torch.Generator().manual_seed(seed))

    assert torch.equal(run(3), run(3))
    assert not torch.equal(run(3), run(4))
    no_start = pgd(network, image, label, 0.05, alpha=0.01, steps=2, random_start=False)
    assert torch.equal(no_start, iterative_fgsm(network, image, label, 0.05, alpha=0.01, steps=2))


def test_pgd_epsilon_zero_returns_input_even_with_random_start():
    image, label = disk_batch(2)
    result = pgd(small_unet(), image, label, torch.tensor([0.0, 0.1]), alpha=0.01, steps=2)
    assert torch.equal(result[0], image[0])
    assert not torch.equal(result[1], image[1])


def test_segpgd_loss_weights_correct_and_wrong_voxels():
    logits = torch.tensor([[[[2.0, 1.0]], [[0.0, 0.0]]]], dtype=torch.float64)  # predicts class 0 at both voxels
    label = torch.tensor([[[[0, 1]]]])
    per_voxel = torch.nn.functional.cross_entropy(logits, label[:, 0], reduction="none").flatten()
    lam = torch.tensor([0.25], dtype=torch.float64)
    expected = 0.75 * per_voxel[0] + 0.25 * per_voxel[1]
    assert torch.allclose(segpgd_loss(logits, label, lam), expected)


def test_segpgd_is_at_least_as_strong_as_its_first_step(trained):
    image, label = disk_batch(4, seed=9)
    generator = torch.Generator().manual_seed(0)
    result = segpgd(trained, image, label, 0.06, alpha=0.01, steps=8, generator=generator, clip_range=(0, 1))
    assert float((result - image).abs().max()) <= 0.06 + 1e-6
    with torch.no_grad():
        assert summed_cross_entropy(trained(result), label) > summed_cross_entropy(trained(image), label)


def test_iterative_bad_inputs():
    network, image, label = linear_pixel_model(), torch.rand(2, 1, 4, 4), torch.zeros(2, 1, 4, 4, dtype=torch.long)
    with pytest.raises(ValueError, match="alpha must be >= 0"):
        iterative_fgsm(network, image, label, 0.1, alpha=-0.01)
    with pytest.raises(ValueError, match="alpha must be > 0"):
        iterative_fgsm(network, image, label, 0.1, alpha=0.0)
    with pytest.raises(ValueError, match="steps must be"):
        iterative_fgsm(network, image, label, 0.1, alpha=0.01, steps=-1)
    with pytest.raises(ValueError, match="steps must be"):
        pgd(network, image, label, 0.1, alpha=0.01, steps=torch.tensor([1, 2, 3]))


ITERATIVE_ATTACKS = {
    "iterative_fgsm": lambda net, x, y: iterative_fgsm(net, x, y, 0.05, alpha=0.02, clip_range=(0, 1)),
    "pgd": lambda net, x, y: pgd(
        net, x, y, 0.05, alpha=0.02, steps=3, generator=torch.Generator().manual_seed(1), clip_range=(0, 1)
    ),
    "segpgd": lambda net, x, y: segpgd(
        net, x, y, 0.05, alpha=0.02, steps=3, generator=torch.Generator().manual_seed(1), clip_range=(0, 1)
    ),
}


@pytest.mark.parametrize("name", sorted(ITERATIVE_ATTACKS))
def test_iterative_attacks_work_under_no_grad_and_inference_mode(name):
    attack = ITERATIVE_ATTACKS[name]
    network = small_unet()
    image, label = disk_batch(2)
    reference = attack(network, image, label)
    assert not torch.equal(reference, image)
    with torch.no_grad():
        assert torch.equal(attack(network, image, label), reference)
    with torch.inference_mode():
        result = attack(network, image.clone(), label.clone())
    assert torch.equal(result, reference)
    assert not result.requires_grad


def test_segpgd_weights_are_t_over_2T_per_sample_at_every_step(monkeypatch):
    import monai_advseg.attacks.iterative as iterative

    calls = []
    real_loss = iterative.segpgd_loss

    def recording_loss(logits, label, weight_wrong, targeted=False):
        calls.append((label.clone(), weight_wrong.tolist()))
        return real_loss(logits, label, weight_wrong, targeted=targeted)

    monkeypatch.setattr(iterative, "segpgd_loss", recording_loss)
    image, label = disk_batch(4)
    totals = [2, 4, 0, 3]
    generator = torch.Generator().manual_seed(0)
    segpgd(small_unet(), image, label, 0.05, alpha=0.01, steps=torch.tensor(totals), generator=generator)
    assert len(calls) == max(totals)
    for t, (step_label, weights) in enumerate(calls):
        active = [i for i, total in enumerate(totals) if total > t]
        assert torch.equal(step_label, label[active])  # the weights belong to these samples, in this order
        assert weights == [t / (2 * totals[i]) for i in active]


def test_segpgd_weighting_of_still_correct_and_already_wrong_voxels():
    # logits (0, 2x) with x in [0.5, 1]: every voxel predicts class 1 and keeps doing so within the ball, so voxels
    # labelled 1 stay correct (weight 1 - lambda_t > 0 at every step) and voxels labelled 0 stay wrong (weight
    # lambda_t = t / (2T): 0 at the first step, > 0 afterwards). Sign steps move them T and T - 1 times.
    image = 0.5 + 0.5 * torch.rand(2, 1, 6, 6)
    label = (torch.rand(2, 1, 6, 6) > 0.5).long()
    totals = torch.tensor([2, 4])
    alpha = 0.05
    result = segpgd(
        linear_pixel_model(), image, label, 1.0, alpha=alpha, steps=totals, random_start=False, clip_range=(0, 2)
    )
    moves = (totals.view(2, 1, 1, 1) - (label == 0).long()) * alpha
    expected = image + torch.where(label == 1, -moves, moves)
    assert torch.allclose(result, expected, atol=1e-6)


def test_targeted_segpgd_first_pushes_the_voxels_not_yet_at_the_target():
    # The same model as above predicts class 1 everywhere. Targeted, voxels whose target is 1 are already fooled
    # (weight lambda_t: still at the first step) and voxels whose target is 0 are not yet (weight 1 - lambda_t). The
    # old weighting had the roles swapped, so its first step moved only the voxels already at the target.
    image = 0.5 + 0.5 * torch.rand(2, 1, 6, 6)
    target = (torch.rand(2, 1, 6, 6) > 0.5).long()
    totals = torch.tensor([2, 4])
    alpha = 0.05
    result = segpgd(
        linear_pixel_model(),
        image,
        target,
        1.0,
        alpha=alpha,
        steps=totals,
        random_start=False,
        clip_range=(0, 2),
        targeted=True,
    )
    moves = (totals.view(2, 1, 1, 1) - (target == 1).long()) * alpha
    # descending the cross-entropy towards the target: up towards class 1, down towards class 0
    expected = image + torch.where(target == 1, moves, -moves)
    assert torch.allclose(result, expected, atol=1e-6)


class _CountingModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inner = linear_pixel_model()
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.inner(x)


@pytest.mark.parametrize("intensity_range", [(-1024.0, 3071.0), (0.0, 4095.0), (-175.0, 250.0), (0.0, 1.0)])
@pytest.mark.parametrize("as_tensor", [False, True])
def test_derived_step_count_is_kurakin_of_the_levels(intensity_range, as_tensor):
    # steps=None derives kurakin_steps(epsilon / alpha). In float32 the ratio of 12 levels in HU is 12.000001 and
    # ceil(1.25 r) counted 16 iterations instead of 15 (12..30 levels in HU, 22 and 28 in (-175, 250)).
    image = torch.full((1, 1, 2, 2), 0.5 * (intensity_range[0] + intensity_range[1]))
    label = torch.zeros(1, 1, 2, 2, dtype=torch.long)
    alpha = levels_to_epsilon(1, intensity_range)
    for levels in PAPER_EPSILON_LEVELS:
        epsilon = levels_to_epsilon(levels, intensity_range)
        if as_tensor:
            epsilon = torch.tensor([epsilon], dtype=torch.float32)
        model = _CountingModel()
        iterative_fgsm(model, image, label, epsilon, alpha=alpha, clip_range=intensity_range)
        assert model.calls == kurakin_steps(levels), (levels, model.calls)
