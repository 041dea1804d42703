"""APGD: the step-size schedule against a hand-computed trace, the segmentation losses against their formulas,
strength against PGD on a trained model, and bad input."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from tiny_models import disk_batch, trained_small_unet
from torch import nn

from monai_advseg.attacks import pgd
from monai_advseg.attacks.apgd import apgd, apgd_checkpoints
from monai_advseg.attacks.losses import (
    dice_loss,
    jensen_shannon_loss,
    masked_cross_entropy,
    masked_spherical_loss,
    per_sample_cross_entropy,
)


def test_checkpoints_follow_the_paper():
    # Croce & Hein 2020: p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06); w_j = ceil(p_j N)
    assert apgd_checkpoints(100) == (22, 41, 57, 70, 80, 87, 93, 99)
    assert apgd_checkpoints(10) == (3, 5, 6, 7, 8, 9)
    assert apgd_checkpoints(1) == ()


def _reference_trace(x0: float, eps: float, steps: int, objective, slope_sign) -> tuple[list[float], list[float]]:
    """APGD by hand on one scalar: the iterates x_0..x_N and the step size used at each step."""
    checkpoints = apgd_checkpoints(steps)

    def project(value: float) -> float:
        return min(max(value, x0 - eps), x0 + eps)

    eta, x, previous = 2 * eps, x0, x0
    best_value, best_x = objective(x0), x0
    last_value, rises, last_checkpoint = objective(x0), 0, 0
    eta_at_checkpoint, best_at_checkpoint = eta, best_value
    iterates, etas = [x0], []
    for t in range(steps):
        value = objective(x)
        if t > 0:
            rises += value > last_value
            last_value = value
            if value > best_value:
                best_value, best_x = value, x
            if t in checkpoints:
                period = t - last_checkpoint
                halve = rises < 0.75 * period or (eta == eta_at_checkpoint and best_value == best_at_checkpoint)
                if halve:
                    eta /= 2
                    x = best_x
                rises, last_checkpoint = 0, t
                eta_at_checkpoint, best_at_checkpoint = eta, best_value
        etas.append(eta)
        z = project(x + eta * slope_sign(x))
        candidate = z if t == 0 else x + 0.75 * (z - x) + 0.25 * (x - previous)
        previous, x = x, project(candidate)
        iterates.append(x)
    return iterates, etas


class _Recorder(nn.Module):
    """The identity, recording every input it sees (the iterates the loop evaluates)."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[float] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.extend(float(v) for v in x.detach().flatten())
        return x


def test_step_size_schedule_matches_a_hand_computed_trace():
    # loss(x) = -(x - 0.3)^2 on one voxel: its maximum lies inside the ball, so the sign steps overshoot, the loss
    # stops rising, and the checkpoints halve the step and restart from the best point.
    centre = 0.3

    def loss(logits, label):
        return -((logits.double() - centre) ** 2).flatten(1).sum(dim=1)

    steps, eps = 12, 1.0
    recorder = _Recorder()
    image = torch.zeros(1, 1, 1, 1, dtype=torch.float64)
    result = apgd(recorder, image, torch.zeros_like(image), eps, steps=steps, loss=loss, random_start=False)
    expected, _ = _reference_trace(
        0.0, eps, steps, lambda x: -((x - centre) ** 2), lambda x: math.copysign(1, centre - x)
    )
    # the loop evaluates x_0 .. x_{N-1} with gradients, then x_N once more to score it
    assert recorder.seen == pytest.approx(expected, abs=1e-12)
    best = max(expected, key=lambda x: -((x - centre) ** 2))
    assert float(result) == pytest.approx(best, abs=1e-12)
    assert len(set(round(v, 9) for v in expected)) > 4  # the trace is not trivial: several distinct iterates


@pytest.fixture(scope="module")
def trained() -> nn.Module:
    return trained_small_unet()


def test_losses_against_their_formulas():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    label = torch.randint(0, 3, (2, 1, 4, 4))
    indices = label[:, 0]
    ce = F.cross_entropy(logits, indices, reduction="none")
    correct = (logits.argmax(1) == indices).double()
    assert torch.allclose(per_sample_cross_entropy(logits, label), ce.flatten(1).sum(1))
    assert torch.allclose(masked_cross_entropy(logits, label), (correct * ce).flatten(1).sum(1))
    p = torch.softmax(logits, 1)
    q = F.one_hot(indices, 3).movedim(-1, 1).double()
    m = (p + q) / 2
    js = 0.5 * (p * (p / m).log()).sum(1) + 0.5 * (q * (q.clamp_min(1e-300) / m).log() * (q > 0)).sum(1)
    assert torch.allclose(jensen_shannon_loss(logits, label), js.flatten(1).sum(1), atol=1e-9)
    normalised = logits / logits.norm(dim=1, keepdim=True)
    spherical = -(correct * normalised.gather(1, indices[:, None])[:, 0]).flatten(1).sum(1)
    assert torch.allclose(masked_spherical_loss(logits, label), spherical)
    soft = torch.softmax(logits, 1)[:, 1:]
    hard = q[:, 1:]
    dice = 1 - (2 * (soft * hard).flatten(2).sum(2) + 1e-5) / ((soft + hard).flatten(2).sum(2) + 1e-5)
    assert torch.allclose(dice_loss(logits, label), dice.mean(1), atol=1e-9)
    # a sigmoid output reads as the 2-class logits (0, z)
    single = torch.randn(2, 1, 4, 4, dtype=torch.float64)
    binary = torch.randint(0, 2, (2, 1, 4, 4))
    assert torch.allclose(
        per_sample_cross_entropy(single, binary),
        F.binary_cross_entropy_with_logits(single, binary.double(), reduction="none").flatten(1).sum(1),
    )


def _foreground_dice(network: nn.Module, image: torch.Tensor, label: torch.Tensor) -> float:
    with torch.no_grad():
        prediction = network(image).argmax(1)
    truth = label[:, 0].bool()
    hits = (prediction.bool() & truth).sum().double()
    return float(2 * hits / (prediction.bool().sum() + truth.sum()))


def test_apgd_is_at_least_as_strong_as_pgd_at_the_same_budget(trained):
    images, labels = disk_batch(4, seed=50)
    eps, steps = 4 / 255, 20
    strong = apgd(
        trained,
        images,
        labels,
        eps,
        steps=steps,
        loss="ce",
        clip_range=(0, 1),
        generator=torch.Generator().manual_seed(0),
    )
    weak = pgd(
        trained,
        images,
        labels,
        eps,
        alpha=eps / 4,
        steps=steps,
        clip_range=(0, 1),
        generator=torch.Generator().manual_seed(0),
    )
    assert bool(((strong - images).abs() <= torch.tensor(eps)).all())
    clean = _foreground_dice(trained, images, labels)
    assert _foreground_dice(trained, strong, labels) <= _foreground_dice(trained, weak, labels) + 1e-3 < clean


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"loss": "hinge"}, "unknown loss 'hinge'"),
        ({"loss": "masked_ce", "targeted": True}, "untargeted only"),
        ({"steps": 0}, "steps must be >= 1"),
        ({"n_restarts": 0}, "n_restarts"),
    ],
)
def test_bad_input_is_a_clear_error(trained, kwargs, message):
    images, labels = disk_batch(1, seed=51)
    arguments = {"steps": 3, **kwargs}
    with pytest.raises(ValueError, match=message):
        apgd(trained, images, labels, 4 / 255, **arguments)
