"""Reading a structure search: what each searched param did, and what the winners cost.

- `searched_params`: the sweep's searched params (its space's `params:`, else a design's
  factors; none for a sweep that stored neither, e.g. explicit recipes), each with its
  kind, choices, log scale and `when` condition.
- `trial_params`: one row per counted trial (the trained runs: trials told to Optuna by
  a warm start or as infeasible have no row), one column per searched param (NaN where
  a conditional param is absent), plus the first objective of that trial.
- `slice_data`: the same, long: one row per (param, trial that has it).
- `confirmed_front`: per confirmed recipe, its mean cross-dataset test AUC with the main
  table's 95% interval over seeds (`tables.summary`, the "avg" cell), each cost it has,
  and whether it is on the AUC-vs-cost front of that cost. Only from confirmation runs.
- `structure_section`: the report's "Structure search" section from all of the above.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from ablate.core.schema import omit_at_default
from ablate.provenance import is_part
from ablate.report import tables
from ablate.report.data import SweepData
from ablate.report.display import Table, number
from ablate.report.importance import UNBIASED_SAMPLERS, sampler_name
from ablate.report.render import Section
from ablate.report.searched import (
    ABSENT,
    COST_NAMES,
    COSTS,
    Param,
)
from ablate.report.stats import pareto_mask

ABSENT_VALUE = object()  # a param the trial's recipe does not have
OMITTED_AT_DEFAULT = omit_at_default()  # dotted key -> the default its recipe leaves out


def searched_params(data: SweepData) -> list[Param]:
    """The params the sweep searched, in the space's order (see module doc). Read from the
    space text the sweep stored (ablate.space sits above the report and is not imported)."""
    spec = _space_params(data.settings.get("space_text"))
    if spec:
        return [_param(k, v) for k, v in spec.items()]
    factors = (data.settings.get("design") or {}).get("factors") or {}
    return [Param(str(k), "choice", tuple(v)) for k, v in factors.items()]


def _space_params(text: Any) -> dict[str, Any]:
    if not isinstance(text, str) or not text.strip():
        return {}
    try:
        loaded = yaml.safe_load(text)
    except yaml.YAMLError:
        return {}
    params = loaded.get("params") if isinstance(loaded, dict) else None
    return {str(k): v for k, v in params.items() if isinstance(v, dict)} \
        if isinstance(params, dict) else {}


def _param(key: str, spec: dict[str, Any]) -> Param:
    when = {str(k): tuple(str(_shown(x)) for x in (v if isinstance(v, list) else [v]))
            for k, v in (spec.get("when") or {}).items()}
    if "choice" in spec:
        return Param(key, "choice", tuple(map(_shown, spec["choice"] or ())), when=when)
    kind = "int" if "int" in spec else "float"
    return Param(key, kind, log=bool(spec.get("log", False)), when=when)


def _shown(value: Any) -> Any:
    """A param value as the report shows it: YAML's null as "null", so that a chosen null
    (guide.blocks=null: the whole encoder) is a category, not a missing value."""
    return "null" if value is None else value


def _value(flat: dict[str, Any], key: str) -> Any:
    """A param's value in a flat recipe (`filter` is the slot's `filter.name`), shown as
    `_shown` does; ABSENT_VALUE if the recipe lacks it. A setting the recipe hash leaves out
    at its default (`hash_when_default=False`: train.t_min=0.0, guide.inject=all) is not
    stored in the recipe; it reads as that default."""
    if key in flat:
        return _shown(flat[key])
    if f"{key}.name" in flat:
        return _shown(flat[f"{key}.name"])
    if key in OMITTED_AT_DEFAULT:
        return _shown(OMITTED_AT_DEFAULT[key])
    return ABSENT_VALUE


def _present(param: Param, flat: dict[str, Any], had: set[str]) -> bool:
    """Whether the trial had this param: found in its recipe, its `when` holds, and every
    param that `when` names was had itself (`had`: the earlier params the trial had; a
    condition names only earlier params). So an adapter trial, whose recipe reads
    guide.blocks and guide.inject at their defaults, has neither when both hang on
    `guide: controlnet`."""
    if _value(flat, param.key) is ABSENT_VALUE:
        return False
    return all(parent in had and str(_value(flat, parent)) in values
               for parent, values in param.when.items())


def _had(params: list[Param], flat: dict[str, Any]) -> dict[str, Any]:
    """The params one trial had (in the space's order, see `_present`) -> their values."""
    out: dict[str, Any] = {}
    for p in params:
        if _present(p, flat, set(out)):
            out[p.key] = _value(flat, p.key)
    return out


def trial_objective(data: SweepData, metric: str) -> pd.Series:
    """Per counted trial id, its value of one objective (as `tables.objective_values` reads
    it per trial before averaging: val_auc = frame AUC on the source val split, test_auc_mean
    = mean frame AUC over its test sets, else a trial column); NaN where unknown."""
    counted = data.counted.set_index("id")
    m = data.metrics
    if metric in ("val_auc", "test_auc_mean"):
        split = "val" if metric == "val_auc" else "test"
        auc = m[(m["level"] == "frame") & (m["metric"] == "auc") & (m["split"] == split)
                & ~m["dataset"].map(is_part).astype(bool)]
        per = auc.groupby("trial_id")["value"].mean()
        return pd.Series(counted.index.map(per), index=counted.index, dtype=float)
    if metric in counted.columns:
        return pd.to_numeric(counted[metric], errors="coerce").astype(float)
    return pd.Series(np.nan, index=counted.index, dtype=float)


def trial_params(data: SweepData, params: list[Param], objective: str) -> pd.DataFrame:
    """One row per counted trial: id, label, seed, one column per param (None where the
    trial lacks it), and `objective`'s value."""
    values = trial_objective(data, objective)
    rows = []
    for r in data.counted.itertuples():
        flat = data.flat.get(r.config) or {}
        row = {"id": int(r.id), "label": r.label, "seed": r.seed}
        had = _had(params, flat)
        row.update({p.key: had.get(p.key) for p in params})
        row[objective] = values.get(r.id, np.nan)
        rows.append(row)
    # object columns: a conditional int param keeps its ints (None where absent, not NaN)
    out = pd.DataFrame(rows, columns=["id", "label", "seed", *(p.key for p in params),
                                      objective], dtype=object)
    out[objective] = out[objective].astype(float)
    return out


def slice_data(wide: pd.DataFrame, params: list[Param], objective: str) -> pd.DataFrame:
    """Long form of `trial_params`: columns param, id, label, value, objective; a trial
    appears in a param's rows only when it has that param (and an objective value)."""
    parts = []
    for p in params:
        have = wide[wide[p.key].notna() & wide[objective].notna()]
        parts.append(pd.DataFrame({"param": p.key, "id": have["id"], "label": have["label"],
                                   "value": have[p.key], "objective": have[objective]}))
    columns = ["param", "id", "label", "value", "objective"]
    return pd.concat(parts, ignore_index=True)[columns] if parts else pd.DataFrame(
        columns=columns)


# ---------------------------------------------------------------- AUC vs cost, confirmed


def cost_columns(data: SweepData) -> list[str]:
    """The costs recorded on the counted trials: COSTS present as columns, not all null."""
    c = data.counted
    return [k for k in COSTS if k in c.columns and pd.to_numeric(c[k], errors="coerce")
            .notna().any()]


def confirmed_front(data: SweepData, summ: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per (recipe, cost): the recipe's mean test AUC averaged over test sets with its 95%
    interval over seeds (the main table's "Avg AUC" cell: `tables.summary`), its mean cost
    over its counted seeds, and whether no other recipe has AUC >= and cost <= with one
    strictly better (`stats.pareto_mask`, ties kept).

    `data`: the confirmation sweep. Columns: label, cost, value, auc_mean, auc_low,
    auc_high, n_seeds, ci_kind, on_front. Recipes without the cost or an AUC are left out
    of that cost's rows.
    """
    summ = tables.summary(data) if summ is None else summ
    avg = summ[(summ["dataset"] == tables.AVG) & (summ["level"] == "frame")
               & (summ["metric"] == "auc")].set_index("label")
    columns = ["label", "cost", "value", "auc_mean", "auc_low", "auc_high", "n_seeds",
               "ci_kind", "on_front"]
    parts = []
    for cost in cost_columns(data):
        per = (pd.to_numeric(data.counted[cost], errors="coerce")
               .groupby(data.counted["label"]).mean().dropna())
        frame = pd.DataFrame({"label": per.index, "cost": cost, "value": per.to_numpy()})
        for col in ("mean", "ci_low", "ci_high", "n_seeds", "ci_kind"):
            frame[{"mean": "auc_mean", "ci_low": "auc_low", "ci_high": "auc_high"}.get(col, col)] \
                = frame["label"].map(avg[col])
        frame = frame.dropna(subset=["auc_mean"])
        frame["on_front"] = pareto_mask(frame[["auc_mean", "value"]].to_numpy(), [True, False])
        parts.append(frame.sort_values(["on_front", "auc_mean"], ascending=False))
    return (pd.concat(parts, ignore_index=True)[columns] if parts
            else pd.DataFrame(columns=columns))


def auc_ci_text(mean: float, low: float, high: float) -> str:
    """`83.17 [81.02, 85.31]` (%); `83.17 [no interval]` with fewer than two seeds."""
    if not np.isfinite(mean):
        return "-"
    if np.isfinite(low) and np.isfinite(high):
        return f"{mean * 100:.2f} [{low * 100:.2f}, {high * 100:.2f}]"
    return f"{mean * 100:.2f} [no interval]"


def front_table(front: pd.DataFrame) -> Table:
    """Recipe, Avg test AUC [95% CI], seeds, then per cost its value and front membership."""
    costs = list(dict.fromkeys(front["cost"]))
    first = front.drop_duplicates("label").sort_values("auc_mean", ascending=False)
    cells = front.set_index(["label", "cost"])
    rows, bold = [], []
    for r in first.itertuples():
        row = [r.label, auc_ci_text(r.auc_mean, r.auc_low, r.auc_high), str(int(r.n_seeds))]
        marks = [False] * 3
        for cost in costs:
            if (r.label, cost) in cells.index:
                c = cells.loc[(r.label, cost)]
                row += [number(float(c["value"])), "yes" if c["on_front"] else "no"]
                marks += [False, bool(c["on_front"])]
            else:
                row += ["-", "-"]
                marks += [False, False]
        rows.append(row)
        bold.append(marks)
    header = ["Recipe", "Test AUC avg (%) [95% CI]", "Seeds"]
    for cost in costs:
        header += [COST_NAMES.get(cost, cost), "On front"]
    note = ("AUC: each seed's frame AUC averaged over the test sets, then the mean over the "
            "confirmation seeds with its Student-t 95% interval over seeds (the main "
            "table's Avg AUC cell); a cost is the mean over the recipe's counted seeds. On "
            "front: no other confirmed recipe has an AUC at least as high and a cost at "
            "least as low, better in one (ties kept), one front per cost. The front runs "
            "through the means: a recipe whose interval overlaps a dominating one is not "
            "clearly off it.")
    return Table("AUC vs cost, confirmed recipes", header, rows, bold,
                 align="lrr" + "rl" * len(costs), note=note, slug="structure_front")


# ---------------------------------------------------------------- the section


@dataclass
class Structure:
    """The section, its images (key -> PNG) and its numbers (csv name -> frame)."""

    section: Section | None
    images: dict[str, Path | None] = field(default_factory=dict)
    frames: dict[str, pd.DataFrame] = field(default_factory=dict)


def confirm_command(search: SweepData) -> str:
    """What runs the confirmation of this search (the words `_unconfirmed_note` uses)."""
    space, name = search.info.get("space"), search.name
    if search.settings.get("confirmation"):
        return (f"its space asked for one ({search.settings['confirmation']}), not run yet or "
                f"without a finished run: resume the search to run it: ablate sweep --space "
                f"{space} --name {name} --resume")
    return ("its space has no `confirm:` section: add `confirm: {top: 3, seeds: 3}` to the "
            f"search space and run the search with it (ablate sweep --space {space}); a "
            "resume keeps the space a search started with")


def structure_section(search: SweepData, confirmation: SweepData | None,
                      folder: Path | None, summ: pd.DataFrame | None = None) -> Structure:
    """The "Structure search" section: slices and parallel coordinates of `search`'s counted
    trials (when it searched a param), and the confirmed AUC-vs-cost front (`confirmation`
    given; `summ` its `tables.summary`). `folder`: where plots go (None: no plots)."""
    out = Structure(None)
    params = searched_params(search)
    objective = str(search.objectives[0]["metric"]) if search.objectives else "val_auc"
    text: list[str] = []
    if params:
        wide = trial_params(search, params, objective)
        longs = slice_data(wide, params, objective)
        out.frames["structure_trials"] = wide
        n = int(wide[objective].notna().sum())
        conditional = [p.key for p in params if p.when]
        text.append(
            f"Slices: one panel per searched param ({', '.join(p.key for p in params)}), one "
            f"point per counted trial of {search.name} ({n} trained runs with a value; trials "
            f"told to Optuna by a warm start or as infeasible were never trained here and are "
            f"not shown), x = the param's value, y = {objective}, the sweep's first "
            "objective. A categorical param is jittered by category; a numeric one is a "
            "scatter (log axis where the space samples it on a log scale)."
            + (f" A conditional param ({', '.join(conditional)}) shows only the trials that "
               "had it." if conditional else ""))
        text.append(f"Parallel coordinates: one line per counted trial across the searched "
                    f"params, then {objective}; categories at evenly spaced positions, numbers "
                    "scaled to [0, 1] between their min and max (labelled), a param a trial "
                    f"lacked at {ABSENT!r}; colour = {objective}. These are the search's own "
                    "runs: " + _sampling_note(search))
        if folder is not None:
            # lazy: matplotlib only when a format shows figures
            from ablate.report import plots

            out.images["slices"] = plots.slice_plot(longs, params, objective, folder)
            out.images["parallel"] = plots.parallel_plot(wide, params, objective, folder)
    tables_: list[Table] = []
    if confirmation is not None:
        front = confirmed_front(confirmation, summ)
        out.frames["structure_front"] = front
        if front.empty:
            text.append(f"AUC vs cost: the confirmation runs ({confirmation.name}) record none "
                        f"of the costs {', '.join(COSTS)} together with a test AUC; no front.")
        else:
            seeds = sorted({int(s) for s in confirmation.counted["seed"]})
            text.append(
                f"AUC vs cost, from the confirmation runs only ({confirmation.name}: the "
                f"search's best recipes retrained on fresh seeds {', '.join(map(str, seeds))}): "
                "each recipe's mean test AUC averaged over the test sets, with its Student-t "
                "95% interval over seeds, against each recorded cost "
                f"({', '.join(dict.fromkeys(front['cost']))}); the recipes no other beats on "
                "both (higher AUC, lower cost) are the front, in red.")
            tables_.append(front_table(front))
            if folder is not None:
                # lazy: matplotlib only when a format shows figures
                from ablate.report import plots

                out.images["structure_front"] = plots.cost_front_plot(front, folder)
    else:
        text.append("AUC vs cost: the front is drawn only from confirmation runs (the search's "
                    "best recipes retrained on fresh seeds). The search's own numbers are "
                    "biased upward by selection (the winners carry the luck that made them "
                    "win), so no front is drawn from them. "
                    + ("A design runs every cell on its seeds and selects nothing; its Pareto "
                       "front, if it has two objectives, is above." if
                       search.settings.get("design") else
                       f"To draw it, run the confirmation: {confirm_command(search)}."))
    if not params and confirmation is None:
        return out
    images = [out.images[k] for k in ("slices", "parallel", "structure_front")
              if out.images.get(k) is not None]
    out.section = Section("Structure search", text=text, tables=tables_, images=images)
    return out


def _sampling_note(search: SweepData) -> str:
    """How the points were chosen: independently of results, or by an adaptive sampler."""
    sampler = sampler_name(search.settings)
    if search.settings.get("design") or (sampler or "").startswith("grid"):
        return "every cell of the grid or design, none chosen by its results."
    if sampler in UNBIASED_SAMPLERS:
        return f"sampled by {sampler}, independently of their results."
    return (f"sampled by {sampler or 'an unknown sampler'}, which (when adaptive: TPE, "
            "NSGA-II) puts more trials where earlier ones scored well, so dense regions "
            "mean \"chosen often\", not \"better\".")
