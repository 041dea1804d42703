"""The certificate's statistics against scipy and against the textbook definitions."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from scipy import stats

from monai_advseg.certify import binomial_upper_tail_p_values, clopper_pearson_lower, holm_reject


@pytest.mark.parametrize("n", [1, 7, 100])
@pytest.mark.parametrize("alpha", [0.05, 1e-3, 1e-7])
def test_clopper_pearson_lower_is_scipys_exact_interval(n, alpha):
    counts = torch.arange(n + 1).reshape(-1, 1).repeat(1, 2)  # repeated counts go through the per-distinct table
    lower = clopper_pearson_lower(counts, n, alpha)
    assert lower.shape == counts.shape and lower.dtype == torch.float64
    for k in range(n + 1):
        expected = stats.binomtest(k, n).proportion_ci(confidence_level=1 - 2 * alpha, method="exact").low
        # binomtest finds the bound by root finding (off by ~3e-7 relative at alpha 1e-7); the beta quantile is exact
        assert lower[k, 0].item() == pytest.approx(expected, rel=1e-5, abs=1e-15)
        assert lower[k, 1] == lower[k, 0]
    assert lower[0, 0] == 0.0
    # closed forms: P(X >= 1) = 1 - (1 - p)^n = alpha at k = 1, p^n = alpha at k = n
    assert lower[1, 0].item() == pytest.approx(-math.expm1(math.log1p(-alpha) / n), rel=1e-12)
    assert lower[n, 0].item() == pytest.approx(alpha ** (1 / n), rel=1e-12)  # the closed form at k = n
    assert bool((lower.diff(dim=0) > 0).all())  # more successes, higher bound


def test_clopper_pearson_lower_covers_the_true_probability():
    # the bound is below p in at least 1 - alpha of the experiments (exact tests are conservative)
    generator = torch.Generator().manual_seed(0)
    p, n, alpha = 0.8, 50, 0.1
    counts = torch.binomial(torch.full((20000,), float(n)), torch.full((20000,), p), generator=generator).long()
    miss_rate = (clopper_pearson_lower(counts, n, alpha) > p).double().mean().item()
    assert miss_rate <= alpha


def test_binomial_p_values_are_scipys_one_sided_test():
    n, tau = 40, 0.75
    counts = torch.arange(n + 1)
    p_values = binomial_upper_tail_p_values(counts, n, tau)
    for k in range(n + 1):
        assert p_values[k].item() == pytest.approx(
            stats.binomtest(k, n, tau, alternative="greater").pvalue, rel=1e-9, abs=1e-300
        )
    assert p_values[0] == pytest.approx(1.0)
    assert p_values[n].item() == pytest.approx(tau**n, rel=1e-12)


def _holm_by_definition(p_values: list[float], alpha: float) -> list[bool]:
    """Holm (1979) as written: walk the hypotheses in the order of their p-values, reject while p_(j) <= alpha /
    (m - j + 1), stop at the first that is not; tied p-values in every order give the same answer."""
    m = len(p_values)
    answers = set()
    for order in itertools.permutations(range(m)) if m <= 6 else [sorted(range(m), key=p_values.__getitem__)]:
        if [p_values[i] for i in order] != sorted(p_values):
            continue
        rejected = [False] * m
        for rank, index in enumerate(order, start=1):
            if p_values[index] > alpha / (m - rank + 1):
                break
            rejected[index] = True
        answers.add(tuple(rejected))
    assert len(answers) == 1, "ties must not change Holm's decisions"
    return list(answers.pop())


def test_holm_textbook_example():
    # Holm's procedure on four tests at alpha = 0.05: 0.005 <= 0.05/4, 0.01 <= 0.05/3, then 0.03 > 0.05/2 stops
    rejected = holm_reject(torch.tensor([0.01, 0.04, 0.03, 0.005]), 0.05)
    assert rejected.tolist() == [True, False, False, True]


@pytest.mark.parametrize("seed", range(20))
def test_holm_matches_the_step_down_definition(seed):
    generator = torch.Generator().manual_seed(seed)
    m = int(torch.randint(1, 7, (1,), generator=generator))
    # p-values from a small grid, so ties and values right at a threshold occur
    grid = torch.tensor([0.0, 0.001, 0.005, 0.01, 0.0125, 0.02, 0.025, 0.05, 0.3, 1.0], dtype=torch.float64)
    p_values = grid[torch.randint(0, len(grid), (m,), generator=generator)]
    assert holm_reject(p_values, 0.05).tolist() == _holm_by_definition(p_values.tolist(), 0.05)


def test_holm_rejects_at_least_bonferroni_and_keeps_the_shape():
    generator = torch.Generator().manual_seed(1)
    p_values = torch.rand(3, 40, generator=generator, dtype=torch.float64) ** 6
    rejected = holm_reject(p_values, 0.05)
    assert rejected.shape == p_values.shape
    bonferroni = p_values <= 0.05 / p_values.numel()
    assert bool((rejected | ~bonferroni).all())
    assert int(rejected.sum()) > int(bonferroni.sum())  # strictly more on this draw: Holm's extra power
    assert rejected.reshape(-1).tolist() == _holm_by_definition(p_values.reshape(-1).tolist(), 0.05)


def test_bad_statistics_inputs_name_the_value():
    with pytest.raises(ValueError, match="alpha"):
        clopper_pearson_lower([1], 3, 0.0)
    with pytest.raises(ValueError, match="n "):
        clopper_pearson_lower([1], 0, 0.1)
    with pytest.raises(ValueError, match=r"\[0, n\]"):
        clopper_pearson_lower([4], 3, 0.1)
    with pytest.raises(ValueError, match="whole"):
        clopper_pearson_lower([1.5], 3, 0.1)
    with pytest.raises(ValueError, match="tau"):
        binomial_upper_tail_p_values([1], 3, 1.0)
    with pytest.raises(ValueError, match="p-values"):
        holm_reject([0.1, float("nan")], 0.05)
    with pytest.raises(ValueError, match="alpha"):
        holm_reject([0.1], 1.0)
