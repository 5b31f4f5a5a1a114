"""Frame -> video aggregation and the video-level metrics.

A video's score is the mean of its frames' scores (`AGGREGATION`); video AUC and
EER are the frame metrics (`ablate.metrics.curves`) on those per-video scores.
"""

from __future__ import annotations

import numpy as np

from ablate.core.errors import AblateError
from ablate.metrics.curves import _as_frames, auc, eer

VIDEO_METRICS = ("video_auc", "video_eer")
AGGREGATION = "mean"  # frame -> video: mean of frame probabilities (`video_scores`)


def _as_ids(video_ids, n: int) -> np.ndarray:
    ids = np.asarray(video_ids).ravel()
    if ids.size != n:
        raise AblateError(
            f"video_ids and scores differ in length ({ids.size} vs {n}); pass one id per frame"
        )
    return ids


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


def _video_index(video_ids, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(video index per frame, label per video), checking each video has one label."""
    ids = _as_ids(video_ids, y.size)
    _, inv = np.unique(ids, return_inverse=True)
    _, vy, _ = video_scores(ids, y, np.zeros(y.size))
    return inv.ravel(), vy
