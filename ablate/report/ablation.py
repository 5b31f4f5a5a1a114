"""Per-slot ablation: what swapping one slot's variant does, against the reference recipe.

For each slot that varies in the sweep (and each other varying recipe key with a
few discrete values, e.g. filter.heads), and each of its variants:

- *paired*: configs that differ from the reference only in that slot (its name and
  its own arguments). Difference = variant - reference for each (seed, test set)
  both have; averaged over the test sets within each seed, then a Student-t 95% CI
  over those seed means (`stats.seed_interval`: the training run is the unit).
- *unmatched*: no such config exists (e.g. a TPE sweep that never held the rest
  fixed). Then per (seed, test set): mean over all configs with the variant minus
  mean over all configs with the reference's choice. Other slots differ too, so
  this is labelled unmatched and is only a hint.

Differences are in metric units (AUC 0.012 = 1.2 points); display scales by 100.
"""

from __future__ import annotations

import json
from typing import Any

import pandas as pd

from ablate.core.names import is_baseline_flat, is_guidance_key, without_guidance
from ablate.provenance import is_part
from ablate.report.data import SLOTS, SweepData, format_value
from ablate.report.display import Table, pm
from ablate.report.reference import Reference
from ablate.report.stats import DEFAULT_EFFECT, seed_interval, seeds_needed
from ablate.report.tables import AVG, MAIN_METRICS

MAX_LEVELS = 6  # a non-slot key with more distinct values (a continuous lr) is not ablated
PAIR_KEYS = ["seed", "dataset", "level", "metric"]
COLUMNS = ["factor", "variant", "reference", "matching", "n_configs", "metric", "n_seeds",
           "mean", "ci_low", "ci_high", "sd_seeds", "mde", "seeds_needed", "procedure", "note"]


def factors(data: SweepData) -> list[str]:
    """Slots whose variant varies, then other varying keys with few values outside them."""
    slots = [s for s in SLOTS if f"{s}.name" in data.varying]
    others = [k for k in data.varying
              if not any(k.startswith(f"{s}.") for s in slots)
              and len({json.dumps(f.get(k)) for f in data.flat.values()}) <= MAX_LEVELS]
    return slots + others


def _in_factor(key: str, factor: str) -> bool:
    return key.startswith(f"{factor}.") if factor in SLOTS else key == factor


def _value(flat: dict[str, Any], factor: str) -> Any:
    return flat.get(f"{factor}.name") if factor in SLOTS else flat.get(factor)


def _rest(flat: dict[str, Any], factor: str) -> dict[str, Any]:
    return {k: v for k, v in flat.items() if not _in_factor(k, factor)}


def _guidance_factor(factor: str) -> bool:
    """A factor only guided recipes have (filter, weight, teacher, loss.source, ...)."""
    return is_guidance_key(f"{factor}.name" if factor in SLOTS else factor)


def same_rest(flat: dict[str, Any], ref_flat: dict[str, Any], factor: str) -> bool:
    """Whether two configs agree on everything but `factor`. The plain baseline differs from
    a guided config in the guide itself, so it matches one only when the factor is the
    guide, and then on everything the baseline has (it has no filter, teacher, ...)."""
    if is_baseline_flat(flat) != is_baseline_flat(ref_flat):
        if factor != "guide":
            return False
        flat, ref_flat = without_guidance(flat), without_guidance(ref_flat)
    return _rest(flat, factor) == _rest(ref_flat, factor)


def per_seed(data: SweepData, seed_vals: pd.DataFrame, configs: list[str]) -> pd.DataFrame:
    """Per-seed test values of the main metrics for these configs (no avg pseudo-set)."""
    v = seed_vals[seed_vals["config"].isin(configs) & (seed_vals["dataset"] != AVG)
                  & ~seed_vals["dataset"].map(is_part).astype(bool)
                  & (seed_vals["level"] == "frame") & seed_vals["metric"].isin(MAIN_METRICS)]
    return v.dropna(subset=["value"])


def pair_differences(data: SweepData, seed_vals: pd.DataFrame,
                     ref: Reference) -> pd.DataFrame:
    """Every (factor, variant) difference per (seed, test set, metric), with its matching."""
    flats = data.flat
    ref_flat = flats[ref.config]
    ref_vals = per_seed(data, seed_vals, [ref.config])[[*PAIR_KEYS, "value"]]
    parts = []
    for factor in factors(data):
        pool = flats
        if _guidance_factor(factor):  # among guided configs: the baseline has no filter
            if is_baseline_flat(ref_flat):
                continue
            pool = {c: f for c, f in flats.items() if not is_baseline_flat(f)}
        ref_value = _value(ref_flat, factor)
        variants = sorted({_value(f, factor) for f in pool.values()} - {ref_value}, key=str)
        for variant in variants:
            with_variant = [c for c, f in pool.items() if _value(f, factor) == variant]
            matched = [c for c in with_variant if same_rest(flats[c], ref_flat, factor)]
            if matched:
                cand = per_seed(data, seed_vals, matched)[["config", *PAIR_KEYS, "value"]]
                diffs = cand.merge(ref_vals, on=PAIR_KEYS, suffixes=("", "_ref"))
                diffs["diff"] = diffs["value"] - diffs["value_ref"]
                diffs["unmatched"] = unmatched_note(cand, ref_vals)
                matching, used = "paired", matched
            else:
                same_as_ref = [c for c, f in pool.items() if _value(f, factor) == ref_value]
                diffs = _unmatched(data, seed_vals, with_variant, same_as_ref)
                matching, used = "unmatched", with_variant
            diffs = diffs.assign(factor=factor, variant=format_value(variant),
                                 reference=format_value(ref_value), matching=matching,
                                 n_configs=len(used))
            parts.append(diffs)
    columns = ["factor", "variant", "reference", "matching", "n_configs", "config", *PAIR_KEYS,
               "diff", "unmatched"]  # config: the matched recipe (paired rows only)
    if not parts:
        return pd.DataFrame(columns=columns)
    return pd.concat(parts, ignore_index=True).reindex(columns=columns)


def unmatched_note(mine: pd.DataFrame, ref: pd.DataFrame) -> str:
    """Which seeds one side has and the other lacks (only matched seeds are compared)."""
    a, b = set(mine["seed"].astype(int)), set(ref["seed"].astype(int))
    parts = [f"{who} has seed(s) {', '.join(map(str, sorted(extra)))} without a partner"
             for who, extra in (("variant", a - b), ("reference", b - a)) if extra]
    return "; ".join(parts)


def matched_comparisons(pairs: pd.DataFrame, ref: Reference) -> list[tuple[str, str, str]]:
    """(row name, matched config, reference config) of every paired ablation row."""
    paired = pairs[pairs["matching"] == "paired"].drop_duplicates(["factor", "variant", "config"])
    return [(f"{r.factor}={r.variant} vs {r.reference}", str(r.config), ref.config)
            for r in paired.itertuples()]


def _unmatched(data: SweepData, seed_vals: pd.DataFrame, variant_configs: list[str],
               ref_configs: list[str]) -> pd.DataFrame:
    a = per_seed(data, seed_vals, variant_configs).groupby(PAIR_KEYS)["value"].mean()
    b = per_seed(data, seed_vals, ref_configs).groupby(PAIR_KEYS)["value"].mean()
    joined = pd.concat([a.rename("value"), b.rename("value_ref")], axis=1, join="inner")
    return joined.assign(diff=joined["value"] - joined["value_ref"]).reset_index()


def ablation(pairs: pd.DataFrame, effect: float = DEFAULT_EFFECT) -> pd.DataFrame:
    """Per (factor, variant, metric): the mean difference over test sets, its 95% CI over
    seeds, the minimum detectable effect, and the seeds needed to see `effect`."""
    rows = []
    keys = ["factor", "variant", "reference", "matching", "n_configs", "metric"]
    for key, group in pairs.groupby(keys, sort=False):
        found = seed_interval(group)
        notes = [found.note, *sorted(set(group.get("unmatched", pd.Series(dtype=str))
                                         .dropna()) - {""})]
        rows.append({**dict(zip(keys, key, strict=True)), **found.as_dict(),
                     "note": "; ".join(n for n in notes if n),
                     "seeds_needed": seeds_needed(effect, found.sd)})
    return pd.DataFrame(rows, columns=COLUMNS)


def mde_clause(by_metric: pd.DataFrame) -> str:
    """`; MDE 2.10 points` for the AUC row, or nothing without one."""
    if "auc" not in by_metric.index or pd.isna(by_metric.loc["auc", "mde"]):
        return ""
    return f"; MDE {by_metric.loc['auc', 'mde'] * 100:.2f} points"


def excludes_zero(row: pd.Series) -> bool:
    return bool(pd.notna(row["ci_low"]) and (row["ci_low"] > 0 or row["ci_high"] < 0))


def effect_cells(by_metric: pd.DataFrame) -> tuple[list[str], list[bool]]:
    """ΔAUC and ΔEER cells (points, ± CI half-width), then the AUC's minimum detectable
    effect, and whether each CI excludes 0."""
    cells, marks = [], []
    for metric in MAIN_METRICS:
        if metric in by_metric.index:
            r = by_metric.loc[metric]
            cells.append(effect_text(r))
            marks.append(excludes_zero(r))
        else:
            cells.append("-")
            marks.append(False)
    auc = by_metric.loc["auc"] if "auc" in by_metric.index else None
    cells.append("-" if auc is None or pd.isna(auc["mde"]) else f"{auc['mde'] * 100:.2f}")
    marks.append(False)
    return cells, marks


def effect_text(r: pd.Series) -> str:
    """`+1.20 ± 0.80`, or `+1.20 (no interval: 1 seed)` when one seed cannot give one."""
    text = pm(r["mean"], r["ci_low"], r["ci_high"], signed=True)
    if pd.notna(r["mean"]) and int(r["n_seeds"]) == 1:
        text += " (no interval: 1 seed)"
    return text


def seeds_cell(r: pd.Series) -> str:
    """The seeds a difference is over, flagged when some were left out as unmatched."""
    return f"{int(r['n_seeds'])}{'*' if r.get('note') else ''}"


def interval_note(difference: str = "variant minus reference") -> str:
    """How a table of differences over seeds was made, for its note."""
    return (f"Δ: {difference} per (seed, test set), averaged over the test sets within each "
            "seed; ± half-width of the Student-t 95% CI over those seed means (the training "
            "run is the unit; test sets are conditions, not replicates). MDE: the ΔAUC a "
            "paired t test over these seeds would detect with 80% power at α = 0.05, from "
            "their spread. Seeds*: some seeds were left out, unmatched or missing a test set "
            "(see the CSV's note).")


def ablation_table(abl: pd.DataFrame, ref: Reference) -> Table:
    """One row per (factor, variant): ΔAUC and ΔEER in points; bold where the CI excludes 0."""
    rows, bold = [], []
    for (factor, variant), group in abl.groupby(["factor", "variant"], sort=False):
        by_metric = group.set_index("metric")
        first = group.iloc[0]
        row = [factor, f"{variant} (vs {first['reference']})", first["matching"],
               seeds_cell(by_metric.iloc[0])]
        cells, marks = effect_cells(by_metric)
        rows.append(row + cells)
        bold.append([False] * len(row) + marks)
    return Table(f"Ablation against the reference ({ref.label})",
                 ["Slot", "Variant", "Matching", "Seeds", "ΔAUC (pts)", "ΔEER (pts)",
                  "MDE ΔAUC (pts)"], rows, bold,
                 note=f"{interval_note()} Bold: the CI excludes 0. AUC: positive is better; "
                      "EER: negative is better. unmatched = no recipe differs from the "
                      "reference in this slot only.", align="lllrrrr", slug="ablation")


def sentences(abl: pd.DataFrame) -> list[str]:
    """`filter=no_mhsa instead of paper: AUC -1.20 ± 0.40 points, ...`, one per variant."""
    lines = []
    for (factor, variant), group in abl.groupby(["factor", "variant"], sort=False):
        by_metric = group.set_index("metric")
        first = group.iloc[0]
        effects = [f"{m.upper()} {effect_text(r)} points" for m, r in by_metric.iterrows()]
        lines.append(f"{factor}={variant} instead of {first['reference']}: "
                     f"{', '.join(effects)} ({first['matching']}, "
                     f"{int(by_metric['n_seeds'].max())} seeds{mde_clause(by_metric)})")
    return lines
