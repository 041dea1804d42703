"""Invariants every attack of the core keeps: the L-inf ball, the clip range (any units), epsilon 0, input checks."""

from __future__ import annotations

from fractions import Fraction

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from tiny_models import linear_pixel_model, small_unet

from monai_advseg.attacks import fgsm, fgsm_pair, inverse_fgsm, iterative_fgsm, levels_to_epsilon, pgd, segpgd
from monai_advseg.attacks.gradient import project


def _outside_ball(result: torch.Tensor, image: torch.Tensor, epsilon: torch.Tensor) -> int:
    """How many voxels lie further than ``epsilon`` from ``image``, counted in exact rational arithmetic.

    ``epsilon`` is taken in the image's dtype (the attacks convert it) and broadcast to the image.
    """
    bound = epsilon.to(image.dtype).expand_as(image).double().flatten().tolist()
    pairs = zip(result.double().flatten().tolist(), image.double().flatten().tolist(), bound, strict=True)
    return sum(abs(Fraction(r) - Fraction(x)) > Fraction(e) for r, x, e in pairs)


def _pgd(network, image, label, epsilon, *, alpha, steps, clip_range):
    generator = torch.Generator().manual_seed(1)
    return pgd(network, image, label, epsilon, alpha=alpha, steps=steps, generator=generator, clip_range=clip_range)


def _segpgd(network, image, label, epsilon, *, alpha, steps, clip_range):
    generator = torch.Generator().manual_seed(1)
    return segpgd(network, image, label, epsilon, alpha=alpha, steps=steps, generator=generator, clip_range=clip_range)


# Every attack as attack(network, image, label, epsilon, alpha=..., steps=..., clip_range=...) -> tuple of results.
ATTACKS = {
    "fgsm": lambda net, x, y, eps, *, alpha, steps, clip_range: (fgsm(net, x, y, eps, clip_range=clip_range),),
    "inverse_fgsm": lambda net, x, y, eps, *, alpha, steps, clip_range: (
        inverse_fgsm(net, x, y, eps, clip_range=clip_range),
    ),
    "fgsm_pair": lambda net, x, y, eps, *, alpha, steps, clip_range: fgsm_pair(net, x, y, eps, clip_range=clip_range),
    "iterative_fgsm": lambda net, x, y, eps, *, alpha, steps, clip_range: (
        iterative_fgsm(net, x, y, eps, alpha=alpha, steps=steps, clip_range=clip_range),
    ),
    "pgd": lambda *args, **kwargs: (_pgd(*args, **kwargs),),
    "segpgd": lambda *args, **kwargs: (_segpgd(*args, **kwargs),),
}
NAMES = sorted(ATTACKS)


@pytest.mark.parametrize("name", NAMES)
@settings(max_examples=6)
@given(
    eps_fraction=st.lists(st.floats(min_value=0.0, max_value=0.5), min_size=2, max_size=2),
    alpha_fraction=st.lists(st.floats(min_value=0.01, max_value=0.5), min_size=2, max_size=2),
    lo=st.sampled_from([-3.0, 0.0, -1024.0]),
    width=st.sampled_from([1.0, 4.0, 4095.0]),
    steps=st.integers(min_value=1, max_value=3),
    seed=st.integers(min_value=0, max_value=10_000),
)
def test_results_stay_in_the_ball_and_the_clip_range(name, eps_fraction, alpha_fraction, lo, width, steps, seed):
    generator = torch.Generator().manual_seed(seed)
    hi = lo + width
    image = lo + width * torch.rand(2, 1, 8, 8, generator=generator)
    label = (torch.rand(2, 1, 8, 8, generator=generator) > 0.5).long()
    # Per-sample epsilon and alpha, in the units of the clip range (HU when it is (-1024, 3071)).
    epsilon = torch.tensor(eps_fraction) * width
    alpha = torch.tensor(alpha_fraction) * width
    results = ATTACKS[name](small_unet(), image, label, epsilon, alpha=alpha, steps=steps, clip_range=(lo, hi))
    bound = epsilon.view(2, 1, 1, 1)  # exact: no allowance for the float32 rounding of x +- eps
    for result in results:
        assert result.shape == image.shape and result.dtype == image.dtype
        assert _outside_ball(result, image, bound) == 0
        assert bool((result >= lo).all()) and bool((result <= hi).all())
        for i in range(2):
            if float(epsilon[i]) == 0:
                assert torch.equal(result[i], image[i])


@pytest.mark.parametrize("levels", [0.5, 1.0, 7.0])
@pytest.mark.parametrize("name", NAMES)
def test_ball_is_exact_for_hounsfield_inputs(name, levels):
    """HU inputs at small epsilons: float32 ``x +- eps`` overshoots the ball by one ulp at most voxels unless the
    projection steps back, so the bound is checked without any tolerance (and the ball is reached, not undershot)."""
    generator = torch.Generator().manual_seed(int(levels * 2))
    image = torch.empty(2, 1, 32, 32).uniform_(-1024, 3071, generator=generator)
    label = (torch.rand(2, 1, 32, 32, generator=generator) > 0.5).long()
    epsilon = torch.tensor([levels_to_epsilon(levels, (-1024, 3071))] * 2)
    network = linear_pixel_model(slope=1e-3)
    results = ATTACKS[name](network, image, label, epsilon, alpha=epsilon, steps=3, clip_range=(-1024, 3071))
    for result in results:
        distance = (result - image).abs()
        assert _outside_ball(result, image, epsilon[0]) == 0
        inside = (image - epsilon[0] > -1024) & (image + epsilon[0] < 3071)
        assert float((epsilon[0] - distance[inside]).max()) < 1e-3  # at most an ulp short of the surface


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
@pytest.mark.parametrize(
    ("low", "width", "epsilon"),
    [(0.0, 0.1, 0.1), (0.0, 0.2, 32 / 255), (-1024.0, 4095.0, 4095 / 255 / 2), (-0.01, 0.02, 1e-3)],
    ids=["dark-unit-range", "unit-range-32-levels", "hounsfield-half-level", "around-zero"],
)
def test_projection_is_exact_in_every_float_dtype(dtype, low, width, epsilon):
    """x +- eps rounded to the image's dtype overshoots the ball near zero (where the rounded difference hides it)
    and at large magnitudes; checked in exact rational arithmetic, and every voxel pushed out is back on the surface
    or within one representable step of it."""
    generator = torch.Generator().manual_seed(0)
    image = (low + width * torch.rand(2048, generator=generator, dtype=torch.float64)).to(dtype)
    eps = torch.tensor(epsilon, dtype=dtype)
    push = torch.where(torch.rand(2048, generator=generator) > 0.5, 3.0, -3.0).to(dtype)
    result = project(image + push * eps, image, eps, None)
    assert result.dtype == dtype
    assert _outside_ball(result, image, eps) == 0
    surface = torch.where(push > 0, image + eps, image - eps)  # the dtype's nearest value to the ball's surface
    assert bool((result == surface).logical_or(result == torch.nextafter(surface, image)).all())


@pytest.mark.parametrize("name", NAMES)
def test_hounsfield_range_is_kept_and_not_squashed_to_unit_range(name):
    # logits (0, 1e-3 x): the cross-entropy gradient has sign -1 where y = 1 and +1 where y = 0 for every HU value,
    # so every attack ends at (x + eps * sign) clipped to the HU range (enough steps to cross the ball from anywhere).
    network = linear_pixel_model(slope=1e-3)
    image = torch.empty(2, 1, 8, 8).uniform_(-1024, 3071)
    label = (torch.rand(2, 1, 8, 8) > 0.5).long()
    epsilon = torch.tensor([4095 / 255 * 8, 4095 / 255 * 2])
    sign = torch.where(label == 1, -1.0, 1.0)
    results = ATTACKS[name](network, image, label, epsilon, alpha=epsilon / 2, steps=6, clip_range=(-1024, 3071))
    for result, direction in zip(results, (1.0, -1.0) if name == "fgsm_pair" else (1.0,), strict=True):
        direction = -1.0 if name == "inverse_fgsm" else direction
        expected = (image + direction * epsilon.view(2, 1, 1, 1) * sign).clamp(-1024, 3071)
        assert torch.allclose(result, expected, rtol=0, atol=1e-3)
        assert float(result.min()) < -500 and float(result.max()) > 2500


@pytest.mark.parametrize("name", NAMES)
def test_epsilon_zero_returns_the_input_unchanged(name):
    image = torch.rand(2, 1, 8, 8) * 5 - 2  # partly outside the clip range: still unchanged
    label = (torch.rand(2, 1, 8, 8) > 0.5).long()
    for result in ATTACKS[name](small_unet(), image, label, 0.0, alpha=0.1, steps=3, clip_range=(0, 1)):
        assert torch.equal(result, image)
        assert result.data_ptr() != image.data_ptr()


BAD_INPUTS = {
    "negative epsilon": ({"epsilon": -0.1}, "epsilon must be >= 0"),
    "negative per-sample epsilon": ({"epsilon": torch.tensor([0.1, -0.1])}, "epsilon must be >= 0"),
    "nan epsilon": ({"epsilon": float("nan")}, "epsilon must be finite"),
    "epsilon of the wrong batch size": (
        {"epsilon": torch.tensor([0.1, 0.2, 0.3])},
        r"epsilon must be a scalar or a \(2,\) tensor",
    ),
    "label spatial shape mismatch": ({"label": torch.zeros(2, 1, 8, 9, dtype=torch.long)}, "does not match image"),
    "label batch mismatch": ({"label": torch.zeros(3, 1, 8, 8, dtype=torch.long)}, "does not match image"),
    "nan image": ({"image": torch.full((2, 1, 8, 8), float("nan"))}, "NaN or Inf"),
    "inf image": ({"image": torch.full((2, 1, 8, 8), float("inf"))}, "NaN or Inf"),
    "clip_range lo > hi": ({"clip_range": (1.0, 0.0)}, "lo < hi"),
    "clip_range lo == hi": ({"clip_range": (0.0, 0.0)}, "lo < hi"),
    "non-numeric clip_range": ({"clip_range": ("low", "high")}, r"clip_range must be two numbers \(lo, hi\)"),
    "clip_range of None bounds": ({"clip_range": (None, 1.0)}, r"clip_range must be two numbers \(lo, hi\)"),
    "clip_range a string": ({"clip_range": "01"}, r"clip_range must be \(lo, hi\)"),
    "clip_range a 0-d tensor": ({"clip_range": torch.tensor(1.0)}, r"clip_range must be \(lo, hi\)"),
    "nan label": (
        {"label": torch.zeros(2, 1, 8, 8).index_fill_(2, torch.tensor([3]), float("nan"))},
        "label contains NaN",
    ),
    "inf one-hot label": (
        {"label": torch.zeros(2, 2, 8, 8).index_fill_(3, torch.tensor([0]), float("inf"))},
        "label contains NaN or Inf",
    ),
    "image without a channel axis": ({"image": torch.zeros(8, 8)}, r"image must be \(B, C, \*spatial\)"),
}


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_inputs_raise_clear_errors(name, case):
    kwargs, message = BAD_INPUTS[case]
    arguments = {
        "image": torch.rand(2, 1, 8, 8),
        "label": torch.zeros(2, 1, 8, 8, dtype=torch.long),
        "epsilon": 0.1,
        "clip_range": None,
    }
    arguments.update(kwargs)
    with pytest.raises(ValueError, match=message):
        ATTACKS[name](
            linear_pixel_model(),
            arguments["image"],
            arguments["label"],
            arguments["epsilon"],
            alpha=0.01,
            steps=2,
            clip_range=arguments["clip_range"],
        )
