"""compare-teachers: teacher specs, and a real two-teacher comparison through the sweep."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from ablate.compare import compare_teachers, parse_recipe, parse_teachers
from ablate.errors import AblateError
from ablate.results import ResultsDB

TINY_RECIPE = ["backbone=tiny", "image_size=32", "data.train=synth-blend", "train=cpu",
               "train.steps=6", "train.batch_size=4", "train.eval_every=3"]


def test_teacher_specs_split_outside_brackets():
    specs = parse_teachers("tiny-sd15, sd15[path=/m/a,lora=/x],tiny-sdxl")
    assert [s.label for s in specs] == ["tiny-sd15", "sd15[path=/m/a,lora=/x]", "tiny-sdxl"]
    assert specs[1].name == "sd15" and specs[1].args == {"path": "/m/a", "lora": "/x"}
    # a comma inside brackets separates arguments: "b" alone is not key=value
    with pytest.raises(AblateError, match="not key=value"):
        parse_teachers("sd15[path=/m/a,b],tiny-sd15")


def test_teacher_spec_overrides():
    spec = parse_teachers("tiny-sd15[seed=3,lora=/a/b],tiny-sd21")[0]
    assert spec.overrides() == ["teacher=tiny-sd15", "teacher.seed=3", "teacher.lora=/a/b"]
    none = parse_teachers("none,tiny-sd15")[0]
    assert none.is_baseline and none.overrides() == ["guide=none"]
    with pytest.raises(AblateError, match="takes no arguments"):
        parse_teachers("none[seed=1],tiny-sd15")


@pytest.mark.parametrize("text,message", [
    ("tiny-sd15", "at least two"),
    ("tiny-sd15,tiny-sd15", "twice"),
    ("tiny-sd15],tiny-sd21", "unbalanced"),
    ("tiny-sd15[seed=1,tiny-sd21", "NAME\\[key=value"),
])
def test_bad_teacher_lists(text, message):
    with pytest.raises(AblateError, match=message):
        parse_teachers(text)


def test_recipe_overrides_are_typed_and_may_not_set_the_teacher():
    assert parse_recipe(["train.steps=6", "backbone=tiny"]) == {"train.steps": 6,
                                                               "backbone": "tiny"}
    with pytest.raises(AblateError, match="must not set the teacher"):
        parse_recipe(["teacher.lora=/x"])


@pytest.mark.slow
def test_baseline_and_two_twins_one_seed_fill_the_db_and_the_report(tmp_path, monkeypatch):
    monkeypatch.setenv("ABLATE_CACHE", str(Path("results").resolve()))
    monkeypatch.chdir(tmp_path)
    url = f"sqlite:///{tmp_path / 'r.db'}"
    specs = parse_teachers("none,tiny-sd15,tiny-sd21")  # none: the plain baseline row
    table, folder = compare_teachers(specs, TINY_RECIPE, ["synth-colour", "synth-warp"], 1, url,
                                     None, "cmp", 1, 0, n_boot=200)
    db = ResultsDB(url)
    trials = db.trials("cmp")
    assert list(trials["status"]) == ["finished"] * 3
    teachers = {json_teacher(t) for t in trials["recipe_json"]}
    assert teachers == {"none", "tiny-sd15", "tiny-sd21"}
    base = trials[trials["recipe_json"].map(json_teacher) == "none"].iloc[0]
    assert base["params_trainable"] == base["params_inference"]  # encoder + head only

    # the table's AUCs are the AUCs of each run's stored scores (sklearn, independently)
    scores = {json_teacher(t.recipe_json): pd.read_csv(Path(t.run_dir) / "scores.csv")
              for t in trials.itertuples()}
    for dataset in ("synth-colour", "synth-warp"):
        aucs = {}
        for teacher, frame in scores.items():
            frame = frame[frame["dataset"] == dataset]
            aucs[teacher] = roc_auc_score(frame["label"], frame["score"])
            row = table[(table["teacher"] == teacher) & (table["test_set"] == dataset)].iloc[0]
            assert row["auc"] == pytest.approx(aucs[teacher], abs=1e-9)
            assert row["auc_low"] <= row["auc"] <= row["auc_high"]
            stored = db.metrics("cmp")
            stored = stored[(stored["dataset"] == dataset) & (stored["metric"] == "auc")
                            & (stored["level"] == "frame")
                            & (stored["tune_trial_id"].isin(
                                trials[trials["recipe_json"].map(json_teacher) == teacher]
                                ["tune_trial_id"]))]
            assert stored["value"].iloc[0] == pytest.approx(aucs[teacher], abs=1e-9)
        for guided in ("tiny-sd15", "tiny-sd21"):
            row = table[(table["teacher"] == guided) & (table["test_set"] == dataset)].iloc[0]
            assert row["d_auc"] == pytest.approx(aucs[guided] - aucs["none"], abs=1e-9)
            assert row["d_auc_low"] <= row["d_auc"] <= row["d_auc_high"]
        first = table[(table["teacher"] == "none") & (table["test_set"] == dataset)].iloc[0]
        assert first["d_auc"] == 0 and first["d_auc_low"] == 0 == first["d_auc_high"]
    assert np.isfinite(table["step_time_s"]).all() and (table["params_trainable"] > 0).all()
    md = (folder / "compare.md").read_text()
    assert "tiny-sd21" in md and "ΔAUC vs none" in md
    assert (folder / "compare.png").stat().st_size > 1000


def json_teacher(recipe_json: str) -> str:
    import json

    recipe = json.loads(recipe_json)
    return recipe["teacher"]["name"] if "teacher" in recipe else "none"  # none: the baseline


def test_unknown_teacher_is_one_line_error(tmp_path):
    exe = Path(sys.executable).parent / "ablate"
    proc = subprocess.run([str(exe), "compare-teachers", "--teachers", "tiny-sd15,nope",
                           "--db", f"sqlite:///{tmp_path / 'r.db'}"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "ABLATE_CACHE": str(Path("results").resolve())})
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: teacher nope:") and "tiny-sd15" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert not (tmp_path / "r.db").exists() or ResultsDB(
        f"sqlite:///{tmp_path / 'r.db'}").list_sweeps().empty
