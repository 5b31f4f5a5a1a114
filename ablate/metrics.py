"""Detection metrics: frame/video AUC, EER, AP, accuracy, and video-bootstrap CIs.

Scores are probabilities that a frame is fake (label 1). Every metric is
computed from one weighted ROC sweep (`_Curves`), so the point estimate and
each bootstrap resample go through the same code: a bootstrap resample of
videos is just an integer weight per frame (how often its video was drawn),
which lets 1000 resamples over ~10k frames run as a few matrix operations.

Conventions (documented because papers differ):
    auc    area under the ROC curve, ties count one half (= sklearn roc_auc_score)
    eer    the ROC curve, linearly interpolated between the two points that
           bracket the FPR = FNR crossing; perfect separation -> 0
    ap     average precision as sklearn's average_precision_score (step sum)
    acc_05 accuracy of `score >= 0.5`
    acc_thr accuracy of `score >= threshold`, the threshold chosen on the source
           domain's validation split (`eer_threshold`), never on the test set
Video level: a video's score is the mean of its frames' scores.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from ablate.errors import AblateError

FRAME_METRICS = ("auc", "eer", "ap", "acc_05", "acc_thr")
VIDEO_METRICS = ("video_auc", "video_eer")
_BOOT_CHUNK_ELEMENTS = 2_000_000  # frames x resamples per vectorised chunk (~16 MB float64)
_MAX_REDRAW_FACTOR = 20  # give up when one-class resamples outnumber valid ones 20:1

MetricFn = Callable[[np.ndarray, np.ndarray], float]


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


def _as_ids(video_ids, n: int) -> np.ndarray:
    ids = np.asarray(video_ids).ravel()
    if ids.size != n:
        raise AblateError(
            f"video_ids and scores differ in length ({ids.size} vs {n}); pass one id per frame"
        )
    return ids


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

    def eer(self) -> np.ndarray:
        fpr, tpr = self.roc()
        i, t = _eer_crossing(fpr, tpr)
        rows = np.arange(fpr.shape[0])
        return fpr[rows, i - 1] + t * (fpr[rows, i] - fpr[rows, i - 1])

    def ap(self) -> np.ndarray:
        """sklearn's step-wise AP: sum over thresholds of (recall gain) x precision."""
        p, _ = self.totals
        tp = np.cumsum(self.pos, axis=1)
        predicted = tp + np.cumsum(self.neg, axis=1)
        precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
        return (self.pos / p[:, None] * precision).sum(axis=1)


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
    name: str, srt: _Sorted, y: np.ndarray, s: np.ndarray, w: np.ndarray, threshold: float | None
) -> np.ndarray:
    """One named frame metric for each row of the weight matrix `w` (B x n)."""
    if name == "acc_05":
        return _accuracy(y, s, 0.5, w)
    if name == "acc_thr":
        if threshold is None:
            raise AblateError("acc_thr needs a threshold; choose one on the validation split")
        return _accuracy(y, s, threshold, w)
    curves = _Curves.from_weights(srt, w)
    return {"auc": curves.auc, "eer": curves.eer, "ap": curves.ap}[name]()


# ---------------------------------------------------------------- point estimates


def frame_metrics(labels, scores, threshold: float | None = None) -> dict[str, float]:
    """AUC, EER, AP, accuracy at 0.5 and (given a validation threshold) at `threshold`."""
    y, s = _as_arrays(labels, scores)
    srt, ones = _sort(y, s), np.ones((1, y.size))
    names = [m for m in FRAME_METRICS if m != "acc_thr" or threshold is not None]
    return {m: float(_named_metric(m, srt, y, s, ones, threshold)[0]) for m in names}


def auc(labels, scores) -> float:
    return frame_metrics(labels, scores)["auc"]


def eer(labels, scores) -> float:
    return frame_metrics(labels, scores)["eer"]


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


# ---------------------------------------------------------------- video level


def video_scores(video_ids, labels, scores) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ids, labels, mean frame score) per video, ids in sorted order.

    A video must have one label: mixed labels mean the ids are not unique across
    real and fake videos, which would silently corrupt video-level metrics.
    """
    y, s = _as_frames(labels, scores)
    ids = _as_ids(video_ids, y.size)
    uniq, inv = np.unique(ids, return_inverse=True)
    counts = np.bincount(inv, minlength=uniq.size)
    pos = np.bincount(inv, weights=y, minlength=uniq.size)
    mixed = (pos > 0) & (pos < counts)
    if mixed.any():
        examples = ", ".join(str(v) for v in uniq[mixed][:3])
        raise AblateError(
            f"{int(mixed.sum())} videos mix real and fake frames (e.g. {examples}); "
            "video ids must be unique per video"
        )
    means = np.bincount(inv, weights=s, minlength=uniq.size) / counts
    return uniq, (pos > 0).astype(np.int64), means


def video_auc(video_ids, labels, scores) -> float:
    """AUC over videos, each scored by the mean of its frames' scores."""
    _, vy, vs = video_scores(video_ids, labels, scores)
    return auc(vy, vs)


def video_eer(video_ids, labels, scores) -> float:
    _, vy, vs = video_scores(video_ids, labels, scores)
    return eer(vy, vs)


# ---------------------------------------------------------------- bootstrap


@dataclass(frozen=True)
class Bootstrap:
    """Video resampling counts: `counts[b, v]` = times video v was drawn in resample b."""

    counts: np.ndarray  # B x V ints, every row has both classes
    n_redrawn: int  # one-class resamples thrown away and drawn again


def draw_videos(video_labels: np.ndarray, n_boot: int, seed: int = 0) -> Bootstrap:
    """Draw `n_boot` resamples of the videos (with replacement) that contain both classes."""
    v = video_labels.size
    rng = np.random.default_rng(seed)
    kept: list[np.ndarray] = []
    n_kept = n_redrawn = 0
    while n_kept < n_boot:
        if n_redrawn > _MAX_REDRAW_FACTOR * max(n_boot, 1):
            raise AblateError(
                f"{n_redrawn} bootstrap resamples had one class only; too few real or fake "
                "videos for a CI, evaluate on more videos or use n_boot=0"
            )
        chunk = n_boot - n_kept
        draws = rng.integers(0, v, size=(chunk, v))
        flat = (draws + v * np.arange(chunk)[:, None]).ravel()
        counts = np.bincount(flat, minlength=chunk * v).reshape(chunk, v)
        pos = counts @ video_labels
        ok = (pos > 0) & (pos < v)
        kept.append(counts[ok])
        n_kept += int(ok.sum())
        n_redrawn += int((~ok).sum())
    return Bootstrap(np.vstack(kept)[:n_boot], n_redrawn)


def _video_index(video_ids, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(video index per frame, label per video), checking each video has one label."""
    ids = _as_ids(video_ids, y.size)
    _, inv = np.unique(ids, return_inverse=True)
    _, vy, _ = video_scores(ids, y, np.zeros(y.size))
    return inv.ravel(), vy


def _boot_values(
    metric, video_ids, labels, scores, boot: Bootstrap, threshold: float | None
) -> np.ndarray:
    """The metric on every resample in `boot` (frames of a drawn video come along)."""
    y, s = _as_arrays(labels, scores)
    inv, _ = _video_index(video_ids, y)
    if callable(metric):
        return _boot_callable(metric, inv, y, s, boot)
    if metric in VIDEO_METRICS:
        _, vy, vs = video_scores(video_ids, y, s)
        return _boot_named(metric.removeprefix("video_"), vy, vs, boot.counts, threshold)
    if metric not in FRAME_METRICS:
        raise AblateError(
            f"unknown metric {metric!r}; use one of {', '.join(FRAME_METRICS + VIDEO_METRICS)} "
            "or a callable(labels, scores)"
        )
    chunk = max(1, _BOOT_CHUNK_ELEMENTS // y.size)
    parts = [
        _boot_named(metric, y, s, boot.counts[i : i + chunk][:, inv], threshold)
        for i in range(0, boot.counts.shape[0], chunk)
    ]
    return np.concatenate(parts) if parts else np.empty(0)


def _boot_named(name: str, y, s, weights: np.ndarray, threshold: float | None) -> np.ndarray:
    return _named_metric(name, _sort(y, s), y, s, weights, threshold)


def _boot_callable(fn: MetricFn, inv, y, s, boot: Bootstrap) -> np.ndarray:
    """Generic (slower) path: materialise each resample's frames and call `fn` on them."""
    frames_of = np.split(np.argsort(inv, kind="stable"), np.cumsum(np.bincount(inv))[:-1])
    values = np.empty(boot.counts.shape[0])
    for b, counts in enumerate(boot.counts):
        idx = np.concatenate([np.tile(frames_of[v], c) for v, c in enumerate(counts) if c])
        values[b] = fn(y[idx], s[idx])
    return values


def bootstrap_values(
    video_ids,
    labels,
    scores,
    metric_fn: str | MetricFn,
    n_boot: int = 1000,
    seed: int = 0,
    threshold: float | None = None,
) -> tuple[np.ndarray, int]:
    """(metric on each of `n_boot` video resamples, number of one-class resamples redrawn)."""
    y, _ = _as_arrays(labels, scores)
    _, vy = _video_index(video_ids, y)
    boot = draw_videos(vy, n_boot, seed)
    return _boot_values(metric_fn, video_ids, labels, scores, boot, threshold), boot.n_redrawn


def bootstrap_ci(
    video_ids,
    labels,
    scores,
    metric_fn: str | MetricFn,
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
    threshold: float | None = None,
) -> tuple[float, float]:
    """Percentile CI from resampling *videos* (frames of one video are not independent).

    `metric_fn` is a name ("auc", "eer", "ap", "acc_05", "acc_thr", "video_auc",
    "video_eer"; vectorised) or any callable(labels, scores) -> float (looped).
    """
    values, _ = bootstrap_values(video_ids, labels, scores, metric_fn, n_boot, seed, threshold)
    return _percentiles(values, alpha)


def _percentiles(values: np.ndarray, alpha: float) -> tuple[float, float]:
    if values.size == 0:
        return float("nan"), float("nan")
    low, high = np.quantile(values, [alpha / 2, 1 - alpha / 2])
    return float(low), float(high)


# ---------------------------------------------------------------- report rows


def evaluate_scores(
    video_ids,
    labels,
    scores,
    threshold: float | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> list[dict]:
    """Frame and video metrics with video-bootstrap CIs, one row per (level, metric).

    All metrics share the same resamples (one seed), so their CIs are comparable.
    n_boot=0 skips the bootstrap (CI columns are NaN).
    """
    y, s = _as_arrays(labels, scores)
    inv, vy = _video_index(video_ids, y)
    _, _, vs = video_scores(video_ids, y, s)
    boot = draw_videos(vy, n_boot, seed) if n_boot > 0 else None
    point = frame_metrics(y, s, threshold)
    video_point = {"auc": auc(vy, vs), "eer": eer(vy, vs)}
    rows = [
        _row("frame", m, v, y.size, _ci(m, video_ids, y, s, boot, threshold, alpha), boot)
        for m, v in point.items()
    ]
    rows += [
        _row("video", m, v, vy.size, _ci(f"video_{m}", video_ids, y, s, boot, None, alpha), boot)
        for m, v in video_point.items()
    ]
    return rows


def _ci(metric, video_ids, y, s, boot: Bootstrap | None, threshold, alpha) -> tuple[float, float]:
    if boot is None:
        return float("nan"), float("nan")
    return _percentiles(_boot_values(metric, video_ids, y, s, boot, threshold), alpha)


def _row(level: str, metric: str, value: float, n: int, ci: Sequence[float], boot) -> dict:
    return {
        "level": level,
        "metric": metric,
        "value": float(value),
        "ci_low": ci[0],
        "ci_high": ci[1],
        "n": int(n),
        "n_boot": 0 if boot is None else int(boot.counts.shape[0]),
        "n_redrawn": 0 if boot is None else int(boot.n_redrawn),
    }
