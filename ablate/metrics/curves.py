"""Frame-level point metrics: AUC, EER (two conventions), AP, accuracy at thresholds.

Scores are probabilities that a frame is fake (label 1). Every metric is
computed from one weighted ROC sweep (`_Curves`), so the point estimate and
each bootstrap resample (`ablate.metrics.bootstrap`) go through the same code: a
bootstrap resample of videos is just an integer weight per frame (how often its
video was drawn), which lets 1000 resamples over ~10k frames run as a few matrix
operations.

Conventions (documented because papers differ):
    auc    area under the ROC curve, ties count one half (= sklearn roc_auc_score)
    eer    two conventions (`EER_CONVENTIONS`, recipe key `eval.eer`):
           interpolated (default) the ROC curve, linearly interpolated between the
               two points that bracket the FPR = FNR crossing; perfect separation -> 0.
               Equals DiffusionFake's `brentq(lambda x: 1 - x - interp1d(fpr, tpr)(x), 0, 1)`.
           nearest  DeepfakeBench's (training/metrics/utils.py): on sklearn's
               `roc_curve(y, s)` (drop_intermediate=True), `fnr = 1 - tpr` and
               `eer = fpr[np.nanargmin(np.absolute((fnr - fpr)))]`: the FPR of the kept
               ROC point where |FNR - FPR| is smallest (the first such point on a tie).
    ap     average precision as sklearn's average_precision_score (step sum)
    acc_05 accuracy of `score >= 0.5`
    acc_thr accuracy of `score >= threshold`, the threshold chosen on the source
           domain's validation split (`eer_threshold`), never on the test set
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ablate.core.errors import AblateError
from ablate.core.schema import choices

FRAME_METRICS = ("auc", "eer", "ap", "acc_05", "acc_thr")
EER_CONVENTIONS = choices("eval.eer")  # declared with the setting (ablate/core/schema.py)


# ---------------------------------------------------------------- input checks


def _as_frames(labels, scores) -> tuple[np.ndarray, np.ndarray]:
    """Validate labels/scores and return (int labels, float scores); AblateError on bad input."""
    y = np.asarray(labels).ravel()
    s = np.asarray(scores, dtype=float).ravel()
    if y.size != s.size:
        raise AblateError(
            f"labels and scores differ in length ({y.size} vs {s.size}); pass one score per frame"
        )
    if y.size == 0:
        raise AblateError("no scores to evaluate (empty input); check the test split is not empty")
    if not np.all(np.isfinite(s)):
        bad = int((~np.isfinite(s)).sum())
        raise AblateError(
            f"{bad} of {s.size} scores are NaN or infinite; fix the model output before scoring"
        )
    if not np.isin(y, (0, 1)).all():
        raise AblateError("labels must be 0 (real) or 1 (fake); found other values")
    return y.astype(np.int64), s


def _as_arrays(labels, scores) -> tuple[np.ndarray, np.ndarray]:
    """`_as_frames` plus the two-class check that every ranking metric needs."""
    y, s = _as_frames(labels, scores)
    n_pos = int(y.sum())
    if n_pos in (0, y.size):
        kind = "fake" if n_pos else "real"
        raise AblateError(
            f"all {y.size} labels are {kind}: AUC/EER need both real and fake samples; "
            "evaluate on a split that has both"
        )
    return y, s


# ---------------------------------------------------------------- weighted ROC sweep


@dataclass(frozen=True)
class _Sorted:
    """Samples sorted by descending score, with the start index of each tie group."""

    order: np.ndarray  # permutation: sorted position -> original index
    y: np.ndarray  # labels in sorted order
    starts: np.ndarray  # first sorted position of each distinct score
    thresholds: np.ndarray  # the distinct scores, descending


def _sort(y: np.ndarray, s: np.ndarray) -> _Sorted:
    order = np.argsort(-s, kind="mergesort")
    s_sorted = s[order]
    starts = np.flatnonzero(np.r_[True, s_sorted[1:] != s_sorted[:-1]])
    return _Sorted(order, y[order], starts, s_sorted[starts])


@dataclass(frozen=True)
class _Curves:
    """Per tie group weighted positives/negatives, for B weightings at once (B x G)."""

    pos: np.ndarray
    neg: np.ndarray

    @classmethod
    def from_weights(cls, srt: _Sorted, weights: np.ndarray) -> _Curves:
        """`weights` is B x n in the *original* order; ROC counts per tie group."""
        w = np.atleast_2d(weights)[:, srt.order].astype(float, copy=False)
        pos = np.add.reduceat(w * srt.y, srt.starts, axis=1)
        neg = np.add.reduceat(w, srt.starts, axis=1) - pos
        return cls(pos, neg)

    @property
    def totals(self) -> tuple[np.ndarray, np.ndarray]:
        return self.pos.sum(axis=1), self.neg.sum(axis=1)

    def roc(self) -> tuple[np.ndarray, np.ndarray]:
        """(fpr, tpr), each B x (G + 1), starting at the (0, 0) point."""
        p, n = self.totals
        zero = np.zeros((self.pos.shape[0], 1))
        tpr = np.hstack([zero, np.cumsum(self.pos, axis=1) / p[:, None]])
        fpr = np.hstack([zero, np.cumsum(self.neg, axis=1) / n[:, None]])
        return fpr, tpr

    def auc(self) -> np.ndarray:
        """Mann-Whitney AUC: each negative scores the positives above it, ties count 1/2."""
        p, n = self.totals
        tp_before = np.cumsum(self.pos, axis=1) - self.pos
        return (self.neg * (tp_before + 0.5 * self.pos)).sum(axis=1) / (p * n)

    def eer(self, convention: str = "interpolated") -> np.ndarray:
        if convention == "nearest":
            return self.eer_nearest()
        fpr, tpr = self.roc()
        i, t = _eer_crossing(fpr, tpr)
        rows = np.arange(fpr.shape[0])
        return fpr[rows, i - 1] + t * (fpr[rows, i] - fpr[rows, i - 1])

    def eer_nearest(self) -> np.ndarray:
        """DeepfakeBench's EER: FPR of the ROC point with the smallest |FNR - FPR|.

        The points are those sklearn's roc_curve keeps (drop_intermediate=True, frames
        of weight 0 left out), so a resample gives what DeepfakeBench computes on the
        materialised frames; the prepended (0, 0) point comes first, then ties go to
        the earliest (highest-threshold) point, as np.nanargmin does.
        """
        p, n = self.totals
        tps, fps = np.cumsum(self.pos, axis=1), np.cumsum(self.neg, axis=1)  # B x G
        keep = _sklearn_kept(self.pos + self.neg > 0, tps, fps)
        fpr = fps / n[:, None]
        gap = np.abs((1.0 - tps / p[:, None]) - fpr)
        gap = np.hstack([np.ones((gap.shape[0], 1)), np.where(keep, gap, np.inf)])
        fpr = np.hstack([np.zeros((fpr.shape[0], 1)), fpr])
        return fpr[np.arange(fpr.shape[0]), np.argmin(gap, axis=1)]

    def ap(self) -> np.ndarray:
        """sklearn's step-wise AP: sum over thresholds of (recall gain) x precision."""
        p, _ = self.totals
        tp = np.cumsum(self.pos, axis=1)
        predicted = tp + np.cumsum(self.neg, axis=1)
        precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
        return (self.pos / p[:, None] * precision).sum(axis=1)


def _sklearn_kept(present: np.ndarray, tps: np.ndarray, fps: np.ndarray) -> np.ndarray:
    """B x G: which tie groups sklearn's roc_curve(drop_intermediate=True) keeps.

    sklearn drops a point whose second differences of fps and tps are both 0 (the
    step into it equals the step out of it), keeping the first and the last. Steps
    are taken between *present* groups (weight > 0), as in the materialised sample.
    """
    b, g = present.shape
    idx = np.broadcast_to(np.arange(g), (b, g))
    before = np.maximum.accumulate(np.where(present, idx, -1), axis=1)
    prev = np.hstack([np.full((b, 1), -1), before[:, :-1]])  # last present group < j
    after = np.minimum.accumulate(np.where(present, idx, g)[:, ::-1], axis=1)[:, ::-1]
    nxt = np.hstack([after[:, 1:], np.full((b, 1), g)])  # first present group > j
    rows = np.arange(b)[:, None]
    changes = np.zeros((b, g), dtype=bool)
    for cum in (tps, fps):
        padded = np.hstack([np.zeros((b, 1)), cum, cum[:, -1:]])  # index k + 1 <-> group k
        step_in = cum - padded[rows, prev + 1]
        step_out = padded[rows, nxt + 1] - cum
        changes |= step_in != step_out
    return present & ((prev < 0) | (nxt >= g) | changes)


def _eer_crossing(fpr: np.ndarray, tpr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """First ROC point i with FNR <= FPR, and the fraction t in [0, 1] along segment i-1 -> i.

    FNR - FPR starts at 1 at (0, 0) and ends at -1 at (1, 1), so a crossing exists.
    """
    d = (1.0 - tpr) - fpr
    i = np.argmax(d <= 0, axis=1)
    rows = np.arange(d.shape[0])
    before, at = d[rows, i - 1], d[rows, i]
    return i, before / (before - at)


def _accuracy(y: np.ndarray, s: np.ndarray, threshold: float, weights: np.ndarray) -> np.ndarray:
    correct = ((s >= threshold).astype(np.int64) == y).astype(float)
    w = np.atleast_2d(weights).astype(float, copy=False)
    return (w @ correct) / w.sum(axis=1)


def _named_metric(
    name: str, srt: _Sorted, y: np.ndarray, s: np.ndarray, w: np.ndarray, threshold: float | None,
    eer: str = "interpolated",
) -> np.ndarray:
    """One named frame metric for each row of the weight matrix `w` (B x n)."""
    if name == "acc_05":
        return _accuracy(y, s, 0.5, w)
    if name == "acc_thr":
        if threshold is None:
            raise AblateError("acc_thr needs a threshold; choose one on the validation split")
        return _accuracy(y, s, threshold, w)
    curves = _Curves.from_weights(srt, w)
    if name == "eer":
        return curves.eer(eer)
    return {"auc": curves.auc, "ap": curves.ap}[name]()


def check_eer_convention(convention: str) -> str:
    if convention not in EER_CONVENTIONS:
        raise AblateError(f"unknown EER convention {convention!r}; set eval.eer to one of "
                          f"{', '.join(EER_CONVENTIONS)}")
    return convention


# ---------------------------------------------------------------- point estimates


def frame_metrics(labels, scores, threshold: float | None = None,
                  eer_convention: str = "interpolated") -> dict[str, float]:
    """AUC, EER (in `eer_convention`), AP, accuracy at 0.5 and (given a validation
    threshold) at `threshold`."""
    check_eer_convention(eer_convention)
    y, s = _as_arrays(labels, scores)
    srt, ones = _sort(y, s), np.ones((1, y.size))
    names = [m for m in FRAME_METRICS if m != "acc_thr" or threshold is not None]
    return {m: float(_named_metric(m, srt, y, s, ones, threshold, eer_convention)[0])
            for m in names}


def auc(labels, scores) -> float:
    return frame_metrics(labels, scores)["auc"]


def eer(labels, scores, convention: str = "interpolated") -> float:
    return frame_metrics(labels, scores, eer_convention=convention)["eer"]


def eer_threshold(labels, scores) -> float:
    """Score threshold of the ROC point nearest the EER crossing (pick it on validation data).

    Predict fake when `score >= threshold`. Of the two ROC points bracketing the
    crossing, the nearer one along the segment wins (the lower-threshold point on
    a tie), so the threshold is always one of the observed scores.
    """
    y, s = _as_arrays(labels, scores)
    srt = _sort(y, s)
    fpr, tpr = _Curves.from_weights(srt, np.ones((1, y.size))).roc()
    i, t = _eer_crossing(fpr, tpr)
    point = int(i[0]) if t[0] >= 0.5 else int(i[0]) - 1  # ROC point k <-> thresholds[k - 1]
    return float(srt.thresholds[point - 1])  # point >= 1: t >= 0.5 on the first segment


def best_acc_threshold(labels, scores) -> float:
    """Observed score whose `score >= threshold` rule is most accurate (highest on ties)."""
    y, s = _as_arrays(labels, scores)
    srt = _sort(y, s)
    curves = _Curves.from_weights(srt, np.ones((1, y.size)))
    tp, fp = np.cumsum(curves.pos[0]), np.cumsum(curves.neg[0])
    correct = tp + (curves.neg.sum() - fp)
    return float(srt.thresholds[int(np.argmax(correct))])
