"""Results database: round trips, idempotent upserts, reuse lookups, schema versions, errors.

Most tests run on SQLite and on PostgreSQL (a throwaway server from tests/pg.py,
or $ABLATE_TEST_PG_URL), because the schema and behaviour must be the same.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import schema_v1
import schema_v2
import sqlalchemy as sa
from pg import fresh_postgres_url, postgres_url  # noqa: F401  (fixtures)

from ablate import results
from ablate.core.errors import AblateError
from ablate.results import ResultsDB, migrations
from ablate.results import db as results_db
from ablate.results import engine as results_engine

ROOT = Path(__file__).resolve().parent.parent
T0 = datetime(2025, 1, 2, 3, 4, 5)


def metric(name: str = "auc", value: float = 0.9, dataset: str = "celebdf",
           level: str = "frame") -> dict:
    return {"dataset": dataset, "split": "test", "level": level, "metric": name, "value": value,
            "ci_low": value - 0.05, "ci_high": value + 0.05, "n": 200}


def record(db: ResultsDB, sweep_id: int, tune_id: str, *, recipe_hash: str = "h1", seed: int = 0,
           status: str = "finished", ended: datetime = T0, **kw) -> int:
    """record_trial with defaults for everything a test does not care about."""
    return db.record_trial(sweep_id, tune_id, recipe_hash=recipe_hash,
                           recipe={"filter": "code", "seed": seed}, seed=seed, status=status,
                           started=ended - timedelta(minutes=5), ended=ended, **kw)


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty database on each backend."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'ablate.db'}"
    return request.getfixturevalue("fresh_postgres_url")


@pytest.fixture
def db(url: str):
    with ResultsDB(url) as opened:
        yield opened


def stored_version(url: str) -> int:
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        version = conn.scalar(sa.text("SELECT version FROM ablate_schema"))
    engine.dispose()
    return version


def execute(url: str, *statements: str) -> None:
    """Run raw SQL against the database behind our back (to fake old or new schemas)."""
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        for statement in statements:
            conn.exec_driver_sql(statement)
    engine.dispose()


# ---------------------------------------------------------------- round trips


def test_round_trip(db: ResultsDB) -> None:
    sid = db.start_sweep("s1", "spaces/filters.yaml", {"trials": 4, "seeds": [0]}, "abc123")
    ended = datetime(2025, 1, 2, 4, 4, 5, tzinfo=timezone(timedelta(hours=1)))  # 03:04:05 UTC
    good = record(db, sid, "tune_0", ended=ended, wall_s=300.5, train_steps=1000,
                  params_trainable=2_600_000_000, params_inference=25_000_000, peak_mem_mb=812.0,
                  step_time_s=0.3, run_dir="results/runs/x",
                  metrics=[metric("auc", 0.91), metric("video_auc", 0.95, level="video")],
                  curves=[(0, "loss", 1.5), (10, "loss", 1.0), (10, "lr", 1e-4)])
    bad = record(db, sid, "tune_1", recipe_hash="h2", status="failed", error="CUDA OOM")
    other = db.start_sweep("s2", "spaces/teachers.yaml", {}, "abc123")
    record(db, other, "tune_0", recipe_hash="h3")

    assert db.sweep_id("s1") == sid and db.sweep_id("nope") is None
    sweeps = db.list_sweeps().set_index("name")
    assert list(sweeps.index) == ["s1", "s2"]
    counts = sweeps.loc["s1", ["n_trials", "n_finished", "n_failed", "n_pruned"]]
    assert counts.tolist() == [2, 1, 1, 0]
    assert sweeps.loc["s1", "status"] == "running" and sweeps.loc["s1", "code_version"] == "abc123"

    trials = db.trials("s1").set_index("id")
    assert list(trials.index) == [good, bad] and set(trials["sweep"]) == {"s1"}
    row = trials.loc[good]
    assert row["ended"] == T0 and row["started"] == T0 - timedelta(minutes=5)
    assert row["params_trainable"] == 2_600_000_000 and row["train_steps"] == 1000
    assert row["run_dir"] == "results/runs/x" and row["wall_s"] == pytest.approx(300.5)
    assert trials.loc[bad, "error"] == "CUDA OOM" and trials.loc[bad, "status"] == "failed"
    assert len(db.trials()) == 3

    m = db.metrics("s1")
    assert m[["metric", "level", "recipe_hash", "sweep", "status"]].values.tolist() == [
        ["auc", "frame", "h1", "s1", "finished"], ["video_auc", "video", "h1", "s1", "finished"]]
    assert m["ci_low"].tolist() == pytest.approx([0.86, 0.90]) and m["n"].tolist() == [200, 200]
    c = db.curves("s1")
    assert c[["name", "step", "value"]].values.tolist() == [
        ["loss", 0, 1.5], ["loss", 10, 1.0], ["lr", 10, 1e-4]]
    assert set(c["tune_trial_id"]) == {"tune_0"}


def test_empty_frames_have_typed_columns(db: ResultsDB) -> None:
    assert db.list_sweeps().empty and db.trials().empty
    assert {"trial_id", "value", "recipe_hash", "sweep"} <= set(db.metrics().columns)
    assert str(db.curves()["value"].dtype) == "float64"


def test_unknown_sweep_in_queries_is_an_ablate_error(db: ResultsDB) -> None:
    db.start_sweep("known", "s", {}, "v")
    for query in (db.trials, db.metrics, db.curves):
        with pytest.raises(AblateError, match="no sweep named 'nope'.*known sweeps: known"):
            query("nope")


def test_nan_and_numpy_values_are_stored(db: ResultsDB) -> None:
    np = pytest.importorskip("numpy")
    sid = db.start_sweep("s", "s", {}, "v")
    tid = record(db, sid, "t", seed=np.int64(3), train_steps=np.int64(7), wall_s=np.float32(1.5),
                 metrics=[{**metric(value=np.float64("nan")), "ci_low": pd.NA, "n": float("nan")}],
                 curves=[(np.int64(1), "loss", np.nan)])
    found = db.finished_trial("h1", 3)
    assert found["id"] == tid and found["train_steps"] == 7 and found["wall_s"] == 1.5
    assert found["metrics"][0]["value"] is None and found["curves"] == [(1, "loss", None)]
    assert found["metrics"][0]["ci_low"] is None and found["metrics"][0]["n"] is None
    assert db.metrics()["value"].isna().all()


# ---------------------------------------------------------------- idempotency and transactions


def test_recording_a_trial_twice_replaces_it(db: ResultsDB) -> None:
    sid = db.start_sweep("s", "s", {}, "v")
    first = record(db, sid, "tune_0", status="running", metrics=[metric("auc", 0.5)],
                   curves=[(0, "loss", 2.0), (1, "loss", 1.9)])
    again = record(db, sid, "tune_0", metrics=[metric("auc", 0.8), metric("eer", 0.2)],
                   curves=[(0, "loss", 2.0), (1, "loss", 1.5), (1, "loss", 1.4)])
    assert again == first
    trials = db.trials()
    assert len(trials) == 1 and trials.loc[0, "status"] == "finished"
    assert sorted(db.metrics()[["metric", "value"]].values.tolist()) == [["auc", 0.8], ["eer", 0.2]]
    assert db.curves()[["step", "value"]].values.tolist() == [[0, 2.0], [1, 1.4]]  # last wins
    assert record(db, db.start_sweep("t", "s", {}, "v"), "tune_0") != first  # per-sweep id


def test_invalid_trials_write_nothing(db: ResultsDB) -> None:
    sid = db.start_sweep("s", "s", {}, "v")
    with pytest.raises(ValueError, match="given twice"):
        record(db, sid, "t", metrics=[metric(), metric()])
    with pytest.raises(ValueError, match="level"):
        record(db, sid, "t", metrics=[metric(level="clip")])
    with pytest.raises(ValueError, match="status"):
        record(db, sid, "t", status="done")
    with pytest.raises(ValueError, match="no sweep with id"):
        record(db, sid + 99, "t")
    with pytest.raises(sa.exc.IntegrityError):  # fails mid-transaction: FK to a missing trial
        record(db, sid, "t", reused_from=12345, metrics=[metric()])
    assert db.trials().empty and db.metrics().empty


KILLED_WRITER = """
import os, sys
from ablate import results
from ablate.results import db as results_db  # record_trial reads _replace_children there
db = results.ResultsDB(sys.argv[1])
real = results_db._replace_children
def die(conn, *args):
    real(conn, *args)
    os._exit(3)  # as if killed: the rows are written but never committed
results_db._replace_children = die
db.record_trial(db.sweep_id("s"), "t", recipe_hash="h1", recipe={}, seed=0, status="failed",
                started=None, ended=None, metrics=[], curves=[(5, "loss", 9.0)])
"""


def test_killed_writer_leaves_the_database_as_it_was(db: ResultsDB, url: str) -> None:
    tid = record(db, db.start_sweep("s", "s", {}, "v"), "t", metrics=[metric()],
                 curves=[(0, "loss", 1.0)])
    proc = subprocess.run([sys.executable, "-c", KILLED_WRITER, url], cwd=ROOT, timeout=60,
                          capture_output=True, text=True)
    assert proc.returncode == 3, proc.stderr
    assert db.trials()["status"].tolist() == ["finished"]
    assert len(db.metrics()) == 1 and db.curves()["value"].tolist() == [1.0]
    assert record(db, db.sweep_id("s"), "t2") != tid  # not locked either


def test_concurrent_writers_all_land(db: ResultsDB, url: str) -> None:
    sid = db.start_sweep("s", "s", {}, "v")
    errors: list[BaseException] = []

    def write(worker: int) -> None:
        try:
            with ResultsDB(url) as own:
                for i in range(8):
                    record(own, sid, f"w{worker}-{i}", metrics=[metric()], curves=[(0, "l", 1.0)])
        except BaseException as exc:  # noqa: BLE001  (reported below)
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(w,)) for w in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(db.trials()) == 24 and len(db.metrics()) == 24


def test_sqlite_readers_do_not_block_writers(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(results_engine, "SQLITE_BUSY_TIMEOUT_S", 2.0)
    path = tmp_path / "ablate.db"
    db = ResultsDB(f"sqlite:///{path}")
    sid = db.start_sweep("s", "s", {}, "v")
    reader = sqlite3.connect(path, isolation_level=None)
    reader.execute("BEGIN")
    assert reader.execute("SELECT count(*) FROM ablate_trials").fetchone() == (0,)
    start = time.monotonic()
    record(db, sid, "t")  # would wait for the reader (and time out) without WAL
    assert time.monotonic() - start < 1.5
    assert reader.execute("SELECT count(*) FROM ablate_trials").fetchone() == (0,)  # its snapshot
    reader.execute("COMMIT")
    assert reader.execute("SELECT count(*) FROM ablate_trials").fetchone() == (1,)
    assert reader.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    reader.close()


# ---------------------------------------------------------------- reuse lookup


def test_finished_trial_looks_across_sweeps_and_skips_other_statuses(db: ResultsDB) -> None:
    a, b = db.start_sweep("a", "s", {}, "v"), db.start_sweep("b", "s", {}, "v")
    hour = timedelta(hours=1)
    old = record(db, a, "t0", ended=T0, metrics=[metric(value=0.7)], curves=[(0, "loss", 1.0)])
    record(db, b, "t0", ended=T0 + hour, status="failed", error="boom")
    record(db, b, "t1", ended=T0 + 2 * hour, status="reused", reused_from=old)
    record(db, b, "t2", ended=T0 + 3 * hour, status="pruned")
    record(db, b, "t3", ended=T0 + 4 * hour, seed=1)
    record(db, b, "t4", ended=T0 + 5 * hour, recipe_hash="other")

    found = db.finished_trial("h1", 0)
    assert found["id"] == old and found["sweep"] == "a" and found["status"] == "finished"
    assert found["recipe"] == {"filter": "code", "seed": 0}
    assert found["metrics"] == [{**metric(value=0.7), "ci_low": pytest.approx(0.65),
                                 "ci_high": pytest.approx(0.75),
                                 **dict.fromkeys(PROVENANCE_COLUMNS)}]  # not recorded: NULL
    assert found["curves"] == [(0, "loss", 1.0)]
    assert db.finished_trial("h1", 2) is None and db.finished_trial("nothing", 0) is None

    newer = record(db, b, "t5", ended=T0 + 6 * hour)
    assert db.finished_trial("h1", 0)["id"] == newer
    assert db.trials().set_index("tune_trial_id").loc["t1", "reused_from"] == old


# ---------------------------------------------------------------- sweeps


def test_start_sweep_and_resume(db: ResultsDB) -> None:
    sid = db.start_sweep("s", "space.yaml", {"trials": 2}, "v1")
    with pytest.raises(AblateError, match="sweep 's' already exists.*--resume.*another --name"):
        db.start_sweep("s", "space.yaml", {}, "v1")
    with pytest.raises(AblateError, match="no sweep named 'other'"):
        db.start_sweep("other", "space.yaml", {}, "v1", resume=True)
    with pytest.raises(AblateError, match="searched space 'space.yaml'"):
        db.start_sweep("s", "different.yaml", {}, "v1", resume=True)
    db.set_sweep_status(sid, "interrupted")
    assert db.list_sweeps().loc[0, "status"] == "interrupted"
    assert db.start_sweep("s", "space.yaml", {}, "v2", resume=True) == sid
    assert db.list_sweeps()[["status", "settings_json"]].values.tolist() == [
        ["running", '{"trials": 2}']]
    with pytest.raises(ValueError, match="status"):
        db.set_sweep_status(sid, "done")
    with pytest.raises(ValueError, match="no sweep"):
        db.set_sweep_status(sid + 1, "finished")


def test_errors_are_one_line(db: ResultsDB) -> None:
    db.start_sweep("s", "x", {}, "v")
    with pytest.raises(AblateError) as info:
        db.start_sweep("s", "x", {}, "v")
    assert "\n" not in str(info.value)


# ---------------------------------------------------------------- schema versions


def test_newer_schema_is_refused(url: str) -> None:
    ResultsDB(url).close()
    execute(url, "UPDATE ablate_schema SET version = 99")
    with pytest.raises(AblateError, match="version 99.*written by a newer ablate; upgrade"):
        ResultsDB(url)


def test_version_0_database_is_migrated(url: str, monkeypatch) -> None:
    """A fake v0 database lacking two columns gains them through the injected migration 0->1
    (this ablate pretending to be schema 1: the machinery, not the real steps)."""
    with ResultsDB(url) as db:
        record(db, db.start_sweep("old", "s", {}, "v"), "t", metrics=[metric()])
    execute(url, "ALTER TABLE ablate_trials DROP COLUMN run_dir",
            "ALTER TABLE ablate_trials DROP COLUMN step_time_s",
            "UPDATE ablate_schema SET version = 0")

    def zero_to_one(conn: sa.Connection) -> None:
        results.add_column(conn, "ablate_trials", sa.Column("run_dir", sa.Text))
        results.add_column(conn, "ablate_trials", sa.Column("step_time_s", sa.Float))

    monkeypatch.setattr(migrations, "SCHEMA_VERSION", 1)
    monkeypatch.setattr(migrations, "MIGRATIONS", {0: zero_to_one})
    with ResultsDB(url) as db:
        assert stored_version(url) == 1
        record(db, db.sweep_id("old"), "t2", run_dir="runs/2", step_time_s=0.5)
        trials = db.trials().set_index("tune_trial_id")
        assert trials.loc["t2", "run_dir"] == "runs/2" and trials.loc["t2", "step_time_s"] == 0.5
        assert trials.loc["t", "status"] == "finished" and len(db.metrics()) == 1


def test_migrations_run_in_order_in_one_transaction(url: str, monkeypatch) -> None:
    ResultsDB(url).close()
    v = results.SCHEMA_VERSION  # the database's version; the test adds two fake steps on top
    ran: list[int] = []

    def step(version: int, fail: bool = False):
        def migration(conn: sa.Connection) -> None:
            ran.append(version)
            results.add_column(conn, "ablate_sweeps", sa.Column(f"extra{version}", sa.Integer))
            if fail:
                raise RuntimeError("migration bug")
        return migration

    monkeypatch.setattr(migrations, "SCHEMA_VERSION", v + 2)
    monkeypatch.setattr(migrations, "MIGRATIONS", {v: step(v), v + 1: step(v + 1, fail=True)})
    with pytest.raises(RuntimeError, match="migration bug"):
        ResultsDB(url)
    assert ran == [v, v + 1] and stored_version(url) == v  # rolled back, DDL included
    assert f"extra{v}" not in {c["name"] for c in _columns(url, "ablate_sweeps")}

    ran.clear()
    monkeypatch.setattr(migrations, "MIGRATIONS", {v: step(v), v + 1: step(v + 1)})
    ResultsDB(url).close()
    assert ran == [v, v + 1] and stored_version(url) == v + 2
    assert {f"extra{v}", f"extra{v + 1}"} <= {c["name"] for c in _columns(url, "ablate_sweeps")}

    monkeypatch.setattr(migrations, "SCHEMA_VERSION", v + 3)
    with pytest.raises(AblateError, match=f"no migration {v + 2}->{v + 3}"):
        ResultsDB(url)


def _columns(url: str, table: str) -> list[dict]:
    engine = sa.create_engine(url)
    columns = sa.inspect(engine).get_columns(table)
    engine.dispose()
    return columns


# ---------------------------------------------------------------- URLs and errors


def _refused_port() -> int:
    """A local TCP port nothing listens on (it was free a moment ago)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("bad", [
    "postgresql://u@127.0.0.1:1/x", "postgresql://u:pw@127.0.0.1:{refused}/x",
    "notadb://x", "mysql+nope://x", "postgresql://u:pw@h:notaport/x", "://x"])
def test_bad_urls_are_quick_one_line_ablate_errors(bad: str) -> None:
    bad = bad.replace("{refused}", str(_refused_port()))  # at run time: ids stable under xdist
    start = time.monotonic()
    with pytest.raises(AblateError, match="cannot open results database") as info:
        ResultsDB(bad)
    assert time.monotonic() - start < 6 and "\n" not in str(info.value)
    assert "check the URL" in str(info.value) and ":pw@" not in str(info.value)


def test_sqlite_in_a_missing_folder_is_refused_and_nothing_is_made(tmp_path: Path,
                                                                   monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    for given, folder in [(f"sqlite:///{tmp_path / 'nope' / 'deeper' / 'x.db'}", "nope/deeper"),
                          ("elsewhere/x.db", "elsewhere"),  # a bare path is a SQLite file
                          ("results/sub/ablate.db", "results/sub")]:  # not the default file
        with pytest.raises(AblateError) as info:
            ResultsDB(given)
        assert str(info.value) == (f"folder {tmp_path / folder} does not exist; create it or "
                                   "pass another --db")
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing made, not even results/
    (tmp_path / "elsewhere").mkdir()
    with ResultsDB("elsewhere/x.db") as db:
        assert db.url == f"sqlite:///{tmp_path / 'elsewhere' / 'x.db'}"
    assert (tmp_path / "elsewhere" / "x.db").is_file()


def test_default_url_and_paths(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ABLATE_DB", raising=False)
    assert results.default_url() == "sqlite:///results/ablate.db"
    with ResultsDB() as db:  # the default location is the one folder made for you
        assert (tmp_path / "results" / "ablate.db").is_file()
        assert db.optuna_storage_url == f"sqlite:///{tmp_path / 'results' / 'ablate.db'}"
        assert pickle.loads(pickle.dumps(db)).url == db.url
    shutil.rmtree(tmp_path / "results")
    with ResultsDB("results/ablate.db"):  # the same file named explicitly
        assert (tmp_path / "results" / "ablate.db").is_file()
    monkeypatch.setenv("ABLATE_DB", "elsewhere/x.db")
    with pytest.raises(AblateError, match="folder .*elsewhere does not exist"):
        ResultsDB()


def _permissions_ignored() -> bool:
    """Whether we can write a read-only file: root can (unless it lacks CAP_DAC_OVERRIDE)."""
    if os.geteuid() != 0:
        return False
    with tempfile.TemporaryDirectory() as folder:
        probe = Path(folder) / "probe"
        probe.touch(mode=0o444)
        try:
            probe.open("a").close()
        except PermissionError:
            return False
        return True


needs_non_root = pytest.mark.skipif(_permissions_ignored(), reason="root ignores file permissions")


@needs_non_root
def test_read_only_sqlite_file_is_refused_when_opened(tmp_path: Path) -> None:
    path = tmp_path / "ablate.db"
    with ResultsDB(f"sqlite:///{path}") as db:
        db.start_sweep("s", "s", {}, "v")
    before = path.read_bytes()
    path.chmod(0o444)
    try:
        with pytest.raises(AblateError) as info:
            ResultsDB(f"sqlite:///{path}")
        assert str(info.value) == (f"results database file {path} is read-only (SQLite must "
                                   f"write it); make it writable (chmod u+rw {path}) or pass "
                                   "another --db")
        assert path.read_bytes() == before
    finally:
        path.chmod(0o644)


@needs_non_root
def test_sqlite_in_a_read_only_folder_is_refused_when_opened(tmp_path: Path) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    with ResultsDB(f"sqlite:///{folder / 'old.db'}") as db:  # an existing database in it, too
        db.start_sweep("s", "s", {}, "v")
    folder.chmod(0o555)
    try:
        for name in ("new.db", "old.db"):
            with pytest.raises(AblateError) as info:
                ResultsDB(f"sqlite:///{folder / name}")
            assert str(info.value) == (f"folder {folder} is not writable, and SQLite must create "
                                       f"its -wal and -journal files next to {name}; make the "
                                       "folder writable (chmod u+wx) or pass another --db")
        assert sorted(p.name for p in folder.iterdir()) == ["old.db"]
    finally:
        folder.chmod(0o755)


def test_sqlite_path_that_is_a_folder_is_refused(tmp_path: Path) -> None:
    with pytest.raises(AblateError, match=f"^{tmp_path} is a folder, not a SQLite file"):
        ResultsDB(f"sqlite:///{tmp_path}")


# ---------------------------------------------------------------- passwords


def test_pickled_postgres_db_carries_no_password(request: pytest.FixtureRequest) -> None:
    """The test server trusts every local login, so any password connects: only where it goes
    is tested, not that libpq would find it."""
    password = f"s3cret-{uuid.uuid4().hex[:8]}"
    with_password = sa.make_url(request.getfixturevalue("fresh_postgres_url")).set(
        password=password)
    with ResultsDB(with_password.render_as_string(hide_password=False)) as db:
        assert password.encode() not in pickle.dumps(db)
        assert password not in db.safe_url and password not in db.url and "***" in db.url
        assert sa.make_url(db.safe_url).password is None
        assert sa.make_url(db.optuna_storage_url).password == password
        copy = pickle.loads(pickle.dumps(db))  # same process: the password comes back
        assert sa.make_url(copy.optuna_storage_url).password == password
        copy.start_sweep("s", "s", {}, "v")
        assert db.sweep_id("s") is not None
        copy.close()
        code = ("import pickle, sys; import sqlalchemy as sa; "
                "db = pickle.loads(sys.stdin.buffer.read()); "
                "print(sa.make_url(db.optuna_storage_url).password, db.sweep_id('s'))")
        env = {k: val for k, val in os.environ.items() if k != "PGPASSWORD"}
        other = subprocess.run([sys.executable, "-c", code], input=pickle.dumps(db), cwd=ROOT,
                               env=env, capture_output=True, timeout=60)
        assert other.returncode == 0, other.stderr.decode()
        assert other.stdout.decode().split() == ["None", str(db.sweep_id("s"))]


def test_safe_url_strips_the_password_without_connecting() -> None:
    url = sa.make_url("postgresql+psycopg://me:p%40ss@db.example:5432/ablate")
    safe = results._without_password(url)
    assert safe.render_as_string(hide_password=False) == (
        "postgresql+psycopg://me@db.example:5432/ablate")
    assert url.password == "p@ss"  # the original keeps it for Optuna
    assert results._mask_password("postgresql://me:hunter2@h:x/db") == "postgresql://me:***@h:x/db"


def test_importing_the_db_layer_does_not_import_torch() -> None:
    code = "import sys, ablate.results; assert 'torch' not in sys.modules, 'torch imported'"
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr


def test_optuna_shares_the_database(db: ResultsDB, url: str) -> None:
    optuna = pytest.importorskip("optuna")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    record(db, db.start_sweep("s", "s", {}, "v"), "t", metrics=[metric()])
    name = f"study-{uuid.uuid4().hex[:8]}"
    study = optuna.create_study(storage=db.optuna_storage_url, study_name=name)
    study.optimize(lambda trial: trial.suggest_float("x", 0, 1), n_trials=2)
    with ResultsDB(url) as again:  # reopening next to Optuna's tables is fine
        record(again, again.sweep_id("s"), "t2")
        assert again.trials()["tune_trial_id"].tolist() == ["t", "t2"]
        assert len(again.metrics()) == 1
    loaded = optuna.load_study(storage=db.optuna_storage_url, study_name=name)
    assert len(loaded.trials) == 2
    tables = set(sa.inspect(sa.create_engine(db.optuna_storage_url)).get_table_names())
    assert {"trials", "studies", "ablate_trials", "ablate_sweeps"} <= tables


def test_timestamps_are_utc(db: ResultsDB) -> None:
    sid = db.start_sweep("s", "s", {}, "v")
    now = time.time()
    db.record_trial(sid, "t", recipe_hash="h", recipe={}, seed=None, status="running",
                    started=now, ended=None)
    trial = db.trials().iloc[0]
    expected = datetime.fromtimestamp(now, UTC).replace(tzinfo=None)
    assert abs((trial["started"] - expected).total_seconds()) < 1e-3
    assert trial["ended"] is pd.NaT and trial["seed"] is pd.NA
    created = db.list_sweeps().loc[0, "created"]
    assert abs((created - datetime.now(UTC).replace(tzinfo=None)).total_seconds()) < 60



# ---------------------------------------------------------------- schema v2


def test_v1_database_is_migrated_to_v2(url: str) -> None:
    """A database written by the v1 ablate (frozen in tests/schema_v1.py) opens as v2 and
    then as the current version (v1 -> v2 -> ... -> v6 in one go)."""
    engine = sa.create_engine(url)
    schema_v1.metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(schema_v1.schema_table.insert().values(version=1))
        sid = conn.execute(schema_v1.sweeps.insert().values(
            name="old", space="quick", created=T0, status="running", code_version="v1")
        ).inserted_primary_key[0]
        old = [conn.execute(schema_v1.trials.insert().values(
            sweep_id=sid, tune_trial_id=f"t{i}", recipe_hash=h, seed=0, status=status, ended=T0,
            recipe_json='{"filter": "code"}')).inserted_primary_key[0]
            for i, (h, status) in enumerate([("h1", "finished"), ("h2", "failed")])]
        conn.execute(schema_v1.metrics.insert().values(
            trial_id=old[0], dataset="celebdf", split="test", level="frame", metric="auc",
            value=0.8))
    engine.dispose()

    with ResultsDB(url) as db:
        assert stored_version(url) == results.SCHEMA_VERSION == 6
        found = db.finished_trial("h1", 0)  # v1 rows are reused by recipe hash, as before
        assert found["id"] == old[0] and found["identity"] == "h1"
        assert found["code_version"] is None and [m["value"] for m in found["metrics"]] == [0.8]
        assert [r["identity"] for r in db.sweep_rows(sid)] == ["h1", "h2"]
        sweep = db.list_sweeps().iloc[0]
        assert sweep["name"] == "old" and sweep["n_trials"] == 2
        assert sweep["heartbeat"] is pd.NaT and bool(sweep["stale"])  # running, never beat
        new = record(db, sid, "t2", recipe_hash="h1", identity="h1+data+teacher", data_sha="d",
                     teacher_sha="t", code_version="v2")
        db.save_checkpoint(sid, "h1+data+teacher", 0, 50, "file:///ckpt/50")
        assert {k: (v["step"], v["uri"]) for k, v in db.checkpoints(sid).items()} == {
            ("h1+data+teacher", 0): (50, "file:///ckpt/50")}
        assert db.finished_trial("h1+data+teacher", 0, code_version="v2")["id"] == new
        assert db.start_sweep("old", "quick", {}, "v2", resume=True) == sid
    with ResultsDB(url):  # opening again migrates nothing
        assert stored_version(url) == results.SCHEMA_VERSION

    inspector = sa.inspect(sa.create_engine(url))
    expected_new = {"ablate_sweeps": {"host", "pid", "heartbeat", "error"},
                    "ablate_trials": {"identity", "data_sha", "teacher_sha", "code_version",
                                      "estimated_mem_mb", "train_gflops", "latency_ms"},
                    "ablate_metrics": set(PROVENANCE_COLUMNS)}
    for table, new_columns in expected_new.items():
        migrated = {c["name"] for c in inspector.get_columns(table)}
        v1 = set(schema_v1.metadata.tables[table].c.keys())
        assert migrated == v1 | new_columns
    assert {c["name"] for c in inspector.get_columns("ablate_checkpoints")} == {
        "sweep_id", "identity", "seed", "step", "uri", "created"}
    assert inspector.get_pk_constraint("ablate_checkpoints")["constrained_columns"] == [
        "sweep_id", "identity", "seed"]
    (fk,) = inspector.get_foreign_keys("ablate_checkpoints")
    assert fk["referred_table"] == "ablate_sweeps" and fk["options"]["ondelete"] == "CASCADE"
    indexes = {ix["name"]: ix["column_names"] for ix in inspector.get_indexes("ablate_trials")}
    assert indexes["ix_ablate_trials_reuse"] == ["identity", "seed"]


@pytest.mark.parametrize("schema", [schema_v1, schema_v2], ids=["v1", "v2"])
def test_migrated_and_new_databases_have_the_same_shape(tmp_path: Path, schema) -> None:
    """What MIGRATIONS build from a v1 or v2 file equals what create_all builds for a new one."""
    old, new = f"sqlite:///{tmp_path / 'old.db'}", f"sqlite:///{tmp_path / 'new.db'}"
    engine = sa.create_engine(old)
    schema.metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(schema.schema_table.insert().values(version=int(schema.__name__[-1])))
    engine.dispose()
    ResultsDB(old).close()
    ResultsDB(new).close()

    def shape(url: str) -> dict:
        inspector = sa.inspect(sa.create_engine(url))
        return {table: ({(c["name"], str(c["type"]), c["nullable"])
                         for c in inspector.get_columns(table)},
                        sorted((ix["name"], tuple(ix["column_names"]))
                               for ix in inspector.get_indexes(table)),
                        inspector.get_pk_constraint(table)["constrained_columns"])
                for table in sorted(inspector.get_table_names())}

    assert shape(old) == shape(new)


def test_identity_not_recipe_hash_is_the_reuse_key(db: ResultsDB) -> None:
    sid = db.start_sweep("s", "s", {}, "v")
    hour = timedelta(hours=1)
    a = record(db, sid, "a", identity="h1|dataA|teacherX", data_sha="dataA", teacher_sha="X",
               code_version="c1", ended=T0, metrics=[metric(value=0.6)])
    b = record(db, sid, "b", identity="h1|dataB|teacherX", data_sha="dataB", teacher_sha="X",
               code_version="c1", ended=T0 + hour)
    a2 = record(db, sid, "a2", identity="h1|dataA|teacherX", code_version="c2", ended=T0 + hour)
    record(db, sid, "a3", identity="h1|dataA|teacherX", code_version="c3", ended=T0 + 2 * hour,
           status="reused", reused_from=a)
    old_caller = record(db, sid, "old", recipe_hash="h9")  # no identity: the recipe hash is it

    assert db.finished_trial("h1|dataA|teacherX", 0)["id"] == a2  # newest finished, not reused
    found = db.finished_trial("h1|dataA|teacherX", 0, code_version="c1")
    assert found["id"] == a and found["data_sha"] == "dataA" and found["teacher_sha"] == "X"
    assert found["identity"] == "h1|dataA|teacherX" and found["code_version"] == "c1"
    assert found["recipe_hash"] == "h1" and [m["value"] for m in found["metrics"]] == [0.6]
    assert db.finished_trial("h1|dataB|teacherX", 0)["id"] == b
    assert db.finished_trial("h1|dataA|teacherX", 0, code_version="c3") is None  # only reused
    assert db.finished_trial("h1", 0) is None  # the bare recipe hash matches nothing
    assert db.finished_trial("h9", 0)["id"] == old_caller
    assert db.finished_trial("h9", 0, code_version="c1") is None  # NULL code version
    assert db.trials().set_index("tune_trial_id").loc["old", "identity"] == "h9"


def test_sweep_rows_are_that_sweeps_trials(db: ResultsDB) -> None:
    a, b = db.start_sweep("a", "s", {}, "v"), db.start_sweep("b", "s", {}, "v")
    first = record(db, a, "t0", identity="i0", status="running", ended=T0 - timedelta(hours=1))
    record(db, b, "t0", identity="other")
    second = record(db, a, "t1", identity="i1", seed=2, status="failed", code_version="c")
    rows = db.sweep_rows(a)
    assert [(r["id"], r["tune_trial_id"], r["identity"], r["seed"], r["status"]) for r in rows] == [
        (first, "t0", "i0", 0, "running"), (second, "t1", "i1", 2, "failed")]
    assert rows[0]["ended"] == T0 - timedelta(hours=1) and rows[1]["code_version"] == "c"
    assert rows[0]["recipe_hash"] == "h1" and "recipe_json" not in rows[0]
    assert db.sweep_rows(db.start_sweep("empty", "s", {}, "v")) == []
    with pytest.raises(ValueError, match="no sweep with id"):
        db.sweep_rows(b + 99)


def test_checkpoints_keep_the_latest_per_recipe_and_seed(db: ResultsDB) -> None:
    a, b = db.start_sweep("a", "s", {}, "v"), db.start_sweep("b", "s", {}, "v")
    before = datetime.now(UTC).replace(tzinfo=None) - timedelta(seconds=1)
    db.save_checkpoint(a, "i0", 0, 10, "file:///c/i0-0-10")
    db.save_checkpoint(a, "i0", 0, 20, "file:///c/i0-0-20")  # replaces step 10
    db.save_checkpoint(a, "i0", 1, 5, "file:///c/i0-1-5")
    db.save_checkpoint(a, "i1", 0, 7, "s3://bucket/i1")
    db.save_checkpoint(b, "i0", 0, 99, "file:///c/b")
    found = db.checkpoints(a)
    assert {k: (v["step"], v["uri"]) for k, v in found.items()} == {
        ("i0", 0): (20, "file:///c/i0-0-20"), ("i0", 1): (5, "file:///c/i0-1-5"),
        ("i1", 0): (7, "s3://bucket/i1")}
    assert all(before <= v["created"] <= before + timedelta(minutes=1) for v in found.values())
    assert db.delete_checkpoint(a, "i0", 0) is True
    assert db.delete_checkpoint(a, "i0", 0) is False
    assert set(db.checkpoints(a)) == {("i0", 1), ("i1", 0)}
    assert {k: v["step"] for k, v in db.checkpoints(b).items()} == {("i0", 0): 99}
    with pytest.raises(ValueError, match="no sweep with id"):
        db.save_checkpoint(b + 99, "i0", 0, 1, "file:///x")
    assert db.checkpoints(b + 99) == {}


def test_concurrent_checkpoint_saves_of_one_key_leave_one_row(db: ResultsDB, url: str) -> None:
    sid = db.start_sweep("s", "s", {}, "v")
    errors: list[BaseException] = []
    start = threading.Barrier(3)

    def save(worker: int) -> None:
        try:
            with ResultsDB(url) as own:
                start.wait()
                for step in range(6):
                    own.save_checkpoint(sid, "i", 0, step, f"file:///w{worker}/{step}")
        except BaseException as exc:  # noqa: BLE001  (reported below)
            errors.append(exc)

    threads = [threading.Thread(target=save, args=(w,)) for w in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    (only,) = db.checkpoints(sid).values()
    assert only["step"] == 5 and only["uri"].endswith("/5")


# ---------------------------------------------------------------- driver liveness


DYING_DRIVER = """
import os, sys
from ablate.results import ResultsDB
ResultsDB(sys.argv[1]).start_sweep(sys.argv[2], "quick", {}, "v")
print(os.getpid(), flush=True)
os._exit(0)  # gone without a word, as if killed
"""


def start_dead_sweep(url: str, name: str) -> int:
    """A sweep whose driver (another process on this host) started it and died; its pid."""
    proc = subprocess.run([sys.executable, "-c", DYING_DRIVER, url, name], cwd=ROOT, timeout=60,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return int(proc.stdout)


def set_driver(url: str, name: str, *, age_s: float, host: str | None = None) -> None:
    """Backdate a sweep's heartbeat by age_s seconds (and move it to `host`), behind our back."""
    beat = datetime.now(UTC).replace(tzinfo=None) - timedelta(seconds=age_s)
    stmt = sa.text("UPDATE ablate_sweeps SET heartbeat = :beat, host = coalesce(:host, host) "
                   "WHERE name = :name").bindparams(sa.bindparam("beat", type_=sa.DateTime),
                                                    sa.bindparam("host", type_=sa.String))
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(stmt, {"beat": beat, "host": host, "name": name})
    engine.dispose()


def test_sweeps_record_their_driver_and_heartbeat(db: ResultsDB, url: str) -> None:
    sid = db.start_sweep("s", "s", {}, "v")
    row = db.list_sweeps().iloc[0]
    now = datetime.now(UTC).replace(tzinfo=None)
    assert row["host"] == socket.gethostname() and row["pid"] == os.getpid()
    assert abs((row["heartbeat"] - now).total_seconds()) < 30 and not row["stale"]

    set_driver(url, "s", age_s=3600)
    assert db.list_sweeps().loc[0, "stale"]
    db.heartbeat(sid)
    beat = db.list_sweeps().loc[0, "heartbeat"]
    assert abs((beat - datetime.now(UTC).replace(tzinfo=None)).total_seconds()) < 30
    assert not db.list_sweeps().loc[0, "stale"]
    with pytest.raises(ValueError, match="no sweep with id"):
        db.heartbeat(sid + 99)

    db.set_sweep_status(sid, "failed", error="CUDA OOM in trial 3")
    db.set_sweep_status(sid, "failed")  # without an error the stored one stays
    set_driver(url, "s", age_s=3600, host="elsewhere")
    row = db.list_sweeps().iloc[0]
    assert row["error"] == "CUDA OOM in trial 3" and not row["stale"]  # only running ones go stale
    assert db.start_sweep("s", "s", {}, "v", resume=True) == sid
    row = db.list_sweeps().iloc[0]
    assert row["status"] == "running" and pd.isna(row["error"]) and not row["stale"]
    assert row["host"] == socket.gethostname() and row["pid"] == os.getpid()


def test_running_sweeps_whose_driver_is_gone_are_stale(db: ResultsDB, url: str,
                                                       monkeypatch) -> None:
    monkeypatch.setattr(results_db, "STALE_AFTER_S", 90.0)
    db.start_sweep("alive", "s", {}, "v")
    dead_pid = start_dead_sweep(url, "dead")  # fresh heartbeat, but its pid is gone here
    for name, age_s in [("remote", 60), ("remote-silent", 120)]:  # pids we cannot check
        db.start_sweep(name, "s", {}, "v")
        set_driver(url, name, age_s=age_s, host="another-host")
    db.start_sweep("old-beat", "s", {}, "v")  # this process, alive, but silent for 120 s
    set_driver(url, "old-beat", age_s=120)
    db.set_sweep_status(db.start_sweep("done", "s", {}, "v"), "finished")
    set_driver(url, "done", age_s=3600)

    sweeps = db.list_sweeps().set_index("name")
    assert sweeps["stale"].to_dict() == {"alive": False, "dead": True, "remote": False,
                                         "remote-silent": True, "old-beat": True, "done": False}
    assert sweeps.loc["dead", "pid"] == dead_pid and sweeps["stale"].dtype == bool
    assert sweeps.loc["dead", "status"] == "running"  # stale is a verdict, not a stored status
    assert {"n_trials", "n_finished", "n_running"} <= set(sweeps.columns)


def test_sweeps_command_shows_stale_sweeps_and_errors(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from ablate.cli import cli

    url = f"sqlite:///{tmp_path / 'r.db'}"
    with ResultsDB(url) as db:
        db.start_sweep("alive", "quick", {}, "v")
        dead_pid = start_dead_sweep(url, "gone")
        failed = db.start_sweep("broke", "filters", {}, "v")
        db.set_sweep_status(failed, "failed", error="Traceback (most recent call last):\n  "
                            + "x" * 300)
    with sqlite3.connect(tmp_path / "r.db") as conn:
        (beat,) = conn.execute("SELECT heartbeat FROM ablate_sweeps WHERE name = 'gone'").fetchone()

    out = CliRunner().invoke(cli, ["sweeps", "--db", url])
    assert out.exit_code == 0, out.output
    lines = out.output.splitlines()
    statuses = {line.split()[0]: line.split()[2] for line in lines[1:4]}
    assert statuses == {"alive": "running", "gone": "stale", "broke": "failed"}
    assert lines[4] == (f"sweep gone: its driver is gone (host {socket.gethostname()}, pid "
                        f"{dead_pid}, last heartbeat {beat[:19]} UTC); resume it with: ablate "
                        f"sweep --space quick --name gone --resume --db {url}")
    assert lines[5].startswith("sweep broke failed: Traceback (most recent call last): xxx")
    assert len(lines[5]) < 200 and lines[5].endswith("...") and len(lines) == 6


# ---------------------------------------------------------------- schema v3: metric provenance

# spelled out here, not read from ablate.results: the columns the v3 schema promises
PROVENANCE_COLUMNS = ("aggregation", "threshold", "threshold_from", "n_boot", "boot_seed",
                      "boot_unit", "eer_convention", "manifest_sha", "protocol")


def test_v2_database_is_migrated_to_v3_keeping_rows_with_unknown_provenance(url: str) -> None:
    """A database written by the v2 ablate (frozen in tests/schema_v2.py) opens as v3: its
    metric rows stay as they were, with NULL (unknown) provenance, never a guessed value."""
    engine = sa.create_engine(url)
    schema_v2.metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(schema_v2.schema_table.insert().values(version=2))
        sid = conn.execute(schema_v2.sweeps.insert().values(
            name="old", space="quick", created=T0, status="finished", code_version="v2")
        ).inserted_primary_key[0]
        tid = conn.execute(schema_v2.trials.insert().values(
            sweep_id=sid, tune_trial_id="t0", recipe_hash="h1", identity="i1", seed=0,
            status="finished", ended=T0, recipe_json="{}")).inserted_primary_key[0]
        conn.execute(schema_v2.metrics.insert(), [
            {"trial_id": tid, "dataset": "celebdf", "split": "test", "level": level,
             "metric": name, "value": value, "ci_low": value - 0.1, "ci_high": value + 0.1,
             "n": n} for level, name, value, n in
            [("frame", "auc", 0.8, 300), ("frame", "eer", 0.25, 300), ("video", "auc", 0.85, 30)]])
    engine.dispose()

    with ResultsDB(url) as db:
        assert stored_version(url) == results.SCHEMA_VERSION
        assert db.trials()["estimated_mem_mb"].isna().all()  # v4: never estimated, not 0
        m = db.metrics().sort_values(["level", "metric"]).reset_index(drop=True)
        assert m[["level", "metric", "value", "n"]].values.tolist() == [
            ["frame", "auc", 0.8, 300], ["frame", "eer", 0.25, 300], ["video", "auc", 0.85, 30]]
        assert m["ci_low"].tolist() == pytest.approx([0.7, 0.15, 0.75])
        for column in PROVENANCE_COLUMNS:
            assert m[column].isna().all(), column
        reused = db.finished_trial("i1", 0)  # what the driver copies onto a reused trial
        assert all(r["eer_convention"] is None and r["manifest_sha"] is None
                   for r in reused["metrics"])
        # new rows on the migrated database carry their provenance
        record(db, sid, "t1", recipe_hash="h2", identity="i2", metrics=[
            {**metric("eer", 0.3), "eer_convention": "nearest", "boot_unit": "identity",
             "n_boot": 500, "boot_seed": 7, "aggregation": "none", "threshold": None,
             "threshold_from": "none", "manifest_sha": "abc"}])
        new = db.metrics().set_index("tune_trial_id").loc["t1"]
        assert (new["eer_convention"], new["boot_unit"], new["n_boot"], new["boot_seed"],
                new["manifest_sha"]) == ("nearest", "identity", 500, 7, "abc")
    inspector = sa.inspect(sa.create_engine(url))
    migrated = {c["name"] for c in inspector.get_columns("ablate_metrics")}
    assert migrated == set(schema_v2.metrics.c.keys()) | set(PROVENANCE_COLUMNS)


def test_metric_provenance_round_trips_and_missing_keys_are_null(db: ResultsDB) -> None:
    sid = db.start_sweep("s", "quick", {}, "v")
    how = {"aggregation": "mean", "threshold": 0.42, "threshold_from": "source val EER point",
           "n_boot": np.int64(1000), "boot_seed": 3, "boot_unit": "video",
           "eer_convention": None, "manifest_sha": "0123456789abcdef",
           "protocol": {"frames_per_video": 32, "level": "video"}}
    record(db, sid, "t", metrics=[{**metric("acc_thr", 0.7, level="video"), **how},
                                  metric("auc")])  # the second row says nothing: all NULL
    m = db.metrics().set_index("metric")
    got = m.loc["acc_thr", list(PROVENANCE_COLUMNS)].to_dict()
    assert json.loads(got.pop("protocol")) == how["protocol"]  # a dict is stored as JSON
    assert got == {**{k: v for k, v in how.items() if k != "protocol"}, "n_boot": 1000,
                   "eer_convention": got["eer_convention"]}
    assert pd.isna(got["eer_convention"])
    assert m.loc["auc", list(PROVENANCE_COLUMNS)].isna().all()
    assert set(PROVENANCE_COLUMNS) <= set(results.METRIC_KEYS)  # reused trials copy them
