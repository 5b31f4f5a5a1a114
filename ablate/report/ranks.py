"""Rank comparison of recipes across test sets (Demšar 2006) with P(improvement) (Agarwal 2021).

When a sweep holds 3 or more recipes scored on 3 or more test sets, a mean over test
sets hides whether one recipe wins everywhere or on one set by a lot. Ranking the
recipes within each test set and averaging the ranks asks the first question:

- the test sets are the blocks (conditions, not replicates: each is a different
  shift), and the cell that is ranked is the mean over seeds, so seed noise enters
  only through that mean;
- Friedman's chi2_F (tie-corrected, identical to `scipy.stats.friedmanchisquare`) and
  the Iman–Davenport F_F test whether all recipes rank alike;
- the Nemenyi critical difference (CD) is the smallest gap in mean rank that differs
  at alpha for all pairs; against one reference, z-tests of the rank gap with Holm's
  step-down correction over the k - 1 comparisons (Demšar 2006, section 3.2.2);
- P(improvement) (Agarwal et al. 2021, rliable) is the chance a run of a recipe beats
  a run of the reference on a test set, averaged over test sets; its interval resamples
  whole training runs, since one seed's luck is shared by all its test sets.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import stats

from ablate.core.errors import AblateError
from ablate.report.delong import holm
from ablate.report.display import Table, number

MIN_RECIPES = 3
MIN_TESTS = 3
ALPHA = 0.05
MIN_BOOT_SEEDS = 5  # below this per recipe, a bootstrap over runs sees too few resamples
VALUE_COLUMNS = ["label", "seed", "dataset", "value"]


@dataclass(frozen=True)
class FriedmanResult:
    """Friedman's test over k recipes (treatments) ranked within N test sets (blocks)."""

    k: int
    n: int
    chi2_f: float  # Friedman's chi2_F; tie-corrected unless asked otherwise
    p_chi2: float  # chi2 with k - 1 df
    f_f: float  # Iman–Davenport F_F, less conservative than chi2_F
    p_f: float  # F with k - 1, (k - 1)(N - 1) df
    mean_ranks: pd.Series  # recipe -> mean rank, 1 = best
    tie_correction: float = 1.0  # the divisor applied to the untied chi2_F


@dataclass(frozen=True)
class RankComparison:
    """Everything the rank table and the CD diagram show, computed once."""

    reference: str
    higher_is_better: bool
    table: pd.DataFrame  # recipes x test sets: the mean over seeds that was ranked
    friedman: FriedmanResult
    cd: float  # Nemenyi critical difference at `alpha`
    holm: pd.DataFrame  # holm_vs_reference + p_improve, p_improve_low, p_improve_high
    alpha: float = ALPHA
    notes: list[str] = field(default_factory=list)


def _checked(table: pd.DataFrame) -> pd.DataFrame:
    if table.shape[0] < 2 or table.shape[1] < 1:
        raise AblateError(f"ranking needs >= 2 recipes and >= 1 test set, got {table.shape}")
    if table.isna().to_numpy().any():
        raise AblateError("ranking needs a score for every recipe on every test set")
    return table.astype(float)


def _ranks(table: pd.DataFrame, higher_is_better: bool) -> pd.DataFrame:
    """Ranks of the recipes within each test set (column): 1 = best, ties share the mean."""
    return _checked(table).rank(axis=0, method="average", ascending=not higher_is_better)


def mean_ranks(table: pd.DataFrame, higher_is_better: bool = True) -> pd.Series:
    """Each recipe's rank (1 = best) within each test set, averaged over test sets."""
    return _ranks(table, higher_is_better).mean(axis=1).rename("mean_rank")


def iman_davenport(chi2_f: float, k: int, n: int) -> tuple[float, float]:
    """(F_F, p): Iman & Davenport's F form of chi2_F; chi2_F alone is too conservative."""
    d1, d2 = k - 1, (k - 1) * (n - 1)
    denominator = n * (k - 1) - chi2_f
    if denominator <= 0:  # every test set ranks the recipes identically
        return math.inf, 0.0
    f_f = (n - 1) * chi2_f / denominator
    return float(f_f), float(stats.f.sf(f_f, d1, d2))


def friedman(table: pd.DataFrame, higher_is_better: bool = True,
             tie_correction: bool = True) -> FriedmanResult:
    """Friedman's test with the recipes as treatments and the test sets as blocks.

    chi2_F = 12 N / (k (k+1)) [sum_j R_j^2 - k (k+1)^2 / 4], divided (as scipy does) by
    1 - sum(t^3 - t) / (N k (k^2 - 1)) over tie groups t; tie_correction=False gives
    Demšar's (2006) untied form.
    """
    ranks = _ranks(table, higher_is_better)
    k, n = ranks.shape
    if k < 2 or n < 2:
        raise AblateError(f"Friedman's test needs >= 2 recipes and >= 2 test sets, got {k}, {n}")
    r = ranks.mean(axis=1)
    chi2 = 12.0 * n / (k * (k + 1)) * (float(np.sum(r.to_numpy() ** 2)) - k * (k + 1) ** 2 / 4)
    divisor = 1.0
    if tie_correction:
        ties = 0.0
        for col in table.columns:
            _, counts = np.unique(table[col].to_numpy(dtype=float), return_counts=True)
            ties += float(np.sum(counts.astype(float) ** 3 - counts))
        divisor = 1.0 - ties / (n * k * (k * k - 1))
    if divisor <= 0:  # every test set ties every recipe: no evidence of a difference
        chi2, divisor = 0.0, 1.0
    else:
        chi2 /= divisor
    f_f, p_f = iman_davenport(chi2, k, n)
    return FriedmanResult(k=k, n=n, chi2_f=float(chi2), p_chi2=float(stats.chi2.sf(chi2, k - 1)),
                          f_f=f_f, p_f=p_f, mean_ranks=r.rename("mean_rank"),
                          tie_correction=divisor)


def _rank_se(k: int, n: int) -> float:
    """Standard error of the difference of two mean ranks under the null (Demšar eq. 3)."""
    return math.sqrt(k * (k + 1) / (6.0 * n))


def nemenyi_q(k: int, alpha: float = ALPHA) -> float:
    """Demšar's q_alpha: the studentized range quantile (infinite df) over sqrt(2)."""
    if k < 2:
        raise AblateError(f"the Nemenyi test needs >= 2 recipes, got {k}")
    return float(stats.studentized_range.ppf(1 - alpha, k, np.inf) / math.sqrt(2))


def nemenyi_cd(k: int, n: int, alpha: float = ALPHA) -> float:
    """Critical difference q_alpha sqrt(k (k+1) / (6 N)): mean ranks further apart differ."""
    return nemenyi_q(k, alpha) * _rank_se(k, n)


def holm_vs_reference(table: pd.DataFrame, reference: str, higher_is_better: bool = True,
                      alpha: float = ALPHA) -> pd.DataFrame:
    """Each recipe against the reference: z of the mean-rank gap, two-sided normal p, Holm.

    Against one reference only k - 1 comparisons are made, so Holm over those is more
    powerful than Nemenyi's all-pairs CD (Demšar 2006, section 3.2.2). z < 0: better
    than the reference.
    """
    if reference not in table.index:
        raise AblateError(f"reference {reference!r} is not among the ranked recipes")
    r = mean_ranks(table, higher_is_better)
    k, n = table.shape
    others = [label for label in r.index if label != reference]
    z = (r[others] - r[reference]) / _rank_se(k, n)
    p = 2.0 * stats.norm.sf(np.abs(z.to_numpy(dtype=float)))
    p_holm = holm(p)
    out = pd.DataFrame({"recipe": others, "mean_rank": r[others].to_numpy(dtype=float),
                        "z": z.to_numpy(dtype=float), "p": p, "p_holm": p_holm,
                        "reject": p_holm <= alpha})
    return out.sort_values(["mean_rank", "recipe"], kind="stable").reset_index(drop=True)


def _runs(values: pd.DataFrame, label: str) -> pd.DataFrame:
    """seeds x test sets of one recipe's scores (NaN where a run lacks a test set)."""
    mine = values[values["label"] == label]
    return mine.pivot_table(index="seed", columns="dataset", values="value", aggfunc="mean")


def _p_better(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """P(X > Y) + P(X = Y)/2 over all pairs of (..., n) x and (..., m) y, NaN-aware."""
    gt = (x[..., :, None] > y[..., None, :]) + 0.5 * (x[..., :, None] == y[..., None, :])
    valid = ~np.isnan(x)[..., :, None] & ~np.isnan(y)[..., None, :]
    count = valid.sum(axis=(-2, -1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, (gt * valid).sum(axis=(-2, -1)) / count, np.nan)


def probability_of_improvement(values: pd.DataFrame, recipe: str, reference: str,
                               n_boot: int = 2000, seed: int = 0, level: float = 0.95,
                               higher_is_better: bool = True) -> tuple[float, float, float]:
    """(P(recipe beats reference), low, high) as in Agarwal et al. (2021).

    Per test set, P = mean over all (run i of recipe, run j of reference) pairs of
    [x_i > y_j] + 0.5 [x_i = y_j], i.e. the Mann–Whitney U / (n m); then the mean over
    the test sets both have. The percentile interval resamples seeds with replacement,
    for each recipe independently; a drawn seed keeps all its test sets, because the
    test sets of one training run share its luck. NaN bounds below 2 seeds each.
    """
    missing = set(VALUE_COLUMNS) - set(values.columns)
    if missing:
        raise AblateError(f"values lack columns {sorted(missing)}")
    sign = 1.0 if higher_is_better else -1.0
    a, b = _runs(values, recipe), _runs(values, reference)
    tests = [d for d in a.columns if d in b.columns and a[d].notna().any() and b[d].notna().any()]
    if not tests:
        return math.nan, math.nan, math.nan
    x = sign * a[tests].to_numpy(dtype=float)  # (n, D)
    y = sign * b[tests].to_numpy(dtype=float)  # (m, D)
    point = float(np.mean([_p_better(x[:, d], y[:, d]) for d in range(len(tests))]))
    n, m = x.shape[0], y.shape[0]
    if n < 2 or m < 2 or n_boot < 1:
        return point, math.nan, math.nan
    rng = np.random.default_rng(seed)
    xb = x[rng.integers(0, n, size=(n_boot, n))]  # (B, n, D): whole runs drawn
    yb = y[rng.integers(0, m, size=(n_boot, m))]  # (B, m, D)
    per_test = np.stack([_p_better(xb[:, :, d], yb[:, :, d]) for d in range(len(tests))])
    with np.errstate(invalid="ignore"):
        boot = np.nanmean(per_test, axis=0)  # (B,)
    tail = (1.0 - level) / 2.0 * 100.0
    low, high = np.nanpercentile(boot, [tail, 100.0 - tail])
    return point, float(low), float(high)


def rank_comparison(values: pd.DataFrame, reference: str, higher_is_better: bool = True,
                    alpha: float = ALPHA, n_boot: int = 2000, seed: int = 0,
                    min_boot_seeds: int = MIN_BOOT_SEEDS) -> RankComparison | None:
    """The rank comparison of a sweep, or None below 3 recipes x 3 complete test sets.

    `values` is tidy (label, seed, dataset, value), one row per run x test set. Test sets
    the reference lacks are dropped, then recipes lacking any remaining test set: ranks
    need a complete recipes x test sets table. `notes` says what was dropped.
    """
    missing = set(VALUE_COLUMNS) - set(values.columns)
    if missing:
        raise AblateError(f"values lack columns {sorted(missing)}")
    values = values.dropna(subset=["value"])
    if reference not in set(values["label"]):
        return None
    cells = values.groupby(["label", "dataset"])["value"].mean().unstack("dataset")
    notes: list[str] = []
    lacking = [d for d in cells.columns if pd.isna(cells.loc[reference, d])]
    if lacking:
        notes.append(f"test sets without a {reference} score left out: {', '.join(lacking)}")
        cells = cells.drop(columns=lacking)
    incomplete = [label for label in cells.index if cells.loc[label].isna().any()]
    if incomplete:
        notes.append("recipes without a score on every test set left out: "
                     + ", ".join(str(label) for label in incomplete))
        cells = cells.drop(index=incomplete)
    if cells.shape[0] < MIN_RECIPES or cells.shape[1] < MIN_TESTS:
        return None
    k, n = cells.shape
    result = friedman(cells, higher_is_better)
    table = holm_vs_reference(cells, reference, higher_is_better, alpha)
    kept = values[values["label"].isin(cells.index) & values["dataset"].isin(cells.columns)]
    runs = kept.groupby("label")["seed"].nunique()
    pi = [probability_of_improvement(
        kept, recipe, reference, seed=seed, higher_is_better=higher_is_better,
        # 3 runs give 10 distinct resamples: no interval rather than one that pretends
        n_boot=n_boot if min(runs[recipe], runs[reference]) >= min_boot_seeds else 0)
          for recipe in table["recipe"]]
    table["p_improve"] = [v[0] for v in pi]
    table["p_improve_low"] = [v[1] for v in pi]
    table["p_improve_high"] = [v[2] for v in pi]
    return RankComparison(reference=reference, higher_is_better=higher_is_better, table=cells,
                          friedman=result, cd=nemenyi_cd(k, n, alpha), holm=table, alpha=alpha,
                          notes=notes)


def _p_text(p: float) -> str:
    if not math.isfinite(p):
        return "-"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def _p_eq(p: float) -> str:
    """`p = 0.019`, or `p < 0.001`."""
    text = _p_text(p)
    return f"p {text[0]} {text[1:]}" if text.startswith("<") else f"p = {text}"


def _pi_text(point: float, low: float, high: float) -> str:
    if not math.isfinite(point):
        return "-"
    if math.isfinite(low) and math.isfinite(high):
        return f"{point:.2f} [{low:.2f}, {high:.2f}]"
    return f"{point:.2f}"


def rank_tables(rc: RankComparison, metric_name: str = "frame AUC") -> list[Table]:
    """The rank comparison as one table: mean ranks, Holm vs the reference, P(improvement)."""
    fr = rc.friedman
    columns = ["Recipe", "Mean rank", "z vs ref", "p (Holm)",
               "P(better than ref) [95% CI over seeds]"]
    rows: list[list[str]] = []
    bold: list[list[bool]] = []
    ref_row = [f"{rc.reference} (ref)", f"{fr.mean_ranks[rc.reference]:.2f}", "-", "-", "-"]
    placed = False
    for t in rc.holm.itertuples():
        if not placed and fr.mean_ranks[rc.reference] <= t.mean_rank:
            rows.append(ref_row)
            bold.append([False] * len(columns))
            placed = True
        rows.append([str(t.recipe), f"{t.mean_rank:.2f}", f"{t.z:+.2f}", _p_text(t.p_holm),
                     _pi_text(t.p_improve, t.p_improve_low, t.p_improve_high)])
        bold.append([bool(t.reject)] * len(columns))
    if not placed:
        rows.append(ref_row)
        bold.append([False] * len(columns))
    better = "higher" if rc.higher_is_better else "lower"
    note = (f"Ranks of the {fr.k} recipes within each of the {fr.n} test sets by mean {metric_name} "
            f"over seeds (1 = best, {better} is better; ties share the mean rank), averaged over "
            "test sets. The test sets are the blocks, conditions not replicates: the mean over "
            "seeds per cell is what is ranked. "
            f"Friedman chi2_F = {number(fr.chi2_f)} ({_p_eq(fr.p_chi2)}, tie-corrected), "
            f"Iman–Davenport F_F = {number(fr.f_f)} ({_p_eq(fr.p_f)}). "
            f"Nemenyi CD at alpha {rc.alpha:g} = {rc.cd:.2f} mean ranks: pairs of recipes "
            "further apart than that differ. z vs ref = (R - R_ref) / sqrt(k(k+1)/6N), negative "
            "is better than the reference; two-sided normal p, Holm over the "
            f"{fr.k - 1} comparisons with the reference; bold: Holm rejects at {rc.alpha:g}. "
            "P(better than ref): chance a training run of the recipe beats one of the "
            "reference on a test set, averaged over test sets (Agarwal et al. 2021); "
            "interval: percentile bootstrap over whole training runs (a drawn seed keeps all "
            f"its test sets), given only with {MIN_BOOT_SEEDS} or more seeds per recipe.")
    if rc.notes:
        note += " " + " ".join(f"{text[0].upper()}{text[1:]}." for text in rc.notes)
    return [Table(f"Ranks across test sets ({metric_name}, reference {rc.reference})", columns,
                  rows, bold, note=note, align="lrrrr", slug="ranks")]
