"""Statistics for ``bench compare`` (numpy only; no scipy).

- :func:`mann_whitney_u`: two-sided Mann-Whitney U test. When both samples have at most
  :data:`EXACT_MAX_N` values and no value is tied, the p-value is exact: the null
  distribution of U (all ``C(m+n, m)`` orderings equally likely) is counted by dynamic
  programming. Otherwise it uses the normal approximation with the tie-corrected variance
  and a 0.5 continuity correction. Two-sided p = ``min(1, 2 * min(P(U <= u), P(U >= u)))``.
- :func:`bootstrap_ratio_ci`: percentile bootstrap confidence interval of
  ``median(head) / median(base)``, both sides resampled independently with a seeded
  generator (the same inputs always give the same interval).
"""

from __future__ import annotations

import math

import numpy as np

#: Largest sample size (per side) for which the exact U distribution is used.
EXACT_MAX_N = 20


def rankdata(values) -> np.ndarray:
    """Ranks 1..N of ``values``, ties getting the mean of the ranks they span."""
    a = np.asarray(values, dtype=np.float64)
    order = np.argsort(a, kind="mergesort")
    s = a[order]
    # start index of each run of equal values
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
    ends = np.r_[starts[1:], len(s)]
    mean_rank = (starts + ends + 1) / 2.0  # mean of ranks starts+1 .. ends
    ranks = np.empty(len(a))
    ranks[order] = np.repeat(mean_rank, ends - starts)
    return ranks


def u_statistic(x, y) -> float:
    """U of ``x``: the number of pairs (xi, yj) with xi > yj, ties counting one half."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    ranks = rankdata(np.concatenate([x, y]))
    m = len(x)
    return float(ranks[:m].sum() - m * (m + 1) / 2)


def exact_u_distribution(m: int, n: int) -> np.ndarray:
    """Probabilities of U = 0..m*n under the null for sizes ``m`` and ``n`` (no ties).

    Counts by the recursion ``c(i, j, u) = c(i-1, j, u-j) + c(i, j-1, u)``: the largest of
    the i+j values is either an x (beating all j y's) or a y (beating nothing)."""
    # counts[j] = distribution for (i, j) over u; iterate i upward.
    counts = [np.zeros(m * n + 1) for _ in range(n + 1)]
    for j in range(n + 1):
        counts[j][0] = 1.0  # i = 0: U = 0 in one way
    for _ in range(1, m + 1):
        new = [np.zeros(m * n + 1) for _ in range(n + 1)]
        new[0][0] = 1.0
        for j in range(1, n + 1):
            shifted = np.zeros(m * n + 1)
            shifted[j:] = counts[j][:m * n + 1 - j]
            new[j] = shifted + new[j - 1]
        counts = new
    dist = counts[n]
    return dist / dist.sum()


def mann_whitney_u(x, y) -> tuple[float, float, str]:
    """Two-sided Mann-Whitney U test of ``x`` against ``y`` -> (U of x, p-value, method),
    method ``"exact"`` or ``"normal"`` (see the module docstring)."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    m, n = len(x), len(y)
    if m == 0 or n == 0:
        raise ValueError("mann_whitney_u needs at least one value per side")
    u = u_statistic(x, y)
    both = np.concatenate([x, y])
    _, tie_counts = np.unique(both, return_counts=True)
    ties = bool((tie_counts > 1).any())
    if m <= EXACT_MAX_N and n <= EXACT_MAX_N and not ties:
        dist = exact_u_distribution(m, n)
        k = int(round(u))
        p = 2 * min(dist[:k + 1].sum(), dist[k:].sum())
        return u, float(min(1.0, p)), "exact"
    big_n = m + n
    tie_term = float((tie_counts.astype(np.float64) ** 3 - tie_counts).sum())
    var = m * n / 12.0 * ((big_n + 1) - tie_term / (big_n * (big_n - 1)))
    if var <= 0:  # every value equal: no evidence of any difference
        return u, 1.0, "normal"
    z = max(0.0, abs(u - m * n / 2.0) - 0.5) / math.sqrt(var)
    return u, float(min(1.0, math.erfc(z / math.sqrt(2.0)))), "normal"


def bootstrap_ratio_ci(base, head, *, resamples: int = 2000, confidence: float = 0.95,
                       seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap CI of ``median(head) / median(base)`` (seeded, deterministic)."""
    base, head = np.asarray(base, dtype=np.float64), np.asarray(head, dtype=np.float64)
    rng = np.random.default_rng(seed)
    b = np.median(rng.choice(base, size=(resamples, len(base))), axis=1)
    h = np.median(rng.choice(head, size=(resamples, len(head))), axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratios = h / b
    alpha = (1 - confidence) / 2
    lo, hi = np.quantile(ratios, [alpha, 1 - alpha])
    return float(lo), float(hi)
