"""Does guidance help? Each guided recipe against the plain baseline of the same setup.

The baseline of a guided config is the config with guide=none that agrees with it
on everything the baseline has (backbone, data, optimiser, steps, ...; it has no
filter, weight module or teacher). Difference = guided - baseline for each (seed,
test set) both have, averaged over test sets within each seed, then a Student-t 95%
CI over seeds, as for the ablation table. Only sweeps that hold a baseline get it.
"""

from __future__ import annotations

import pandas as pd

from ablate.core.names import is_baseline_flat, without_guidance
from ablate.report.ablation import (
    PAIR_KEYS,
    effect_cells,
    effect_text,
    interval_note,
    mde_clause,
    per_seed,
    seeds_cell,
    unmatched_note,
)
from ablate.report.data import SweepData
from ablate.report.display import Table

COLUMNS = ["factor", "variant", "reference", "matching", "n_configs", *PAIR_KEYS, "diff",
           "unmatched"]


def baseline_of(data: SweepData, config: str) -> str | None:
    """The baseline config matching a guided one, or None."""
    wanted = without_guidance(data.flat[config])
    for other, flat in data.flat.items():
        if is_baseline_flat(flat) and flat == wanted:
            return other
    return None


def guidance_pairs(data: SweepData, seed_vals: pd.DataFrame) -> pd.DataFrame:
    """guided - baseline per (seed, test set, level, metric), one block per guided config."""
    labels = data.counted.drop_duplicates("config").set_index("config")["label"]
    parts = []
    for config, flat in data.flat.items():
        base = None if is_baseline_flat(flat) else baseline_of(data, config)
        if base is None:
            continue
        mine = per_seed(data, seed_vals, [config])[[*PAIR_KEYS, "value"]]
        ref = per_seed(data, seed_vals, [base])[[*PAIR_KEYS, "value"]]
        diffs = mine.merge(ref, on=PAIR_KEYS, suffixes=("", "_ref"))
        diffs["diff"] = diffs["value"] - diffs["value_ref"]
        diffs["unmatched"] = unmatched_note(mine, ref)
        parts.append(diffs.assign(factor="guidance", variant=labels[config],
                                  reference=labels[base], matching="paired", n_configs=1))
    if not parts:
        return pd.DataFrame(columns=COLUMNS)
    return pd.concat(parts, ignore_index=True)[COLUMNS]


def guidance_table(effects: pd.DataFrame) -> Table:
    """`effects`: `ablation.ablation` of `guidance_pairs`. One row per guided recipe: ΔAUC and ΔEER in points against its plain baseline."""
    rows, bold = [], []
    for variant, group in effects.groupby("variant", sort=False):
        by_metric = group.set_index("metric")
        row = [str(variant), str(group.iloc[0]["reference"]), seeds_cell(by_metric.iloc[0])]
        cells, marks = effect_cells(by_metric)
        rows.append(row + cells)
        bold.append([False] * len(row) + marks)
    return Table("Guidance against the plain baseline",
                 ["Guided recipe", "Baseline", "Seeds", "ΔAUC (pts)", "ΔEER (pts)",
                  "MDE ΔAUC (pts)"], rows, bold,
                 note=f"{interval_note('guided minus baseline (the same recipe with guide=none)')} "
                      "Bold: the CI excludes 0. AUC: positive means guidance helps; EER: "
                      "negative means it helps.", align="llrrrr", slug="guidance")


def sentences(effects: pd.DataFrame) -> list[str]:
    """`guide=controlnet vs the plain baseline: AUC +2.10 ± 1.70 points, ...`."""
    lines = []
    for variant, group in effects.groupby("variant", sort=False):
        by_metric = group.set_index("metric")
        parts = [f"{m.upper()} {effect_text(r)} points" for m, r in by_metric.iterrows()]
        lines.append(f"{variant} vs the plain baseline: {', '.join(parts)} "
                     f"({int(by_metric['n_seeds'].max())} seeds{mde_clause(by_metric)})")
    return lines
