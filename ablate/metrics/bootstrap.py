"""Clustered bootstrap: resampling units, resample draws, percentile CIs.

Frames of one video, and videos of one identity, are not independent, so a
resample draws whole videos, never frames. Bootstrap unit (`BOOT_UNITS`, recipe
key `eval.bootstrap_unit`): a resample draws videos, or identities (clusters of
videos sharing one, e.g. an FF++ target and its four fakes), each drawn cluster
bringing all its videos. A resample is an integer weight per frame (how often its
video was drawn), fed to the same weighted ROC sweep as the point estimate
(`ablate.metrics.curves`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ablate.core.errors import AblateError
from ablate.core.schema import choices
from ablate.metrics.curves import (
    FRAME_METRICS,
    _as_arrays,
    _named_metric,
    _sort,
    check_eer_convention,
)
from ablate.metrics.video import VIDEO_METRICS, _video_index, video_scores

BOOT_UNITS = choices("eval.bootstrap_unit")  # auto: identity where identities are known
_BOOT_CHUNK_ELEMENTS = 2_000_000  # frames x resamples per vectorised chunk (~16 MB float64)
_MAX_REDRAW_FACTOR = 20  # give up when one-class resamples outnumber valid ones 20:1

MetricFn = Callable[[np.ndarray, np.ndarray], float]


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
