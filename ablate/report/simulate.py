"""Simulated studies with a known truth: how often does each interval of `stats` cover it?

One study compares two recipes over n seeds and T test sets of V videos each. The
difference (recipe - reference) that seed s's pair of runs shows on video i of test set t:

    v[s, t, i] = effect + c[t] + a[s] + b[s, t] + u[t, i] + w[s, t, i]

- c[t]: the test set's own shift of the effect (a fixed condition, part of the truth);
- a[s] ~ N(0, seed_sd): the training run's luck, shared by every test set it scores;
- b[s, t] ~ N(0, interaction_sd): seed x test-set interaction;
- u[t, i] ~ N(0, video_sd): video i's own effect, the same for every seed (every run
  scores the same videos);
- w[s, t, i] ~ N(0, run_video_sd): video noise particular to one run.

A metric per (seed, test set) is the mean over its videos. Two truths follow:
- *these test sets*: effect + mean(c) + mean over t of the test sample's mean u[t, :].
  The interval over seeds speaks about it: training runs vary, the test sample is fixed.
- *the test populations*: effect + mean(c). The two-stage bootstrap speaks about it.

`coverage` runs many studies and reports, for each estimator, the share of its 95%
intervals that hold the truth it speaks about. The pairs bootstrap (the old estimator)
is scored against the first truth, which is the easier one for it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

from ablate.report.stats import N_BOOT, seed_interval, two_stage_interval

ESTIMATORS = ("seed_t", "two_stage", "pairs_bootstrap")


def pairs_bootstrap(values: np.ndarray, n_boot: int = N_BOOT,
                    seed: int = 0) -> tuple[float, float, float, int]:
    """The report's old estimator, a percentile bootstrap of the mean over (seed, test set)
    pairs: too narrow, because it counts the test sets of one run as independent. Kept here
    only to show, beside the shipped intervals, how it fails."""
    x = np.sort(np.asarray(values, dtype=float))
    means = x[np.random.default_rng(seed).integers(0, x.size, size=(n_boot, x.size))].mean(1)
    low, high = np.quantile(means, [0.025, 0.975])  # (n_boot,) -> the 95% percentile bounds
    return float(x.mean()), float(low), float(high), int(x.size)


@dataclass(frozen=True)
class Structure:
    """The variance components of a simulated study, in metric units (AUC 0.01 = 1 point)."""

    effect: float = 0.0
    seed_sd: float = 0.02
    interaction_sd: float = 0.015
    video_sd: float = 0.08
    run_video_sd: float = 0.08
    condition_sd: float = 0.02  # spread of the fixed test-set shifts c[t]
    videos: int = 40


def study(n_seeds: int, n_tests: int, s: Structure, rng: np.random.Generator,
          n_boot: int = 500) -> dict[str, float]:
    """One simulated study: each estimator's (low, high) and the two truths."""
    v_count = s.videos
    c = rng.normal(0, s.condition_sd, n_tests)  # (T,)
    a = rng.normal(0, s.seed_sd, (n_seeds, 1, 1))  # (n, 1, 1)
    b = rng.normal(0, s.interaction_sd, (n_seeds, n_tests, 1))  # (n, T, 1)
    u = rng.normal(0, s.video_sd, (1, n_tests, v_count))  # (1, T, V)
    w = rng.normal(0, s.run_video_sd, (n_seeds, n_tests, v_count))  # (n, T, V)
    v = s.effect + c[None, :, None] + a + b + u + w  # (n, T, V)
    observed = v.mean(axis=2)  # (n, T)
    drawn = rng.integers(0, v_count, (n_tests, n_boot, v_count))  # the same videos for every seed
    replicates = v[:, np.arange(n_tests)[:, None, None], drawn].mean(axis=3)  # (n, T, n_boot)
    diffs = pd.DataFrame({"seed": np.repeat(np.arange(n_seeds), n_tests),
                          "dataset": np.tile(np.arange(n_tests), n_seeds),
                          "diff": observed.ravel()})
    seed = seed_interval(diffs)
    _, lo2, hi2, _ = two_stage_interval(observed, replicates)
    _, lo3, hi3, _ = pairs_bootstrap(observed.ravel(), n_boot=1000,
                                     seed=int(rng.integers(1 << 31)))
    return {"these_tests": float(s.effect + c.mean() + u.mean()),
            "populations": float(s.effect + c.mean()),
            "seed_t": (seed.low, seed.high), "two_stage": (lo2, hi2),
            "pairs_bootstrap": (lo3, hi3), "mde": seed.mde}


def coverage(n_seeds: int, n_tests: int, structure: Structure | None = None,
             n_studies: int = 1000, seed: int = 0) -> dict[str, float]:
    """Share of `n_studies` simulated studies whose 95% interval holds its truth, per
    estimator, plus each estimator's mean interval width and the mean MDE."""
    s = structure or Structure()
    rng = np.random.default_rng(seed)
    hits = dict.fromkeys(ESTIMATORS, 0)
    widths = dict.fromkeys(ESTIMATORS, 0.0)
    mde = 0.0
    for _ in range(n_studies):
        one = study(n_seeds, n_tests, s, rng)
        for name in ESTIMATORS:
            low, high = one[name]
            truth = one["populations"] if name == "two_stage" else one["these_tests"]
            hits[name] += int(low <= truth <= high)
            widths[name] += (high - low) / n_studies
        mde += one["mde"] / n_studies
    return {**{f"{k}_coverage": hits[k] / n_studies for k in ESTIMATORS},
            **{f"{k}_width": widths[k] for k in ESTIMATORS}, "mde": mde,
            "n_seeds": n_seeds, "n_tests": n_tests, "n_studies": n_studies, **asdict(s)}


def coverage_table(seeds: tuple[int, ...] = (3, 5), tests: tuple[int, ...] = (3, 5),
                   effects: tuple[float, ...] = (0.0, 0.02), n_studies: int = 1000,
                   structure: Structure | None = None) -> pd.DataFrame:
    """One row per (seeds, test sets, effect): what docs/report.md prints."""
    base = structure or Structure()
    rows = []
    for i, (n, t, e) in enumerate((n, t, e) for n in seeds for t in tests for e in effects):
        s = Structure(**{**asdict(base), "effect": e})
        rows.append(coverage(n, t, s, n_studies, seed=i))
    return pd.DataFrame(rows)
