"""The few statistics the report uses, each in one place so the docs can point here.

- Mean over seeds: a Student-t 95% interval (seeds are few, 2-5; a bootstrap
  over three numbers would only ever see ten distinct resamples).
- Paired differences (an ablation): a percentile bootstrap of the mean over
  (seed, test set) pairs, because the pairs are more numerous and need not be
  normal (one test set can move much more than the others).
- Pareto front: the points no other point beats on both objectives (ties kept).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import stats

N_BOOT = 2000


def _finite(values: Sequence[float]) -> tuple[np.ndarray, int, tuple | None]:
    """The finite values, their count, and the answer when there are too few for a CI."""
    x = np.asarray(values, dtype=float)
    x = x[np.isfinite(x)]
    n = int(x.size)
    if n == 0:
        return x, n, (float("nan"), float("nan"), float("nan"), 0)
    if n < 2:
        return x, n, (float(x.mean()), float("nan"), float("nan"), n)
    return x, n, None


def t_interval(values: Sequence[float], level: float = 0.95) -> tuple[float, float, float, int]:
    """(mean, low, high, n) of the mean of `values`; NaN bounds with fewer than two values."""
    x, n, early = _finite(values)
    if early is not None:
        return early
    mean = float(x.mean())
    half = float(stats.t.ppf(0.5 + level / 2, n - 1) * x.std(ddof=1) / np.sqrt(n))
    return mean, mean - half, mean + half, n


def bootstrap_mean(values: Sequence[float], n_boot: int = N_BOOT, seed: int = 0,
                   level: float = 0.95) -> tuple[float, float, float, int]:
    """(mean, low, high, n): percentile bootstrap CI of the mean; NaN bounds below two values."""
    x, n, early = _finite(values)
    if early is not None:
        return early
    x = np.sort(x)  # the CI depends on the values only, not on the order they came in
    mean = float(x.mean())
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, n, size=(n_boot, n))].mean(axis=1)  # (n_boot,)
    low, high = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return mean, float(low), float(high), n


def pareto_mask(points: np.ndarray, maximize: Sequence[bool], rtol: float = 1e-9) -> np.ndarray:
    """True for points no other point dominates (as good on every objective, better on one).

    points: (n_points, n_objectives). Ties stay on the front: two recipes with the same
    values are both non-dominated, and values equal up to `rtol` (means over seeds that
    differ only by float rounding) count as equal. A point with a NaN is never on it.
    """
    p = np.asarray(points, dtype=float)
    signs = np.where(np.asarray(maximize), 1.0, -1.0)
    q = p * signs  # (n_points, n_objectives), now larger is better on every axis
    finite = np.all(np.isfinite(q), axis=1)
    keep = np.zeros(len(q), dtype=bool)
    for i in np.flatnonzero(finite):
        others = q[finite & (np.arange(len(q)) != i)]
        diff = others - q[i]
        tol = rtol * np.maximum(np.abs(others), np.abs(q[i])) + 1e-12
        dominated = np.all(diff >= -tol, axis=1) & np.any(diff > tol, axis=1)
        keep[i] = not dominated.any()
    return keep
