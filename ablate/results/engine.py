"""Opening the results database: URLs, engines, transactions and locks, per backend.

- Every write is one transaction, so a process killed mid-write leaves the
  database as it was before that write. SQLite runs in WAL mode, so reports
  can read while a sweep writes; writers take the lock up front
  (`BEGIN IMMEDIATE`) and queue behind a busy timeout instead of deadlocking.
  PostgreSQL reads see one snapshot (REPEATABLE READ), and schema creation or
  upgrade is serialised across processes by an advisory lock.
- Bad input fails when the database is opened, in one line, with nothing
  written: a SQLite file in a missing folder (only the default location is
  created), a read-only file or folder, an unknown driver, a dead server.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event

from ablate.core.errors import AblateError
from ablate.core.paths import DEFAULT_DB_URL

DEFAULT_URL = DEFAULT_DB_URL
SQLITE_BUSY_TIMEOUT_S = 30.0  # how long a SQLite writer waits for another writer
PG_CONNECT_TIMEOUT_S = 5
_PG_LOCK_KEY = 0x61626C617465  # "ablate": serialises schema creation across processes
_WRITE = "ablate_write"  # execution option: this connection will write

# ---------------------------------------------------------------- URLs


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


# ---------------------------------------------------------------- engines


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


# ---------------------------------------------------------------- transactions and locks


@contextlib.contextmanager
def write_transaction(engine: sa.Engine) -> Iterator[sa.Connection]:
    """One write transaction: committed on success, rolled back on any exception."""
    with engine.connect() as conn:
        conn.execution_options(**{_WRITE: True})
        with conn.begin():
            yield conn


@contextlib.contextmanager
def read_transaction(engine: sa.Engine) -> Iterator[sa.Connection]:
    """One read transaction that sees a single snapshot (REPEATABLE READ on PostgreSQL)."""
    with engine.connect() as conn:
        if conn.dialect.name == "postgresql":
            conn.execution_options(isolation_level="REPEATABLE READ")
        yield conn


def lock_schema(conn: sa.Connection) -> None:
    """Hold, until the write transaction ends, the lock that serialises schema changes.

    PostgreSQL takes an advisory lock; on SQLite the write transaction's
    `BEGIN IMMEDIATE` already holds the database's one write lock.
    """
    if conn.dialect.name == "postgresql":
        conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_PG_LOCK_KEY)))
