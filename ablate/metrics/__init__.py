"""Detection metrics: frame/video AUC, EER, AP, accuracy, and clustered bootstrap CIs.

Modules, one job each: `curves` (the weighted ROC sweep behind every point
metric: AUC, the EER conventions, AP, accuracy at thresholds, threshold choice),
`video` (frame -> video aggregation, video AUC/EER), `bootstrap` (resampling
units, resample draws, percentile CIs) and `rows` (the metric rows a report
stores, each with its provenance). Every name is re-exported here, so callers
import from `ablate.metrics`. Nothing here imports torch (numpy, pandas only).
"""

from __future__ import annotations

from ablate.metrics.bootstrap import (
    BOOT_UNITS,
    Bootstrap,
    MetricFn,
    bootstrap_ci,
    bootstrap_values,
    draw_videos,
    resolve_unit,
    video_clusters,
)
from ablate.metrics.curves import (
    EER_CONVENTIONS,
    FRAME_METRICS,
    auc,
    best_acc_threshold,
    check_eer_convention,
    eer,
    eer_threshold,
    frame_metrics,
)
from ablate.metrics.rows import PROVENANCE, evaluate_scores
from ablate.metrics.video import (
    AGGREGATION,
    VIDEO_METRICS,
    video_auc,
    video_eer,
    video_scores,
)

__all__ = [
    "AGGREGATION",
    "BOOT_UNITS",
    "EER_CONVENTIONS",
    "FRAME_METRICS",
    "PROVENANCE",
    "VIDEO_METRICS",
    "Bootstrap",
    "MetricFn",
    "auc",
    "best_acc_threshold",
    "bootstrap_ci",
    "bootstrap_values",
    "check_eer_convention",
    "draw_videos",
    "eer",
    "eer_threshold",
    "evaluate_scores",
    "frame_metrics",
    "resolve_unit",
    "video_auc",
    "video_clusters",
    "video_eer",
    "video_scores",
]
