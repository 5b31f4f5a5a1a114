"""DeLong's test for two correlated ROC AUCs, and Holm's step-down correction.

DeLong's test asks whether two detectors scored on the *same* frames have the same
AUC. Each AUC is a Mann-Whitney statistic (a fake frame scored above a real one
counts 1, a tie 1/2); its variance and the covariance between the two come from
the "structural components" (placements): V10_i, the share of real frames that
fake frame i beats, and V01_j, the share of fake frames that beat real frame j.
With m fake and n real frames, S = S10 / m + S01 / n (S10, S01: the 2x2 sample
covariance matrices of the V10 and V01 rows) is the covariance matrix of the two
AUCs, and z = (auc_a - auc_b) / sqrt(var_a + var_b - 2 cov) is compared with a
standard normal.

- DeLong ER, DeLong DM, Clarke-Pearson DL (1988). Comparing the areas under two
  or more correlated receiver operating characteristic curves: a nonparametric
  approach. Biometrics 44(3):837-845.
- Sun X, Xu W (2014). Fast implementation of DeLong's algorithm for comparing
  the areas under correlated receiver operating characteristic curves. IEEE
  Signal Processing Letters 21(11):1389-1393. The placements come from midranks
  (within the fakes, within the reals, and over both), so the test costs
  O(N log N) instead of the O(m n) of the pairwise kernel.

Why next to the paired video bootstrap (`ablate.metrics`, `ablate.compare`):
DeLong works on frames and treats them as independent. Frames of one video are
correlated (same face, same manipulation, same compression), so its variance is
too small and its p-values are optimistic when a test set has many frames per
video; the video bootstrap resamples whole videos and does not have that problem.
DeLong is exact-in-form, cheap and needs no seed, which makes it a useful
frame-level cross-check and the only option when scores carry no video ids. The
report therefore names, for every p-value, which test produced it.

Holm (1979, Scand J Statist 6:65-70) controls the family-wise error rate over the
many comparisons of one report without assuming they are independent.

Nothing here imports torch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats

from ablate.core.errors import AblateError


@dataclass(frozen=True)
class DeLongResult:
    """DeLong's test of auc_a == auc_b on the same frames (two-sided)."""

    auc_a: float
    auc_b: float
    diff: float  # auc_a - auc_b
    var_a: float  # DeLong variance of auc_a
    var_b: float
    cov: float  # DeLong covariance of auc_a and auc_b
    z: float  # diff / sqrt(var_a + var_b - 2 cov); NaN when undefined (see delong_test)
    p_value: float  # two-sided, from the standard normal
    n_pos: int  # m: fake frames (label 1)
    n_neg: int  # n: real frames (label 0)


def _as_1d(name: str, values, n: int | None = None) -> np.ndarray:
    a = np.asarray(values)
    if a.ndim != 1:
        raise AblateError(f"{name} must be one-dimensional, got shape {a.shape}")
    if n is not None and a.size != n:
        raise AblateError(f"{name} has {a.size} values but labels has {n}; "
                          "score both detectors on the same frames")
    return a


def _checked(labels, scores_a, scores_b) -> tuple[np.ndarray, np.ndarray]:
    """(is_fake (N,) bool, scores (2, N) float), or AblateError with one line."""
    y = _as_1d("labels", labels)
    a = _as_1d("scores_a", scores_a, y.size)
    b = _as_1d("scores_b", scores_b, y.size)
    if y.dtype == bool:
        y = y.astype(int)
    try:
        ok = np.isin(y, [0, 1])
    except TypeError:  # unorderable objects
        ok = np.zeros(y.shape, dtype=bool)
    if not ok.all():
        bad = y[~ok][0]
        bad = bad.item() if isinstance(bad, np.generic) else bad  # 2, not np.int64(2)
        raise AblateError(f"labels must be 0 (real) or 1 (fake), got {bad!r}")
    try:
        s = np.vstack([a, b]).astype(float)  # (2, N)
    except (TypeError, ValueError):
        raise AblateError("scores must be numbers") from None
    if not np.isfinite(s).all():
        which = "scores_a" if not np.isfinite(s[0]).all() else "scores_b"
        raise AblateError(f"{which} has NaN or infinite values; DeLong needs a finite "
                          "score for every frame")
    fake = y == 1
    m, n = int(fake.sum()), int((~fake).sum())
    if m < 2 or n < 2:
        raise AblateError(f"DeLong needs at least 2 fake and 2 real frames, got {m} fake "
                          f"and {n} real")
    return fake, s


def delong_test(labels, scores_a, scores_b) -> DeLongResult:
    """DeLong's test for two detectors scored on the same frames (1 = fake, higher = faker).

    Fast midrank form of Sun & Xu (2014). The variance of the difference is computed
    from the differences of the placements, which equals var_a + var_b - 2 cov exactly
    in arithmetic but cannot go negative in floating point.

    When that variance is 0 the normal approximation has nothing to scale by:
    - placements identical (identical score vectors, or one a monotone transform of
      the other, or both constant): the two AUCs are the same function of the data, so
      there is no evidence of a difference; z = 0 and p = 1 (as R pROC does);
    - placements differing by a constant (e.g. a perfect detector against a constant
      one): the difference is real but its sampling variance is not estimable from
      these frames; z and p are NaN (`holm` leaves NaN out), rather than pROC's
      z = +-inf, p = 0, which would read as overwhelming evidence.
    """
    fake, s = _checked(labels, scores_a, scores_b)
    x, y = s[:, fake], s[:, ~fake]  # (2, m) fake scores, (2, n) real scores
    m, n = x.shape[1], y.shape[1]
    tx = stats.rankdata(x, axis=1)  # (2, m) midranks among the fakes
    ty = stats.rankdata(y, axis=1)  # (2, n) midranks among the reals
    tz = stats.rankdata(np.hstack([x, y]), axis=1)  # (2, m + n) midranks over all frames
    # Placement numerators: half-integers, exact in float64 below 2**52 frames.
    beats = tz[:, :m] - tx  # (2, m): reals below fake i, ties count 1/2
    beaten = tz[:, m:] - ty  # (2, n): fakes below real j, ties count 1/2
    v10 = beats / n  # (2, m)
    v01 = 1.0 - beaten / m  # (2, n): fakes above real j, ties count 1/2
    auc = (tz[:, :m].sum(axis=1) - m * (m + 1) / 2) / (m * n)  # (2,)
    cov_auc = np.cov(v10) / m + np.cov(v01) / n  # (2, 2), ddof = 1
    diff = float(auc[0] - auc[1])

    d10, d01 = beats[0] - beats[1], beaten[0] - beaten[1]  # exact differences
    if np.ptp(d10) == 0 and np.ptp(d01) == 0:
        same = d10[0] == 0
        z, p = (0.0, 1.0) if same else (float("nan"), float("nan"))
    else:
        var_diff = np.var(d10 / n, ddof=1) / m + np.var(d01 / m, ddof=1) / n
        z = diff / float(np.sqrt(var_diff))
        p = float(2 * stats.norm.sf(abs(z)))
    return DeLongResult(
        auc_a=float(auc[0]), auc_b=float(auc[1]), diff=diff,
        var_a=float(cov_auc[0, 0]), var_b=float(cov_auc[1, 1]), cov=float(cov_auc[0, 1]),
        z=float(z), p_value=p, n_pos=m, n_neg=n,
    )


def _placements(fake: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(V10 (k, m), V01 (k, n), AUC (k,)) of k score rows on the same frames (midranks)."""
    x, y = s[:, fake], s[:, ~fake]  # (k, m) fake scores, (k, n) real scores
    m, n = x.shape[1], y.shape[1]
    tx, ty = stats.rankdata(x, axis=1), stats.rankdata(y, axis=1)
    tz = stats.rankdata(np.hstack([x, y]), axis=1)  # (k, m + n)
    v10 = (tz[:, :m] - tx) / n  # (k, m): share of reals below fake i, ties 1/2
    v01 = 1.0 - (tz[:, m:] - ty) / m  # (k, n): share of fakes above real j, ties 1/2
    auc = (tz[:, :m].sum(axis=1) - m * (m + 1) / 2) / (m * n)  # (k,)
    return v10, v01, auc


def delong_mean_test(labels, scores_a, scores_b) -> DeLongResult:
    """DeLong's test of mean AUC over several runs (seeds) of A against several of B, all
    scored on the same frames: scores_a (k_a, N), scores_b (k_b, N).

    The mean of AUCs is a linear combination of Mann-Whitney statistics, so its
    structural components are the means of the runs' placements; the variance then
    follows exactly as for one run (and with one run each this is `delong_test`). It
    is the test-set sampling variance given the trained models: seed-to-seed training
    noise is in the report's CIs over seeds, not here.
    """
    a, b = np.atleast_2d(np.asarray(scores_a)), np.atleast_2d(np.asarray(scores_b))
    if a.ndim != 2 or b.ndim != 2 or a.shape[0] == 0 or b.shape[0] == 0:
        raise AblateError("scores_a and scores_b must be (runs, frames) arrays")
    fake = _checked(labels, a[0], b[0])[0]
    runs = np.vstack([_checked(labels, r, r)[1][0] for r in (*a, *b)])  # (k_a + k_b, N)
    v10, v01, auc = _placements(fake, runs)
    ka = a.shape[0]
    m, n = v10.shape[1], v01.shape[1]
    d10 = v10[:ka].mean(axis=0) - v10[ka:].mean(axis=0)  # (m,)
    d01 = v01[:ka].mean(axis=0) - v01[ka:].mean(axis=0)  # (n,)
    va = np.var(v10[:ka].mean(axis=0), ddof=1) / m + np.var(v01[:ka].mean(axis=0), ddof=1) / n
    vb = np.var(v10[ka:].mean(axis=0), ddof=1) / m + np.var(v01[ka:].mean(axis=0), ddof=1) / n
    var_diff = np.var(d10, ddof=1) / m + np.var(d01, ddof=1) / n
    diff = float(auc[:ka].mean() - auc[ka:].mean())
    if np.isclose(var_diff, 0.0, atol=1e-15):
        z, p = (0.0, 1.0) if np.isclose(diff, 0.0, atol=1e-12) else (float("nan"), float("nan"))
    else:
        z = diff / float(np.sqrt(var_diff))
        p = float(2 * stats.norm.sf(abs(z)))
    return DeLongResult(auc_a=float(auc[:ka].mean()), auc_b=float(auc[ka:].mean()), diff=diff,
                        var_a=float(va), var_b=float(vb), cov=float((va + vb - var_diff) / 2),
                        z=float(z), p_value=p, n_pos=m, n_neg=n)


def holm(p_values) -> np.ndarray:
    """Holm step-down adjusted p-values, in the input order.

    The k-th smallest of m p-values becomes max over j <= k of min(1, (m - j + 1) p_(j)):
    monotone in the raw p-values and capped at 1. NaN entries (tests that could not be
    run) stay NaN and do not count toward m.
    """
    p = np.asarray(p_values, dtype=float)
    if p.ndim != 1:
        raise AblateError(f"p-values must be one-dimensional, got shape {p.shape}")
    known = ~np.isnan(p)
    if ((p[known] < 0) | (p[known] > 1)).any():
        bad = float(p[known][(p[known] < 0) | (p[known] > 1)][0])
        raise AblateError(f"p-values must lie in [0, 1], got {bad}")
    out = np.full(p.shape, np.nan)
    idx = np.flatnonzero(known)
    order = idx[np.argsort(p[idx], kind="stable")]  # (m,) positions, smallest p first
    m = order.size
    scaled = (m - np.arange(m)) * p[order]  # (m,): m p_(1), (m-1) p_(2), ..., p_(m)
    out[order] = np.minimum(np.maximum.accumulate(scaled), 1.0)
    return out
