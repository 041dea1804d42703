"""The statistics of a randomized-smoothing certificate: binomial bounds, binomial tests and the Holm correction.

Every function takes per-voxel counts (or p-values) as tensors of any shape and answers on the same device. The scipy
special functions run once per *distinct* count (a voxel's count is one of ``0..n``), so a 3D volume of millions of
voxels costs a table of at most ``n + 1`` values and one gather.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import stats

__all__ = ["binomial_upper_tail_p_values", "clopper_pearson_lower", "holm_reject"]


def _check_level(name: str, value: float) -> float:
    value = float(value)
    if not 0.0 < value < 1.0:
        raise ValueError(f"{name} must be in (0, 1), got {value}")
    return value


def _check_trials(n: int) -> int:
    if isinstance(n, bool) or int(n) != n or n < 1:
        raise ValueError(f"n (the number of trials) must be an integer >= 1, got {n!r}")
    return int(n)


def _check_counts(counts: torch.Tensor | np.ndarray | list, n: int) -> torch.Tensor:
    counts = torch.as_tensor(counts)
    if counts.dtype.is_floating_point and not torch.equal(counts, counts.round()):
        raise ValueError("counts must be whole numbers of successes")
    counts = counts.long()
    if counts.numel() and (int(counts.min()) < 0 or int(counts.max()) > n):
        raise ValueError(f"counts must lie in [0, n] = [0, {n}], got [{int(counts.min())}, {int(counts.max())}]")
    return counts


def _per_distinct_count(counts: torch.Tensor, function) -> torch.Tensor:
    """``function(k)`` (numpy in, numpy out) evaluated once per distinct count, gathered back to ``counts``' shape."""
    distinct, inverse = torch.unique(counts, return_inverse=True)
    values = np.asarray(function(distinct.cpu().numpy()), dtype=np.float64)
    return torch.as_tensor(values, device=counts.device)[inverse]


def clopper_pearson_lower(counts: torch.Tensor | np.ndarray | list, n: int, alpha: float) -> torch.Tensor:
    """One-sided Clopper-Pearson (exact binomial) lower confidence bound of a success probability.

    For ``k`` successes in ``n`` trials the bound is the ``alpha`` quantile of ``Beta(k, n - k + 1)`` (0 when
    ``k = 0``; ``alpha ** (1 / n)`` when ``k = n``): ``P(p >= bound) >= 1 - alpha`` for every true ``p``. It is the
    lower end of the two-sided exact interval at confidence ``1 - 2 alpha``.

    Args:
        counts: successes per voxel, integers in ``[0, n]``, any shape.
        n: trials per voxel.
        alpha: the error level of each bound, in (0, 1) (pass ``alpha / m`` for a Bonferroni family of ``m``).

    Returns:
        float64 bounds of ``counts``' shape and device.

    Raises:
        ValueError: for ``n < 1``, ``alpha`` outside (0, 1) or counts outside ``[0, n]``.
    """
    n = _check_trials(n)
    alpha = _check_level("alpha", alpha)
    counts = _check_counts(counts, n)

    def bound(k: np.ndarray) -> np.ndarray:
        # Beta(0, n + 1) is degenerate at 0; scipy answers nan there
        return np.where(k > 0, stats.beta.ppf(alpha, np.maximum(k, 1), n - k + 1), 0.0)

    return _per_distinct_count(counts, bound)


def binomial_upper_tail_p_values(counts: torch.Tensor | np.ndarray | list, n: int, tau: float) -> torch.Tensor:
    """p-values of the one-sided exact binomial test of ``H0: p <= tau`` against ``p > tau``.

    The p-value of ``k`` successes in ``n`` trials is ``P(X >= k)`` for ``X ~ Binomial(n, tau)`` (scipy's
    ``binomtest(k, n, tau, alternative="greater")``).

    Args:
        counts: successes per voxel, integers in ``[0, n]``, any shape.
        n: trials per voxel.
        tau: the probability under the null hypothesis, in (0, 1).

    Returns:
        float64 p-values of ``counts``' shape and device.

    Raises:
        ValueError: for ``n < 1``, ``tau`` outside (0, 1) or counts outside ``[0, n]``.
    """
    n = _check_trials(n)
    tau = _check_level("tau", tau)
    counts = _check_counts(counts, n)
    return _per_distinct_count(counts, lambda k: stats.binom.sf(k - 1, n, tau))


def holm_reject(p_values: torch.Tensor | np.ndarray | list, alpha: float) -> torch.Tensor:
    """Holm's step-down procedure: which hypotheses to reject with family-wise error rate at most ``alpha``.

    With the ``m`` p-values sorted, ``p_(1) <= ... <= p_(m)``, the hypotheses ``H_(1), ..., H_(j-1)`` are rejected
    where ``j`` is the first rank with ``p_(j) > alpha / (m - j + 1)`` (all of them if there is none). Tied p-values
    are rejected or kept together. Holm (1979) controls the family-wise error under any dependence between the tests
    and rejects everything Bonferroni (``p <= alpha / m``) rejects, and possibly more.

    Args:
        p_values: one p-value per hypothesis, in [0, 1], any shape (the family is all of them).
        alpha: the family-wise error rate, in (0, 1).

    Returns:
        A bool tensor of ``p_values``' shape and device, True where the hypothesis is rejected.

    Raises:
        ValueError: for ``alpha`` outside (0, 1) or p-values outside [0, 1] (NaN included).
    """
    alpha = _check_level("alpha", alpha)
    p_values = torch.as_tensor(p_values, dtype=torch.float64)
    if p_values.numel() and not bool(((p_values >= 0) & (p_values <= 1)).all()):
        raise ValueError("p-values must lie in [0, 1] (found a value outside, or NaN)")
    flat = p_values.reshape(-1)
    m = flat.numel()
    ordered, order = torch.sort(flat, stable=True)
    thresholds = alpha / torch.arange(m, 0, -1, dtype=torch.float64, device=flat.device)
    # the step-down stops at the first sorted p-value above its threshold; everything before it is rejected
    leading = int(torch.cumprod((ordered <= thresholds).to(torch.int8), 0).sum()) if m else 0
    rejected = torch.zeros(m, dtype=torch.bool, device=flat.device)
    rejected[order[:leading]] = True
    return rejected.reshape(p_values.shape)
