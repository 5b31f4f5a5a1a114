"""DeLong's test and Holm's correction (ablate.report.delong) against independent answers.

References, none computed by the code under test: scikit-learn's AUC; DeLong et al.
(1988)'s equations written out here pairwise (O(m n)); a 3 + 3 case worked on paper;
R pROC's own test-suite numbers on its aSAH data set; Holm's procedure run as the
step-down rejection rule it is defined by.
"""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from ablate.core.errors import AblateError
from ablate.report.delong import DeLongResult, delong_test, holm

ROOT = Path(__file__).resolve().parent.parent


def _tied_pair(seed: int, n: int = 60, levels: int = 7):
    """Labels and two correlated detectors with coarse (heavily tied) integer scores."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.4).astype(int)
    y[:2], y[2:4] = 1, 0  # both classes at least twice
    base = rng.normal(1.0 * y, 1.0)
    a = np.clip(np.round(base + rng.normal(0, 0.5, n)), -levels // 2, levels // 2)
    b = np.clip(np.round(base + rng.normal(0.3 * y, 0.8, n)), -levels // 2, levels // 2)
    return y, a, b


def _delong_1988(y, a, b) -> dict:
    """DeLong, DeLong & Clarke-Pearson (1988), straight from the paper (pairwise kernel).

    psi(X, Y) = 1 if Y < X, 1/2 if Y == X, 0 if Y > X (X: a fake's score, Y: a real's);
    theta = mean psi; V10(X_i) = mean_j psi(X_i, Y_j); V01(Y_j) = mean_i psi(X_i, Y_j);
    S10_rs = sum_i (V10r_i - theta_r)(V10s_i - theta_s) / (m - 1), S01 likewise over the
    n reals; S = S10 / m + S01 / n; z = (theta_a - theta_b) / sqrt(L S L'), L = (1, -1).
    """
    y, a, b = (np.asarray(v) for v in (y, a, b))
    v10, v01, theta = [], [], []
    for s in (a, b):
        x, yy = s[y == 1], s[y == 0]
        psi = np.array([[1.0 if yj < xi else 0.5 if yj == xi else 0.0 for yj in yy]
                        for xi in x])  # (m, n)
        v10.append(psi.mean(axis=1))
        v01.append(psi.mean(axis=0))
        theta.append(psi.mean())
    m, n = len(v10[0]), len(v01[0])

    def s(v, r, t, k):
        return sum((v[r][i] - theta[r]) * (v[t][i] - theta[t]) for i in range(k)) / (k - 1)

    cov = [[s(v10, r, t, m) / m + s(v01, r, t, n) / n for t in (0, 1)] for r in (0, 1)]
    var_diff = cov[0][0] + cov[1][1] - 2 * cov[0][1]
    z = (theta[0] - theta[1]) / math.sqrt(var_diff)
    return {"auc_a": theta[0], "auc_b": theta[1], "var_a": cov[0][0], "var_b": cov[1][1],
            "cov": cov[0][1], "z": z, "p_value": math.erfc(abs(z) / math.sqrt(2))}


# ---------------------------------------------------------------- DeLong: references


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_aucs_equal_sklearn_with_ties(seed: int) -> None:
    y, a, b = _tied_pair(seed, n=200)
    assert len(np.unique(a)) < 10  # many ties: the 1/2 rule matters
    r = delong_test(y, a, b)
    assert r.auc_a == pytest.approx(roc_auc_score(y, a), abs=1e-12)
    assert r.auc_b == pytest.approx(roc_auc_score(y, b), abs=1e-12)
    assert r.diff == pytest.approx(r.auc_a - r.auc_b, abs=1e-15)
    assert (r.n_pos, r.n_neg) == (int(y.sum()), int((1 - y).sum()))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_variances_match_the_1988_definition(seed: int) -> None:
    y, a, b = _tied_pair(seed, n=40, levels=5)
    r, ref = delong_test(y, a, b), _delong_1988(y, a, b)
    for key, want in ref.items():
        assert getattr(r, key) == pytest.approx(want, rel=1e-10, abs=1e-14), key


def test_hand_worked_three_by_three() -> None:
    # Frames (label, A, B):  fake (.9, .8)  real (.5, .5)  fake (.4, .3)
    #                        real (.4, .2)  fake (.4, .5)  real (.1, .2)
    # so fakes X_A = (.9, .4, .4), X_B = (.8, .3, .5); reals Y_A = (.5, .4, .1),
    # Y_B = (.5, .2, .2); m = n = 3.
    #
    # A: V10 = share of reals each fake beats (tie = 1/2):
    #    .9 -> 3/3 = 1;  .4 -> (.1 beaten, .4 tie, .5 not) 1.5/3 = 1/2;  .4 -> 1/2
    #    V10_A = (1, 1/2, 1/2), theta_A = 2/3
    #    V01 = share of fakes above each real: .5 -> 1/3;  .4 -> (1 + 1/2 + 1/2)/3 = 2/3;
    #    .1 -> 1;  V01_A = (1/3, 2/3, 1), mean 2/3 (= theta_A, as it must)
    # B: V10: .8 -> 1;  .3 -> (.2, .2 beaten, .5 not) 2/3;  .5 -> (.5 tie, .2, .2) 5/6
    #    V10_B = (1, 2/3, 5/6), theta_B = (6 + 4 + 5)/18 = 5/6
    #    V01: .5 -> (.8 above, .5 tie, .3 not) 1/2;  .2 -> 1;  .2 -> 1
    #    V01_B = (1/2, 1, 1), mean 5/6
    # Deviations from theta and sample (co)variances, ddof = 1 (divide by 2):
    #    V10_A - 2/3 = (1/3, -1/6, -1/6)   V10_B - 5/6 = (1/6, -1/6, 0)
    #    S10_AA = (1/9 + 1/36 + 1/36)/2 = 1/12;  S10_BB = (1/36 + 1/36)/2 = 1/36
    #    S10_AB = (1/18 + 1/36 + 0)/2 = 1/24
    #    V01_A - 2/3 = (-1/3, 0, 1/3)      V01_B - 5/6 = (-1/3, 1/6, 1/6)
    #    S01_AA = (1/9 + 0 + 1/9)/2 = 1/9;   S01_BB = (1/9 + 1/36 + 1/36)/2 = 1/12
    #    S01_AB = (1/9 + 0 + 1/18)/2 = 1/12
    # S = S10/3 + S01/3:
    #    var_A = (1/12 + 1/9)/3 = 7/108;  var_B = (1/36 + 1/12)/3 = 1/27 = 4/108
    #    cov = (1/24 + 1/12)/3 = 1/24 = 4.5/108
    #    var(diff) = 7/108 + 4/108 - 9/108 = 2/108 = 1/54
    # diff = 2/3 - 5/6 = -1/6;  z = (-1/6) / sqrt(1/54) = -sqrt(54/36) = -sqrt(3/2) ~ -1.2247
    # p = 2 Phi(-|z|) = erfc(|z| / sqrt 2) = erfc(sqrt(3)/2) ~ 0.2207
    y = [1, 0, 1, 0, 1, 0]
    a = [0.9, 0.5, 0.4, 0.4, 0.4, 0.1]
    b = [0.8, 0.5, 0.3, 0.2, 0.5, 0.2]
    r = delong_test(y, a, b)
    assert isinstance(r, DeLongResult)
    assert (r.n_pos, r.n_neg) == (3, 3)
    assert r.auc_a == pytest.approx(2 / 3, abs=1e-12)
    assert r.auc_b == pytest.approx(5 / 6, abs=1e-12)
    assert r.diff == pytest.approx(-1 / 6, abs=1e-12)
    assert r.var_a == pytest.approx(7 / 108, abs=1e-12)
    assert r.var_b == pytest.approx(1 / 27, abs=1e-12)
    assert r.cov == pytest.approx(1 / 24, abs=1e-12)
    assert r.z == pytest.approx(-math.sqrt(1.5), abs=1e-12)
    assert r.p_value == pytest.approx(math.erfc(math.sqrt(3) / 2), abs=1e-12)
    assert r.p_value == pytest.approx(0.2207, abs=1e-4)


# R pROC's aSAH data (Turck et al. 2010, Intensive Care Med 36:107; shipped with pROC,
# GPL-3): 113 patients with aneurysmal subarachnoid haemorrhage, outcome Poor (positive)
# or Good, and three markers. Columns kept: outcome, wfns, s100b, ndka. Transcribed from
# erenozen/opendose docs/validation/datasets/roc-asah.csv (its first rows match pROC's
# printed head(aSAH)); the reference numbers below match to 1e-12, which a transcription
# error would not survive.
ASAH = """
    Good,1,0.13,3.01 Good,1,0.14,8.54 Good,1,0.1,8.09 Good,1,0.04,10.42
    Poor,3,0.13,17.4 Poor,2,0.1,12.75 Good,5,0.47,6 Poor,4,0.16,13.2
    Good,1,0.18,15.54 Good,2,0.1,6.01 Poor,5,0.12,15.96 Good,2,0.1,17.86
    Poor,5,0.44,5.18 Poor,5,0.71,8.9 Good,1,0.04,13.41 Good,2,0.08,20.75
    Poor,5,0.49,11.6 Good,2,0.04,16.11 Poor,2,0.07,32.37 Poor,5,0.33,54.82
    Poor,2,0.09,32.41 Good,1,0.09,49.94 Poor,1,0.07,40.34 Good,1,0.11,9.47
    Good,1,0.07,6.29 Good,2,0.17,12.53 Good,1,0.07,6.54 Good,2,0.11,6.3
    Good,1,0.13,80.3 Good,1,0.19,12.8 Good,3,0.05,9.8 Good,4,0.16,9.81
    Poor,2,0.41,9.85 Good,1,0.14,18.21 Good,4,0.34,5.03 Poor,5,0.35,14.04
    Poor,4,0.48,21.93 Good,1,0.09,8.02 Poor,4,0.96,7.42 Poor,2,0.25,8.38
    Good,5,0.5,6.59 Good,5,0.46,9.63 Good,1,0.16,13.12 Good,1,0.07,7.96
    Good,2,0.43,14.34 Good,4,0.45,41.43 Good,1,0.11,7.63 Good,1,0.08,7.06
    Good,2,0.09,12.59 Poor,5,0.86,13.56 Poor,5,0.52,3.87 Good,2,0.08,9.44
    Good,1,0.06,7.66 Good,2,0.13,12.98 Poor,5,2.07,419.19 Good,1,0.1,27.19
    Good,2,0.14,22.27 Good,2,0.15,9.95 Poor,2,0.07,21.22 Good,1,0.06,11.73
    Poor,5,0.77,10.4 Good,1,0.05,58.83 Good,1,0.09,6.39 Poor,2,0.3,11.09
    Poor,5,0.03,12.22 Poor,2,0.09,13.67 Good,1,0.04,17.21 Poor,4,0.23,22.63
    Poor,5,0.7,12.9 Good,2,0.09,9.7 Poor,4,0.27,21.57 Poor,4,0.71,8.23
    Poor,1,0.08,72.57 Poor,4,0.26,15.54 Good,1,0.08,10.51 Good,2,0.16,10.6
    Good,1,0.09,14.57 Poor,4,0.13,5.19 Poor,2,0.1,9.63 Good,1,0.08,4.61
    Poor,2,0.11,21.48 Good,3,0.33,17.3 Good,2,0.11,12.71 Good,4,0.28,9.44
    Good,2,0.07,11.07 Good,1,0.1,19.46 Good,4,0.32,10.83 Poor,5,0.22,5.37
    Good,1,0.07,11.97 Good,1,0.05,7.75 Good,5,0.24,9.83 Good,4,0.38,10.55
    Good,2,0.1,28.49 Good,2,0.15,8.53 Good,1,0.08,12.57 Good,1,0.14,12.9
    Good,1,0.1,46.83 Good,3,0.07,11.68 Good,1,0.04,12.67 Good,2,0.19,9.01
    Poor,5,0.56,9.57 Poor,2,0.14,34.06 Poor,2,0.58,11.72 Poor,5,0.32,14.26
    Poor,5,0.82,47.61 Poor,5,0.74,11.67 Good,2,0.15,24.58 Good,4,0.47,10.33
    Good,4,0.17,13.87 Poor,5,0.44,15.89 Good,1,0.15,22.43 Good,1,0.5,6.79
    Good,1,0.48,13.45"""


def _asah() -> dict[str, np.ndarray]:
    rows = [r.split(",") for r in ASAH.split()]
    return {"y": np.array([r[0] == "Poor" for r in rows], dtype=int),
            "wfns": np.array([float(r[1]) for r in rows]),
            "s100b": np.array([float(r[2]) for r in rows]),
            "ndka": np.array([float(r[3]) for r in rows])}


# xrobin/pROC tests/testthat: test-roc.test.R (Z, p of roc.test(..., method = "delong")),
# test-var.R, test-cov.R (DeLong var/cov), helper-deLongPlacementsCpp-expected.R (theta).
PROC_AUC = {"wfns": 0.823678861788618, "s100b": 0.731368563685637,
            "ndka": 0.611957994579946}
PROC_VAR = {"wfns": 0.00146991470882363, "ndka": 0.0031908105493913,
            "s100b": 0.00266868245717244}
PROC_TESTS = [  # (roc1, roc2, cov(roc1, roc2), Z, p)
    ("wfns", "s100b", 0.00119615567376754, 2.20898359144091, 0.0271757822291882),
    ("wfns", "ndka", -0.000532967856762438, 2.79777591868904, 0.00514557970691098),
    ("ndka", "s100b", -0.000756164938056579, -1.39077002573558, 0.164295175223054),
]


def test_asah_data_is_whole() -> None:
    d = _asah()
    assert d["y"].size == 113 and d["y"].sum() == 41  # 41 Poor, 72 Good (pROC docs)


@pytest.mark.parametrize("first, second, cov, z, p", PROC_TESTS)
def test_matches_proc_on_asah(first: str, second: str, cov: float, z: float, p: float) -> None:
    d = _asah()
    r = delong_test(d["y"], d[first], d[second])
    assert (r.n_pos, r.n_neg) == (41, 72)
    assert r.auc_a == pytest.approx(PROC_AUC[first], rel=1e-12)
    assert r.auc_b == pytest.approx(PROC_AUC[second], rel=1e-12)
    assert r.var_a == pytest.approx(PROC_VAR[first], rel=1e-10)
    assert r.var_b == pytest.approx(PROC_VAR[second], rel=1e-10)
    assert r.cov == pytest.approx(cov, rel=1e-10)
    assert r.z == pytest.approx(z, rel=1e-10)
    assert r.p_value == pytest.approx(p, rel=1e-10)


def test_asah_printed_roc_test_output() -> None:
    # roc.test(roc(aSAH$outcome, aSAH$s100b), roc(aSAH$outcome, aSAH$wfns)) prints
    # "Z = -2.209, p-value = 0.02718 ... AUC of roc1 0.7313686, AUC of roc2 0.8236789".
    d = _asah()
    r = delong_test(d["y"], d["s100b"], d["wfns"])
    assert round(r.auc_a, 4) == 0.7314 and round(r.auc_b, 4) == 0.8237
    assert round(r.z, 3) == -2.209 and round(r.p_value, 5) == 0.02718


# ---------------------------------------------------------------- DeLong: properties


def test_swapping_detectors_flips_z_keeps_p() -> None:
    y, a, b = _tied_pair(5)
    ab, ba = delong_test(y, a, b), delong_test(y, b, a)
    assert ba.z == pytest.approx(-ab.z, rel=1e-12)
    assert ba.p_value == pytest.approx(ab.p_value, rel=1e-12)
    assert ba.cov == pytest.approx(ab.cov, rel=1e-12)


def test_frame_order_does_not_matter() -> None:
    y, a, b = _tied_pair(6)
    perm = np.random.default_rng(0).permutation(y.size)
    r, rp = delong_test(y, a, b), delong_test(y[perm], a[perm], b[perm])
    for key in ("auc_a", "auc_b", "var_a", "var_b", "cov", "z", "p_value"):
        assert getattr(rp, key) == pytest.approx(getattr(r, key), rel=1e-12), key


def test_identical_scores_give_z0_p1() -> None:
    # Zero variance of the difference with zero difference: no evidence, z = 0, p = 1.
    y, a, _ = _tied_pair(7)
    for b in (a.copy(), 10 * a + 3):  # the same scores, and a monotone transform (same ranks)
        r = delong_test(y, a, b)
        assert r.diff == 0 and r.z == 0 and r.p_value == 1
        assert r.var_a == pytest.approx(r.cov) and r.var_b == pytest.approx(r.cov)


def test_zero_variance_with_a_real_difference_is_nan() -> None:
    # A perfect detector against a constant one: every placement differs by exactly 1/2,
    # so the difference (1/2) has no estimable variance; z and p are undefined.
    y = [1, 1, 1, 0, 0, 0]
    r = delong_test(y, [3, 2, 4, 0, 1, 0], [5, 5, 5, 5, 5, 5])
    assert r.auc_a == 1 and r.auc_b == 0.5 and r.diff == 0.5
    assert math.isnan(r.z) and math.isnan(r.p_value)


def test_accepts_bool_labels_and_lists() -> None:
    y, a, b = _tied_pair(8)
    r = delong_test(y.astype(bool), list(a), tuple(b))
    assert r == delong_test(y, a, b)


# ---------------------------------------------------------------- DeLong: bad input

GOOD_Y, GOOD_A, GOOD_B = [1, 1, 0, 0], [0.9, 0.8, 0.2, 0.1], [0.7, 0.6, 0.5, 0.4]


@pytest.mark.parametrize("labels, a, b, match", [
    (GOOD_Y, GOOD_A, GOOD_B[:3], "scores_b has 3 values but labels has 4"),
    (GOOD_Y, GOOD_A[:3], GOOD_B, "scores_a has 3 values but labels has 4"),
    ([1, 2, 0, 0], GOOD_A, GOOD_B, "labels must be 0 .* or 1 .*, got 2"),
    ([1, -1, 0, 0], GOOD_A, GOOD_B, "labels must be 0 .* or 1"),
    ([1, float("nan"), 0, 0], GOOD_A, GOOD_B, "labels must be 0 .* or 1"),
    (["fake", "fake", "real", "real"], GOOD_A, GOOD_B, "labels must be 0 .* or 1"),
    ([1, 0, 0, 0], GOOD_A, GOOD_B, "at least 2 fake and 2 real frames, got 1 fake and 3 real"),
    ([1, 1, 1, 0], GOOD_A, GOOD_B, "got 3 fake and 1 real"),
    ([0, 0, 0, 0], GOOD_A, GOOD_B, "got 0 fake and 4 real"),
    (GOOD_Y, [0.9, float("nan"), 0.2, 0.1], GOOD_B, "scores_a has NaN or infinite"),
    (GOOD_Y, GOOD_A, [0.7, 0.6, float("inf"), 0.4], "scores_b has NaN or infinite"),
    (GOOD_Y, GOOD_A, [0.7, 0.6, -float("inf"), 0.4], "scores_b has NaN or infinite"),
    (GOOD_Y, ["a", "b", "c", "d"], GOOD_B, "scores must be numbers"),
    ([[1, 1, 0, 0]], [GOOD_A], [GOOD_B], "labels must be one-dimensional"),
])
def test_bad_input_is_one_line_ablate_error(labels, a, b, match: str) -> None:
    with pytest.raises(AblateError, match=match) as err:
        delong_test(labels, a, b)
    assert "\n" not in str(err.value)


def test_imports_without_torch() -> None:
    code = ("import sys, ablate.report.delong; "
            "assert 'torch' not in sys.modules, 'torch was imported'")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=ROOT, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]


# ---------------------------------------------------------------- Holm


def test_holm_known_case() -> None:
    # sorted: .005 x4 = .02, .01 x3 = .03, .03 x2 = .06, .04 x1 = .04 -> running max .06
    got = holm([0.01, 0.04, 0.03, 0.005])
    np.testing.assert_allclose(got, [0.03, 0.06, 0.06, 0.02], rtol=0, atol=1e-15)


def test_holm_nan_stays_nan_and_does_not_count() -> None:
    # m = 2 (NaN left out): .01 x2 = .02, .04 x1 = .04
    got = holm([0.01, float("nan"), 0.04])
    assert math.isnan(got[1])
    np.testing.assert_allclose(got[[0, 2]], [0.02, 0.04], rtol=0, atol=1e-15)
    assert np.isnan(holm([float("nan")] * 3)).all()
    assert holm([]).shape == (0,)


def test_holm_caps_at_one() -> None:
    # .5 x2 = 1.0, .6 x1 = .6 -> running max 1.0, 1.0
    np.testing.assert_allclose(holm([0.5, 0.6]), [1.0, 1.0])
    # .2 x3 = .6, .7 x2 = 1.4 -> 1, .9 x1 = .9 -> running max 1.4 -> 1
    np.testing.assert_allclose(holm([0.9, 0.2, 0.7]), [1.0, 0.6, 1.0])
    assert holm([1.0, 1.0, 1.0]).max() == 1.0


def test_holm_ties_share_one_value() -> None:
    # .02 x3 = .06, .02 x2 = .04 -> max .06 for both; .5 x1 -> .5
    np.testing.assert_allclose(holm([0.02, 0.5, 0.02]), [0.06, 0.5, 0.06], atol=1e-15)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_holm_is_the_step_down_rule_and_monotone(seed: int) -> None:
    rng = np.random.default_rng(seed)
    p = rng.random(12) ** 3  # some small, some large
    p[[2, 7]] = np.nan
    adj = holm(p)
    ok = ~np.isnan(p)
    assert np.array_equal(np.isnan(adj), ~ok)
    assert (adj[ok] >= p[ok]).all() and (adj[ok] <= 1).all()
    order = np.argsort(p[ok])
    assert (np.diff(adj[ok][order]) >= 0).all()  # monotone in the raw p-values
    # Holm (1979) as a procedure: with m = 10 known p-values sorted ascending, reject
    # H_(1), H_(2), ... while p_(k) <= alpha / (m - k + 1); stop at the first failure.
    known = np.sort(p[ok])
    m = known.size
    for alpha in np.linspace(0.001, 0.5, 60):
        n_reject = 0
        while n_reject < m and known[n_reject] <= alpha / (m - n_reject):
            n_reject += 1
        assert int((adj[ok] <= alpha).sum()) == n_reject, alpha


@pytest.mark.parametrize("bad, match", [
    ([0.1, 1.2], "p-values must lie in \\[0, 1\\], got 1.2"),
    ([-0.1, 0.2], "got -0.1"),
    ([[0.1, 0.2]], "p-values must be one-dimensional"),
])
def test_holm_bad_input(bad, match: str) -> None:
    with pytest.raises(AblateError, match=match) as err:
        holm(bad)
    assert "\n" not in str(err.value)


# ---------------------------------------------------------------- several seeds per detector


def _psi(y, s) -> np.ndarray:
    """(m, n) DeLong kernel of one run: 1 if the real scores below the fake, 1/2 on a tie."""
    x, r = s[y == 1], s[y == 0]
    return (r[None, :] < x[:, None]) + 0.5 * (r[None, :] == x[:, None])


def test_mean_over_seeds_is_delong_on_the_averaged_kernel() -> None:
    from ablate.report.delong import delong_mean_test

    y, a0, b0 = _tied_pair(5)
    _, a1, b1 = _tied_pair(6)
    a, b = np.vstack([a0, a1]), np.vstack([b0, b1, b0 + (y == 1)])  # 2 runs of A, 3 of B
    got = delong_mean_test(y, a, b)
    # by the 1988 definitions, with each detector's kernel averaged over its runs
    psi_a = np.mean([_psi(y, s) for s in a], axis=0)  # (m, n)
    psi_b = np.mean([_psi(y, s) for s in b], axis=0)
    m, n = psi_a.shape
    d10, d01 = psi_a.mean(axis=1) - psi_b.mean(axis=1), psi_a.mean(axis=0) - psi_b.mean(axis=0)
    var = (np.sum((d10 - d10.mean()) ** 2) / (m - 1) / m
           + np.sum((d01 - d01.mean()) ** 2) / (n - 1) / n)
    z = (psi_a.mean() - psi_b.mean()) / math.sqrt(var)
    assert got.auc_a == pytest.approx(np.mean([roc_auc_score(y, s) for s in a]), abs=1e-12)
    assert got.auc_b == pytest.approx(np.mean([roc_auc_score(y, s) for s in b]), abs=1e-12)
    assert got.z == pytest.approx(z, rel=1e-10)
    assert got.p_value == pytest.approx(math.erfc(abs(z) / math.sqrt(2)), rel=1e-10)
    # one run each: exactly the two-detector test
    one = delong_mean_test(y, a0[None], b0[None])
    two = delong_test(y, a0, b0)
    assert (one.z, one.p_value, one.var_a, one.cov) == pytest.approx(
        (two.z, two.p_value, two.var_a, two.cov), rel=1e-10)
