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
        # DeLong against the baseline on the frames both scored (frames joined by path here)
        from ablate.report.delong import delong_test

        for guided in ("tiny-sd15", "tiny-sd21"):
            both = scores[guided][scores[guided]["dataset"] == dataset].merge(
                scores["none"][scores["none"]["dataset"] == dataset], on="path")
            want = delong_test(both["label_x"], both["score_x"], both["score_y"]).p_value
            row = table[(table["teacher"] == guided) & (table["test_set"] == dataset)].iloc[0]
            assert row["p_delong"] == pytest.approx(want, rel=1e-10)
    p = table["p_delong"].dropna().to_numpy()  # Holm over the 4 comparisons, by hand
    order = np.argsort(p)
    holm = np.minimum(1, np.maximum.accumulate((4 - np.arange(4)) * p[order]))
    assert table["p_delong_holm"].dropna().to_numpy()[order] == pytest.approx(holm, abs=1e-12)
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


def tiny_table(auc_b: float = 0.7) -> pd.DataFrame:
    """A two-teacher, one-test-set comparison table, as comparison_table returns it."""
    rows = []
    for teacher, auc in (("none", 0.6), ("tiny-sd15", auc_b)):
        rows.append({"teacher": teacher, "test_set": "synth-warp", "seeds": 1, "auc": auc,
                     "auc_low": auc - 0.05, "auc_high": auc + 0.05, "eer": 1 - auc,
                     "eer_low": 0.9 - auc, "eer_high": 1.1 - auc, "d_auc": auc - 0.6,
                     "d_auc_low": auc - 0.65, "d_auc_high": auc - 0.55, "d_eer": 0.6 - auc,
                     "d_eer_low": 0.55 - auc, "d_eer_high": 0.65 - auc,
                     "ci_method": "paired video bootstrap", "step_time_s": 0.1,
                     "peak_mem_mb": 100.0, "params_trainable": 1000})
    return pd.DataFrame(rows)


def test_second_comparison_never_overwrites_the_first(tmp_path):
    from ablate.compare import COMPARISON_FILES, write_comparison

    folder = tmp_path / "cmp"
    assert write_comparison(tiny_table(0.7), folder) == folder
    before = {n: (folder / n).read_bytes() for n in COMPARISON_FILES}
    assert all(before.values()) and b"0.700" in before["compare.md"]
    with pytest.raises(AblateError) as err:
        write_comparison(tiny_table(0.9), folder)  # other numbers, same place
    message = str(err.value)
    assert str(folder) in message and "--out" in message and "\n" not in message
    assert {n: (folder / n).read_bytes() for n in COMPARISON_FILES} == before
    # one file of an earlier comparison is enough to keep the folder
    (tmp_path / "partial").mkdir()
    (tmp_path / "partial" / "compare.png").write_bytes(b"old plot")
    with pytest.raises(AblateError, match="compare.png"):
        write_comparison(tiny_table(), tmp_path / "partial")
    assert (tmp_path / "partial" / "compare.png").read_bytes() == b"old plot"
    assert not (tmp_path / "partial" / "compare.csv").exists()


def test_taken_out_folder_fails_before_any_training(tmp_path, monkeypatch):
    import ablate.sweep

    def no_sweep(*_a, **_k):
        raise AssertionError("the sweep ran although --out holds a comparison")

    monkeypatch.setattr(ablate.sweep, "run_sweep", no_sweep)
    monkeypatch.chdir(tmp_path)
    taken = tmp_path / "results" / "reports" / "cmp"  # the default folder of --name cmp
    taken.mkdir(parents=True)
    (taken / "compare.csv").write_text("teacher\nnone\n")
    specs = parse_teachers("none,tiny-sd15")
    with pytest.raises(AblateError, match=f"{taken.relative_to(tmp_path)} already holds"):
        compare_teachers(specs, [], None, 1, f"sqlite:///{tmp_path / 'r.db'}", None, "cmp", 1, 0)
    assert (taken / "compare.csv").read_text() == "teacher\nnone\n"
    assert not (tmp_path / "results" / "spaces").exists()  # stopped before writing the space
