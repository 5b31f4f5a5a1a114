"""A sweep on a real two-node Ray cluster with no shared file system: S3 storage only.

Everything runs on this machine, but in three folders that share nothing: the head
node's, the worker node's (its own benchmark cache) and the driver's. Run folders
and Tune checkpoints must go to an S3 server (moto, a real process), and a report
built from the driver's folder must find them there.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import run_cli
from test_sweep import write_space

from ablate.results import ResultsDB

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
BUCKET = "ablate-test"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_port(port: int, proc: subprocess.Popen, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"moto_server exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(f"nothing listens on port {port} after {timeout_s}s")


def _ray(*args: str, cwd: Path, env: dict[str, str]) -> None:
    proc = subprocess.run([str(BIN / "ray"), *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def _stop_cluster(port: int) -> None:
    """End this cluster's processes only: `ray stop` would kill every Ray on the machine,
    other people's included. Its processes name its session folder (found from the GCS
    listening on `port`) or its address; Ray workers are children of those."""
    import psutil

    def cmdline(p: psutil.Process) -> str:
        try:
            return " ".join(p.cmdline())
        except psutil.Error:
            return ""

    everyone = list(psutil.process_iter())
    sessions = {s for p in everyone if f"--gcs_server_port={port}" in cmdline(p)
                for s in re.findall(r"/session_[0-9_-]+", cmdline(p))}
    marks = [*(f"{s}/" for s in sessions), f":{port} "]  # the client server names the port
    roots = [p for p in everyone if any(m in cmdline(p) + " " for m in marks)]
    procs: dict[int, psutil.Process] = {}
    for root in roots:
        try:
            procs.update({p.pid: p for p in [root, *root.children(recursive=True)]})
        except psutil.Error:
            continue
    procs.pop(os.getpid(), None)
    for p in procs.values():
        try:
            p.terminate()
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(list(procs.values()), timeout=15)
    for p in alive:
        try:
            p.kill()
        except psutil.Error:
            pass


def _s3_keys(client, prefix: str) -> list[str]:  # noqa: ANN001
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return [o["Key"] for page in pages for o in page.get("Contents", [])]


def test_sweep_on_a_two_node_cluster_keeps_every_run_in_s3(tmp_path):
    import boto3

    from ablate import storage
    from ablate.compare import comparison_table
    from ablate.data.synthetic import is_complete

    head, worker, driver = (tmp_path / n for n in ("head", "worker", "driver"))
    for folder in (head, worker, driver):
        folder.mkdir()
    s3_port, ray_port = _free_port(), _free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "ABLATE_CACHE")}
    env.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",  # noqa: S106
               AWS_DEFAULT_REGION="us-east-1", RAY_ENABLE_UV_RUN_RUNTIME_ENV="0",
               # a ~/.ray/auth_token would switch the head (only) to token auth
               RAY_AUTH_MODE="disabled")
    endpoint = f"127.0.0.1:{s3_port}"
    moto = subprocess.Popen([str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(s3_port)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    started = time.monotonic()
    try:
        _wait_for_port(s3_port, moto)
        s3 = boto3.client("s3", endpoint_url=f"http://{endpoint}", region_name="us-east-1",
                          aws_access_key_id="testing", aws_secret_access_key="testing")  # noqa: S106
        s3.create_bucket(Bucket=BUCKET)
        _ray("start", "--head", "--num-cpus=0", f"--port={ray_port}",
             f"--ray-client-server-port={_free_port()}", f"--dashboard-port={_free_port()}",
             "--include-dashboard=false", "--disable-usage-stats", cwd=head, env=env)
        _ray("start", f"--address=127.0.0.1:{ray_port}", "--num-cpus=2",
             "--disable-usage-stats", cwd=worker,
             env={**env, "ABLATE_CACHE": str(worker / "cache")})

        uri = f"s3://{BUCKET}/sweeps?endpoint_override={endpoint}&scheme=http"
        url = f"sqlite:///{driver / 'r.db'}"
        driver_env = {**env, "ABLATE_CACHE": str(driver / "cache")}
        proc = subprocess.run(
            [str(BIN / "ablate"), "sweep", "--space", write_space(driver), "--db", url,
             "--address", f"127.0.0.1:{ray_port}", "--storage", uri, "--name", "c",
             "--bootstrap", "20"],
            cwd=driver, env=driver_env, capture_output=True, text=True, timeout=420)
        out = proc.stdout + proc.stderr
        assert proc.returncode == 0, out[-5000:]

        db = ResultsDB(url)
        trials = db.trials("c")
        assert list(trials["status"]) == ["finished", "finished"], out[-3000:]
        assert db.list_sweeps().set_index("name").loc["c", "status"] == "finished"
        run_dirs = list(trials["run_dir"])
        prefix = f"s3://{BUCKET}/sweeps/c/runs/"
        assert all(str(r).startswith(prefix) for r in run_dirs), run_dirs
        assert len(set(run_dirs)) == 2
        metrics = db.metrics("c")
        aucs: dict[str, list[float]] = {}  # test set -> each trial's frame AUC from its S3 scores
        for trial_id, run_dir in zip(trials["id"], run_dirs, strict=True):
            key = run_dir.split("?")[0].removeprefix(f"s3://{BUCKET}/")
            # straight from S3 with boto3, not through ablate.storage
            info = json.loads(s3.get_object(Bucket=BUCKET, Key=f"{key}/run.json")["Body"].read())
            assert info["steps"] == 6, info
            rows = list(csv.DictReader(io.StringIO(
                s3.get_object(Bucket=BUCKET, Key=f"{key}/scores.csv")["Body"].read().decode())))
            assert {r["dataset"] for r in rows} == {"synth-colour", "synth-warp"}
            # the per-frame scores are the ones the stored frame AUC was computed from
            auc = metrics[(metrics["trial_id"] == trial_id) & (metrics["split"] == "test")
                          & (metrics["level"] == "frame") & (metrics["metric"] == "auc")]
            for dataset, value in zip(auc["dataset"], auc["value"], strict=True):
                mine = [r for r in rows if r["dataset"] == dataset]
                aucs.setdefault(dataset, []).append(_auc([float(r["label"]) for r in mine],
                                                         [float(r["score"]) for r in mine]))
                assert aucs[dataset][-1] == pytest.approx(value, abs=1e-9)
            assert storage.read_bytes(storage.join(run_dir, "scores.csv")) == s3.get_object(
                Bucket=BUCKET, Key=f"{key}/scores.csv")["Body"].read()
        # Tune's experiment state and trial checkpoints went to S3 too
        assert any(k.startswith("sweeps/c-") for k in _s3_keys(s3, "sweeps/")), \
            _s3_keys(s3, "sweeps/")

        # nothing on the driver's disk but the database; the benchmark was built on the worker
        assert not (driver / "results").exists(), list((driver / "results").rglob("*"))[:20]
        assert not (driver / "cache" / "benchmark").exists()
        built = [p.parent for p in (worker / "cache" / "benchmark").rglob("manifest*")]
        assert built and all(is_complete(p) for p in built), built

        # the report builds from the driver's folder; paired bootstraps read scores from S3
        report = subprocess.run(
            [str(BIN / "ablate"), "report", "--sweep", "c", "--db", url, "--format", "md,csv",
             "--out", str(driver / "report")],
            cwd=driver, env=driver_env, capture_output=True, text=True, timeout=300)
        assert report.returncode == 0, (report.stdout + report.stderr)[-5000:]
        assert (driver / "report" / "report.md").stat().st_size > 0
        listed = (driver / "report" / "trials.csv").read_text()
        assert all(r in listed for r in run_dirs)
        teacher = json.loads(trials["recipe_json"].iloc[0])["teacher"]
        table = comparison_table(db, "c", {"tiny-sd15": teacher}, n_boot=20)
        per_set = table[table["test_set"] != "avg"]
        assert set(per_set["ci_method"]) == {"video bootstrap (1 seed: test sample only)"}
        for row in per_set.itertuples():  # both trials are seed 0 of one teacher: either one
            assert any(row.auc == pytest.approx(a, abs=1e-9) for a in aucs[row.test_set])
        # the per-frame scores the paired tests and two-stage intervals read come from S3
        from ablate.report.paired import read_scores

        finished = trials[trials["status"] == "finished"]
        scores = read_scores(finished.assign(key=finished["id"]), "key")
        assert len(scores) == len(finished) == len(run_dirs), scores.keys()

        # a trial larger than any node: one line naming what the cluster has, not a hang
        code, _, err = run_cli("sweep", "--space", write_space(driver), "--db", url,
                               "--address", f"127.0.0.1:{ray_port}", "--name", "too-big",
                               "--cpus", "8", cwd=driver, env=driver_env)
        assert code == 2 and re.search(r"asks for 8 CPU.*node \d+: 2 CPU", err), err
        assert ResultsDB(url).sweep_id("too-big") is None
        # the cluster outlives the sweeps: joining does not shut the head down
        with socket.create_connection(("127.0.0.1", ray_port), timeout=5):
            pass
    finally:
        _stop_cluster(ray_port)
        moto.terminate()
        moto.wait(timeout=30)
        print(f"cluster test took {time.monotonic() - started:.0f}s")


def _auc(labels: list[float], scores: list[float]) -> float:
    """Mann-Whitney AUC by counting pairs (ties count half): independent of ablate.metrics."""
    pos = [s for y, s in zip(labels, scores, strict=True) if y > 0.5]
    neg = [s for y, s in zip(labels, scores, strict=True) if y <= 0.5]
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return wins / (len(pos) * len(neg))
