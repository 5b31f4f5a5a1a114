"""The one-row-per-trial table `ablate sweep` prints when it ends."""

from __future__ import annotations

import json


def summary_table(db, name: str):  # noqa: ANN001, ANN201
    """One row per trial: status, its choices, val AUC and mean test AUC."""
    import pandas as pd

    trials = db.trials(name)
    if trials.empty:
        return trials
    metrics = db.metrics(name)
    rows = []
    for t in trials.itertuples():
        recipe = json.loads(t.recipe_json) if isinstance(t.recipe_json, str) else {}
        mine = metrics[metrics["trial_id"] == t.id] if not metrics.empty else metrics
        val = mine[(mine["split"] == "val") & (mine["metric"] == "auc")]["value"]
        test = mine[(mine["split"] == "test") & (mine["metric"] == "auc") &
                    (mine["level"] == "frame")]["value"]
        rows.append({
            "trial": t.tune_trial_id, "status": t.status, "seed": t.seed,
            **{slot: (recipe.get(slot) or {}).get("name") for slot in
               ("backbone", "filter", "weight", "guide", "teacher") if isinstance(recipe.get(slot), dict)},
            "val_auc": round(float(val.iloc[0]), 3) if len(val) else None,
            "test_auc_mean": round(float(test.mean()), 3) if len(test) else None,
        })
    return pd.DataFrame(rows)
