"""Rank comparison across test sets (ablate.report.ranks, cd_plot) against independent answers.

References, none computed by the code under test: Demšar (2006, JMLR 7:1-30), its Table 6
worked example (mean ranks, chi2_F, F_F, CD), its Table 5 q_0.05 values and its Figure 1
groups; scipy's Friedman test (with its tie correction), F, normal and Mann-Whitney
functions; Holm's step-down rule written out here; small cases worked on paper.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from ablate.report.cd_plot import cd_diagram, cd_groups
from ablate.report.display import Table
from ablate.report.ranks import (
    friedman,
    holm,
    holm_vs_reference,
    iman_davenport,
    mean_ranks,
    nemenyi_cd,
    probability_of_improvement,
    rank_comparison,
    rank_tables,
)

# Demšar (2006) Table 6: AUC of four C4.5 variants on 14 data sets (rows: data sets).
# On the 13th row the paper prints 0.975 for both C4.5+cf and C4.5+m+cf but ranks them
# 2 and 3 (the unrounded AUCs differ), so C4.5+m+cf is set a hair lower here.
DEMSAR_NAMES = ["C4.5", "C4.5+m", "C4.5+cf", "C4.5+m+cf"]
DEMSAR_AUC = [
    [0.763, 0.768, 0.771, 0.798], [0.599, 0.591, 0.590, 0.569],
    [0.954, 0.971, 0.968, 0.967], [0.628, 0.661, 0.654, 0.657],
    [0.882, 0.888, 0.886, 0.898], [0.936, 0.931, 0.916, 0.931],
    [0.661, 0.668, 0.609, 0.685], [0.583, 0.583, 0.563, 0.625],
    [0.775, 0.838, 0.866, 0.875], [1.000, 1.000, 1.000, 1.000],
    [0.940, 0.962, 0.965, 0.962], [0.619, 0.666, 0.614, 0.669],
    [0.972, 0.981, 0.975, 0.9749], [0.957, 0.978, 0.946, 0.970],
]
DEMSAR_RANKS = {"C4.5": 3.143, "C4.5+m": 2.000, "C4.5+cf": 2.893, "C4.5+m+cf": 1.964}
# Demšar (2006) Table 5(a): q_0.05 of the Nemenyi test for k = 2..10
Q_005 = {2: 1.960, 3: 2.343, 4: 2.569, 5: 2.728, 6: 2.850, 7: 2.949, 8: 3.031, 9: 3.102,
         10: 3.164}


def _demsar() -> pd.DataFrame:
    """recipes x test sets, as the report ranks them."""
    return pd.DataFrame(DEMSAR_AUC, columns=DEMSAR_NAMES,
                        index=[f"d{i}" for i in range(len(DEMSAR_AUC))]).T


def _holm_step_down(p: np.ndarray) -> np.ndarray:
    """Holm (1979) by definition: the j-th smallest p times (m - j + 1), running max, cap 1."""
    order = sorted(range(len(p)), key=lambda i: p[i])
    out, running = np.empty(len(p)), 0.0
    for j, i in enumerate(order):
        running = max(running, min(1.0, (len(p) - j) * p[i]))
        out[i] = running
    return out


def _tidy(cells: dict[tuple[str, int, str], float]) -> pd.DataFrame:
    return pd.DataFrame([{"label": a, "seed": s, "dataset": d, "value": v}
                         for (a, s, d), v in cells.items()])


# --- Demšar's worked example ---------------------------------------------------------------


def test_demsar_example_mean_ranks() -> None:
    got = mean_ranks(_demsar())
    for name, rank in DEMSAR_RANKS.items():
        assert got[name] == pytest.approx(rank, abs=5e-4)


def test_demsar_example_untied_friedman_and_iman_davenport() -> None:
    # Demšar's chi2_F = 9.28 and F_F = 3.69 use the untied formula
    res = friedman(_demsar(), tie_correction=False)
    assert (res.k, res.n) == (4, 14)
    assert res.chi2_f == pytest.approx(9.28, abs=5e-3)
    assert res.f_f == pytest.approx(3.69, abs=5e-3)
    # the paper: F(3, 39) critical value at 0.05 is 2.85, so the null is rejected
    assert res.p_f < 0.05


def test_demsar_example_critical_differences() -> None:
    assert nemenyi_cd(4, 14, 0.05) == pytest.approx(1.25, abs=5e-3)
    assert nemenyi_cd(4, 14, 0.10) == pytest.approx(1.12, abs=5e-3)


def test_demsar_figure_1_groups() -> None:
    ranks = pd.Series(DEMSAR_RANKS)
    # alpha 0.05: even best vs worst (1.179) is inside the CD of 1.25 -> one group
    assert cd_groups(ranks, nemenyi_cd(4, 14, 0.05)) == [["C4.5+m+cf", "C4.5+m", "C4.5+cf",
                                                          "C4.5"]]
    # alpha 0.10 (Figure 1a): C4.5 is worse than C4.5+m and C4.5+m+cf; C4.5+cf in both groups
    assert cd_groups(ranks, nemenyi_cd(4, 14, 0.10)) == [["C4.5+m+cf", "C4.5+m", "C4.5+cf"],
                                                         ["C4.5+cf", "C4.5"]]


@pytest.mark.parametrize("k", sorted(Q_005))
def test_nemenyi_q_matches_demsar_table_5(k: int) -> None:
    n = 7
    q = nemenyi_cd(k, n, 0.05) / math.sqrt(k * (k + 1) / (6 * n))
    assert q == pytest.approx(Q_005[k], abs=1e-3)


# --- Friedman against scipy -----------------------------------------------------------------


def test_friedman_matches_scipy_with_ties() -> None:
    tables = [_demsar()]  # ties: one data set all at 1.000, several pairs
    rng = np.random.default_rng(0)
    for k, n in [(3, 5), (4, 9), (6, 4)]:
        tables.append(pd.DataFrame(rng.integers(0, 3, size=(k, n)).astype(float)))
    for table in tables:
        want = stats.friedmanchisquare(*table.to_numpy())
        for higher in (True, False):
            got = friedman(table, higher_is_better=higher)
            assert got.chi2_f == pytest.approx(want.statistic, rel=1e-10)
            assert got.p_chi2 == pytest.approx(want.pvalue, rel=1e-10)


def test_friedman_iman_davenport_against_f_distribution() -> None:
    table = pd.DataFrame(np.random.default_rng(3).normal(size=(5, 8)))
    res = friedman(table)
    k, n = 5, 8
    chi2 = stats.friedmanchisquare(*table.to_numpy()).statistic
    f_f = (n - 1) * chi2 / (n * (k - 1) - chi2)  # Iman & Davenport (1980), Demšar eq. 2
    assert res.f_f == pytest.approx(f_f, rel=1e-10)
    assert res.p_f == pytest.approx(stats.f.sf(f_f, k - 1, (k - 1) * (n - 1)), rel=1e-10)
    assert iman_davenport(9.28, 4, 14)[0] == pytest.approx(3.69, abs=5e-3)


def test_mean_ranks_hand_worked_with_a_tie() -> None:
    table = pd.DataFrame({"s1": [0.9, 0.8, 0.7], "s2": [0.6, 0.6, 0.9]}, index=["a", "b", "c"])
    # s1: a 1, b 2, c 3; s2: c 1, a and b share 2.5
    np.testing.assert_allclose(mean_ranks(table).loc[["a", "b", "c"]], [1.75, 2.25, 2.0])
    # lower is better: s1 reverses to a 3, b 2, c 1; s2: a and b share 1.5, c 3
    np.testing.assert_allclose(mean_ranks(table, higher_is_better=False).loc[["a", "b", "c"]],
                               [2.25, 1.75, 2.0])


# --- Holm against the reference ------------------------------------------------------------


def test_holm_hand_worked() -> None:
    # sorted: 0.005*4 = 0.02, 0.01*3 = 0.03, 0.03*2 = 0.06, 0.04*1 -> max(0.06, 0.04) = 0.06
    np.testing.assert_allclose(holm([0.01, 0.04, 0.03, 0.005]), [0.03, 0.06, 0.06, 0.02])


def test_holm_vs_reference_z_p_and_step_down() -> None:
    rng = np.random.default_rng(3)  # a draw where Holm differs from Bonferroni (see below)
    k, n = 6, 9
    labels = ["ref", "a", "b", "c", "d", "e"]
    shift = np.array([0.0, 0.9, 0.5, 0.2, -0.3, 0.05])[:, None]  # a, b tend to beat ref
    table = pd.DataFrame(rng.normal(size=(k, n)) + shift, index=labels)
    got = holm_vs_reference(table, "ref").set_index("recipe")
    assert sorted(got.index) == sorted(labels[1:])
    ranks = pd.DataFrame(stats.rankdata(-table.to_numpy(), axis=0), index=labels).mean(axis=1)
    z = (ranks[labels[1:]] - ranks["ref"]) / math.sqrt(k * (k + 1) / (6 * n))
    p = 2 * stats.norm.sf(np.abs(z.to_numpy()))
    p_holm = _holm_step_down(p)
    # the case must tell Holm from Bonferroni and need the running max (monotonicity)
    assert (p_holm < np.minimum(len(p) * p, 1.0) - 1e-3).any()
    by_rank = np.sort(p)
    assert (np.diff(by_rank * (len(p) - np.arange(len(p)))) < 0).any()
    np.testing.assert_allclose(got.loc[labels[1:], "mean_rank"], ranks[labels[1:]])
    np.testing.assert_allclose(got.loc[labels[1:], "z"], z, rtol=1e-12)
    np.testing.assert_allclose(got.loc[labels[1:], "p"], p, rtol=1e-10)
    np.testing.assert_allclose(got.loc[labels[1:], "p_holm"], p_holm, rtol=1e-10)
    assert list(got.loc[labels[1:], "reject"]) == list(p_holm <= 0.05)
    assert got["mean_rank"].is_monotonic_increasing


# --- probability of improvement ------------------------------------------------------------


def test_probability_of_improvement_hand_worked() -> None:
    values = _tidy({
        ("x", 0, "a"): 0.9, ("x", 1, "a"): 0.7, ("y", 0, "a"): 0.8, ("y", 1, "a"): 0.7,
        ("x", 0, "b"): 0.6, ("x", 1, "b"): 0.6, ("y", 0, "b"): 0.5, ("y", 1, "b"): 0.9,
    })
    # a: 0.9>0.8, 0.9>0.7, 0.7<0.8, 0.7=0.7 -> 2.5/4; b: 1 + 0 + 1 + 0 -> 2/4; mean 0.5625
    point, low, high = probability_of_improvement(values, "x", "y", n_boot=200)
    assert point == pytest.approx(0.5625)
    assert low <= point <= high
    # lower is better: a: 0.9<0.8 no, 0.9<0.7 no, 0.7<0.8 yes, 0.7=0.7 half -> 1.5/4;
    # b: 0.6<0.5 no, 0.6<0.9 yes, twice -> 2/4
    lower = probability_of_improvement(values, "x", "y", n_boot=0, higher_is_better=False)[0]
    assert lower == pytest.approx((1.5 / 4 + 2 / 4) / 2)


def test_probability_of_improvement_is_mann_whitney_u_on_one_test_set() -> None:
    rng = np.random.default_rng(11)
    x = np.round(rng.normal(0.8, 0.05, size=5), 2)
    y = np.round(rng.normal(0.78, 0.05, size=7), 2)
    y[0] = x[0]  # a tie across the two samples
    cells = {("x", s, "t"): v for s, v in enumerate(x)}
    cells |= {("y", s, "t"): v for s, v in enumerate(y)}
    point = probability_of_improvement(_tidy(cells), "x", "y", n_boot=0)[0]
    u = stats.mannwhitneyu(x, y).statistic  # U of the first sample, ties counted 1/2
    assert point == pytest.approx(u / (len(x) * len(y)))


def test_bootstrap_draws_whole_runs() -> None:
    # seed 0 of x beats both reference runs on every test set, seed 1 loses on every one.
    # Resampling whole runs: a resample's P is 0 (both draws seed 1, chance 1/4), 0.5 or 1,
    # so the 95% interval is [0, 1]. Resampling each test set on its own would average
    # three independent draws and (all three at 0 only 1/64 of the time) lift the low end.
    cells = {}
    for d in ("a", "b", "c"):
        cells |= {("x", 0, d): 0.9, ("x", 1, d): 0.1, ("y", 0, d): 0.5, ("y", 1, d): 0.5}
    point, low, high = probability_of_improvement(_tidy(cells), "x", "y", n_boot=2000)
    assert (point, low, high) == (0.5, 0.0, 1.0)


def test_probability_of_improvement_dominance_and_single_seed() -> None:
    cells = {}
    for d in ("a", "b"):
        cells |= {("x", s, d): 0.9 + 0.01 * s for s in range(3)}
        cells |= {("y", s, d): 0.5 + 0.01 * s for s in range(3)}
    assert probability_of_improvement(_tidy(cells), "x", "y") == (1.0, 1.0, 1.0)
    one = _tidy({k: v for k, v in cells.items() if not (k[0] == "y" and k[1] > 0)})
    point, low, high = probability_of_improvement(one, "x", "y")
    assert point == 1.0 and math.isnan(low) and math.isnan(high)


# --- the sweep-level comparison and its table -------------------------------------------------


def _sweep(recipes: int, tests: int, seeds: int = 3, rng_seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(rng_seed)
    cells = {}
    for r in range(recipes):
        for d in range(tests):
            for s in range(seeds):
                cells[(f"r{r}", s, f"t{d}")] = 0.7 + 0.02 * r + rng.normal(0, 0.03)
    return _tidy(cells)


def test_rank_comparison_needs_three_recipes_and_three_test_sets() -> None:
    assert rank_comparison(_sweep(2, 5), "r0") is None
    assert rank_comparison(_sweep(5, 2), "r0") is None
    assert rank_comparison(_sweep(3, 3), "r0") is not None


def test_rank_comparison_drops_an_incomplete_recipe_with_a_note() -> None:
    values = _sweep(4, 4)
    values = values[~((values["label"] == "r2") & (values["dataset"] == "t1"))]
    rc = rank_comparison(values, "r0", n_boot=200)
    assert rc is not None
    assert sorted(rc.table.index) == ["r0", "r1", "r3"]
    assert any("r2" in note for note in rc.notes)
    # down to 2 complete recipes: nothing to rank
    assert rank_comparison(values[values["label"] != "r3"], "r0") is None


def test_rank_comparison_drops_a_test_set_the_reference_lacks() -> None:
    values = _sweep(3, 4)
    values = values[~((values["label"] == "r0") & (values["dataset"] == "t3"))]
    rc = rank_comparison(values, "r0", n_boot=200)
    assert rc is not None
    assert sorted(rc.table.columns) == ["t0", "t1", "t2"]
    assert any("t3" in note for note in rc.notes)


def test_rank_comparison_ranks_the_means_over_seeds() -> None:
    values = _sweep(4, 5, seeds=3, rng_seed=5)
    rc = rank_comparison(values, "r1", n_boot=300, min_boot_seeds=3)
    assert rc is not None
    cells = values.pivot_table(index="label", columns="dataset", values="value", aggfunc="mean")
    pd.testing.assert_frame_equal(rc.table.loc[cells.index, cells.columns], cells,
                                  check_names=False)
    want = stats.friedmanchisquare(*cells.to_numpy())
    assert rc.friedman.chi2_f == pytest.approx(want.statistic)
    assert rc.cd == pytest.approx(Q_005[4] * math.sqrt(4 * 5 / (6 * 5)), abs=2e-3)
    assert set(rc.holm["recipe"]) == {"r0", "r2", "r3"}
    for t in rc.holm.itertuples():  # P(improvement): Mann-Whitney U / (n m), mean over sets
        u = [stats.mannwhitneyu(values[(values["label"] == t.recipe) & (values["dataset"] == d)]
                                ["value"],
                                values[(values["label"] == "r1") & (values["dataset"] == d)]
                                ["value"]).statistic / 9 for d in cells.columns]
        assert t.p_improve == pytest.approx(np.mean(u))
        assert t.p_improve_low <= t.p_improve <= t.p_improve_high


def test_rank_table_bolds_the_rows_holm_rejects() -> None:
    # 4 recipes on 10 test sets: a always first, b always second, c and ref alternate 3, 4.
    # z = (R - R_ref) / sqrt(20/60): a -4.33, b -2.60 (Holm rejects both), c 0 (no).
    cells = {}
    for d in range(10):
        scores = {"a": 0.9, "b": 0.8, "c": 0.7 if d % 2 else 0.6, "ref": 0.6 if d % 2 else 0.7}
        for label, v in scores.items():
            for s in range(2):
                cells[(label, s, f"t{d}")] = v + 0.001 * s
    rc = rank_comparison(_tidy(cells), "ref", n_boot=200, min_boot_seeds=2)
    assert rc is not None
    (table,) = rank_tables(rc)
    assert isinstance(table, Table) and table.slug == "ranks"
    assert table.columns[:4] == ["Recipe", "Mean rank", "z vs ref", "p (Holm)"]
    assert table.columns[4].startswith("P(better than ref)")
    names = [row[0] for row in table.rows]
    assert names[:2] == ["a", "b"] and set(names[2:]) == {"c", "ref (ref)"}
    bolded = {row[0] for row, b in zip(table.rows, table.bold, strict=True) if all(b)}
    assert bolded == {"a", "b"}
    row_a = table.rows[0]
    assert float(row_a[1]) == pytest.approx(1.0)
    assert float(row_a[2]) == pytest.approx(-2.5 / math.sqrt(20 / 60), abs=5e-3)
    assert row_a[4].startswith("1.00")
    for word in ("Friedman", "Iman", "Nemenyi", "Holm", "bootstrap", "seeds"):
        assert word in table.note


# --- the CD diagram ------------------------------------------------------------------------


def test_cd_diagram_writes_a_png(tmp_path) -> None:
    path = cd_diagram(pd.Series(DEMSAR_RANKS), nemenyi_cd(4, 14, 0.10), tmp_path)
    assert path is not None and path.exists()
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert cd_diagram(pd.Series({"only": 1.0}), 1.0, tmp_path, name="one.png") is None
    assert not (tmp_path / "one.png").exists()


def test_no_improvement_interval_below_five_seeds_by_default() -> None:
    values = _sweep(4, 5, seeds=3, rng_seed=5)
    rc = rank_comparison(values, "r1", n_boot=300)
    assert rc is not None and rc.holm["p_improve"].notna().all()
    assert rc.holm["p_improve_low"].isna().all() and rc.holm["p_improve_high"].isna().all()
