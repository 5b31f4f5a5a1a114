"""The few statistics the report uses, each in one place so the docs can point here.

- Mean over seeds: a Student-t 95% interval (seeds are few, 2-5; a bootstrap
  over three numbers would only ever see ten distinct resamples).
- Paired differences (an ablation): a percentile bootstrap of the mean over
  (seed, test set) pairs, because the pairs are more numerous and need not be
  normal (one test set can move much more than the others).
- Pareto front: the points no other point beats on both objectives.
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
    mean = float(x.mean())
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, n, size=(n_boot, n))].mean(axis=1)
    low, high = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return mean, float(low), float(high), n


def pareto_mask(points: np.ndarray, maximize: Sequence[bool]) -> np.ndarray:
    """True for points not dominated by any other (at least as good on all, better on one)."""
    p = np.asarray(points, dtype=float)
    signs = np.where(np.asarray(maximize), 1.0, -1.0)
    q = p * signs  # now larger is better on every axis
    keep = np.ones(len(q), dtype=bool)
    for i in range(len(q)):
        if not np.all(np.isfinite(q[i])):
            keep[i] = False
            continue
        others = np.delete(q, i, axis=0)
        others = others[np.all(np.isfinite(others), axis=1)]
        dominated = np.all(others >= q[i], axis=1) & np.any(others > q[i], axis=1)
        keep[i] = not dominated.any()
    return keep
