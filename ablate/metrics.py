"""Detection metrics: frame/video AUC, EER, AP, accuracy, and clustered bootstrap CIs.

Scores are probabilities that a frame is fake (label 1). Every metric is
computed from one weighted ROC sweep (`_Curves`), so the point estimate and
each bootstrap resample go through the same code: a bootstrap resample of
videos is just an integer weight per frame (how often its video was drawn),
which lets 1000 resamples over ~10k frames run as a few matrix operations.

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
Video level: a video's score is the mean of its frames' scores (`AGGREGATION`).
Bootstrap unit (`BOOT_UNITS`, recipe key `eval.bootstrap_unit`): a resample draws
videos, or identities (clusters of videos sharing one, e.g. an FF++ target and
its four fakes), each drawn cluster bringing all its videos.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ablate.core.errors import AblateError
from ablate.core.names import METRIC_HOW

FRAME_METRICS = ("auc", "eer", "ap", "acc_05", "acc_thr")
VIDEO_METRICS = ("video_auc", "video_eer")
EER_CONVENTIONS = ("interpolated", "nearest")
BOOT_UNITS = ("auto", "identity", "video")  # auto: identity where identities are known
AGGREGATION = "mean"  # frame -> video: mean of frame probabilities (`video_scores`)
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


def video_eer(video_ids, labels, scores, convention: str = "interpolated") -> float:
    _, vy, vs = video_scores(video_ids, labels, scores)
    return eer(vy, vs, convention)


# ---------------------------------------------------------------- bootstrap


@dataclass(frozen=True)
class Bootstrap:
    """Video resampling counts: `counts[b, v]` = times video v was drawn in resample b."""

    counts: np.ndarray  # B x V ints, every row has both classes
    n_redrawn: int  # one-class resamples thrown away and drawn again
    unit: str = "video"  # what was drawn: "video", or "identity" (all videos of a cluster)
    n_units: int = 0  # how many videos or identities there were to draw from


def draw_videos(video_labels: np.ndarray, n_boot: int, seed: int = 0,
                clusters: np.ndarray | None = None) -> Bootstrap:
    """Draw `n_boot` resamples (with replacement) that contain both classes.

    Without `clusters` each video is drawn on its own. With `clusters` (V ints, the
    cluster of each video, 0..C-1) a resample draws C clusters and every drawn
    cluster brings all its videos, so videos sharing an identity move together.
    """
    v = video_labels.size
    unit = "video" if clusters is None else "identity"
    clusters = np.arange(v) if clusters is None else np.asarray(clusters, dtype=np.int64)
    c = int(clusters.max()) + 1 if clusters.size else 0
    rng = np.random.default_rng(seed)
    kept: list[np.ndarray] = []
    n_kept = n_redrawn = 0
    while n_kept < n_boot:
        if n_redrawn > _MAX_REDRAW_FACTOR * max(n_boot, 1):
            raise AblateError(
                f"{n_redrawn} bootstrap resamples had one class only; too few real or fake "
                f"{unit}s for a CI, evaluate on more videos, use n_boot=0 or "
                "eval.bootstrap_unit=video"
            )
        chunk = n_boot - n_kept
        draws = rng.integers(0, c, size=(chunk, c))  # chunk x C cluster draws
        flat = (draws + c * np.arange(chunk)[:, None]).ravel()
        counts = np.bincount(flat, minlength=chunk * c).reshape(chunk, c)[:, clusters]
        pos = counts @ video_labels
        ok = (pos > 0) & (pos < counts.sum(axis=1))
        kept.append(counts[ok])
        n_kept += int(ok.sum())
        n_redrawn += int((~ok).sum())
    return Bootstrap(np.vstack(kept)[:n_boot], n_redrawn, unit, c)


def video_clusters(video_ids, identities) -> np.ndarray | None:
    """The cluster (0..C-1) of each video in sorted-id order, or None when no identity is known.

    `identities` has one entry per frame; empty / missing entries are unknown, and a
    video without an identity is a cluster of its own. A video whose frames name two
    identities is an error (the cluster unit would be ambiguous).
    """
    if identities is None:
        return None
    ids = np.asarray(video_ids).ravel()
    known = np.array([_known(x) for x in np.asarray(identities, dtype=object).ravel()])
    if known.size != ids.size:
        raise AblateError(f"identities and video_ids differ in length ({known.size} vs "
                          f"{ids.size}); pass one identity per frame")
    if not known.any():
        return None
    names = np.where(known, np.asarray(identities, dtype=object).ravel(), "").astype(str)
    uniq, inv = np.unique(ids, return_inverse=True)
    inv = inv.ravel()
    pairs = np.unique(np.stack([inv, np.unique(names, return_inverse=True)[1].ravel()]), axis=1)
    if pairs.shape[1] != uniq.size:
        many = np.bincount(pairs[0], minlength=uniq.size) > 1
        examples = ", ".join(str(v) for v in uniq[many][:3])
        raise AblateError(f"{int(many.sum())} videos name more than one identity (e.g. "
                          f"{examples}); give every frame of a video the same identity")
    per_video = np.empty(uniq.size, dtype=object)
    per_video[inv] = names
    keys = [f"i:{n}" if n else f"v:{v}" for v, n in zip(uniq, per_video, strict=True)]
    return np.unique(np.array(keys), return_inverse=True)[1].ravel()


def _known(value) -> bool:
    """A non-empty identity (None, NaN, pd.NA and "" are unknown)."""
    if value is None or (pd.api.types.is_scalar(value) and bool(pd.isna(value))):
        return False
    return bool(str(value).strip())


def resolve_unit(unit: str, clusters: np.ndarray | None, where: str = "the test rows") -> str:
    """"identity" or "video": `auto` is identity exactly when identities are known."""
    if unit not in BOOT_UNITS:
        raise AblateError(f"unknown bootstrap unit {unit!r}; set eval.bootstrap_unit to one of "
                          f"{', '.join(BOOT_UNITS)}")
    if unit == "auto":
        return "video" if clusters is None else "identity"
    if unit == "identity" and clusters is None:
        raise AblateError(f"eval.bootstrap_unit=identity, but {where} have no identity column "
                          "(or only empty values); add one to the manifest or use "
                          "eval.bootstrap_unit=video")
    return unit


def _video_index(video_ids, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(video index per frame, label per video), checking each video has one label."""
    ids = _as_ids(video_ids, y.size)
    _, inv = np.unique(ids, return_inverse=True)
    _, vy, _ = video_scores(ids, y, np.zeros(y.size))
    return inv.ravel(), vy


def _boot_values(
    metric, video_ids, labels, scores, boot: Bootstrap, threshold: float | None,
    eer_convention: str = "interpolated",
) -> np.ndarray:
    """The metric on every resample in `boot` (frames of a drawn video come along)."""
    y, s = _as_arrays(labels, scores)
    inv, _ = _video_index(video_ids, y)
    if callable(metric):
        return _boot_callable(metric, inv, y, s, boot)
    if metric in VIDEO_METRICS:
        _, vy, vs = video_scores(video_ids, y, s)
        return _boot_named(metric.removeprefix("video_"), vy, vs, boot.counts, threshold,
                           eer_convention)
    if metric not in FRAME_METRICS:
        raise AblateError(
            f"unknown metric {metric!r}; use one of {', '.join(FRAME_METRICS + VIDEO_METRICS)} "
            "or a callable(labels, scores)"
        )
    chunk = max(1, _BOOT_CHUNK_ELEMENTS // y.size)
    parts = [
        _boot_named(metric, y, s, boot.counts[i : i + chunk][:, inv], threshold, eer_convention)
        for i in range(0, boot.counts.shape[0], chunk)
    ]
    return np.concatenate(parts) if parts else np.empty(0)


def _boot_named(name: str, y, s, weights: np.ndarray, threshold: float | None,
                eer_convention: str = "interpolated") -> np.ndarray:
    return _named_metric(name, _sort(y, s), y, s, weights, threshold, eer_convention)


def _boot_callable(fn: MetricFn, inv, y, s, boot: Bootstrap) -> np.ndarray:
    """Generic (slower) path: materialise each resample's frames and call `fn` on them."""
    frames_of = np.split(np.argsort(inv, kind="stable"), np.cumsum(np.bincount(inv))[:-1])
    values = np.empty(boot.counts.shape[0])
    for b, counts in enumerate(boot.counts):
        idx = np.concatenate([np.tile(frames_of[v], c) for v, c in enumerate(counts) if c])
        values[b] = fn(y[idx], s[idx])
    return values


def _draw(video_ids, y: np.ndarray, n_boot: int, seed: int, identities,
          boot_unit: str) -> Bootstrap:
    _, vy = _video_index(video_ids, y)
    clusters = video_clusters(video_ids, identities)
    unit = resolve_unit(boot_unit, clusters)
    return draw_videos(vy, n_boot, seed, clusters if unit == "identity" else None)


def bootstrap_values(
    video_ids,
    labels,
    scores,
    metric_fn: str | MetricFn,
    n_boot: int = 1000,
    seed: int = 0,
    threshold: float | None = None,
    *,
    identities=None,
    boot_unit: str = "auto",
    eer_convention: str = "interpolated",
) -> tuple[np.ndarray, int]:
    """(metric on each of `n_boot` resamples, number of one-class resamples redrawn).

    Resamples draw videos, or identity clusters where `identities` (one per frame)
    are known and `boot_unit` is auto or identity.
    """
    check_eer_convention(eer_convention)
    y, _ = _as_arrays(labels, scores)
    boot = _draw(video_ids, y, n_boot, seed, identities, boot_unit)
    values = _boot_values(metric_fn, video_ids, labels, scores, boot, threshold, eer_convention)
    return values, boot.n_redrawn


def bootstrap_ci(
    video_ids,
    labels,
    scores,
    metric_fn: str | MetricFn,
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
    threshold: float | None = None,
    *,
    identities=None,
    boot_unit: str = "auto",
    eer_convention: str = "interpolated",
) -> tuple[float, float]:
    """Percentile CI from resampling *videos* or identities (frames of one video, and
    videos of one identity, are not independent).

    `metric_fn` is a name ("auc", "eer", "ap", "acc_05", "acc_thr", "video_auc",
    "video_eer"; vectorised) or any callable(labels, scores) -> float (looped).
    """
    values, _ = bootstrap_values(video_ids, labels, scores, metric_fn, n_boot, seed, threshold,
                                 identities=identities, boot_unit=boot_unit,
                                 eer_convention=eer_convention)
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
    *,
    identities=None,
    boot_unit: str = "auto",
    eer_convention: str = "interpolated",
    threshold_from: str = "given",
) -> list[dict]:
    """Frame and video metrics with bootstrap CIs, one row per (level, metric).

    All metrics share the same resamples (one seed), so their CIs are comparable.
    n_boot=0 skips the bootstrap (CI columns are NaN, boot_unit "none"). Every row
    says how it was computed (`PROVENANCE` keys): the frame -> video aggregation,
    the threshold and where it came from, the resamples, their seed and unit, and
    for EER rows the convention.
    """
    check_eer_convention(eer_convention)
    y, s = _as_arrays(labels, scores)
    _, vy = _video_index(video_ids, y)
    _, _, vs = video_scores(video_ids, y, s)
    if n_boot > 0:
        boot = _draw(video_ids, y, n_boot, seed, identities, boot_unit)
    else:
        resolve_unit(boot_unit, video_clusters(video_ids, identities))  # same checks
        boot = None
    point = frame_metrics(y, s, threshold, eer_convention)
    video_point = {"auc": auc(vy, vs), "eer": eer(vy, vs, eer_convention)}
    how = {"eer_convention": eer_convention, "seed": seed, "threshold": threshold,
           "threshold_from": threshold_from}
    rows = [
        _row("frame", m, v, y.size,
             _ci(m, video_ids, y, s, boot, threshold, alpha, eer_convention), boot, how)
        for m, v in point.items()
    ]
    rows += [
        _row("video", m, v, vy.size,
             _ci(f"video_{m}", video_ids, y, s, boot, None, alpha, eer_convention), boot, how)
        for m, v in video_point.items()
    ]
    return rows


def _ci(metric, video_ids, y, s, boot: Bootstrap | None, threshold, alpha,
        eer_convention: str) -> tuple[float, float]:
    if boot is None:
        return float("nan"), float("nan")
    values = _boot_values(metric, video_ids, y, s, boot, threshold, eer_convention)
    return _percentiles(values, alpha)


PROVENANCE = METRIC_HOW  # the columns _row fills that say how a row was computed


def _row(level: str, metric: str, value: float, n: int, ci: Sequence[float],
         boot: Bootstrap | None, how: dict) -> dict:
    threshold, source = None, "none"  # AUC, EER, AP: threshold-free
    if metric == "acc_05":
        threshold, source = 0.5, "fixed 0.5"
    elif metric == "acc_thr":
        threshold, source = float(how["threshold"]), how["threshold_from"]
    return {
        "level": level,
        "metric": metric,
        "value": float(value),
        "ci_low": ci[0],
        "ci_high": ci[1],
        "n": int(n),
        "n_boot": 0 if boot is None else int(boot.counts.shape[0]),
        "n_redrawn": 0 if boot is None else int(boot.n_redrawn),
        "aggregation": AGGREGATION if level == "video" else "none",
        "threshold": threshold,
        "threshold_from": source,
        "boot_seed": None if boot is None else int(how["seed"]),
        "boot_unit": "none" if boot is None else boot.unit,
        "n_boot_units": 0 if boot is None else boot.n_units,
        "eer_convention": how["eer_convention"] if metric == "eer" else None,
    }
