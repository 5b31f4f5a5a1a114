"""Results database: round trips, idempotent upserts, reuse lookups, schema versions, errors.

Most tests run on SQLite and on PostgreSQL (a throwaway server from tests/pg.py,
or $ABLATE_TEST_PG_URL), because the schema and behaviour must be the same.
"""

from __future__ import annotations

import pickle
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pandas as pd
import pytest
import sqlalchemy as sa
from pg import fresh_postgres_url, postgres_url  # noqa: F401  (fixtures)

from ablate import results
from ablate.errors import AblateError
from ablate.results import ResultsDB

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
db = results.ResultsDB(sys.argv[1])
real = results._replace_children
def die(conn, *args):
    real(conn, *args)
    os._exit(3)  # as if killed: the rows are written but never committed
results._replace_children = die
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
    monkeypatch.setattr(results, "SQLITE_BUSY_TIMEOUT_S", 2.0)
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
                                 "ci_high": pytest.approx(0.75)}]
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
    """A fake v0 database lacking two columns gains them through the injected migration 0->1."""
    with ResultsDB(url) as db:
        record(db, db.start_sweep("old", "s", {}, "v"), "t", metrics=[metric()])
    execute(url, "ALTER TABLE ablate_trials DROP COLUMN run_dir",
            "ALTER TABLE ablate_trials DROP COLUMN step_time_s",
            "UPDATE ablate_schema SET version = 0")

    def zero_to_one(conn: sa.Connection) -> None:
        results.add_column(conn, "ablate_trials", sa.Column("run_dir", sa.Text))
        results.add_column(conn, "ablate_trials", sa.Column("step_time_s", sa.Float))

    monkeypatch.setattr(results, "MIGRATIONS", {0: zero_to_one})
    with ResultsDB(url) as db:
        assert stored_version(url) == 1
        record(db, db.sweep_id("old"), "t2", run_dir="runs/2", step_time_s=0.5)
        trials = db.trials().set_index("tune_trial_id")
        assert trials.loc["t2", "run_dir"] == "runs/2" and trials.loc["t2", "step_time_s"] == 0.5
        assert trials.loc["t", "status"] == "finished" and len(db.metrics()) == 1


def test_migrations_run_in_order_in_one_transaction(url: str, monkeypatch) -> None:
    ResultsDB(url).close()
    ran: list[int] = []

    def step(version: int, fail: bool = False):
        def migration(conn: sa.Connection) -> None:
            ran.append(version)
            results.add_column(conn, "ablate_sweeps", sa.Column(f"extra{version}", sa.Integer))
            if fail:
                raise RuntimeError("migration bug")
        return migration

    monkeypatch.setattr(results, "SCHEMA_VERSION", 3)
    monkeypatch.setattr(results, "MIGRATIONS", {1: step(1), 2: step(2, fail=True)})
    with pytest.raises(RuntimeError, match="migration bug"):
        ResultsDB(url)
    assert ran == [1, 2] and stored_version(url) == 1  # rolled back, DDL included
    assert "extra1" not in {c["name"] for c in _columns(url, "ablate_sweeps")}

    ran.clear()
    monkeypatch.setattr(results, "MIGRATIONS", {1: step(1), 2: step(2)})
    ResultsDB(url).close()
    assert ran == [1, 2] and stored_version(url) == 3
    assert {"extra1", "extra2"} <= {c["name"] for c in _columns(url, "ablate_sweeps")}

    monkeypatch.setattr(results, "SCHEMA_VERSION", 4)
    with pytest.raises(AblateError, match="no migration 3->4"):
        ResultsDB(url)


def _columns(url: str, table: str) -> list[dict]:
    engine = sa.create_engine(url)
    columns = sa.inspect(engine).get_columns(table)
    engine.dispose()
    return columns


# ---------------------------------------------------------------- URLs and errors


@pytest.mark.parametrize("bad", ["postgresql://u@127.0.0.1:1/x", "notadb://x",
                                 "sqlite:////proc/ablate-no-such-dir/x.db"])
def test_bad_urls_are_quick_one_line_ablate_errors(bad: str) -> None:
    start = time.monotonic()
    with pytest.raises(AblateError, match="cannot open results database") as info:
        ResultsDB(bad)
    assert time.monotonic() - start < 6 and "\n" not in str(info.value)
    assert "check the URL" in str(info.value)


def test_default_url_and_paths(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ABLATE_DB", raising=False)
    assert results.default_url() == "sqlite:///results/ablate.db"
    with ResultsDB() as db:
        assert (tmp_path / "results" / "ablate.db").is_file()
        assert db.optuna_storage_url == f"sqlite:///{tmp_path / 'results' / 'ablate.db'}"
        assert pickle.loads(pickle.dumps(db)).url == db.url
    monkeypatch.setenv("ABLATE_DB", "elsewhere/x.db")  # a bare path is a SQLite file
    with ResultsDB() as db:
        assert db.url == f"sqlite:///{tmp_path / 'elsewhere' / 'x.db'}"


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

