"""`ablate train` then `ablate eval` on the embedded benchmark, and the CLI's bad-input errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import run_cli
from safetensors.torch import load_file
from sklearn.metrics import roc_auc_score

from ablate.checkpoint import INFERENCE, RUN_INFO, TRAINABLE, load_classifier
from ablate.evaluate import evaluate_run
from ablate.recipe import compose
from ablate.scoring import score
from ablate.train import train

TINY = ["backbone=tiny", "image_size=32", "train=cpu", "train.steps=4", "train.batch_size=4",
        "data.train=synth-blend", "data.tests=[synth-colour,synth-warp]"]


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs")
    # eval only at the end: the selected (exported) classifier is the final one
    cfg = compose([*TINY, "train.eval_every=0", f"run.out_dir={out}", "run.name=r"])
    return train(cfg, progress=False).folder


def test_train_then_eval_writes_scores_and_metrics(run_folder, tmp_path):
    scores_file = tmp_path / "scores.csv"
    metrics, folder = evaluate_run(run_folder, n_boot=50, progress=False, scores_out=scores_file)
    assert (folder / "metrics.csv").is_file()
    scores = pd.read_csv(scores_file)
    assert set(scores.columns) >= {"dataset", "path", "video_id", "label", "score"}
    for name in ("synth-colour", "synth-warp"):
        mine = scores[scores["dataset"] == name]
        row = metrics[(metrics["dataset"] == name) & (metrics["level"] == "frame")
                      & (metrics["metric"] == "auc")].iloc[0]
        assert row["value"] == pytest.approx(roc_auc_score(mine["label"], mine["score"]))
        assert row["ci_low"] <= row["value"] <= row["ci_high"]
    info = json.loads((run_folder / RUN_INFO).read_text())
    assert info["selection"]["dataset"] == "synth-blend"  # chosen on the source val split
    acc_thr = metrics[metrics["metric"] == "acc_thr"]
    assert set(acc_thr["threshold_from"]) == {"source val EER point"}


def test_exported_inference_checkpoint_reloads_to_identical_scores(run_folder):
    inference = load_file(run_folder / INFERENCE)
    trainable = load_file(run_folder / TRAINABLE)
    assert all(k.startswith(("backbone.", "head.")) for k in inference)  # encoder + head only
    classifier, cfg = load_classifier(run_folder)
    # rebuild the classifier from the full training checkpoint: the same weights ...
    from ablate.model.build import build_detector

    detector = build_detector(cfg)
    detector.load_state_dict(trainable, strict=False)
    for key, value in inference.items():
        assert torch.equal(value, trainable[f"classifier.{key}"])
    # ... and the same scores on a test set
    from ablate.evaluate import test_rows

    rows = test_rows("synth-colour", cfg.image_size)
    a = score(classifier, rows, progress=False)["score"].to_numpy()
    b = score(detector.classifier, rows, progress=False)["score"].to_numpy()
    assert (a == b).all()


def _ablate(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).parent / "ablate"
    return subprocess.run([str(exe), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=180, env={**os.environ,
                                            "ABLATE_CACHE": str(Path("results").resolve())})


@pytest.mark.parametrize("overrides,message", [
    (["filter=nope"], "conv_only"),                       # unknown variant: lists valid ones
    (["filter.hedas=4"], "hedas"),                        # misspelled key
    (["teacher=sd15", "teacher.path=/no/such/folder"], "/no/such/folder"),
    (["filter.heads=7"], "heads"),                        # width the filter cannot split
    (["image_size=60"], "image_size"),                    # not a multiple of the VAE factor
    (["guide=none", "guide.shared=false"], "does nothing without a guide"),
    (["recipe=paper", "teacher=tiny-sd15"], "backbone.pretrained_path"),  # no ImageNet weights
    (["data.augment=true"], "augment"),                   # presets, not booleans
    (["train.eval_every=weekly"], "eval_every"),
])
def test_train_bad_input_is_one_line(overrides, message, tmp_path):
    if overrides == ["filter=nope"]:  # one case through a real process and its exit code
        proc = _ablate("train", "--dry-run", *overrides, cwd=tmp_path)
        code, stderr = proc.returncode, proc.stderr
    else:
        code, _, stderr = run_cli("train", "--dry-run", *overrides, cwd=tmp_path,
                                  env={"ABLATE_CACHE": str(Path("results").resolve())})
    assert code == 2, stderr
    lines = [ln for ln in stderr.splitlines() if not ln.startswith("WARNING")]
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], stderr
    assert "Traceback" not in stderr
    assert not (tmp_path / "results" / "runs").exists()


def test_train_baseline_from_the_cli(tmp_path):
    proc = _ablate("train", "--quiet", "recipe=baseline", "backbone=tiny", "image_size=32",
                   "train.steps=3", "train.eval_every=0", "train.batch_size=4",
                   "filter=code", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "ignored: filter=code" in proc.stderr  # said once, not silently dropped
    run = Path(proc.stdout.strip().splitlines()[-1].split("run saved to ")[1])
    info = json.loads((tmp_path / run / RUN_INFO).read_text())
    assert info["params_trainable"] == info["params_inference"]  # encoder + head, nothing else
    assert set(load_file(tmp_path / run / TRAINABLE)) == {
        f"classifier.{k}" for k in load_file(tmp_path / run / INFERENCE)}


def test_a_test_set_is_scored_on_its_test_split_only(run_folder, tmp_path):
    """A manifest given as a test set: its test rows only; without test rows, one clear
    error (never the training frames scored as if held out)."""
    from ablate.data.manifest import load_manifest, save_manifest
    from ablate.data.synthetic import ensure_benchmark
    from ablate.errors import AblateError
    from ablate.evaluate import test_rows

    table = load_manifest(ensure_benchmark())
    colour = table[table["dataset"] == "synth-colour"]
    mixed = save_manifest(colour[colour["split"].isin(["train", "test"])], tmp_path / "mixed.csv")
    rows = test_rows(str(mixed), 32)
    assert len(rows) == int((colour["split"] == "test").sum())  # counted independently
    train_only = save_manifest(colour[colour["split"] == "train"], tmp_path / "train.csv")
    with pytest.raises(AblateError, match=r"has no test rows \(its splits: train\)"):
        test_rows(str(train_only), 32)
    code, _, err = run_cli("eval", str(run_folder), "--test", str(train_only), "--quiet",
                           cwd=tmp_path)
    assert code == 2 and "no test rows" in err and len(err.strip().splitlines()) == 1, err


def test_a_training_source_whose_video_is_in_two_splits_is_refused(tmp_path):
    """DeepfakeBench-style val = test: selection would see test frames; one line, no run."""
    from ablate.data.manifest import load_manifest, save_manifest
    from ablate.data.synthetic import ensure_benchmark

    table = load_manifest(ensure_benchmark())
    blend = table[table["dataset"] == "synth-blend"]
    val_video = blend.loc[blend["split"] == "val", "video_id"].iloc[0]
    leaked = blend[blend["video_id"] == val_video].assign(split="test")
    path = save_manifest(pd.concat([blend, leaked]), tmp_path / "leaky.csv")
    code, _, err = run_cli("train", *TINY, f"data.train={path}", cwd=tmp_path,
                           env={"ABLATE_CACHE": str(Path("results").resolve())})
    assert code == 2 and "in more than one split" in err and val_video in err, err
    assert "in test and val" in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "results" / "runs").exists()
