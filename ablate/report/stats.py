"""The statistics behind every verdict of the report, each in one place so the docs can point here.

The unit of replication is the training run (its seed). Test sets are fixed conditions:
the test sets one trained model scores share that model's luck, so they are never
counted as independent draws. docs/report.md shows, by simulation, how often each
interval below covers the truth.

- `t_interval`: mean over seeds with a Student-t 95% interval (one value per seed).
- `seed_interval`: a paired difference averaged over test sets: first the mean over the
  test sets within each seed, then a Student-t interval over those seed means.
- `two_stage_interval`: a seed-mean centre with test-sample uncertainty added: the variance
  over seeds plus the test sample's shared variance, estimated from video resamples that
  draw the same videos for every seed (every run scored the same videos).
- `minimum_detectable_effect` / `seeds_needed`: power of the paired t test over seeds.
- Pareto front: the points no other point beats on both objectives (ties kept).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import optimize, stats

N_BOOT = 2000
ALPHA = 0.05  # two-sided level of every interval and power computation
POWER = 0.80  # the power a minimum detectable effect is quoted at
DEFAULT_EFFECT = 0.01  # the effect "seeds needed" is quoted for: 1 AUC point (report --effect)
MAX_SEEDS = 10_000  # seeds_needed gives up (returns None) beyond this

SEED_T = "t over seed means"  # the procedure names tables print beside their intervals
TWO_STAGE = "two-stage bootstrap (seeds x videos)"
NO_INTERVAL = "no interval (1 seed)"


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


@dataclass(frozen=True)
class SeedInterval:
    """A difference over training runs: its interval, spread and power, and how it was made."""

    mean: float
    low: float
    high: float
    n_seeds: int
    sd: float  # between-seed standard deviation of the per-seed means (NaN below 2 seeds)
    mde: float  # minimum detectable effect at ALPHA, POWER with these seeds (NaN below 2)
    procedure: str
    note: str = ""  # what was left out (unmatched seeds, seeds missing a test set)

    def as_dict(self) -> dict:
        return {"mean": self.mean, "ci_low": self.low, "ci_high": self.high,
                "n_seeds": self.n_seeds, "sd_seeds": self.sd, "mde": self.mde,
                "procedure": self.procedure, "note": self.note}


def seed_means(diffs: pd.DataFrame, value: str = "diff") -> tuple[pd.Series, str]:
    """(mean of `value` over the test sets within each seed, a note of what was dropped).

    `diffs` has columns seed, dataset and `value`. A seed missing one of the test sets
    the others have is left out, so every seed mean averages the same conditions.
    """
    d = diffs.dropna(subset=[value])
    if d.empty:
        return pd.Series(dtype=float), ""
    sets = set(d["dataset"])
    per = d.groupby("seed")["dataset"].agg(lambda s: set(s) >= sets)
    full = per[per].index
    note = ""
    if len(full) < len(per):
        dropped = sorted(int(s) for s in per[~per].index)
        note = f"seed(s) {', '.join(map(str, dropped))} left out: missing a test set"
    kept = d[d["seed"].isin(full)]
    return kept.groupby("seed")[value].mean(), note


def seed_interval(diffs: pd.DataFrame, value: str = "diff", level: float = 0.95) -> SeedInterval:
    """Mean of a paired difference over test sets, with a Student-t interval over seeds."""
    means, note = seed_means(diffs, value)
    mean, low, high, n = t_interval(means.to_numpy(), level)
    sd = float(means.std(ddof=1)) if n >= 2 else float("nan")
    procedure = SEED_T if n >= 2 else NO_INTERVAL if n == 1 else "no seeds"
    return SeedInterval(mean, low, high, n, sd, minimum_detectable_effect(sd, n), procedure, note)


def two_stage_interval(observed: np.ndarray, replicates: np.ndarray,
                       level: float = 0.95) -> tuple[float, float, float, int]:
    """(mean, low, high, n_seeds) of a difference averaged over test sets, with training
    and test-sample uncertainty together.

    observed: (n_seeds, n_tests), each seed's difference on each test set.
    replicates: (n_seeds, n_tests, n_boot), the same under video resample b, which must draw
    the same videos for every seed (one test sample, scored by every run).

    Two stages of variance: between seeds, s^2 / n of the per-seed means (it already holds
    each run's own video noise), plus the test sample's shared part, which no seed
    averages away. The video resamples give that part without counting run noise twice:
    with Q the resample variance of the seed-averaged difference and P the mean
    per-seed resample variance, shared = (n Q - P) / (n - 1). Each part takes its own
    quantile, half-width = sqrt(t_{n-1}^2 between + z^2 shared): the between part is known
    from n - 1 df, the shared part from many resamples. (Welch-Satterthwaite df fell to
    92% coverage at 3 seeds, since s^2 on 2 df is often small by chance; one t_{n-1} on
    the whole went up to 99.9% when the shared part dominates: docs/report.md.)
    """
    obs = np.asarray(observed, dtype=float)
    r = np.asarray(replicates, dtype=float)
    n = int(obs.shape[0])
    seed_vals = np.nanmean(obs, axis=1)  # (n_seeds,)
    centre = float(np.nanmean(seed_vals))
    if n < 2:
        return centre, float("nan"), float("nan"), n
    per_seed = np.nanmean(r, axis=1)  # (n_seeds, n_boot): each seed's mean over test sets
    q = float(np.nanvar(per_seed.mean(axis=0), ddof=1))
    p = float(np.nanmean(np.nanvar(per_seed, axis=1, ddof=1)))
    shared = max(0.0, (n * q - p) / (n - 1))
    between = float(np.var(seed_vals, ddof=1)) / n
    t_q, z_q = stats.t.ppf(0.5 + level / 2, n - 1), stats.norm.ppf(0.5 + level / 2)
    half = float(math.sqrt(t_q ** 2 * between + z_q ** 2 * shared))
    return centre, centre - half, centre + half, n


# ---------------------------------------------------------------- power


def t_test_power(effect: float, sd: float, n: int, alpha: float = ALPHA) -> float:
    """Power of the two-sided one-sample (paired) t test over n seeds at a true `effect`."""
    if n < 2 or not (sd > 0) or not math.isfinite(sd):
        return float("nan")
    df = n - 1
    crit = stats.t.ppf(1 - alpha / 2, df)
    nc = abs(effect) / (sd / math.sqrt(n))
    lower = float(stats.nct.cdf(-crit, df, nc))  # the wrong-sign tail: tiny, NaN in far tails
    return float(stats.nct.sf(crit, df, nc)) + (0.0 if math.isnan(lower) else lower)


def minimum_detectable_effect(sd: float, n: int, alpha: float = ALPHA,
                              power: float = POWER) -> float:
    """The effect the paired t test over n seeds detects with `power` (same units as sd)."""
    if n < 2 or not math.isfinite(sd) or sd < 0:
        return float("nan")
    return sd * _mde_per_sd(n, alpha, power)  # the test is scale-free: MDE is linear in sd


@functools.lru_cache(maxsize=256)
def _mde_per_sd(n: int, alpha: float, power: float) -> float:
    """The minimum detectable effect at sd = 1: the root of power(effect) = `power`."""
    high = 1 / math.sqrt(n)
    while t_test_power(high, 1.0, n, alpha) < power:  # bracket the root
        high *= 2
    return float(optimize.brentq(lambda e: t_test_power(e, 1.0, n, alpha) - power, 0.0, high,
                                 xtol=1e-12))


def seeds_needed(effect: float, sd: float, alpha: float = ALPHA,
                 power: float = POWER) -> int | None:
    """Fewest seeds (>= 2) whose paired t test detects `effect` with `power`; None when the
    spread is unknown or more than MAX_SEEDS would be needed."""
    if not math.isfinite(sd) or sd < 0 or not effect:
        return None
    if sd == 0:
        return 2
    n = 2
    while t_test_power(effect, sd, n, alpha) < power:
        n = n * 2 if n < 64 else n + 64
        if n > MAX_SEEDS:
            return None
    low = max(2, n // 2 if n <= 128 else n - 64)
    for k in range(low, n + 1):  # the first n that reaches the power
        if t_test_power(effect, sd, k, alpha) >= power:
            return k
    return n


# ---------------------------------------------------------------- Pareto front


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
