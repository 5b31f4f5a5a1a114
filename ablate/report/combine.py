"""Whether runs of several sweeps may be reported together (`ablate report --sweep A --sweep B`).

Why: a report pairs runs by seed and averages a recipe over its seeds. Runs of the same
recipe from two sweeps are one recipe only if they trained on the same data with the same
teacher (the trial's `data_sha`, `teacher_sha`: a re-extracted FF++ or a refitted teacher
keeps the recipe hash but is another experiment), and numbers from two sweeps sit in one
column only if they scored the same test rows under the same protocol (`manifest_sha`,
`protocol`). Where either differs, pairing or averaging them would report a data change as
a recipe's effect or as seed noise, so the report refuses, in one line saying which and why.
Unknown values (NULL: rows recorded before those columns existed) are not evidence of a
difference and pass.
"""

from __future__ import annotations

import pandas as pd

from ablate.core.errors import AblateError
from ablate.core.protocol import measured_on, parse

IDENTITY = {"data_sha": "other training or test data", "teacher_sha": "another teacher"}


def check_combinable(results: pd.DataFrame, metrics: pd.DataFrame) -> None:
    """AblateError (one line) when runs of different sweeps may not be paired or averaged.

    `results`: the result trials (finished or reused) of every sweep, with `config` (recipe
    without seed), sweep, id, recipe_hash, seed, data_sha, teacher_sha; `metrics`: their
    stored metric rows (trial_id, split, dataset, level, manifest_sha, protocol).
    """
    for column, why in IDENTITY.items():
        if column in results.columns:
            _same_recipe(results, column, why)
    if "data_sha" in results.columns:
        _shared_data(results)
    test = metrics[(metrics["split"] == "test") & metrics["trial_id"].isin(results["id"])]
    if "manifest_sha" in test.columns:
        _same_column(test.assign(_v=test["manifest_sha"]), "manifest_sha",
                     "scored other test rows")
    if "protocol" in test.columns:
        measured = test["protocol"].map(lambda t: measured_on(parse(t)))
        _same_column(test.assign(_v=measured), "protocol", "has another protocol")


def _same_recipe(results: pd.DataFrame, column: str, why: str) -> None:
    """Every recipe found in two or more sweeps has one known value of `column`."""
    known = results.dropna(subset=[column])
    for _, runs in known.groupby("config", sort=False):
        if runs["sweep"].nunique() < 2 or runs[column].nunique() < 2:
            continue
        a, b = _two_sweeps_differing(runs, column)
        raise AblateError(
            f"cannot report sweeps {a['sweep']} and {b['sweep']} together: recipe "
            f"{a['recipe_hash']} seed {_int(a['seed'])} has {column} {a[column]} in "
            f"{a['sweep']} but recipe {b['recipe_hash']} seed {_int(b['seed'])} has "
            f"{b[column]} in {b['sweep']} ({why}), so their runs are not one recipe and are "
            "neither paired nor averaged; report the sweeps apart")


def _shared_data(results: pd.DataFrame) -> None:
    """Sweeps with no recipe in common still pair by seed against one reference: each sweep
    must have trained on data another sweep also trained on (some known `data_sha` shared),
    else a data change would read as the recipes' effect."""
    known = results.dropna(subset=["data_sha"])
    shas = {sweep: set(rows["data_sha"]) for sweep, rows in known.groupby("sweep", sort=False)}
    for sweep, mine in shas.items():
        others = set().union(*(v for k, v in shas.items() if k != sweep))
        if others and not mine & others:
            other = next(k for k in shas if k != sweep)
            raise AblateError(
                f"cannot report sweeps {sweep} and {other} together: no run of {sweep} trained "
                f"on the data of another sweep (data_sha {', '.join(sorted(mine))} against "
                f"{', '.join(sorted(others))}: other training or test data), so pairing their "
                "recipes by seed would report a data change as an effect; report the sweeps "
                "apart")


def _same_column(test: pd.DataFrame, what: str, why: str) -> None:
    """Every (test set, level) has one known `_v` over the sweeps that scored it."""
    known = test.dropna(subset=["_v"])
    for (dataset, level), rows in known.groupby(["dataset", "level"], sort=False):
        if rows["sweep"].nunique() < 2 or rows["_v"].nunique() < 2:
            continue
        a, b = _two_sweeps_differing(rows, "_v")
        raise AblateError(
            f"cannot report sweeps {a['sweep']} and {b['sweep']} together: test set {dataset} "
            f"({level} level) in {b['sweep']} {why} than in {a['sweep']} ({what} differs), so "
            "their numbers on it are neither paired nor averaged; report the sweeps apart")


def _two_sweeps_differing(rows: pd.DataFrame, column: str) -> tuple[pd.Series, pd.Series]:
    """Two rows of different sweeps with different values, else any two differing rows."""
    first = rows.iloc[0]
    for _, row in rows.iterrows():
        if row["sweep"] != first["sweep"] and row[column] != first[column]:
            return first, row
    for _, a in rows.iterrows():
        for _, b in rows.iterrows():
            if a["sweep"] != b["sweep"] and a[column] != b[column]:
                return a, b
    other = rows[rows[column] != first[column]].iloc[0]
    return first, other


def _int(value: object) -> object:
    return int(value) if pd.notna(value) else "?"
