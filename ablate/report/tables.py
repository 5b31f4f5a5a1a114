"""The report's tables as numbers (pandas) and as display `Table`s.

- `seed_values`: one value per (config, seed, test set, level, metric), plus the
  average over test sets ("avg") for trials that have every test set.
- `summary`: mean and 95% CI over seeds of each of those; with a single seed
  the interval is that run's own video bootstrap, and `ci_kind` says which.
- `main_table`: the paper-style cross-dataset table (frame AUC and EER, %).
- `pareto` / `pareto_table`: the two-objective front; `status_counts`, `errors`.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ablate.provenance import is_part
from ablate.report.data import SweepData
from ablate.report.display import Table, number, pm
from ablate.report.stats import pareto_mask, t_interval

AVG = "avg"
LOWER_IS_BETTER = {"eer", "video_eer", "params_trainable", "params_inference", "step_time_s",
                   "wall_s", "peak_mem_mb", "estimated_mem_mb", "train_gflops", "latency_ms"}
MAIN_METRICS = ("auc", "eer")
TRIAL_COLUMNS = ("params_trainable", "params_inference", "step_time_s", "wall_s", "peak_mem_mb",
                 "estimated_mem_mb", "train_gflops", "latency_ms")
STATUSES = ("finished", "reused", "pruned", "failed", "nan", "running")
KEYS = ["config", "label", "dataset", "level", "metric"]


def seed_values(data: SweepData) -> pd.DataFrame:
    """Test metrics per seed, with an `avg` pseudo test set (NaN if a test set is missing)."""
    m = data.metrics[data.metrics["split"] == "test"]
    m = m[["trial_id", "config", "label", "seed", "dataset", "level", "metric", "value",
           "ci_low", "ci_high"]]
    if m.empty:
        return m
    wide = m.pivot_table(index=["trial_id", "config", "label", "seed", "level", "metric"],
                         columns="dataset", values="value", aggfunc="first")
    wide = wide.reindex(columns=[t for t in data.tests if not is_part(t)])  # parts: not twice
    avg = wide.mean(axis=1, skipna=False).rename("value").reset_index()
    avg["dataset"], avg["ci_low"], avg["ci_high"] = AVG, np.nan, np.nan
    return pd.concat([m, avg[m.columns]], ignore_index=True)


def summary(data: SweepData) -> pd.DataFrame:
    """Mean and 95% CI over seeds per (config, dataset, level, metric); see module doc."""
    values = seed_values(data)
    rows = []
    for key, group in values.groupby(KEYS, sort=False):
        mean, low, high, n = t_interval(group["value"])
        kind = "t over seeds" if n >= 2 else ""
        if n == 1:
            one = group.dropna(subset=["value"]).iloc[0]
            if pd.notna(one["ci_low"]) and pd.notna(one["ci_high"]):
                low, high, kind = float(one["ci_low"]), float(one["ci_high"]), "video bootstrap"
        rows.append({**dict(zip(KEYS, key, strict=True)), "n_seeds": n, "mean": mean,
                     "ci_low": low, "ci_high": high, "ci_kind": kind})
    columns = [*KEYS, "n_seeds", "mean", "ci_low", "ci_high", "ci_kind"]
    return pd.DataFrame(rows, columns=columns)


def recipe_order(summ: pd.DataFrame, data: SweepData) -> list[str]:
    """Labels, best mean average frame AUC first (configs without one last, by label)."""
    avg = summ[(summ["dataset"] == AVG) & (summ["level"] == "frame") & (summ["metric"] == "auc")]
    score = avg.set_index("label")["mean"]
    labels = list(dict.fromkeys(data.counted["label"]))
    return sorted(labels, key=lambda lab: (-score.get(lab, -np.inf)
                                           if pd.notna(score.get(lab, np.nan)) else np.inf, lab))


def main_columns(summ: pd.DataFrame, data: SweepData) -> list[tuple[str, str]]:
    """The main table's (test set or avg, metric) cells after its label, in order."""
    frame = summ[(summ["level"] == "frame") & summ["metric"].isin(MAIN_METRICS)]
    return [(d, m) for d in [*data.tests, AVG] for m in MAIN_METRICS
            if (d, m) in _present(frame)]


def main_table(summ: pd.DataFrame, data: SweepData, reference: str | None = None) -> Table:
    """Rows: configs; columns: AUC and EER (%) per test set and their average; best in bold.
    Headers show each test set's display name (`data.names`)."""
    frame = summ[(summ["level"] == "frame") & summ["metric"].isin(MAIN_METRICS)]
    cells = frame.set_index(["label", "dataset", "metric"])
    columns = main_columns(summ, data)
    best = {col: _best(frame, *col) for col in columns}
    labels = recipe_order(summ, data)
    rows, bold = [], []
    for label in labels:
        row, marks = [label + (" (ref)" if label == reference else "")], [False]
        for d, m in columns:
            if (label, d, m) in cells.index:
                c = cells.loc[(label, d, m)]
                row.append(pm(c["mean"], c["ci_low"], c["ci_high"]))
                marks.append(bool(np.isclose(c["mean"], best[(d, m)])))
            else:
                row.append("-")
                marks.append(False)
        seeds = frame.loc[frame["label"] == label, "n_seeds"]
        row.append(str(int(seeds.min())) if len(seeds) else "0")
        marks.append(False)
        rows.append(row)
        bold.append(marks)
    header = ["Recipe", *(f"{'Avg' if d == AVG else data.names.get(d, d)} {m.upper()}"
                          for d, m in columns), "Seeds"]
    kinds = set(frame["ci_kind"]) - {""}
    return Table("Cross-dataset results (frame level, %)", header, rows, bold,
                 note=_main_note(kinds), slug="main")


def _present(frame: pd.DataFrame) -> set[tuple[str, str]]:
    return set(zip(frame["dataset"], frame["metric"], strict=True))


def _best(frame: pd.DataFrame, dataset: str, metric: str) -> float:
    col = frame[(frame["dataset"] == dataset) & (frame["metric"] == metric)]["mean"].dropna()
    if col.empty:
        return np.nan
    return float(col.min() if metric in LOWER_IS_BETTER else col.max())


def _main_note(kinds: set[str]) -> str:
    note = ("mean ± half-width of the 95% CI; AUC: higher is better, EER: lower is better; "
            "best of each column in bold; Avg = mean over test sets per seed.")
    if "t over seeds" in kinds:
        note += " CI over seeds: Student t."
    if "video bootstrap" in kinds:
        note += (" Single-seed cells show that run's own bootstrap CI (test-set sampling only; "
                 "its unit is in the provenance note).")
    return note


# ---------------------------------------------------------------- Pareto front

# What a recipe costs and scores, each a mean over its counted seeds; any can be an objective.
MEASURES = ("val_auc", "test_auc_mean", "params_trainable", "step_time_s", "peak_mem_mb")
MEASURE_NAMES = {"val_auc": "Val AUC (%)", "test_auc_mean": "Test AUC mean (%)",
                 "params_trainable": "Trainable params", "params_inference": "Inference params",
                 "step_time_s": "Step time (s)", "wall_s": "Wall time (s)",
                 "peak_mem_mb": "Peak mem (MB)"}


def objective_values(data: SweepData, metrics: list[str],
                     intervals: bool = False) -> pd.DataFrame:
    """Per config (label), the mean over its counted seeds of each metric (NaN if unknown).

    val_auc: the frame AUC on the source val split; test_auc_mean: the trial's mean frame
    AUC over its test sets; the rest are trial columns (params_trainable, step_time_s, ...).
    With `intervals`, each metric also gets `<metric>_low` / `_high`: its Student-t 95% CI
    over seeds (each seed one training run; NaN below two seeds).
    """
    out = pd.DataFrame(index=pd.Index(list(dict.fromkeys(data.counted["label"])), name="label"))
    m = data.metrics
    frame_auc = m[(m["level"] == "frame") & (m["metric"] == "auc")
                  & ~m["dataset"].map(is_part).astype(bool)]
    per_trial = {
        "val_auc": frame_auc[frame_auc["split"] == "val"].groupby("trial_id")["value"].mean(),
        "test_auc_mean": frame_auc[frame_auc["split"] == "test"].groupby("trial_id")["value"].mean(),
    }
    counted = data.counted.set_index("id")
    for metric in metrics:
        if metric in per_trial:
            values = counted.index.map(per_trial[metric])
        elif metric in TRIAL_COLUMNS:
            values = counted[metric].astype(float)
        else:
            out[metric] = np.nan
            continue
        series = pd.Series(np.asarray(values, dtype=float), index=counted["label"].to_numpy())
        groups = series.groupby(level=0)
        out[metric] = groups.mean()
        if intervals:
            ci = groups.apply(lambda x: pd.Series(t_interval(x.to_numpy())[1:3],
                                                  index=["low", "high"])).unstack()
            out[f"{metric}_low"], out[f"{metric}_high"] = ci["low"], ci["high"]
    return out


def maximized(objectives: list[dict]) -> list[bool]:
    """Each objective's direction: its `mode`, or the metric's natural one when none is given."""
    return [str(o.get("mode") or ("min" if o.get("metric") in LOWER_IS_BETTER else "max"))
            == "max" for o in objectives]


def pareto(data: SweepData) -> pd.DataFrame | None:
    """Two-objective sweeps: every config's measures and whether it is on the front (else None).

    Columns: label, the two objectives, the other MEASURES, n_seeds, on_front; the
    front's rows first, best first on the first objective.
    """
    objectives = data.objectives
    if len(objectives) != 2:
        return None
    names = [str(o["metric"]) for o in objectives]
    maximize = maximized(objectives)
    values = objective_values(data, [*names, *(m for m in MEASURES if m not in names)],
                              intervals=True)
    values["n_seeds"] = data.counted.groupby("label")["seed"].nunique()
    values["on_front"] = pareto_mask(values[names].to_numpy(), maximize)
    values = values.reset_index()
    return values.sort_values(["on_front", *names, "label"],
                              ascending=[False, *(not up for up in maximize), True],
                              kind="stable", ignore_index=True)


def pareto_table(front: pd.DataFrame, objectives: list[dict]) -> Table:
    """The non-dominated recipes: their two objectives, then what else they score and cost."""
    names = [str(o["metric"]) for o in objectives]
    modes = ["max" if up else "min" for up in maximized(objectives)]
    others = [m for m in MEASURES if m not in names and front[m].notna().any()]
    on = front[front["on_front"]]
    rows = [[r["label"], *(_measure_text(n, r) for n in [*names, *others]),
             str(int(r["n_seeds"]))] for _, r in on.iterrows()]
    header = [*(f"{MEASURE_NAMES.get(n, n)} [{mode}]" for n, mode in zip(names, modes,
                                                                          strict=True)),
              *(MEASURE_NAMES[m] for m in others)]
    known = int(front[names].notna().all(axis=1).sum())
    note = (f"{len(on)} of {known} recipes are on the front: no other recipe is at least as good "
            f"on both {names[0]} ({modes[0]}) and {names[1]} ({modes[1]}) and better on one "
            "(ties are kept). Every value is a mean over the recipe's finished seeds; AUCs "
            "carry ± half-width of their Student-t 95% CI over seeds (each seed one training "
            "run). The front is drawn through the means, so a point whose CI overlaps a "
            "dominating one is not clearly off it.")
    if known < len(front):
        note += f" {len(front) - known} recipe(s) lack an objective value and are left out."
    return Table(f"Pareto front ({len(on)} of {known} recipes)",
                 ["Recipe", *header, "Seeds"], rows, note=note, slug="pareto")


def _measure_text(name: str, row: pd.Series) -> str:
    if "auc" in name:
        return pm(row[name], row.get(f"{name}_low"), row.get(f"{name}_high"))
    return number(row[name])


# ---------------------------------------------------------------- status and errors


def status_counts(data: SweepData) -> pd.DataFrame:
    """Trials per status (every status listed, zeros included), plus the total."""
    counts = data.trials["status"].value_counts()
    statuses = [*STATUSES, *sorted(set(counts.index) - set(STATUSES))]
    rows = [{"status": s, "trials": int(counts.get(s, 0))} for s in statuses]
    rows.append({"status": "total", "trials": int(len(data.trials))})
    return pd.DataFrame(rows)


def errors(data: SweepData) -> pd.DataFrame:
    """Distinct error messages (first line) with their status, count and example trials."""
    t = data.trials.dropna(subset=["error"])
    t = t[t["error"].str.strip() != ""]
    if t.empty:
        return pd.DataFrame(columns=["status", "error", "trials", "examples"])
    first = t["error"].map(lambda e: " ".join(str(e).strip().splitlines()[0].split())[:300])
    grouped = t.assign(message=first).groupby(["status", "message"], sort=False)
    rows = [{"status": s, "error": msg, "trials": len(g),
             "examples": ", ".join(g["tune_trial_id"].astype(str).head(3))}
            for (s, msg), g in grouped]
    return pd.DataFrame(rows).sort_values("trials", ascending=False, kind="stable")


def status_table(counts: pd.DataFrame, errs: pd.DataFrame) -> tuple[Table, Table]:
    status = Table("Trial status", ["Status", "Trials"],
                   [[r["status"], str(r["trials"])] for _, r in counts.iterrows()],
                   note="reused = a finished result of the same recipe and seed, counted as a "
                        "result here; pruned = stopped early by ASHA; nan = training diverged.",
                   slug="status")
    error = Table("Errors", ["Status", "Trials", "Error", "Examples"],
                  [[r["status"], str(r["trials"]), r["error"], r["examples"]]
                   for _, r in errs.iterrows()], align="lrll", slug="errors")
    return status, error
