"""How the report's test metrics were computed, said once under the tables that show them.

Each metric row in the database records its EER convention, bootstrap unit, resamples
and seed, frame -> video aggregation and the hash of the test rows it scored (schema
v3). Tables would get too wide with these as columns, so `provenance_note` turns them
into one sentence for captions: what every row shares, "mixed" where rows differ (so
cells are not comparable), and "unknown" for rows recorded before the columns existed.
"""

from __future__ import annotations

import pandas as pd

EER_NAMES = {"interpolated": "interpolated (DiffusionFake's brentq)",
             "nearest": "nearest ROC point (DeepfakeBench's)"}
AGGREGATIONS = {"mean": "mean of its frames' probabilities"}
UNKNOWN = "unknown"  # a row written before schema v3 recorded it


def _values(rows: pd.DataFrame, column: str) -> list[str]:
    """Distinct values of a column, NULL as UNKNOWN, most frequent first."""
    if column not in rows.columns or rows.empty:
        return []
    text = rows[column].astype("object").where(rows[column].notna(), UNKNOWN).astype(str)
    return list(text.value_counts(sort=True).index)


def _say(values: list[str], names: dict[str, str] | None = None) -> str:
    names = names or {}
    if not values:
        return UNKNOWN
    shown = [names.get(v, v) for v in values]
    return shown[0] if len(shown) == 1 else f"mixed ({', '.join(shown)}): not comparable"


def provenance_note(metrics: pd.DataFrame) -> str:
    """One sentence: EER convention, bootstrap unit / resamples / seed, aggregation, and
    whether every trial scored the same rows of each test set."""
    test = metrics[metrics["split"] == "test"] if "split" in metrics.columns else metrics
    if test.empty:
        return ""
    eer = _say(_values(test[test["metric"] == "eer"], "eer_convention"), EER_NAMES)
    booted = test[test["n_boot"].fillna(1) > 0] if "n_boot" in test.columns else test
    unit, n_boot = (_say(_values(booted, c)) for c in ("boot_unit", "n_boot"))
    seeds = _values(booted, "boot_seed")  # each trial resamples with its own seed, by design
    seed = seeds[0] if len(seeds) == 1 else "each trial's own" if seeds else UNKNOWN
    boot = f"{n_boot} resamples by {unit} (seed {seed})" if len(booted) else "none"
    parts = [f"EER: {eer}", f"run bootstrap: {boot}"]
    video = test[test["level"] == "video"]
    if len(video):
        parts.append(f"video score: {_say(_values(video, 'aggregation'), AGGREGATIONS)}")
    if "manifest_sha" in test.columns:
        known = test.dropna(subset=["manifest_sha"])
        sets = known.groupby("dataset")["manifest_sha"].nunique()
        differ = sorted(sets[sets > 1].index)
        if differ:
            parts.append(f"test rows differ between trials on {', '.join(map(str, differ))}")
        elif len(known) < len(test):
            parts.append("scored test rows unknown for some trials")
        else:
            parts.append("every trial scored the same rows of each test set")
    return "Metric provenance: " + "; ".join(parts) + "."
