"""ResultsDB, the class callers use: opening, sweeps, trials, checkpoints and the queries.

- A sweep whose status says "running" may have lost its driver (killed, host
  rebooted): `list_sweeps` calls it `stale` when its heartbeat is older than
  STALE_AFTER_S or its pid is gone on this host, so nobody waits for it.
- A password never travels in a pickle (Ray ships ResultsDB to workers): the
  pickled form carries the URL without it; a copy in this process takes it
  from a module-level registry, one in another process authenticates as libpq
  does (PGPASSWORD, ~/.pgpass).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from typing import Any

import pandas as pd
import sqlalchemy as sa

from ablate.core.errors import AblateError
from ablate.results import migrations
from ablate.results.engine import (
    _cannot_open,
    _check_sqlite_file,
    _create_engine,
    _parse_url,
    _without_password,
    default_url,
    read_transaction,
    write_transaction,
)
from ablate.results.read import _frame, _trial_curves, _trial_identity, _trial_metrics
from ablate.results.schema import (
    SWEEP_ROW_KEYS,
    SWEEP_STATUSES,
    TRIAL_STATUSES,
    checkpoints_table,
    curves_table,
    metrics_table,
    sweeps,
    trials,
)
from ablate.results.upsert import (
    _check_status,
    _curve_rows,
    _float,
    _int,
    _json,
    _metric_rows,
    _missing,
    _now,
    _replace_children,
    _upsert_checkpoint,
    _upsert_trial,
    _utc,
)

STALE_AFTER_S = 90.0  # a running sweep whose heartbeat is older than this has lost its driver

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

    def _write(self) -> contextlib.AbstractContextManager[sa.Connection]:
        """One write transaction: committed on success, rolled back on any exception."""
        return write_transaction(self._engine)

    def _read(self) -> contextlib.AbstractContextManager[sa.Connection]:
        """One read transaction that sees a single snapshot (REPEATABLE READ on PostgreSQL)."""
        return read_transaction(self._engine)

    def migrate(self) -> int:
        """Create missing tables or upgrade an older schema; return the schema version.

        AblateError when the database was written by a newer ablate.
        """
        return migrations.migrate(self._engine, self.url)

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
        code_version: str | None = None, estimated_mem_mb: float | None = None,
        train_gflops: float | None = None, latency_ms: float | None = None,
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
            "estimated_mem_mb": _float(estimated_mem_mb),
            "train_gflops": _float(train_gflops), "latency_ms": _float(latency_ms),
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
                _upsert_checkpoint(conn, values)
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
