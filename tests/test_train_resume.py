"""Single runs that survive and count: `ablate train` keeps a resumable state in its run
folder, a run killed with SIGKILL continues with `--resume` and ends exactly as the
uninterrupted run (CPU: the same weights, curves and selection), the refusals are one line,
and `ablate record` (or `ablate train --db`) puts a run in the results DB as a one-cell sweep
that `ablate report` reads."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import run_cli
from safetensors.torch import load_file

from ablate.checkpoint import INFERENCE, RECIPE, RUN_INFO, TRAINABLE
from ablate.core.errors import AblateError
from ablate.recipe import compose, recipe_hash, to_yaml
from ablate.results import ResultsDB
from ablate.run_state import (
    NEW,
    OLD,
    STATE,
    keep_state,
    latest_state,
    resume_recipe,
    state_step,
)
from ablate.train_state import META

ABLATE = Path(sys.executable).with_name("ablate")
CACHE = str(Path("results").resolve())  # the suite's one benchmark build (tests/conftest.py)
STEPS = 10  # 4 batches an epoch: the run crosses two epoch ends; a state every 2 steps


def _recipe(manifest: Path) -> list[str]:
    return ["backbone=tiny", "image_size=32", "train=cpu", "train.device=cpu",
            f"train.steps={STEPS}", "train.batch_size=4", "train.eval_every=2",
            "train.log_every=1", f"data.train={manifest}", f"data.tests=[{manifest}]",
            # the in-memory latent cache dies with the process: after a resume the images
            # encoded before the kill are encoded again in other batches, which moves later
            # losses by float rounding (1e-7). Off, every step encodes its own batch: exact
            "train.latent_cache=false"]


def _ablate(*args: str, cwd: Path, **kwargs) -> subprocess.Popen:
    """The real `ablate` entry point in a child process (same threads and env for every run,
    so their CPU arithmetic is the same)."""
    env = {**os.environ, "ABLATE_CACHE": CACHE, "OMP_NUM_THREADS": "2"}
    return subprocess.Popen([str(ABLATE), *args], cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kwargs)


def _finish(proc: subprocess.Popen, timeout: float = 900) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> Path:
    """16 train frames (8 videos a label), 16 val and 16 test frames of synth-blend: one
    frame a video, so validation and evaluation take a moment, not a minute."""
    from ablate.data.manifest import load_manifest, save_manifest
    from ablate.data.synthetic import ensure_benchmark

    table = load_manifest(ensure_benchmark())
    blend = table[table["dataset"] == "synth-blend"].groupby("video_id").head(1)
    rows = blend.groupby(["split", "label"]).head(8)
    return save_manifest(rows, tmp_path_factory.mktemp("data") / "small.csv")


@pytest.fixture(scope="module")
def uninterrupted(manifest, tmp_path_factory) -> tuple[Path, str]:
    """The run trained without interruption by `ablate train --db` (recorded at its end):
    (its folder, the DB URL)."""
    root = tmp_path_factory.mktemp("full")
    url = f"sqlite:///{root / 'train.db'}"
    code, out, err = _finish(_ablate("train", "--quiet", *_recipe(manifest), "run.out_dir=runs",
                                     "run.name=full", "--db", url, "--sweep", "single",
                                     cwd=root))
    assert code == 0, err[-3000:]
    assert "recorded in" in out and "ablate report --sweep single" in out, out
    return root / "runs" / "full", url


def _tensors_equal(a: Path, b: Path) -> None:
    wa, wb = load_file(a), load_file(b)
    assert wa.keys() == wb.keys()
    moved = [k for k in wa if not torch.equal(wa[k], wb[k])]
    assert not moved, f"{len(moved)} of {len(wa)} tensors differ in {a.name}: {moved[:3]}"


def _no_state(folder: Path) -> None:
    assert not any((folder / name).exists() for name in (STATE, OLD, NEW)), \
        sorted(p.name for p in folder.iterdir())


def test_a_run_killed_with_sigkill_resumes_to_the_uninterrupted_result(manifest, uninterrupted,
                                                                       tmp_path):
    full, _ = uninterrupted
    proc = _ablate("train", "--quiet", *_recipe(manifest), "run.out_dir=runs", "run.name=cut",
                   cwd=tmp_path)
    folder = tmp_path / "runs" / "cut"
    deadline = time.monotonic() + 600
    while latest_state(folder) is None and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before its first state was seen: " + \
        proc.communicate()[1][-2000:]
    os.kill(proc.pid, signal.SIGKILL)  # a real kill -9: no handler, no cleanup
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    assert (folder / RECIPE).is_file() and not (folder / RUN_INFO).exists()
    saved = state_step(latest_state(folder))
    assert 2 <= saved < STEPS

    code, out, err = _finish(_ablate("train", "--resume", str(folder), "--quiet", cwd=tmp_path))
    assert code == 0, err[-3000:]
    assert f"after step {saved}" in out and f"trained {STEPS} steps" in out, out
    for name in (TRAINABLE, INFERENCE):
        _tensors_equal(full / name, folder / name)
    a, b = (json.loads((f / RUN_INFO).read_text()) for f in (full, folder))
    assert b["curves"] == a["curves"]  # every loss term of every step and every val AUC
    for key in ("selection", "checkpoint_step", "steps", "recipe_hash", "seed"):
        assert b[key] == a[key], key
    _no_state(folder)
    _no_state(full)


def test_resume_of_a_finished_run_is_one_line(uninterrupted, tmp_path):
    full, _ = uninterrupted
    code, _, err = run_cli("train", "--resume", str(full), cwd=tmp_path)
    assert code == 2 and "has finished" in err and "ablate record" in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def _unfinished(folder: Path, cfg, step: int = 2) -> Path:
    """A run folder as a kill leaves it: its recipe and a state saved at `step` (only the
    state's metadata: what the refusals read before any training)."""
    (folder / STATE).mkdir(parents=True)
    (folder / RECIPE).write_text(to_yaml(cfg))
    (folder / STATE / META).write_text(json.dumps({"step": step}))
    return folder


@pytest.fixture
def tiny_cfg(tmp_path):
    cfg = compose(["backbone=tiny", "image_size=32", "train.steps=4",
                   f"run.out_dir={tmp_path / 'runs'}", "run.name=r"])
    return cfg


def test_resume_with_overrides_that_change_the_recipe_names_both_hashes(tiny_cfg, tmp_path):
    folder = _unfinished(tmp_path / "runs" / "r", tiny_cfg)
    was = recipe_hash(tiny_cfg)
    for change in (["train.lr=0.5"], ["filter=code"], ["seed=3"]):
        code, _, err = run_cli("train", "--resume", str(folder), *change, cwd=tmp_path)
        assert code == 2 and len(err.strip().splitlines()) == 1, err
        assert f"trained with recipe {was}" in err and "give recipe" in err, err
        assert was not in err.split("give recipe")[1], err  # the other hash, named
    # settings that leave the result alone (and restating the run's own) are taken
    cfg = resume_recipe(folder, ["train.device=cpu", "train.loader_workers=0", "filter=paper",
                                 "train.steps=4"])
    assert recipe_hash(cfg) == was and str(cfg.train.device) == "cpu"
    assert cfg.run.name == "r" and Path(cfg.run.out_dir) == folder.parent
    with pytest.raises(AblateError, match="stays in its folder"):
        resume_recipe(folder, ["run.name=other"])
    with pytest.raises(AblateError, match="preset"):
        resume_recipe(folder, ["recipe=baseline"])


@pytest.mark.parametrize("kind", ["no state", "not a run"])
def test_resume_without_a_state_or_a_run_is_one_line(tiny_cfg, tmp_path, kind):
    folder = tmp_path / "runs" / "r"
    folder.mkdir(parents=True)
    if kind == "no state":
        (folder / RECIPE).write_text(to_yaml(tiny_cfg))
    code, _, err = run_cli("train", "--resume", str(folder), cwd=tmp_path)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert ("no saved state" if kind == "no state" else "is not a run folder") in err, err


def test_a_new_run_never_writes_into_an_unfinished_one(tiny_cfg, tmp_path):
    _unfinished(tmp_path / "runs" / "r", tiny_cfg, step=6)
    code, _, err = run_cli("train", "backbone=tiny", "image_size=32", "train.steps=4",
                           f"run.out_dir={tmp_path / 'runs'}", "run.name=r", cwd=tmp_path)
    assert code == 2 and "unfinished run (saved at step 6)" in err and "--resume" in err, err


def _fake_state(root: Path, step: int) -> Path:
    """A state folder as train() hands it over (only its metadata matters here)."""
    folder = root / f"given-{step}" / "state"
    folder.mkdir(parents=True)
    (folder / META).write_text(json.dumps({"step": step}))
    (folder / "trainable.safetensors").write_bytes(b"x" * 64)
    return folder


def test_a_state_is_replaced_so_that_a_kill_at_any_point_leaves_a_complete_one(
        tmp_path, monkeypatch):
    run = tmp_path / "run"
    run.mkdir()
    keep_state(run, _fake_state(tmp_path, 2))
    assert state_step(latest_state(run)) == 2 and not (run / NEW).exists()

    # killed while the new state is written: the half-written one is never read
    (run / NEW).mkdir()
    (run / NEW / "trainable.safetensors").write_bytes(b"half")
    assert state_step(latest_state(run)) == 2

    # killed between the two renames: the previous state, under its old name, is read
    real_replace, calls = os.replace, []

    def dies_second(src, dst):
        calls.append(src)
        if len(calls) == 2:
            raise KeyboardInterrupt  # stands for the kill
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", dies_second)
    with pytest.raises(KeyboardInterrupt):
        keep_state(run, _fake_state(tmp_path, 4))
    monkeypatch.setattr(os, "replace", real_replace)
    assert not (run / STATE).exists() and latest_state(run) == run / OLD
    assert state_step(latest_state(run)) == 2

    keep_state(run, _fake_state(tmp_path, 6))  # the next validation tidies up
    assert latest_state(run) == run / STATE and state_step(run / STATE) == 6
    assert sorted(p.name for p in run.iterdir()) == [STATE]


def test_record_puts_a_run_in_the_db_once_as_a_one_cell_sweep(uninterrupted, tmp_path):
    full, train_url = uninterrupted
    url = f"sqlite:///{tmp_path / 'r.db'}"
    info = json.loads((full / RUN_INFO).read_text())
    code, out, err = run_cli("record", str(full), "--db", url, "--sweep", "one",
                             "--bootstrap", "50", "--quiet", cwd=tmp_path)
    assert code == 0, err
    assert "recorded in" in out and "ablate report --sweep one" in out, out
    with ResultsDB(url) as db:
        trials, metrics, curves = db.trials("one"), db.metrics("one"), db.curves("one")
        sweeps = db.list_sweeps()
    assert len(trials) == 1
    row = trials.iloc[0]
    assert row["status"] == "finished" and int(row["seed"]) == 0
    assert row["recipe_hash"] == info["recipe_hash"]  # tests as trained: the run's own hash
    assert row["identity"] and row["data_sha"] and str(row["teacher_sha"]).startswith("builtin:")
    assert row["code_version"] == info["code_version"] and row["run_dir"] == str(full.resolve())
    assert sweeps.loc[sweeps["name"] == "one", "status"].item() == "finished"
    tests = metrics[metrics["split"] == "test"]
    assert {"auc", "eer"} <= set(tests["metric"]) and tests["ci_low"].notna().any()
    assert tests["boot_unit"].notna().all() and tests["manifest_sha"].notna().all()
    val = metrics[metrics["split"] == "val"]
    assert val["value"].tolist() == [info["selection"]["val_auc"]]
    assert len(curves) == len(info["curves"])
    assert (full / "scores.csv").is_file()  # per-frame scores, for paired comparisons

    # the report reads it as a sweep of one recipe
    code, out, err = run_cli("report", "--sweep", "one", "--db", url, "--format", "md",
                             "--out", str(tmp_path / "report"), cwd=tmp_path)
    assert code == 0, err
    assert (tmp_path / "report" / "report.md").is_file()

    # again: the same row, replaced, not a second one
    code, out, err = run_cli("record", str(full), "--db", url, "--sweep", "one",
                             "--bootstrap", "50", "--quiet", cwd=tmp_path)
    assert code == 0 and "replaced" in out, err
    with ResultsDB(url) as db:
        assert len(db.trials("one")) == 1 and len(db.curves("one")) == len(info["curves"])

    # the same recipe and seed from another folder would count one run twice
    copy = shutil.copytree(full, tmp_path / "copy")
    code, _, err = run_cli("record", str(copy), "--db", url, "--sweep", "one", "--quiet",
                           cwd=tmp_path)
    assert code == 2 and "already holds this recipe with seed 0" in err, err
    assert len(err.strip().splitlines()) == 1

    # `ablate train --db` recorded the same run at its end, with the same row
    with ResultsDB(train_url) as db:
        recorded = db.trials("single")
    assert len(recorded) == 1
    assert recorded.iloc[0]["identity"] == row["identity"]
    assert recorded.iloc[0]["run_dir"] == row["run_dir"]


def test_record_refuses_unfinished_runs_and_sweeps_of_ablate_sweep(uninterrupted, tiny_cfg,
                                                                   tmp_path):
    full, _ = uninterrupted
    folder = _unfinished(tmp_path / "runs" / "r", tiny_cfg, step=4)
    url = f"sqlite:///{tmp_path / 'r.db'}"
    code, _, err = run_cli("record", str(folder), "--db", url, cwd=tmp_path)
    assert code == 2 and "has not finished" in err and "--resume" in err, err
    with ResultsDB(url) as db:
        db.start_sweep("searched", "quick", {}, "v0")
    code, _, err = run_cli("record", str(full), "--db", url, "--sweep", "searched",
                           cwd=tmp_path)
    assert code == 2 and "was run by `ablate sweep`" in err, err
    with ResultsDB(url) as db:
        assert db.trials("searched").empty


def test_train_flags_that_do_not_go_together_are_usage_errors(tmp_path):
    code, _, err = run_cli("train", "--sweep", "x", cwd=tmp_path)
    assert code == 2 and "give --db URL too" in err, err
    code, _, err = run_cli("train", "--dry-run", "--resume", str(tmp_path), cwd=tmp_path)
    assert code == 2 and "give one of them" in err, err



def test_a_partly_tuned_run_killed_with_sigkill_resumes_only_on_its_own_encoder_file(
        manifest, tmp_path):
    """LoRA on an encoder from a file: the run's state holds only what trains, so its resume
    reads the frozen rest from the file again; the file it was saved on, not another one."""
    import timm
    from safetensors.torch import save_file

    twin = timm.create_model("vit_large_patch14_clip_quickgelu_224", pretrained=False,
                             num_classes=0, img_size=32, embed_dim=32, depth=2, num_heads=2)
    base = tmp_path / "clip.safetensors"
    save_file({k: v.contiguous() for k, v in twin.state_dict().items()}, str(base))
    recipe = [*_recipe(manifest), "backbone=tiny-clip", f"backbone.pretrained_path={base}",
              "backbone.tuning=lora", "run.out_dir=runs"]
    code, _, err = _finish(_ablate("train", "--quiet", *recipe, "run.name=full", cwd=tmp_path))
    assert code == 0, err[-3000:]
    proc = _ablate("train", "--quiet", *recipe, "run.name=cut", cwd=tmp_path)
    folder = tmp_path / "runs" / "cut"
    deadline = time.monotonic() + 600
    while latest_state(folder) is None and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, proc.communicate()[1][-2000:]
    os.kill(proc.pid, signal.SIGKILL)  # a real kill -9 mid-run
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL

    original = base.read_bytes()
    save_file({k: v.contiguous() + 1e-3 for k, v in twin.state_dict().items()}, str(base))
    code, _, err = _finish(_ablate("train", "--resume", str(folder), "--quiet", cwd=tmp_path))
    assert code == 2 and "resume on the file it was saved on" in err, err[-2000:]
    assert "Traceback" not in err and latest_state(folder) is not None  # the state is kept

    base.write_bytes(original)
    code, _, err = _finish(_ablate("train", "--resume", str(folder), "--quiet", cwd=tmp_path))
    assert code == 0, err[-3000:]
    full = tmp_path / "runs" / "full"
    for name in (TRAINABLE, INFERENCE):
        _tensors_equal(full / name, folder / name)
    assert not any(".blocks.0.attn.qkv.base_layer." in k
                   for k in load_file(folder / INFERENCE))  # the frozen base is not stored
