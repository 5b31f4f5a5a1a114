"""What a design will cost before it runs: cells x seeds x steps x measured step time.

Step times are *measured*, never guessed: the median `step_time_s` of finished runs
of the same recipe (its recipe hash) in the results database. A cell nobody has run
yet borrows the median of the measured cells of the same kind (guided or baseline),
and says so; with nothing measured, the estimate stays unknown and the table says
which `ablate bench` command measures it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

from ablate.core.errors import AblateError
from ablate.core.schema import setting
from ablate.recipe import compose, recipe_hash
from ablate.results import ResultsDB, default_url, require_existing_db
from ablate.space.model import SearchSpace

COLUMNS = ["cell", "changed", "guided", "seeds", "steps", "step_time_s", "measured",
           "compute_min"]


@dataclass(frozen=True)
class DesignCost:
    table: pd.DataFrame  # one row per cell, COLUMNS
    compute_min: float  # every run's train steps, one after another (NaN: unknown)
    wall_min: float  # compute_min spread over the space's max_concurrent trials
    note: str  # how the step times were found, in one sentence


def design_cost(space: SearchSpace, db_url: str | None = None,
                measure: bool = False) -> DesignCost:
    """The cost table of `space`'s design; `db_url` (default: the results DB) holds the
    step times of runs already made. `measure`: time the reference recipe's guided and
    baseline steps now (`ablate bench`, one thread) for the cells nobody has run."""
    design = space.design
    rows = []
    for cell in design.cells():
        cfg = compose([*space.overrides(), *cell.overrides()])
        rows.append({"cell": cell.label, "changed": ", ".join(cell.changed) or "-",
                     "guided": not cell.is_baseline, "seeds": space.seeds,
                     "steps": (setting(cfg, "train.steps") if not setting(cfg, "train.epochs")
                               else None),
                     "hash": recipe_hash(cfg)})
    table = pd.DataFrame(rows)
    measured = _measured(table["hash"].tolist(), db_url)
    table["step_time_s"] = table["hash"].map(measured["step_time_s"])
    table["measured"] = table["hash"].map(measured["n"]).fillna(0).astype(int).map(
        lambda n: f"{n} run{'s' if n != 1 else ''}" if n else "-")
    table["steps"] = table["steps"].fillna(table["hash"].map(measured["train_steps"]))
    if measure and table["step_time_s"].isna().any():
        timed = _bench(space)
        for guided, seconds in timed.items():
            missing = (table["guided"] == guided) & table["step_time_s"].isna()
            table.loc[missing, "step_time_s"] = seconds
            table.loc[missing, "measured"] = "bench"
    for guided in (True, False):
        kind = table["guided"] == guided
        known = table.loc[kind, "step_time_s"].dropna()
        missing = kind & table["step_time_s"].isna()
        if len(known) and missing.any():
            table.loc[missing, "step_time_s"] = float(known.median())
            table.loc[missing, "measured"] = "borrowed"
    table["compute_min"] = table["seeds"] * table["steps"] * table["step_time_s"] / 60
    compute = float(table["compute_min"].sum(min_count=len(table)))
    wall = compute / min(space.max_concurrent, len(table) * space.seeds)
    sources = {"runs": "median of finished runs of the same recipe in the results DB",
               "bench": "the reference's guided / baseline step timed now at one thread",
               "borrowed": "the median of measured cells of the same kind (guided/baseline)"}
    seen = {("runs" if m.endswith(("run", "runs")) else m) for m in table["measured"]}
    note = "step times: " + "; ".join(f"{k}: {v}" for k, v in sources.items() if k in seen)
    if table["step_time_s"].isna().any():
        note = ("step times not measured yet for every cell: run the design once, add "
                "--measure, or time the reference with "
                f"`ablate bench {' '.join(_reference_overrides(space))}`")
    table["step_time_s"] = table["step_time_s"].round(4)
    table["compute_min"] = table["compute_min"].round(2)
    return DesignCost(table[COLUMNS], compute, wall, note)


def _bench(space: SearchSpace) -> dict[bool, float]:
    """Median seconds per train step of the reference (guided) and of its baseline, from
    one `ablate bench` of the reference at one thread (what a 1-CPU trial gets)."""
    # lazy: loads torch only when called
    from ablate.bench.run import run_bench

    guided_cells = [c for c in space.design.cells() if not c.is_baseline]
    if not guided_cells:
        return {}
    report = run_bench([*space.overrides(), *guided_cells[0].overrides()], device="cpu"
                       if space.resources.gpu == 0 else "auto", warmup=1, repeats=3, threads=1)
    results = report["results"]
    return {True: float(results["guided"]["median_s"]),
            False: float(results["baseline"]["median_s"])}


def _reference_overrides(space: SearchSpace) -> list[str]:
    return [*space.overrides(), *space.design.cells()[0].overrides()]


def _measured(hashes: list[str], db_url: str | None) -> pd.DataFrame:
    """Per recipe hash: median step time, median train steps, finished runs (n)."""
    empty = pd.DataFrame(columns=["step_time_s", "train_steps", "n"])
    url = db_url or default_url()
    try:
        require_existing_db(url)  # never create a database just to look for step times
    except AblateError:
        return empty
    with ResultsDB(url) as db:
        trials = db.trials()
    if trials.empty:
        return empty
    done = trials[(trials["status"] == "finished") & trials["recipe_hash"].isin(hashes)
                  & trials["step_time_s"].notna()]
    grouped = done.groupby("recipe_hash")
    return pd.DataFrame({"step_time_s": grouped["step_time_s"].median(),
                         "train_steps": grouped["train_steps"].median(),
                         "n": grouped.size()})


def minutes(value: float) -> str:
    return "unknown" if not math.isfinite(value) else f"{value:.1f} min"
