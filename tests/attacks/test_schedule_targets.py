import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from monai_advseg.attacks import PAPER_EPSILON_LEVELS, inverse_mask, kurakin_steps, levels_to_epsilon


def test_kurakin_steps_paper_values():
    assert kurakin_steps(0) == 0
    assert kurakin_steps(0.5) == 1
    assert kurakin_steps(1) == 2
    assert kurakin_steps(32) == 36
    assert sum(kurakin_steps(level) for level in PAPER_EPSILON_LEVELS) == 327


@given(st.integers(min_value=1, max_value=255))
def test_kurakin_steps_matches_formula_for_whole_levels(levels):
    assert kurakin_steps(levels) == min(levels + 4, math.ceil(1.25 * levels))


@pytest.mark.parametrize("bad", [-0.5, float("nan"), float("inf")])
def test_kurakin_steps_rejects_bad_levels(bad):
    with pytest.raises(ValueError, match="levels"):
        kurakin_steps(bad)


def test_levels_to_epsilon_units():
    assert levels_to_epsilon(255, (0, 1)) == pytest.approx(1.0)
    assert levels_to_epsilon(1, (-1024, 3071)) == pytest.approx(4095 / 255)
    assert levels_to_epsilon([0.5, 32], (0, 255)) == pytest.approx([0.5, 32.0])
    with pytest.raises(ValueError, match="lo < hi"):
        levels_to_epsilon(1, (1, 1))
    with pytest.raises(ValueError, match=">= 0"):
        levels_to_epsilon([1, -2], (0, 1))


def test_inverse_mask_binary_indices_and_one_hot():
    label = torch.tensor([[[[0, 1], [1, 0]]]])
    assert torch.equal(inverse_mask(label, 2), 1 - label)
    one_hot = torch.cat([1 - label, label], dim=1).float()
    inverse = inverse_mask(one_hot, 2)
    assert inverse.dtype == one_hot.dtype
    assert torch.equal(inverse, torch.cat([label, 1 - label], dim=1).float())


def test_inverse_mask_multiclass_swaps_foreground_and_background():
    label = torch.tensor([[[0, 1, 2, 3]]])[None]
    assert inverse_mask(label, 4).flatten().tolist() == [1, 0, 0, 0]
    assert inverse_mask(label, 4, background_target=3).flatten().tolist() == [3, 0, 0, 0]
    with pytest.raises(ValueError, match="channels"):
        inverse_mask(torch.zeros(1, 3, 2, 2), 2)
