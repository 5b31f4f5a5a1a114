"""The results database: every sweep, trial, metric and training curve.

Reports read only this database, so it is the project's memory. It is plain
SQLAlchemy Core over SQLite (default: one file, `results/ablate.db`) or
PostgreSQL (shared by several machines), with the same schema on both.

Modules, one job each: `schema` (the tables, SCHEMA_VERSION, the statuses and
row keys), `migrations` (creating the tables and upgrading an older database,
version by version), `engine` (URLs, engines, transactions and locks per
backend, and the one-line errors of a database that cannot be opened),
`upsert` (values coerced for storage, idempotent row writes), `read` (rows back
as typed DataFrames) and `db` (ResultsDB). Callers import from
`ablate.results`; a test that patches a constant (SCHEMA_VERSION, MIGRATIONS,
STALE_AFTER_S, SQLITE_BUSY_TIMEOUT_S) patches the module that reads it
(`migrations`, `db`, `engine`), not this one.

This package must never import torch: reports and the sweep driver use it in
processes that have no business loading a deep-learning stack.
"""

from __future__ import annotations

from ablate.results.db import STALE_AFTER_S, ResultsDB
from ablate.results.db import _unpickle as _unpickle  # named by pickles made before the split
from ablate.results.engine import (
    DEFAULT_URL,
    PG_CONNECT_TIMEOUT_S,
    SQLITE_BUSY_TIMEOUT_S,
    default_url,
    require_existing_db,
)
from ablate.results.engine import _mask_password as _mask_password
from ablate.results.engine import _without_password as _without_password
from ablate.results.migrations import MIGRATIONS, Migration, add_column
from ablate.results.schema import (
    LEVELS,
    METRIC_KEYS,
    SCHEMA_VERSION,
    SWEEP_ROW_KEYS,
    SWEEP_STATUSES,
    TRIAL_STATUSES,
    checkpoints_table,
    curves_table,
    metadata,
    metrics_table,
    schema_table,
    sweeps,
    trials,
)

__all__ = [
    "DEFAULT_URL",
    "LEVELS",
    "METRIC_KEYS",
    "MIGRATIONS",
    "PG_CONNECT_TIMEOUT_S",
    "SCHEMA_VERSION",
    "SQLITE_BUSY_TIMEOUT_S",
    "STALE_AFTER_S",
    "SWEEP_ROW_KEYS",
    "SWEEP_STATUSES",
    "TRIAL_STATUSES",
    "Migration",
    "ResultsDB",
    "add_column",
    "checkpoints_table",
    "curves_table",
    "default_url",
    "metadata",
    "metrics_table",
    "require_existing_db",
    "schema_table",
    "sweeps",
    "trials",
]
