"""Real sweeps through Ray Tune + Optuna on CPU, into SQLite and PostgreSQL.

Every sweep here trains tiny recipes for a few steps; what is checked is the
machinery: rows, statuses, metrics per test set, reuse, resume, faults, errors.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pg import fresh_postgres_url, postgres_url  # noqa: F401

from ablate.errors import AblateError
from ablate.results import ResultsDB
from ablate.sweep import run_sweep

pytestmark = pytest.mark.slow

TESTS = ["synth-colour", "synth-warp"]

SPACE = """
description: "test: tiny trials"
fixed:
  teacher: tiny-sd15
  backbone: tiny
  image_size: 32
  data.train: synth-blend
  train: cpu
  train.steps: {steps}
  train.batch_size: 4
  train.eval_every: 3
  train.log_every: 3
params:
{params}
objectives:
  - {{metric: val_auc, mode: max}}
budget: {{trials: {trials}, max_concurrent: {concurrent}}}
seeds: 1
early_stopping: {{enabled: {asha}, grace_period: 1, reduction_factor: 2}}
resources: {{cpu: 1, gpu: 0}}
tests: [synth-colour, synth-warp]
sampler: {{name: {sampler}, seed: 0}}
"""

MODULES = """  filter: {choice: [paper, conv_only]}
  guide: {choice: [controlnet, adapter]}"""

# a grid of four: adam/1e-3 trains, adam/1e30 diverges (NaN), `bogus` raises at start
FAULTS = """  train.optimizer: {choice: [adam, bogus]}
  train.lr: {choice: [0.001, 1.0e+30]}"""


def write_space(folder: Path, params: str = MODULES, trials: int = 2, concurrent: int = 2,
                steps: int = 6, asha: bool = False, sampler: str = "tpe") -> str:
    path = folder / "tiny.yaml"
    path.write_text(SPACE.format(params=params, trials=trials, concurrent=concurrent,
                                 steps=steps, asha=str(asha).lower(), sampler=sampler))
    return str(path)


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    """Run in a temp folder (results/ray, results/runs land there); share the benchmark cache."""
    monkeypatch.setenv("ABLATE_CACHE", str(Path("results").resolve()))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def check_filled(db: ResultsDB, name: str, n_finished: int) -> None:
    trials = db.trials(name)
    finished = trials[trials["status"] == "finished"]
    assert len(finished) == n_finished
    assert finished["recipe_hash"].str.len().gt(0).all()
    metrics = db.metrics(name)
    for trial_id in finished["id"]:
        mine = metrics[metrics["trial_id"] == trial_id]
        test = mine[(mine["split"] == "test") & (mine["metric"] == "auc")]
        assert set(test["dataset"]) == set(TESTS)
        assert set(test["level"]) == {"frame", "video"}
        assert test["value"].between(0, 1).all()
        assert (test["ci_low"] <= test["value"]).all() and (test["value"] <= test["ci_high"]).all()
        val = mine[(mine["split"] == "val") & (mine["metric"] == "auc")]
        assert list(val["dataset"]) == ["synth-blend"]
    curves = db.curves(name)
    assert set(curves[curves["trial_id"].isin(finished["id"])]["name"]) >= {"val/auc",
                                                                              "loss/total"}


def test_sweep_fills_sqlite_then_reuses_finished_recipes(in_tmp):
    url = f"sqlite:///{in_tmp / 'r.db'}"
    space = write_space(in_tmp)
    summary = run_sweep(space, db_url=url, name="first", n_boot=20)
    db = ResultsDB(url)
    check_filled(db, "first", 2)
    assert db.list_sweeps().set_index("name").loc["first", "status"] == "finished"
    assert list(summary.table["status"]) == ["finished", "finished"]

    # same space, same sampler seed: the same recipes come up and are reused, not re-run
    run_sweep(space, db_url=url, name="again", n_boot=20)
    again = db.trials("again")
    first = db.trials("first")
    assert list(again["status"]) == ["reused", "reused"]
    assert set(again["reused_from"]) == set(first["id"])
    assert set(again["recipe_hash"]) == set(first["recipe_hash"])
    assert len(list((in_tmp / "results/runs/again").glob("*"))) == 0  # nothing trained
    reused_metrics = db.metrics("again")
    assert len(reused_metrics) == len(db.metrics("first"))


def test_sweep_records_failed_and_nan_trials_and_goes_on(in_tmp):
    url = f"sqlite:///{in_tmp / 'r.db'}"
    space = write_space(in_tmp, params=FAULTS, trials=4, sampler="grid")
    run_sweep(space, db_url=url, name="faults", n_boot=20)
    trials = ResultsDB(url).trials("faults")
    by_status = trials.groupby("status").size().to_dict()
    assert by_status == {"finished": 1, "nan": 1, "failed": 2}
    assert trials[trials["status"] == "failed"]["error"].str.contains("train.optimizer").all()
    nan = trials[trials["status"] == "nan"].iloc[0]
    assert "loss became" in nan["error"]
    assert '"lr": 1e+30' in nan["recipe_json"]


def test_sweep_into_postgres(in_tmp, fresh_postgres_url):  # noqa: F811
    space = write_space(in_tmp, trials=2)
    run_sweep(space, db_url=fresh_postgres_url, name="pg", n_boot=20)
    db = ResultsDB(fresh_postgres_url)
    check_filled(db, "pg", 2)
    import optuna  # the study lives in the same database

    study = optuna.load_study(study_name="pg", storage=fresh_postgres_url)
    assert len(study.trials) == 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_sweep_joins_a_ray_cluster_by_address(in_tmp):
    ray = Path(sys.executable).parent / "ray"
    port = _free_port()
    env = {**os.environ, "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0"}
    subprocess.run([str(ray), "start", "--head", f"--port={port}", "--num-cpus=2",
                    "--include-dashboard=false", "--disable-usage-stats"],
                   check=True, capture_output=True, env=env, timeout=120)
    try:
        url = f"sqlite:///{in_tmp / 'r.db'}"
        run_sweep(write_space(in_tmp), db_url=url, name="cluster",
                  address=f"127.0.0.1:{port}", n_boot=20)
        check_filled(ResultsDB(url), "cluster", 2)
        # the cluster outlives the sweep: joining does not shut the head down
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass
    finally:
        subprocess.run([str(ray), "stop", "--force"], capture_output=True, timeout=120)


def _ablate(*args: str, cwd: Path) -> subprocess.Popen:
    exe = Path(sys.executable).parent / "ablate"
    return subprocess.Popen([str(exe), *args], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "ABLATE_CACHE": str(Path("results").resolve())})


def test_killed_sweep_resumes_without_losing_or_repeating_trials(tmp_path):
    url = f"sqlite:///{tmp_path / 'r.db'}"
    space = write_space(tmp_path, trials=4, concurrent=1, steps=30)
    proc = _ablate("sweep", "--space", space, "--db", url, "--name", "k", "--bootstrap", "20",
                   cwd=tmp_path)
    db_path = tmp_path / "r.db"
    deadline = time.time() + 300
    finished: list = []
    while time.time() < deadline and proc.poll() is None:
        time.sleep(1)
        if db_path.is_file() and ResultsDB(url).sweep_id("k") is not None:
            trials = ResultsDB(url).trials("k")
            finished = list(trials[trials["status"] == "finished"]["tune_trial_id"])
            if finished:
                break
    assert finished, "no trial finished before the deadline"
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=180)
    assert proc.returncode == 2, out
    assert "interrupted" in out and "--resume" in out
    before = ResultsDB(url).trials("k")
    assert ResultsDB(url).list_sweeps().set_index("name").loc["k", "status"] == "interrupted"
    assert len(before) < 4

    proc = _ablate("sweep", "--space", space, "--db", url, "--name", "k", "--resume",
                   "--bootstrap", "20", cwd=tmp_path)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out
    after = ResultsDB(url).trials("k")
    assert len(after) == 4 and after["tune_trial_id"].is_unique
    assert set(after["status"]) == {"finished"}
    kept = after.set_index("tune_trial_id").loc[list(before["tune_trial_id"])]
    assert list(kept["ended"]) == list(before["ended"])  # finished ones were not re-run
    assert list(kept["id"]) == list(before["id"])
    runs = {p.name.split("-seed")[0] for p in (tmp_path / "results/runs/k").iterdir()}
    assert len(runs) >= 4


@pytest.mark.parametrize("case,args,message", [
    ("bad range", ["--space", "{bad_range}"], "low"),
    ("unknown variant", ["--space", "{bad_variant}"], "no_such_filter"),
    ("unknown space", ["--space", "nope"], "nope"),
    ("unreachable db", ["--space", "{good}", "--db", "postgresql://u@127.0.0.1:1/x"], "127.0.0.1"),
    ("unreachable ray", ["--space", "{good}", "--address", "127.0.0.1:1"], "Ray"),
    ("resume unknown", ["--space", "{good}", "--name", "ghost", "--resume"], "ghost"),
])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, case, args, message):
    good = write_space(tmp_path)
    bad_range = tmp_path / "range.yaml"
    bad_range.write_text(Path(good).read_text().replace("[paper, conv_only]}", "[paper]}")
                         .replace("  guide: {choice: [controlnet, adapter]}",
                                  "  train.lr: {float: [1.0e-2, 1.0e-4]}"))
    bad_variant = tmp_path / "variant.yaml"
    bad_variant.write_text(Path(good).read_text().replace("conv_only", "no_such_filter"))
    args = [a.format(good=good, bad_range=bad_range, bad_variant=bad_variant) for a in args]
    db_file = tmp_path / "r.db"
    if "--db" not in args:
        args += ["--db", f"sqlite:///{db_file}"]
    proc = _ablate("sweep", *args, cwd=tmp_path)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 2, out
    lines = [ln for ln in out.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, out  # one error (a bad space lists each problem below it)
    assert message in out[out.index("error:"):], out
    assert "Traceback" not in out
    if db_file.is_file():
        assert ResultsDB(f"sqlite:///{db_file}").list_sweeps().empty


def test_resume_of_unknown_sweep_raises_before_ray(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(AblateError, match="no sweep named 'ghost'"):
        run_sweep(write_space(tmp_path), db_url=f"sqlite:///{tmp_path / 'r.db'}",
                  name="ghost", resume=True)
