"""Metric rows for reports: point estimates and CIs, each row with its provenance.

Every row says how it was computed (`PROVENANCE` = `ablate.core.names.METRIC_HOW`):
the frame -> video aggregation, the threshold and where it came from, the
resamples, their seed and unit, and for EER rows the convention.
"""

from __future__ import annotations

from collections.abc import Sequence

from ablate.core.names import METRIC_HOW
from ablate.metrics.bootstrap import (
    Bootstrap,
    _boot_values,
    _draw,
    _percentiles,
    resolve_unit,
    video_clusters,
)
from ablate.metrics.curves import _as_arrays, auc, check_eer_convention, eer, frame_metrics
from ablate.metrics.video import AGGREGATION, _video_index, video_scores


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
