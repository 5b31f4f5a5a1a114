"""A sweep's driver killed at the worst moments, with real processes and real signals.

Each case starts `ablate sweep` as a child process, waits for a moment read
from the results database, kills the driver (kill -9, or Ctrl-C = SIGINT),
then runs `ablate sweep --resume` and checks that no finished seed was lost or
repeated and that the Optuna study agrees with the rows trial by trial.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_sweep import optuna_agrees_with_rows, write_space

from ablate.results import ResultsDB

pytestmark = pytest.mark.slow
TRIALS = 3


def _ablate(*args: str, cwd: Path) -> subprocess.Popen:
    exe = Path(sys.executable).parent / "ablate"
    return subprocess.Popen([str(exe), *args], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True,
                            env={**os.environ, "ABLATE_CACHE": str(Path("results").resolve())})


def _rows(url: str, name: str):  # noqa: ANN202
    db = ResultsDB(url)
    if db.sweep_id(name) is None:
        return None
    return db.trials(name)


def _wait(proc: subprocess.Popen, url: str, name: str, moment: str, timeout: float = 300):  # noqa: ANN202
    """Poll the DB until `moment`; return the rows seen then."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, proc.communicate()[0]
        rows = _rows(url, name) if Path(url.removeprefix("sqlite:///")).is_file() else None
        if rows is not None:
            finished = rows[rows["status"] == "finished"]
            if moment == "mid-training" and ResultsDB(url).checkpoints(
                    ResultsDB(url).sweep_id(name)):
                return rows
            if moment == "after-a-trial" and len(finished) >= 1:
                return rows
            if moment == "last-trial" and len(finished) >= TRIALS - 1:
                return rows
        time.sleep(0.2)
    raise AssertionError(f"moment {moment} never came")


def _kill_driver(proc: subprocess.Popen, sig: int) -> str:
    os.kill(proc.pid, sig)
    out, _ = proc.communicate(timeout=180)
    # the local Ray the driver started outlives a kill -9 for a while; its workers can no
    # longer write anything (only the driver writes the DB), but they hold the CPUs
    time.sleep(2)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    return out


def _start(space: str, url: str, cwd: Path, *extra: str) -> subprocess.Popen:
    return _ablate("sweep", "--space", space, "--db", url, "--name", "k", "--bootstrap", "20",
                   *extra, cwd=cwd)


def _check_kept(url: str, kept) -> None:  # noqa: ANN001
    """Every seed finished before a kill is still there, once, and was not trained again."""
    rows = _rows(url, "k")
    finished = rows[rows["status"] == "finished"]
    for row in kept.itertuples():
        same = finished[(finished["identity"] == row.identity) & (finished["seed"] == row.seed)]
        assert list(same["id"]) == [row.id]
        assert list(same["ended"]) == [row.ended]


def test_driver_killed_at_the_worst_moments_then_resumed_loses_and_repeats_nothing(tmp_path):
    """One sweep, killed three times: kill -9 mid-training (a seed with a trial checkpoint
    and nothing finished), kill -9 the moment a trial finished, Ctrl-C during the last
    trial; each time `--resume` goes on, and at the end every trial is there once."""
    url = f"sqlite:///{tmp_path / 'r.db'}"
    space = write_space(tmp_path, trials=TRIALS, concurrent=1, steps=9, sampler="grid")
    proc = _start(space, url, tmp_path)
    kept = _wait(proc, url, "k", "mid-training")
    _kill_driver(proc, signal.SIGKILL)
    status = ResultsDB(url).list_sweeps().set_index("name").loc["k"]
    # kill -9: the driver could say nothing; `ablate sweeps` calls the sweep stale
    assert status["status"] == "running" and bool(status["stale"])
    assert (kept["status"] == "finished").sum() == 0

    proc = _start(space, url, tmp_path, "--resume")
    _wait(proc, url, "k", "after-a-trial")
    out = _kill_driver(proc, signal.SIGKILL)
    assert "resumed at step" in out, out  # the cut-off seed went on from its checkpoint
    kept = _rows(url, "k")
    kept = kept[kept["status"] == "finished"]

    proc = _start(space, url, tmp_path, "--resume")
    _wait(proc, url, "k", "last-trial")
    out = _kill_driver(proc, signal.SIGINT)
    # Ctrl-C: marked interrupted, never finished with trials missing
    assert proc.returncode == 2 and "--resume" in out, out
    assert ResultsDB(url).list_sweeps().set_index("name").loc["k", "status"] == "interrupted"
    _check_kept(url, kept)
    kept = _rows(url, "k")
    kept = kept[kept["status"] == "finished"]
    assert len(kept) < TRIALS

    proc = _start(space, url, tmp_path, "--resume")
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out
    after = _rows(url, "k")
    assert ResultsDB(url).list_sweeps().set_index("name").loc["k", "status"] == "finished"
    # one row per trial (TPE may sample a recipe twice: the second reuses the first)
    assert len(after) == TRIALS and set(after["status"]) <= {"finished", "reused"}, out
    _check_kept(url, kept)
    optuna_agrees_with_rows(url, "k")


def _trial_workers(driver_pid: int) -> list:
    """Ray worker processes running a Tune trial of one driver (its local Ray's children)."""
    import psutil

    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmd = " ".join(proc.info["cmdline"] or [])
        with contextlib.suppress(psutil.Error):
            if cmd.startswith("ray::ImplicitFunc") and \
                    driver_pid in {p.pid for p in proc.parents()}:
                found.append(proc)
    return found


def test_a_trial_whose_worker_is_killed_is_retried_from_its_checkpoint(tmp_path):
    """kill -9 of the worker process (a lost node) while seed 1 trains, seed 0 done: Tune
    retries the trial, which skips seed 0 (its row and run folder untouched) and continues
    seed 1 from its last trial checkpoint."""
    url = f"sqlite:///{tmp_path / 'r.db'}"
    space = Path(write_space(tmp_path, params="  guide: {choice: [controlnet]}", trials=1,
                             concurrent=1, steps=9, sampler="grid"))
    space.write_text(space.read_text().replace("seeds: 1", "seeds: 2"))
    proc = _start(str(space), url, tmp_path)
    deadline = time.time() + 300
    while time.time() < deadline:
        assert proc.poll() is None, proc.communicate()[0]
        if Path(tmp_path / "r.db").is_file():
            db = ResultsDB(url)
            sweep = db.sweep_id("k")
            if sweep and any(seed == 1 for _, seed in db.checkpoints(sweep)):
                break
        time.sleep(0.2)
    else:
        raise AssertionError("seed 1 never saved a checkpoint")
    before = _rows(url, "k")
    assert list(before["status"]) == ["finished"] and list(before["seed"]) == [0]
    run_json = Path(before.iloc[0]["run_dir"]) / "run.json"
    stamp = run_json.stat().st_mtime_ns
    workers = _trial_workers(proc.pid)
    assert len(workers) == 1, workers
    workers[0].kill()  # SIGKILL
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out
    assert "seed 1 resumed at step" in out, out
    after = _rows(url, "k")
    assert sorted(after["seed"]) == [0, 1] and set(after["status"]) == {"finished"}
    kept = after[after["seed"] == 0].iloc[0]
    assert kept["id"] == before.iloc[0]["id"] and kept["ended"] == before.iloc[0]["ended"]
    assert run_json.stat().st_mtime_ns == stamp  # seed 0 was not trained again
