"""The results database: every sweep, trial, metric and training curve.

Reports read only this database, so it is the project's memory. It is plain
SQLAlchemy Core over SQLite (default: one file, `results/ablate.db`) or
PostgreSQL (shared by several machines), with the same schema on both.

- Tables are prefixed `ablate_` because Optuna's RDB storage lives in the same
  database (`optuna_storage_url`) and owns `studies`, `trials`, ...
- Every write is one transaction, so a process killed mid-write leaves the
  database as it was before that write. SQLite runs in WAL mode, so reports
  can read while a sweep writes; writers take the lock up front
  (`BEGIN IMMEDIATE`) and queue behind a busy timeout instead of deadlocking.
- Times are stored as naive UTC datetimes; NaN floats are stored as NULL
  (SQLite cannot store NaN, and both backends must read back the same thing).
- `ablate_schema.version` is the schema version. `MIGRATIONS[v]` upgrades a
  database from version v to v+1; opening an older database applies them in
  order, in one transaction. Version 1 is the first schema.

This module must never import torch: reports and the sweep driver use it in
processes that have no business loading a deep-learning stack.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import sqlalchemy as sa
from sqlalchemy import event

from ablate.errors import AblateError

SCHEMA_VERSION = 1
DEFAULT_URL = "sqlite:///results/ablate.db"
SQLITE_BUSY_TIMEOUT_S = 30.0  # how long a SQLite writer waits for another writer
PG_CONNECT_TIMEOUT_S = 5
_PG_LOCK_KEY = 0x61626C617465  # "ablate": serialises schema creation across processes
_WRITE = "ablate_write"  # execution option: this connection will write

SWEEP_STATUSES = ("running", "finished", "interrupted", "failed")
TRIAL_STATUSES = ("finished", "pruned", "failed", "nan", "reused", "running")
LEVELS = ("frame", "video")
METRIC_KEYS = ("dataset", "split", "level", "metric", "value", "ci_low", "ci_high", "n")

# ---------------------------------------------------------------- schema

metadata = sa.MetaData()

schema_table = sa.Table(
    "ablate_schema", metadata,
    sa.Column("version", sa.Integer, nullable=False),
)

sweeps = sa.Table(
    "ablate_sweeps", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("name", sa.String, nullable=False, unique=True),
    sa.Column("space", sa.Text),
    sa.Column("created", sa.DateTime, nullable=False),
    sa.Column("status", sa.String, nullable=False),
    sa.Column("code_version", sa.Text),
    sa.Column("settings_json", sa.Text),
)

trials = sa.Table(
    "ablate_trials", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("sweep_id", sa.Integer, sa.ForeignKey("ablate_sweeps.id", ondelete="CASCADE"),
              nullable=False),
    sa.Column("tune_trial_id", sa.String, nullable=False),
    sa.Column("recipe_hash", sa.String, nullable=False),
    sa.Column("recipe_json", sa.Text),
    sa.Column("seed", sa.Integer),
    sa.Column("status", sa.String, nullable=False),
    sa.Column("started", sa.DateTime),
    sa.Column("ended", sa.DateTime),
    sa.Column("error", sa.Text),
    sa.Column("wall_s", sa.Float),
    sa.Column("train_steps", sa.Integer),
    sa.Column("params_trainable", sa.BigInteger),
    sa.Column("params_inference", sa.BigInteger),
    sa.Column("peak_mem_mb", sa.Float),
    sa.Column("step_time_s", sa.Float),
    sa.Column("reused_from", sa.Integer, sa.ForeignKey("ablate_trials.id", ondelete="SET NULL")),
    sa.Column("run_dir", sa.Text),
    sa.UniqueConstraint("sweep_id", "tune_trial_id", name="uq_ablate_trials_tune_trial"),
    sa.Index("ix_ablate_trials_identity", "recipe_hash", "seed"),
    sa.Index("ix_ablate_trials_sweep", "sweep_id"),
)

metrics_table = sa.Table(
    "ablate_metrics", metadata,
    sa.Column("trial_id", sa.Integer, sa.ForeignKey("ablate_trials.id", ondelete="CASCADE"),
              nullable=False),
    sa.Column("dataset", sa.String, nullable=False),
    sa.Column("split", sa.String, nullable=False),
    sa.Column("level", sa.String, nullable=False),
    sa.Column("metric", sa.String, nullable=False),
    sa.Column("value", sa.Float),
    sa.Column("ci_low", sa.Float),
    sa.Column("ci_high", sa.Float),
    sa.Column("n", sa.Integer),
    sa.PrimaryKeyConstraint("trial_id", "dataset", "split", "level", "metric",
                            name="pk_ablate_metrics"),
)

curves_table = sa.Table(
    "ablate_curves", metadata,
    sa.Column("trial_id", sa.Integer, sa.ForeignKey("ablate_trials.id", ondelete="CASCADE"),
              nullable=False),
    sa.Column("step", sa.Integer, nullable=False),
    sa.Column("name", sa.String, nullable=False),
    sa.Column("value", sa.Float),
    sa.PrimaryKeyConstraint("trial_id", "name", "step", name="pk_ablate_curves"),
)

# ---------------------------------------------------------------- migrations

Migration = Callable[[sa.Connection], None]
# MIGRATIONS[v] turns a version-v database into version v+1. Version 1 is the
# first schema, so there are none yet. To change the schema: edit the tables
# above (new databases get them from create_all), bump SCHEMA_VERSION, and add
# the step that brings an old database to the same shape, e.g.
#     MIGRATIONS[1] = lambda conn: add_column(conn, "ablate_trials", sa.Column("x", sa.Float))
MIGRATIONS: dict[int, Migration] = {}


def add_column(conn: sa.Connection, table: str, column: sa.Column) -> None:
    """ALTER TABLE ... ADD COLUMN, rendered for this backend (a building block for migrations)."""
    ddl = sa.schema.CreateColumn(column).compile(dialect=conn.dialect)
    conn.exec_driver_sql(f"ALTER TABLE {table} ADD COLUMN {ddl}")


def _apply_migrations(conn: sa.Connection, version: int) -> None:
    """Upgrade `version` -> SCHEMA_VERSION step by step, inside the caller's transaction."""
    for step in range(version, SCHEMA_VERSION):
        migration = MIGRATIONS.get(step)
        if migration is None:
            raise AblateError(
                f"results database has schema version {version} and this ablate has no "
                f"migration {step}->{step + 1}; open it with the ablate that wrote it"
            )
        migration(conn)
    conn.execute(schema_table.delete())
    conn.execute(schema_table.insert().values(version=SCHEMA_VERSION))


def _stored_version(conn: sa.Connection) -> int | None:
    """The schema version recorded in the database, or None for a database without our tables."""
    if not sa.inspect(conn).has_table(schema_table.name):
        return None
    return conn.scalar(sa.select(sa.func.max(schema_table.c.version)))


# ---------------------------------------------------------------- URLs and engines


def default_url() -> str:
    """$ABLATE_DB when set, else the SQLite file results/ablate.db under the current folder."""
    return os.environ.get("ABLATE_DB") or DEFAULT_URL


def _has_module(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


def _parse_url(text: str) -> sa.URL:
    """A SQLAlchemy URL; a bare path means a SQLite file; SQLite paths are made absolute.

    Absolute because Ray Tune and Optuna may open the same URL from another
    working folder. `postgresql://` picks psycopg 3 when psycopg2 is missing.
    """
    if "://" not in text:
        text = f"sqlite:///{text}"
    try:
        url = sa.make_url(text)
    except (sa.exc.ArgumentError, ValueError) as exc:
        raise AblateError(_cannot_open(text, exc)) from exc
    if url.drivername == "postgresql" and not _has_module("psycopg2") and _has_module("psycopg"):
        url = url.set(drivername="postgresql+psycopg")
    if url.get_backend_name() == "sqlite" and _is_sqlite_file(url.database):
        path = Path(url.database).expanduser().resolve()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise AblateError(_cannot_open(text, exc)) from exc
        url = url.set(database=str(path))
    return url


def _is_sqlite_file(database: str | None) -> bool:
    return bool(database) and database != ":memory:" and not database.startswith("file:")


def _cannot_open(url: str | sa.URL, exc: BaseException) -> str:
    """The one-line message for a database we cannot open."""
    shown = url.render_as_string(hide_password=True) if isinstance(url, sa.URL) else url
    reason = getattr(exc, "orig", None) or exc
    reason = " ".join(str(reason).split())[:300] or type(exc).__name__
    return (f"cannot open results database {shown}: {reason}; "
            "check the URL / that the server is running")


def _create_engine(url: sa.URL) -> sa.Engine:
    """An engine: SQLite tuned for concurrency, PostgreSQL with a short connect timeout."""
    try:
        if url.get_backend_name() == "sqlite":
            return _sqlite_engine(url)
        postgres = url.get_backend_name() == "postgresql"
        args = {"connect_timeout": PG_CONNECT_TIMEOUT_S} if postgres else {}
        return sa.create_engine(url, connect_args=args, pool_pre_ping=True)
    except (sa.exc.SQLAlchemyError, ImportError, ValueError, TypeError) as exc:
        raise AblateError(_cannot_open(url, exc)) from exc


def _sqlite_engine(url: sa.URL) -> sa.Engine:
    """SQLite with WAL, a busy timeout, enforced foreign keys and real (DDL-inclusive) transactions.

    Python's sqlite3 would otherwise autocommit DDL and begin writes lazily, so
    we take over BEGIN: IMMEDIATE for writes (the write lock up front, so two
    writers queue instead of failing), DEFERRED for reads (never blocking).
    """
    engine = sa.create_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S})
    busy_ms = int(SQLITE_BUSY_TIMEOUT_S * 1000)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None
        cursor = dbapi_conn.cursor()
        cursor.execute(f"PRAGMA busy_timeout={busy_ms}")
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: sa.Connection) -> None:
        mode = "IMMEDIATE" if conn.get_execution_options().get(_WRITE) else "DEFERRED"
        conn.exec_driver_sql(f"BEGIN {mode}")

    return engine


# ---------------------------------------------------------------- value coercion


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
                     "ci_high": _float(m.get("ci_high")), "n": _int(m.get("n"))})
    return rows


def _curve_rows(curves: Iterable[tuple[int, str, float]]) -> list[dict[str, Any]]:
    """Curve rows; a (name, step) logged twice keeps its last value (e.g. a resumed run)."""
    points = {(str(name), int(step)): _float(value) for step, name, value in curves}
    return [{"step": step, "name": name, "value": value}
            for (name, step), value in points.items()]


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


# ---------------------------------------------------------------- the database


class ResultsDB:
    """Sweeps, trials, metrics and curves in one SQL database (SQLite file or PostgreSQL)."""

    def __init__(self, url: str | None = None) -> None:
        """Open (and if needed create or upgrade) the database; AblateError when it cannot."""
        self._url = _parse_url(url or default_url())
        self._engine = _create_engine(self._url)
        try:
            self.migrate()
        except sa.exc.DBAPIError as exc:
            self._engine.dispose()
            raise AblateError(_cannot_open(self._url, exc)) from exc
        except BaseException:
            self._engine.dispose()
            raise

    # -------------------------------------------------------- plumbing

    @property
    def url(self) -> str:
        """The database URL for messages (password hidden)."""
        return self._url.render_as_string(hide_password=True)

    @property
    def optuna_storage_url(self) -> str:
        """The same database as a URL for Optuna's RDBStorage (SQLite paths absolute)."""
        return self._url.render_as_string(hide_password=False)

    def close(self) -> None:
        """Release pooled connections (the object can still be used; it reconnects)."""
        self._engine.dispose()

    def __enter__(self) -> ResultsDB:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def __reduce__(self) -> tuple[type[ResultsDB], tuple[str]]:
        """Pickle as the URL (engines cannot travel to Ray workers; the copy reconnects)."""
        return (ResultsDB, (self.optuna_storage_url,))

    def __repr__(self) -> str:
        return f"ResultsDB({self.url!r})"

    @contextlib.contextmanager
    def _write(self) -> Iterator[sa.Connection]:
        """One write transaction: committed on success, rolled back on any exception."""
        with self._engine.connect() as conn:
            conn.execution_options(**{_WRITE: True})
            with conn.begin():
                yield conn

    @contextlib.contextmanager
    def _read(self) -> Iterator[sa.Connection]:
        """One read transaction that sees a single snapshot (REPEATABLE READ on PostgreSQL)."""
        with self._engine.connect() as conn:
            if conn.dialect.name == "postgresql":
                conn.execution_options(isolation_level="REPEATABLE READ")
            yield conn

    def migrate(self) -> int:
        """Create missing tables or upgrade an older schema; return the schema version.

        AblateError when the database was written by a newer ablate.
        """
        with self._read() as conn:
            if _stored_version(conn) == SCHEMA_VERSION:
                return SCHEMA_VERSION
        with self._write() as conn:
            if conn.dialect.name == "postgresql":
                conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_PG_LOCK_KEY)))
            version = _stored_version(conn)
            if version is None:
                metadata.create_all(conn)
                conn.execute(schema_table.insert().values(version=SCHEMA_VERSION))
            elif version > SCHEMA_VERSION:
                raise AblateError(
                    f"results database {self.url} has schema version {version} (this ablate knows "
                    f"{SCHEMA_VERSION}): it was written by a newer ablate; upgrade ablate"
                )
            elif version < SCHEMA_VERSION:
                _apply_migrations(conn, version)
        return SCHEMA_VERSION

    # -------------------------------------------------------- sweeps

    def start_sweep(self, name: str, space: str, settings: dict, code_version: str,
                    resume: bool = False) -> int:
        """Create sweep `name` (or, with resume, reopen it as running); return its id."""
        try:
            with self._write() as conn:
                existing = conn.execute(
                    sa.select(sweeps.c.id, sweeps.c.space).where(sweeps.c.name == name)
                ).first()
                if existing is None:
                    return self._new_sweep(conn, name, space, settings, code_version, resume)
                return self._reopen_sweep(conn, name, space, existing, resume)
        except sa.exc.IntegrityError as exc:  # another process created it meanwhile
            raise AblateError(self._exists_message(name)) from exc

    def _new_sweep(self, conn: sa.Connection, name: str, space: str, settings: dict,
                   code_version: str, resume: bool) -> int:
        if resume:
            raise AblateError(f"no sweep named {name!r} in {self.url}; drop --resume to start it, "
                              "or check --name and the database URL")
        values = {"name": name, "space": space, "created": _utc(datetime.now(UTC)),
                  "status": "running", "code_version": code_version,
                  "settings_json": _json(settings)}
        return conn.execute(sweeps.insert().values(values)).inserted_primary_key[0]

    def _reopen_sweep(self, conn: sa.Connection, name: str, space: str, existing: sa.Row,
                      resume: bool) -> int:
        if not resume:
            raise AblateError(self._exists_message(name))
        if existing.space and space and existing.space != space:
            raise AblateError(f"sweep {name!r} searched space {existing.space!r}, not {space!r}; "
                              "resume it with its own space or choose another --name")
        conn.execute(sweeps.update().where(sweeps.c.id == existing.id).values(status="running"))
        return existing.id

    def _exists_message(self, name: str) -> str:
        return (f"sweep {name!r} already exists in {self.url}; pass --resume to continue it "
                "or choose another --name")

    def set_sweep_status(self, sweep_id: int, status: str) -> None:
        """Mark a sweep running / finished / interrupted / failed."""
        _check_status(status, SWEEP_STATUSES, "sweep")
        with self._write() as conn:
            done = conn.execute(sweeps.update().where(sweeps.c.id == sweep_id)
                                .values(status=status))
            if done.rowcount == 0:
                raise ValueError(f"no sweep with id {sweep_id}")

    def sweep_id(self, name: str) -> int | None:
        """The id of sweep `name`, or None."""
        with self._read() as conn:
            return conn.scalar(sa.select(sweeps.c.id).where(sweeps.c.name == name))

    def list_sweeps(self) -> pd.DataFrame:
        """One row per sweep, oldest first, with n_trials and n_<status> trial counts."""
        counts = [sa.func.coalesce(sa.func.sum(sa.case((trials.c.status == s, 1), else_=0)), 0)
                  .label(f"n_{s}") for s in TRIAL_STATUSES]
        stmt = (sa.select(*sweeps.c, sa.func.count(trials.c.id).label("n_trials"), *counts)
                .select_from(sweeps.outerjoin(trials))
                .group_by(*sweeps.c)
                .order_by(sweeps.c.created, sweeps.c.id))
        with self._read() as conn:
            df = _frame(conn, stmt)
        count_columns = ["n_trials", *(f"n_{s}" for s in TRIAL_STATUSES)]
        df[count_columns] = df[count_columns].astype("int64")
        return df

    def _sweep_filter(self, conn: sa.Connection, sweep: str | None) -> sa.ColumnElement[bool]:
        """WHERE clause selecting one sweep by name (all when None); AblateError if unknown."""
        if sweep is None:
            return sa.true()
        sweep_id = conn.scalar(sa.select(sweeps.c.id).where(sweeps.c.name == sweep))
        if sweep_id is None:
            known = conn.scalars(sa.select(sweeps.c.name).order_by(sweeps.c.id)).all()
            raise AblateError(f"no sweep named {sweep!r} in {self.url}; known sweeps: "
                              f"{', '.join(known) or 'none'}")
        return trials.c.sweep_id == sweep_id

    # -------------------------------------------------------- trials

    def record_trial(
        self, sweep_id: int, tune_trial_id: str, *, recipe_hash: str, recipe: dict,
        seed: int | None, status: str, started: datetime | float | None,
        ended: datetime | float | None, error: str | None = None, wall_s: float | None = None,
        train_steps: int | None = None, params_trainable: int | None = None,
        params_inference: int | None = None, peak_mem_mb: float | None = None,
        step_time_s: float | None = None, run_dir: str | None = None,
        reused_from: int | None = None, metrics: Iterable[Mapping[str, Any]] = (),
        curves: Iterable[tuple[int, str, float]] = (),
    ) -> int:
        """Insert or replace trial (sweep_id, tune_trial_id), metrics and curves; return its id.

        One transaction, and idempotent: recording a trial again (a resumed
        sweep replaying callbacks) replaces its row, metrics and curves.
        """
        _check_status(status, TRIAL_STATUSES, "trial")
        row = {
            "recipe_hash": recipe_hash, "recipe_json": _json(recipe), "seed": _int(seed),
            "status": status, "started": _utc(started), "ended": _utc(ended), "error": error,
            "wall_s": _float(wall_s), "train_steps": _int(train_steps),
            "params_trainable": _int(params_trainable), "params_inference": _int(params_inference),
            "peak_mem_mb": _float(peak_mem_mb), "step_time_s": _float(step_time_s),
            "reused_from": _int(reused_from), "run_dir": None if run_dir is None else str(run_dir),
        }
        metric_rows, curve_rows = _metric_rows(metrics), _curve_rows(curves)
        with self._write() as conn:
            trial_id = _upsert_trial(conn, sweep_id, str(tune_trial_id), row)
            _replace_children(conn, trial_id, metric_rows, curve_rows)
        return trial_id

    def finished_trial(self, recipe_hash: str, seed: int | None) -> dict[str, Any] | None:
        """The latest finished (not reused) trial with this identity in any sweep, or None.

        The dict holds the trial's columns, `sweep` (its name), `recipe` (parsed),
        `metrics` (list of dicts with METRIC_KEYS) and `curves` ((step, name, value)
        tuples), so the driver can reuse the result instead of training again.
        """
        stmt = (sa.select(trials, sweeps.c.name.label("sweep")).join(sweeps)
                .where(trials.c.recipe_hash == recipe_hash, trials.c.seed == _int(seed),
                       trials.c.status == "finished")
                .order_by(trials.c.ended.desc().nulls_last(), trials.c.id.desc())
                .limit(1))
        with self._read() as conn:
            row = conn.execute(stmt).mappings().first()
            if row is None:
                return None
            found = dict(row)
            found["recipe"] = json.loads(row["recipe_json"]) if row["recipe_json"] else None
            found["metrics"] = _trial_metrics(conn, row["id"])
            found["curves"] = _trial_curves(conn, row["id"])
        return found

    def trials(self, sweep: str | None = None) -> pd.DataFrame:
        """All trials (of one sweep when named), with their sweep's name in column `sweep`."""
        with self._read() as conn:
            stmt = (sa.select(trials, sweeps.c.name.label("sweep")).join(sweeps)
                    .where(self._sweep_filter(conn, sweep)).order_by(trials.c.id))
            return _frame(conn, stmt)

    def metrics(self, sweep: str | None = None) -> pd.DataFrame:
        """All metrics, each with its trial's sweep, tune_trial_id, recipe_hash, seed and status."""
        with self._read() as conn:
            stmt = (sa.select(metrics_table, *_trial_identity())
                    .select_from(metrics_table.join(trials).join(sweeps))
                    .where(self._sweep_filter(conn, sweep))
                    .order_by(metrics_table.c.trial_id, metrics_table.c.dataset,
                              metrics_table.c.split, metrics_table.c.level,
                              metrics_table.c.metric))
            return _frame(conn, stmt)

    def curves(self, sweep: str | None = None) -> pd.DataFrame:
        """All curve points, each with its trial's sweep, tune id, recipe_hash, seed and status."""
        with self._read() as conn:
            stmt = (sa.select(curves_table, *_trial_identity())
                    .select_from(curves_table.join(trials).join(sweeps))
                    .where(self._sweep_filter(conn, sweep))
                    .order_by(curves_table.c.trial_id, curves_table.c.name, curves_table.c.step))
            return _frame(conn, stmt)


# ---------------------------------------------------------------- trial helpers


def _trial_identity() -> list[sa.ColumnElement]:
    """Columns that tell which trial a metric or curve point belongs to."""
    return [sweeps.c.name.label("sweep"), trials.c.sweep_id, trials.c.tune_trial_id,
            trials.c.recipe_hash, trials.c.seed, trials.c.status]


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


def require_existing_db(url: str) -> None:
    """Readers (report, dashboard) never create a database: a mistyped SQLite path is an
    error, not an empty DB."""
    text = url if "://" in url else f"sqlite:///{url}"
    try:
        parsed = sa.make_url(text)
    except (sa.exc.ArgumentError, ValueError):
        return  # ResultsDB explains bad URLs
    path = parsed.database
    if (parsed.get_backend_name() == "sqlite" and path and path != ":memory:"
            and not path.startswith("file:") and not Path(path).expanduser().is_file()):
        raise AblateError(f"no results database at {path}; run a sweep first "
                          "(`ablate sweep --space quick`) or pass --db / set $ABLATE_DB")
