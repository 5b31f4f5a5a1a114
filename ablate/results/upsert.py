"""Writing rows: values coerced to what both backends store alike, and idempotent upserts.

Times are stored as naive UTC datetimes; NaN floats are stored as NULL
(SQLite cannot store NaN, and both backends must read back the same thing).
Recording a trial again (a resumed sweep replaying callbacks) updates its row
in place, keeping its id, and replaces its metrics and curves.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from ablate.results.schema import (
    LEVELS,
    METRIC_KEYS,
    checkpoints_table,
    curves_table,
    metrics_table,
    sweeps,
    trials,
)

# ---------------------------------------------------------------- value coercion


def _now() -> datetime:
    """Now as a naive UTC datetime (how times are stored)."""
    return datetime.now(UTC).replace(tzinfo=None)


def _utc(value: datetime | float | None) -> datetime | None:
    """A naive UTC datetime from a datetime (naive = already UTC) or a Unix time."""
    if value is None:
        return None
    if isinstance(value, int | float):
        return datetime.fromtimestamp(value, UTC).replace(tzinfo=None)
    if value.tzinfo is not None:
        value = value.astimezone(UTC).replace(tzinfo=None)
    return value


def _missing(value: Any) -> bool:
    """None, NaN, pd.NA or NaT: rows built from DataFrames carry all of these."""
    return value is None or (pd.api.types.is_scalar(value) and bool(pd.isna(value)))


def _float(value: Any) -> float | None:
    """A plain float (numpy scalars included); missing values, NaN included, become None."""
    return None if _missing(value) else float(value)


def _int(value: Any) -> int | None:
    """A plain int (numpy scalars included); missing values become None."""
    return None if _missing(value) else int(value)


def _json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def _check_status(status: str, allowed: Sequence[str], what: str) -> None:
    if status not in allowed:
        raise ValueError(f"{what} status {status!r} is not one of {', '.join(allowed)}")


def _metric_rows(metrics: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Validated metric rows; a metric named twice for the same dataset/split/level is an error."""
    rows, seen = [], set()
    for m in metrics:
        missing = {"dataset", "split", "level", "metric", "value"} - set(m)
        if missing:
            raise ValueError(f"metric {dict(m)} lacks {', '.join(sorted(missing))}")
        if m["level"] not in LEVELS:
            raise ValueError(f"metric level {m['level']!r} is not one of {', '.join(LEVELS)}")
        key = (str(m["dataset"]), str(m["split"]), m["level"], str(m["metric"]))
        if key in seen:
            raise ValueError(f"metric {'/'.join(key)} given twice for one trial")
        seen.add(key)
        rows.append({**dict(zip(METRIC_KEYS[:4], key, strict=True)),
                     "value": _float(m["value"]), "ci_low": _float(m.get("ci_low")),
                     "ci_high": _float(m.get("ci_high")), "n": _int(m.get("n")),
                     **_provenance(m)})
    return rows


def _provenance(m: Mapping[str, Any]) -> dict[str, Any]:
    """A metric's METRIC_PROVENANCE values (missing ones NULL: unknown, not guessed)."""
    text = {k: None if _missing(m.get(k)) else str(m[k])
            for k in ("aggregation", "threshold_from", "boot_unit", "eer_convention",
                      "manifest_sha")}
    protocol = m.get("protocol")  # a dict (JSON text in the DB) or text already
    text["protocol"] = (None if protocol is None or _missing(protocol) else
                        protocol if isinstance(protocol, str) else
                        json.dumps(protocol, sort_keys=True, default=str))
    return {**text, "threshold": _float(m.get("threshold")), "n_boot": _int(m.get("n_boot")),
            "boot_seed": _int(m.get("boot_seed"))}


def _curve_rows(curves: Iterable[tuple[int, str, float]]) -> list[dict[str, Any]]:
    """Curve rows; a (name, step) logged twice keeps its last value (e.g. a resumed run)."""
    points = {(str(name), int(step)): _float(value) for step, name, value in curves}
    return [{"step": step, "name": name, "value": value}
            for (name, step), value in points.items()]


# ---------------------------------------------------------------- upserts


def _dialect_insert(conn: sa.Connection) -> Callable[[sa.Table], Any]:
    """The backend's INSERT, which knows ON CONFLICT DO UPDATE (SQLite and PostgreSQL both do)."""
    return postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert


def _upsert_trial(conn: sa.Connection, sweep_id: int, tune_trial_id: str,
                  row: dict[str, Any]) -> int:
    """Update the trial's row if it exists (keeping its id), else insert it; return the id."""
    if conn.scalar(sa.select(sweeps.c.id).where(sweeps.c.id == sweep_id)) is None:
        raise ValueError(f"no sweep with id {sweep_id}; call start_sweep first")
    key = (trials.c.sweep_id == sweep_id) & (trials.c.tune_trial_id == tune_trial_id)
    trial_id = conn.scalar(sa.select(trials.c.id).where(key))
    if trial_id is None:
        values = {"sweep_id": sweep_id, "tune_trial_id": tune_trial_id, **row}
        return conn.execute(trials.insert().values(values)).inserted_primary_key[0]
    conn.execute(trials.update().where(trials.c.id == trial_id).values(row))
    return trial_id


def _replace_children(conn: sa.Connection, trial_id: int, metric_rows: list[dict],
                      curve_rows: list[dict]) -> None:
    """Replace a trial's metrics and curves with the given rows."""
    conn.execute(metrics_table.delete().where(metrics_table.c.trial_id == trial_id))
    conn.execute(curves_table.delete().where(curves_table.c.trial_id == trial_id))
    if metric_rows:
        conn.execute(metrics_table.insert(), [{"trial_id": trial_id, **r} for r in metric_rows])
    if curve_rows:
        conn.execute(curves_table.insert(), [{"trial_id": trial_id, **r} for r in curve_rows])


def _upsert_checkpoint(conn: sa.Connection, values: dict[str, Any]) -> None:
    """Insert the checkpoint row, or update step / uri / created of the one with its key.

    One atomic statement, so two writers of the same key cannot both insert.
    """
    insert = _dialect_insert(conn)(checkpoints_table).values(values)
    conn.execute(insert.on_conflict_do_update(
        index_elements=["sweep_id", "identity", "seed"],
        set_={k: insert.excluded[k] for k in ("step", "uri", "created")}))
