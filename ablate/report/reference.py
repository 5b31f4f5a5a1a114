"""The sweep's reference recipe: what every ablation row is compared against.

In order: the sweep settings' "reference" (a recipe hash, a label, or a mapping of
choices like {"filter": "paper", "train.lr": 1e-4}); else the finished config whose
varying slots hold the default recipe's choices (configs/config.yaml: filter=paper,
weight=paper, guide=controlnet, ...), best source-val AUC among several; else the
config with the best mean source-val AUC (test AUC when no val AUC was recorded).
Never chosen on a test metric unless nothing else exists, and the report says how
the reference was chosen.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd
import yaml

from ablate.core.paths import builtin_folder
from ablate.report.data import SLOTS, SweepData

FALLBACK_DEFAULTS = {"filter": "paper", "weight": "paper", "guide": "controlnet"}


@dataclass(frozen=True)
class Reference:
    config: str
    label: str
    how: str  # one sentence for the report


def default_choices() -> dict[str, str]:
    """Slot -> variant of the default recipe (configs/config.yaml's defaults list)."""
    try:
        text = (builtin_folder("configs") / "config.yaml").read_text()
        defaults = yaml.safe_load(text).get("defaults") or []
    except Exception:  # noqa: BLE001 - no configs folder: the paper's choices still make sense
        return dict(FALLBACK_DEFAULTS)
    found = {}
    for item in defaults:
        if isinstance(item, dict):
            found.update({str(k): str(v) for k, v in item.items() if k in SLOTS and v})
    return found or dict(FALLBACK_DEFAULTS)


def choose_reference(data: SweepData, defaults: dict[str, str] | None = None) -> Reference:
    """The reference config (see module doc)."""
    notes = []
    wanted = data.settings.get("reference")
    if wanted:
        found = _from_settings(data, wanted)
        if found:
            return Reference(found, _label(data, found), f"set by the sweep (reference: {wanted})")
        notes.append(f"the sweep's reference {wanted!r} matches no finished recipe")
    defaults = default_choices() if defaults is None else defaults
    slots = [s for s in SLOTS if f"{s}.name" in data.varying and s in defaults]
    matches = [c for c, flat in data.flat.items()
               if all(str(flat.get(f"{s}.name")) == defaults[s] for s in slots)]
    if slots and matches:
        best = _best_val(data, matches)
        choices = ", ".join(f"{s}={defaults[s]}" for s in slots)
        extra = f"; best source-val AUC of {len(matches)} such recipes" if len(matches) > 1 else ""
        return Reference(best, _label(data, best),
                         _join(notes, f"the default recipe's choices ({choices}){extra}"))
    best = _best_val(data, list(data.flat))
    return Reference(best, _label(data, best),
                     _join(notes, "no recipe with the default choices finished; the recipe "
                                  f"with the best mean {_val_name(data)} was used"))


def _join(notes: list[str], how: str) -> str:
    return "; ".join([*notes, how])


def _label(data: SweepData, config: str) -> str:
    return str(data.counted.loc[data.counted["config"] == config, "label"].iloc[0])


def _from_settings(data: SweepData, wanted: Any) -> str | None:
    counted = data.counted
    if isinstance(wanted, str):
        for column in ("recipe_hash", "label", "config"):
            hit = counted.loc[counted[column] == wanted, "config"]
            if len(hit):
                return str(hit.iloc[0])
        wanted = dict(part.split("=", 1) for part in wanted.split() if "=" in part) or None
    if isinstance(wanted, dict):
        matches = [c for c, flat in data.flat.items()
                   if all(_matches(flat, str(k), v) for k, v in wanted.items())]
        if matches:
            return _best_val(data, matches)
    return None


def _matches(flat: dict[str, Any], key: str, value: Any) -> bool:
    """`filter: paper` means filter.name; other keys are dotted recipe keys."""
    actual = flat.get(f"{key}.name", flat.get(key)) if key in SLOTS else flat.get(key)
    return actual == value or str(actual) == str(value)


def _val_scores(data: SweepData) -> pd.Series:
    """Mean source-val frame AUC per config; test average when no val AUC exists."""
    m = data.metrics
    auc = m[(m["level"] == "frame") & (m["metric"] == "auc")]
    val = auc[auc["split"] == "val"]
    source = val if not val.empty else auc[auc["split"] == "test"]
    per_trial = source.groupby(["config", "trial_id"])["value"].mean()
    return per_trial.groupby(level=0).mean()


def _val_name(data: SweepData) -> str:
    m = data.metrics
    has_val = ((m["split"] == "val") & (m["metric"] == "auc")).any()
    return "source-val AUC" if has_val else "test AUC (no val AUC recorded)"


def _best_val(data: SweepData, configs: list[str]) -> str:
    scores = _val_scores(data).reindex(configs)
    if scores.notna().any():
        return str(scores.idxmax())
    return configs[0]

