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
from ablate.scoring import score

TINY = ["backbone=tiny", "image_size=32", "train=cpu", "train.steps=4", "train.batch_size=4",
        "data.train=synth-blend", "data.tests=[synth-colour,synth-warp]"]


@pytest.fixture(scope="module")
def run_folder(tiny_run) -> Path:
    """The session's tiny run (tests/conftest.py), trained once per worker."""
    return tiny_run


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
    (["train.processes=3"], "multiple of 3"),             # batch 8 over 3 processes
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
    from ablate.core.errors import AblateError
    from ablate.data.manifest import load_manifest, save_manifest
    from ablate.data.synthetic import ensure_benchmark
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


def test_a_df40_manifest_is_scored_per_method_and_per_family(run_folder, tmp_path):
    """One DF40-style manifest (methods as `df40/<method>`, shared reals `df40/real`): each
    method and each generator family is its own test set, its AUC that of the frames a
    reader would pick by hand (the method's fakes + its own reals, else the shared reals)."""
    from ablate.data.manifest import load_manifest, save_manifest
    from ablate.data.synthetic import ensure_benchmark

    table = load_manifest(ensure_benchmark())
    test = table[table["split"] == "test"]
    colour, warp = test[test["dataset"] == "synth-colour"], test[test["dataset"] == "synth-warp"]
    fakes = colour[colour["label"] == 1]
    half = fakes["video_id"].isin(sorted(fakes["video_id"].unique())[::2])
    parts = [  # (rows, dataset, family)
        (fakes[half], "df40/simswap", "FS"), (fakes[~half], "df40/ddim", "EFS"),
        (colour[colour["label"] == 0], "df40/real", ""), (warp, "df40/mobileswap", "FS")]
    df40 = pd.concat([rows.assign(dataset=d, family=f, video_id=d + "/" + rows["video_id"])
                      for rows, d, f in parts], ignore_index=True)
    path = save_manifest(df40, tmp_path / "df40.csv")
    scores_file = tmp_path / "scores.csv"
    metrics, _ = evaluate_run(run_folder, tests=[str(path)], n_boot=20, progress=False,
                              scores_out=scores_file)
    frames = pd.read_csv(scores_file)
    every = frames[frames["dataset"] == str(path)].set_index("path")["score"]
    assert len(every) == len(df40)
    by = {d: set(df40.loc[df40["dataset"] == d, "path"]) for _, d, _ in parts}
    fake_paths = set(df40.loc[df40["label"] == 1, "path"])
    expected = {
        f"{path}::df40/simswap": by["df40/simswap"] | by["df40/real"],
        f"{path}::df40/ddim": by["df40/ddim"] | by["df40/real"],
        f"{path}::df40/mobileswap": by["df40/mobileswap"],  # it has reals of its own
        f"{path}::family:FS": by["df40/simswap"] | by["df40/mobileswap"] | by["df40/real"],
        f"{path}::family:EFS": by["df40/ddim"] | by["df40/real"],
    }
    auc = metrics[(metrics["level"] == "frame") & (metrics["metric"] == "auc")]
    assert set(auc["dataset"]) == {str(path), *expected}
    for name, paths in expected.items():
        chosen = sorted(paths)
        labels = [int(p in fake_paths) for p in chosen]
        value = auc.loc[auc["dataset"] == name, "value"].iloc[0]
        assert value == pytest.approx(roc_auc_score(labels, every.loc[chosen])), name
        assert sorted(frames.loc[frames["dataset"] == name, "path"]) == chosen


def test_an_all_fake_test_set_is_one_line_before_scoring(run_folder, tmp_path):
    """DF40 without `reals=`: every row fake; said before any frame is scored."""
    from ablate.data.manifest import load_manifest, save_manifest
    from ablate.data.synthetic import ensure_benchmark

    table = load_manifest(ensure_benchmark())
    fakes = table[(table["dataset"] == "synth-colour") & (table["label"] == 1)]
    path = save_manifest(fakes, tmp_path / "fakes.csv")
    code, out, err = run_cli("eval", str(run_folder), "--test", str(path), "--quiet", cwd=tmp_path)
    assert code == 2 and "has only fake rows" in err and "reals=" in err, err
    assert len(err.strip().splitlines()) == 1 and str(path) in err


def test_a_df40_method_without_any_reals_is_left_out_of_the_breakdown():
    """No reals of its own and no shared ones: no AUC can be had, so no sub test set (and
    the others are still scored); counted by hand."""
    from ablate.evaluate import sub_test_sets

    rows = pd.DataFrame({
        "dataset": ["df40/a", "df40/a", "df40/b", "df40/c"],
        "label": [1, 0, 1, 1], "family": ["FS", "FS", "FS", "EFS"]})
    parts = sub_test_sets("t", rows)
    assert set(parts) == {"t::df40/a", "t::family:FS"}
    assert list(parts["t::df40/a"]) == [True, True, False, False]
    assert list(parts["t::family:FS"]) == [True, True, True, False]
