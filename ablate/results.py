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
  order, in one transaction. Version 1 is the first schema; version 2 adds the
  reuse key (`identity`: recipe + data + teacher content) and content hashes
  to trials, the driver's host / pid / heartbeat / error to sweeps, and
  `ablate_checkpoints` (a sweep's latest checkpoint per recipe and seed).
  Version 3 adds to every metric row what makes it comparable (METRIC_PROVENANCE:
  frame -> video aggregation, threshold and its source, bootstrap resamples, seed
  and unit, EER convention, hash of the scored test rows); rows from older
  databases keep NULL there, never a guessed value.
- A sweep whose status says "running" may have lost its driver (killed, host
  rebooted): `list_sweeps` calls it `stale` when its heartbeat is older than
  STALE_AFTER_S or its pid is gone on this host, so nobody waits for it.
- Bad input fails when the database is opened, in one line, with nothing
  written: a SQLite file in a missing folder (only the default location is
  created), a read-only file or folder, an unknown driver, a dead server.
- A password never travels in a pickle (Ray ships ResultsDB to workers): the
  pickled form carries the URL without it; a copy in this process takes it
  from a module-level registry, one in another process authenticates as libpq
  does (PGPASSWORD, ~/.pgpass).

This module must never import torch: reports and the sweep driver use it in
processes that have no business loading a deep-learning stack.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import socket
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import sqlalchemy as sa
from sqlalchemy import event

from ablate.core.errors import AblateError
from ablate.core.names import METRIC_PROVENANCE
from ablate.core.paths import DEFAULT_DB_URL

SCHEMA_VERSION = 3
DEFAULT_URL = DEFAULT_DB_URL
STALE_AFTER_S = 90.0  # a running sweep whose heartbeat is older than this has lost its driver
SQLITE_BUSY_TIMEOUT_S = 30.0  # how long a SQLite writer waits for another writer
PG_CONNECT_TIMEOUT_S = 5
_PG_LOCK_KEY = 0x61626C617465  # "ablate": serialises schema creation across processes
_WRITE = "ablate_write"  # execution option: this connection will write

SWEEP_STATUSES = ("running", "finished", "interrupted", "failed")
TRIAL_STATUSES = ("finished", "pruned", "failed", "nan", "reused", "running")
LEVELS = ("frame", "video")
METRIC_KEYS = ("dataset", "split", "level", "metric", "value", "ci_low", "ci_high", "n",
               *METRIC_PROVENANCE)
SWEEP_ROW_KEYS = ("id", "tune_trial_id", "identity", "recipe_hash", "seed", "status", "started",
                  "ended", "train_steps", "reused_from", "code_version", "run_dir")

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
    # v2: where the driver runs and when it last said so, and why the sweep failed
    sa.Column("host", sa.String),
    sa.Column("pid", sa.Integer),
    sa.Column("heartbeat", sa.DateTime),
    sa.Column("error", sa.Text),
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
    # v2: the reuse key (recipe hash + data content + teacher content) and its parts
    sa.Column("identity", sa.String),
    sa.Column("data_sha", sa.String),
    sa.Column("teacher_sha", sa.String),
    sa.Column("code_version", sa.Text),
    sa.UniqueConstraint("sweep_id", "tune_trial_id", name="uq_ablate_trials_tune_trial"),
    sa.Index("ix_ablate_trials_identity", "recipe_hash", "seed"),  # v1 name, on recipe_hash
    sa.Index("ix_ablate_trials_sweep", "sweep_id"),
    sa.Index("ix_ablate_trials_reuse", "identity", "seed"),
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
    # v3: how the row was computed (METRIC_PROVENANCE)
    sa.Column("aggregation", sa.String),
    sa.Column("threshold", sa.Float),
    sa.Column("threshold_from", sa.String),
    sa.Column("n_boot", sa.Integer),
    sa.Column("boot_seed", sa.Integer),
    sa.Column("boot_unit", sa.String),
    sa.Column("eer_convention", sa.String),
    sa.Column("manifest_sha", sa.String),
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

checkpoints_table = sa.Table(
    "ablate_checkpoints", metadata,
    sa.Column("sweep_id", sa.Integer, sa.ForeignKey("ablate_sweeps.id", ondelete="CASCADE"),
              nullable=False),
    sa.Column("identity", sa.String, nullable=False),
    sa.Column("seed", sa.Integer, nullable=False),
    sa.Column("step", sa.Integer, nullable=False),
    sa.Column("uri", sa.Text, nullable=False),
    sa.Column("created", sa.DateTime, nullable=False),
    sa.PrimaryKeyConstraint("sweep_id", "identity", "seed", name="pk_ablate_checkpoints"),
)

# ---------------------------------------------------------------- migrations

Migration = Callable[[sa.Connection], None]
# MIGRATIONS[v] turns a version-v database into version v+1. To change the
# schema: edit the tables above (new databases get them from create_all), bump
# SCHEMA_VERSION, and add the step that brings an old database to the same
# shape. A step spells out its columns instead of reusing the live ones, so it
# keeps meaning the same thing when later versions change those columns.


def add_column(conn: sa.Connection, table: str, column: sa.Column) -> None:
    """ALTER TABLE ... ADD COLUMN, rendered for this backend (a building block for migrations)."""
    ddl = sa.schema.CreateColumn(column).compile(dialect=conn.dialect)
    conn.exec_driver_sql(f"ALTER TABLE {table} ADD COLUMN {ddl}")


def _v1_to_v2(conn: sa.Connection) -> None:
    """Driver liveness on sweeps, the reuse key on trials, and the checkpoints table.

    Old trials get identity = recipe_hash, which is what v1 reused them by.
    (The checkpoints table is created from its live definition: a later
    version that changes it must create it from a v2 copy here instead.)
    """
    for column in (sa.Column("host", sa.String), sa.Column("pid", sa.Integer),
                   sa.Column("heartbeat", sa.DateTime), sa.Column("error", sa.Text)):
        add_column(conn, "ablate_sweeps", column)
    for column in (sa.Column("identity", sa.String), sa.Column("data_sha", sa.String),
                   sa.Column("teacher_sha", sa.String), sa.Column("code_version", sa.Text)):
        add_column(conn, "ablate_trials", column)
    conn.exec_driver_sql("UPDATE ablate_trials SET identity = recipe_hash")
    conn.exec_driver_sql("CREATE INDEX ix_ablate_trials_reuse ON ablate_trials (identity, seed)")
    checkpoints_table.create(conn)


def _v2_to_v3(conn: sa.Connection) -> None:
    """Provenance columns on metrics; old rows keep NULL (unknown), nothing is inferred."""
    for column in (sa.Column("aggregation", sa.String), sa.Column("threshold", sa.Float),
                   sa.Column("threshold_from", sa.String), sa.Column("n_boot", sa.Integer),
                   sa.Column("boot_seed", sa.Integer), sa.Column("boot_unit", sa.String),
                   sa.Column("eer_convention", sa.String), sa.Column("manifest_sha", sa.String)):
        add_column(conn, "ablate_metrics", column)


MIGRATIONS: dict[int, Migration] = {1: _v1_to_v2, 2: _v2_to_v3}


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
    Parsing only: nothing on disk is touched (see _check_sqlite_file).
    """
    if "://" not in text:
        text = f"sqlite:///{text}"
    try:
        url = sa.make_url(text)
    except (sa.exc.ArgumentError, ValueError) as exc:
        raise AblateError(_cannot_open(_mask_password(text), exc)) from exc
    if url.drivername == "postgresql" and not _has_module("psycopg2") and _has_module("psycopg"):
        url = url.set(drivername="postgresql+psycopg")
    if url.get_backend_name() == "sqlite" and _is_sqlite_file(url.database):
        url = url.set(database=str(Path(url.database).expanduser().resolve()))
    return url


def _mask_password(text: str) -> str:
    """An unparseable URL for a message, with anything between user: and @ hidden."""
    scheme, sep, rest = text.partition("://")
    if not sep or "@" not in rest:
        return text
    userinfo, at, host = rest.rpartition("@")
    user = userinfo.split(":", 1)[0]
    return f"{scheme}://{user}{':***' if ':' in userinfo else ''}{at}{host}"


def _is_sqlite_file(database: str | None) -> bool:
    return bool(database) and database != ":memory:" and not database.startswith("file:")


def _default_sqlite_path() -> Path:
    """Where DEFAULT_URL puts the database from the current folder."""
    return Path(sa.make_url(DEFAULT_URL).database).resolve()


def _check_sqlite_file(url: sa.URL) -> None:
    """Refuse, in one line and before anything is written, a SQLite file we could not write.

    SQLite itself would only fail later, mid-sweep, with a multi-line SQL
    error. It needs to write the file and to create `-wal` / `-shm` /
    `-journal` files next to it, so the folder must be writable too. Only the
    default location's folder is created: any other missing folder is more
    likely a typo than a wish.
    """
    if url.get_backend_name() != "sqlite" or not _is_sqlite_file(url.database):
        return
    path = Path(url.database)
    folder = path.parent
    if not folder.exists():
        if path != _default_sqlite_path():
            raise AblateError(f"folder {folder} does not exist; create it or pass another --db")
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise AblateError(_cannot_open(url, exc)) from exc
    if not folder.is_dir():
        raise AblateError(f"{folder} is not a folder; pass another --db")
    if path.is_dir():
        raise AblateError(f"{path} is a folder, not a SQLite file; pass a file path to --db")
    for part in (path, *(path.with_name(path.name + s) for s in ("-wal", "-shm", "-journal"))):
        if part.exists() and not os.access(part, os.R_OK | os.W_OK):
            raise AblateError(f"results database file {part} is read-only (SQLite must write it); "
                              f"make it writable (chmod u+rw {part}) or pass another --db")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise AblateError(f"folder {folder} is not writable, and SQLite must create its -wal and "
                          f"-journal files next to {path.name}; make the folder writable "
                          "(chmod u+wx) or pass another --db")


def _cannot_open(url: str | sa.URL, exc: BaseException) -> str:
    """The one-line message for a database we cannot open."""
    shown = url.render_as_string(hide_password=True) if isinstance(url, sa.URL) else url
    reason = getattr(exc, "orig", None) or exc
    reason = " ".join(str(reason).split())[:300] or type(exc).__name__
    return (f"cannot open results database {shown}: {reason}; "
            "check the URL / that the server is running")


def _without_password(url: sa.URL) -> sa.URL:
    """The URL with no password at all (URL.set(password=None) would keep it)."""
    return url._replace(password=None)


# Passwords of the databases opened in this process, keyed by the URL without
# the password: a ResultsDB unpickled here reconnects with it, while the
# pickle itself never holds it.
_PASSWORDS: dict[str, str] = {}


def _unpickle(safe_url: str) -> ResultsDB:
    """A pickled ResultsDB: its URL plus, in the process that opened it, its password."""
    password = _PASSWORDS.get(safe_url)
    if password is None:  # another process: libpq finds it (PGPASSWORD, ~/.pgpass)
        return ResultsDB(safe_url)
    url = _parse_url(safe_url).set(password=password)
    return ResultsDB(url.render_as_string(hide_password=False))


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
                     "ci_high": _float(m.get("ci_high")), "n": _int(m.get("n")),
                     **_provenance(m)})
    return rows


def _provenance(m: Mapping[str, Any]) -> dict[str, Any]:
    """A metric's METRIC_PROVENANCE values (missing ones NULL: unknown, not guessed)."""
    text = {k: None if _missing(m.get(k)) else str(m[k])
            for k in ("aggregation", "threshold_from", "boot_unit", "eer_convention",
                      "manifest_sha")}
    return {**text, "threshold": _float(m.get("threshold")), "n_boot": _int(m.get("n_boot")),
            "boot_seed": _int(m.get("boot_seed"))}


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
        _check_sqlite_file(self._url)
        if self._url.password is not None:
            _PASSWORDS[self.safe_url] = str(self._url.password)
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
        """The database URL for messages (password shown as ***)."""
        return self._url.render_as_string(hide_password=True)

    @property
    def safe_url(self) -> str:
        """The database URL with no password at all: safe to store, print or pickle."""
        return _without_password(self._url).render_as_string(hide_password=False)

    @property
    def optuna_storage_url(self) -> str:
        """The same database as a URL for Optuna's RDBStorage (SQLite paths absolute).

        It holds the password: hand it to Optuna, never store or print it.
        """
        return self._url.render_as_string(hide_password=False)

    def close(self) -> None:
        """Release pooled connections (the object can still be used; it reconnects)."""
        self._engine.dispose()

    def __enter__(self) -> ResultsDB:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def __reduce__(self) -> tuple[Callable[[str], ResultsDB], tuple[str]]:
        """Pickle as the password-less URL (engines cannot travel to Ray workers; the copy
        reconnects, see _unpickle)."""
        return (_unpickle, (self.safe_url,))

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
        """Create sweep `name` (or, with resume, reopen it as running); return its id.

        Either way the sweep records this process as its driver (host, pid,
        heartbeat now), and a resumed sweep forgets its last error.
        """
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
        values = {"name": name, "space": space, "created": _now(), "status": "running",
                  "code_version": code_version, "settings_json": _json(settings), **_driver()}
        return conn.execute(sweeps.insert().values(values)).inserted_primary_key[0]

    def _reopen_sweep(self, conn: sa.Connection, name: str, space: str, existing: sa.Row,
                      resume: bool) -> int:
        if not resume:
            raise AblateError(self._exists_message(name))
        if existing.space and space and existing.space != space:
            raise AblateError(f"sweep {name!r} searched space {existing.space!r}, not {space!r}; "
                              "resume it with its own space or choose another --name")
        conn.execute(sweeps.update().where(sweeps.c.id == existing.id)
                     .values(status="running", error=None, **_driver()))
        return existing.id

    def _exists_message(self, name: str) -> str:
        return (f"sweep {name!r} already exists in {self.url}; pass --resume to continue it "
                "or choose another --name")

    def set_sweep_status(self, sweep_id: int, status: str, error: str | None = None) -> None:
        """Mark a sweep running / finished / interrupted / failed, with why when `error` is given
        (without it a stored error stays)."""
        _check_status(status, SWEEP_STATUSES, "sweep")
        values = {"status": status} if error is None else {"status": status, "error": str(error)}
        self._update_sweep(sweep_id, values)

    def heartbeat(self, sweep_id: int) -> None:
        """Say the sweep's driver is alive (call it well within STALE_AFTER_S; one UPDATE)."""
        self._update_sweep(sweep_id, {"heartbeat": _now()})

    def _update_sweep(self, sweep_id: int, values: dict[str, Any]) -> None:
        with self._write() as conn:
            done = conn.execute(sweeps.update().where(sweeps.c.id == sweep_id).values(values))
            if done.rowcount == 0:
                raise ValueError(f"no sweep with id {sweep_id}")

    def sweep_id(self, name: str) -> int | None:
        """The id of sweep `name`, or None."""
        with self._read() as conn:
            return conn.scalar(sa.select(sweeps.c.id).where(sweeps.c.name == name))

    def list_sweeps(self) -> pd.DataFrame:
        """One row per sweep, oldest first, with n_trials and n_<status> trial counts.

        Column `stale` is True for a sweep that says "running" but whose driver is
        gone: no heartbeat for STALE_AFTER_S, or its pid is dead on this host.
        """
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
        now, here = _now(), socket.gethostname()
        df["stale"] = pd.Series([_stale(row, now, here) for row in df.itertuples()],
                                index=df.index, dtype=bool)
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
        curves: Iterable[tuple[int, str, float]] = (), identity: str | None = None,
        data_sha: str | None = None, teacher_sha: str | None = None,
        code_version: str | None = None,
    ) -> int:
        """Insert or replace trial (sweep_id, tune_trial_id), metrics and curves; return its id.

        One transaction, and idempotent: recording a trial again (a resumed
        sweep replaying callbacks) replaces its row, metrics and curves.
        `identity` is the reuse key (recipe hash + data + teacher content);
        without it the recipe hash is the key, as in schema v1.
        """
        _check_status(status, TRIAL_STATUSES, "trial")
        row = {
            "recipe_hash": recipe_hash, "recipe_json": _json(recipe), "seed": _int(seed),
            "status": status, "started": _utc(started), "ended": _utc(ended), "error": error,
            "wall_s": _float(wall_s), "train_steps": _int(train_steps),
            "params_trainable": _int(params_trainable), "params_inference": _int(params_inference),
            "peak_mem_mb": _float(peak_mem_mb), "step_time_s": _float(step_time_s),
            "reused_from": _int(reused_from), "run_dir": None if run_dir is None else str(run_dir),
            "identity": recipe_hash if identity is None else identity, "data_sha": data_sha,
            "teacher_sha": teacher_sha, "code_version": code_version,
        }
        metric_rows, curve_rows = _metric_rows(metrics), _curve_rows(curves)
        with self._write() as conn:
            trial_id = _upsert_trial(conn, sweep_id, str(tune_trial_id), row)
            _replace_children(conn, trial_id, metric_rows, curve_rows)
        return trial_id

    def finished_trial(self, identity: str, seed: int | None,
                       code_version: str | None = None) -> dict[str, Any] | None:
        """The latest finished (not reused) trial with this identity in any sweep, or None.

        `identity` is matched against the reuse key, never the bare recipe hash,
        so a recipe trained on other data or another teacher is not reused; with
        `code_version`, only trials recorded with that code version count.
        The dict holds the trial's columns, `sweep` (its name), `recipe` (parsed),
        `metrics` (list of dicts with METRIC_KEYS) and `curves` ((step, name, value)
        tuples), so the driver can reuse the result instead of training again.
        """
        match = [trials.c.identity == identity, trials.c.seed == _int(seed),
                 trials.c.status == "finished"]
        if code_version is not None:
            match.append(trials.c.code_version == code_version)
        stmt = (sa.select(trials, sweeps.c.name.label("sweep")).join(sweeps)
                .where(*match)
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

    def sweep_rows(self, sweep_id: int) -> list[dict[str, Any]]:
        """A sweep's trials as plain dicts in insertion order, for reconciling on resume.

        Keys: SWEEP_ROW_KEYS (no recipes, metrics or curves: one cheap query).
        """
        stmt = (sa.select(*(trials.c[k] for k in SWEEP_ROW_KEYS))
                .where(trials.c.sweep_id == sweep_id).order_by(trials.c.id))
        with self._read() as conn:
            if conn.scalar(sa.select(sweeps.c.id).where(sweeps.c.id == sweep_id)) is None:
                raise ValueError(f"no sweep with id {sweep_id}")
            return [dict(row) for row in conn.execute(stmt).mappings()]

    # -------------------------------------------------------- checkpoints

    def save_checkpoint(self, sweep_id: int, identity: str, seed: int, step: int,
                        uri: str) -> None:
        """Record `uri` as the latest checkpoint of (identity, seed) in the sweep (an upsert).

        One atomic statement, so two writers of the same key cannot both insert.
        """
        values = {"sweep_id": int(sweep_id), "identity": str(identity), "seed": int(seed),
                  "step": int(step), "uri": str(uri), "created": _now()}
        try:
            with self._write() as conn:
                insert = _dialect_insert(conn)(checkpoints_table).values(values)
                conn.execute(insert.on_conflict_do_update(
                    index_elements=["sweep_id", "identity", "seed"],
                    set_={k: insert.excluded[k] for k in ("step", "uri", "created")}))
        except sa.exc.IntegrityError as exc:  # the foreign key: no such sweep
            raise ValueError(f"no sweep with id {sweep_id}; call start_sweep first") from exc

    def checkpoints(self, sweep_id: int) -> dict[tuple[str, int], dict[str, Any]]:
        """The sweep's latest checkpoints: (identity, seed) -> {"step", "uri", "created"}."""
        c = checkpoints_table.c
        stmt = sa.select(c.identity, c.seed, c.step, c.uri, c.created).where(c.sweep_id == sweep_id)
        with self._read() as conn:
            return {(r.identity, r.seed): {"step": r.step, "uri": r.uri, "created": r.created}
                    for r in conn.execute(stmt)}

    def delete_checkpoint(self, sweep_id: int, identity: str, seed: int) -> bool:
        """Forget the checkpoint of (identity, seed) in the sweep; whether there was one."""
        c = checkpoints_table.c
        with self._write() as conn:
            done = conn.execute(checkpoints_table.delete().where(
                c.sweep_id == sweep_id, c.identity == identity, c.seed == int(seed)))
        return done.rowcount > 0

    # -------------------------------------------------------- reading

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


# ---------------------------------------------------------------- sweep helpers


def _now() -> datetime:
    """Now as a naive UTC datetime (how times are stored)."""
    return datetime.now(UTC).replace(tzinfo=None)


def _driver() -> dict[str, Any]:
    """This process as a sweep's driver."""
    return {"host": socket.gethostname(), "pid": os.getpid(), "heartbeat": _now()}


def _stale(sweep: Any, now: datetime, here: str) -> bool:
    """A running sweep whose driver is gone (a list_sweeps row; NaT/NA for missing values)."""
    if sweep.status != "running":
        return False
    if _missing(sweep.heartbeat) or (now - sweep.heartbeat).total_seconds() > STALE_AFTER_S:
        return True  # no heartbeat at all: a v1 driver or one that died before its first
    return sweep.host == here and not _missing(sweep.pid) and not _pid_alive(int(sweep.pid))


def _pid_alive(pid: int) -> bool:
    """Whether process `pid` exists on this host (another user's process counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: it exists, it just is not ours
        return True
    return True


# ---------------------------------------------------------------- trial helpers


def _dialect_insert(conn: sa.Connection) -> Callable[[sa.Table], Any]:
    """The backend's INSERT, which knows ON CONFLICT DO UPDATE (SQLite and PostgreSQL both do)."""
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    return insert


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
