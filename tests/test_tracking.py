"""Runs and sweeps in the tools researchers use: TensorBoard event files in every run
folder (read back with tensorboard's own reader), MLflow through Ray Tune's logger
(read back from a local file store), and optuna-dashboard on the results DB over HTTP."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from ablate.core.errors import AblateError
from ablate.evaluate import evaluate_run
from ablate.recipe import compose
from ablate.results import ResultsDB
from ablate.tracking import EVENTS_DIR, tune_callbacks
from ablate.train import train
from tests.test_sweep import write_space

TINY = ["backbone=tiny", "image_size=32", "train.steps=6", "train.batch_size=4",
        "train.eval_every=3", "train.log_every=2", "data.tests=[synth-colour]"]


def _scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    acc = EventAccumulator(str(folder))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_run_folder_has_tensorboard_curves_and_metrics(tmp_path):
    cfg = compose([*TINY, f"run.out_dir={tmp_path}", "run.name=r"])
    result = train(cfg, progress=False)
    metrics, folder = evaluate_run(result.folder, n_boot=20, progress=False)
    scalars = _scalars(folder / EVENTS_DIR)
    for name in ("loss/total", "loss/ce", "val/auc"):
        expected = [(s, v) for s, n, v in result.curves if n == name]
        assert [s for s, _ in scalars[name]] == [s for s, _ in expected], name
        assert [v for _, v in scalars[name]] == pytest.approx([v for _, v in expected], rel=1e-6)
    auc = metrics[(metrics["dataset"] == "synth-colour") & (metrics["level"] == "frame")
                  & (metrics["metric"] == "auc")]["value"].iloc[0]
    (step, value), = scalars["test/synth-colour/frame_auc"]
    assert value == pytest.approx(auc, rel=1e-6)
    assert step == json.loads((folder / "run.json").read_text())["checkpoint_step"]


@pytest.mark.slow
def test_sweep_logs_to_a_local_mlflow_store(tmp_path, monkeypatch):
    monkeypatch.setenv("ABLATE_CACHE", str(Path("results").resolve()))
    monkeypatch.chdir(tmp_path)
    from mlflow.tracking import MlflowClient

    from ablate.sweep import run_sweep

    url = f"sqlite:///{tmp_path / 'r.db'}"
    store = tmp_path / "mlruns"
    run_sweep(write_space(tmp_path, steps=4), db_url=url, name="tracked", mlflow=str(store))
    client = MlflowClient(tracking_uri=store.as_uri())
    experiment = client.get_experiment_by_name("tracked")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 2
    trials = ResultsDB(url).trials("tracked")
    metrics = ResultsDB(url).metrics("tracked")
    val = metrics[(metrics["split"] == "val") & (metrics["metric"] == "auc")]
    stored = sorted(val["value"].round(6))
    logged = sorted(round(r.data.metrics["val_auc"], 6) for r in runs)
    assert logged == stored and len(trials) == 2
    assert all(r.info.status == "FINISHED" for r in runs)


def test_missing_tracking_packages_are_one_line_errors(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name in ("mlflow", "wandb", "optuna_dashboard")
                        else real(name, *a))
    with pytest.raises(AblateError, match=r"pip install 'ablate\[tracking\]'"):
        tune_callbacks("mlruns", None, "s")
    with pytest.raises(AblateError, match="pip install wandb"):
        tune_callbacks(None, "proj", "s")
    from ablate.dashboard import serve

    with pytest.raises(AblateError, match=r"pip install 'ablate\[dashboard\]'"):
        serve("sqlite:///nowhere.db")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.status, response.read()


def test_dashboard_serves_the_sweeps_studies(tmp_path):
    import optuna

    url = f"sqlite:///{tmp_path / 'r.db'}"
    with ResultsDB(url) as db:
        db.start_sweep("dash", "quick", {}, "v1")
        optuna.create_study(study_name="dash", storage=db.optuna_storage_url)
    port = _free_port()
    proc = subprocess.Popen([str(Path(sys.executable).parent / "ablate"), "dashboard", "--db", url,
                             "--port", str(port)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=os.environ.copy())
    try:
        deadline = time.time() + 60
        while True:
            try:
                status, page = _get(f"http://127.0.0.1:{port}/dashboard/")
                break
            except OSError:
                if time.time() > deadline or proc.poll() is not None:
                    proc.kill()
                    raise AssertionError(f"dashboard did not start: {proc.communicate()}") \
                        from None
                time.sleep(0.5)
        assert status == 200 and b"<html" in page.lower()
        status, body = _get(f"http://127.0.0.1:{port}/api/studies")
        names = [s["study_name"] for s in json.loads(body)["study_summaries"]]
        assert status == 200 and names == ["dash"]
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_dashboard_without_a_database_is_one_line(tmp_path):
    proc = subprocess.run([str(Path(sys.executable).parent / "ablate"), "dashboard", "--db",
                           f"sqlite:///{tmp_path / 'none.db'}"], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 2 and proc.stderr.startswith("error: no results database")
    assert not (tmp_path / "none.db").exists()
