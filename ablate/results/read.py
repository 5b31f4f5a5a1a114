"""Reading rows back: DataFrames typed by the SQL columns, and one trial's children.

A report must see the same dtypes whether a column holds values or only NULLs
(no errors yet), so frames are typed from the query's columns, never guessed
from the rows.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
import sqlalchemy as sa

from ablate.results.schema import METRIC_KEYS, curves_table, metrics_table, sweeps, trials


def _frame(conn: sa.Connection, stmt: sa.Select) -> pd.DataFrame:
    """A DataFrame of a query whose dtypes follow the SQL types, whatever the rows hold.

    So an all-NULL column (no errors yet) still reads as str, float or Int64.
    """
    result = conn.execute(stmt)
    df = pd.DataFrame(result.fetchall(), columns=list(result.keys()))
    for column in stmt.selected_columns:
        dtype = _dtype(column)
        if dtype == "datetime":
            df[column.name] = pd.to_datetime(df[column.name])
        elif dtype:
            df[column.name] = df[column.name].astype(dtype)
    return df


def _dtype(column: sa.ColumnElement) -> str | None:
    """The pandas dtype for a selected column (None: leave as read)."""
    if isinstance(column.type, sa.DateTime):
        return "datetime"
    if isinstance(column.type, sa.Float):
        return "float64"
    if isinstance(column.type, sa.Integer):
        return "Int64" if getattr(column, "nullable", True) else "int64"
    if isinstance(column.type, sa.String):
        return "str"
    return None


def _trial_identity() -> list[sa.ColumnElement]:
    """Columns that tell which trial a metric or curve point belongs to."""
    return [sweeps.c.name.label("sweep"), trials.c.sweep_id, trials.c.tune_trial_id,
            trials.c.recipe_hash, trials.c.seed, trials.c.status]


def _trial_metrics(conn: sa.Connection, trial_id: int) -> list[dict[str, Any]]:
    stmt = (sa.select(*(metrics_table.c[k] for k in METRIC_KEYS))
            .where(metrics_table.c.trial_id == trial_id)
            .order_by(metrics_table.c.dataset, metrics_table.c.split, metrics_table.c.level,
                      metrics_table.c.metric))
    return [dict(m) for m in conn.execute(stmt).mappings()]


def _trial_curves(conn: sa.Connection, trial_id: int) -> list[tuple[int, str, float | None]]:
    stmt = (sa.select(curves_table.c.step, curves_table.c.name, curves_table.c.value)
            .where(curves_table.c.trial_id == trial_id)
            .order_by(curves_table.c.name, curves_table.c.step))
    return [tuple(r) for r in conn.execute(stmt)]
