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

from ablate.compare import (
    TABLE_COLUMNS,
    compare_teachers,
    comparison_table,
    parse_recipe,
    parse_teachers,
)
from ablate.compare_output import AVG, RUN_BOOT, display_table, markdown
from ablate.core.errors import AblateError
from ablate.report.stats import NO_INTERVAL, TWO_STAGE
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
            assert row["ci_method"] == RUN_BOOT  # one seed: its own video bootstrap CI
            stored_ci = stored[["ci_low", "ci_high"]].iloc[0].to_numpy(dtype=float)
            assert [row["auc_low"], row["auc_high"]] == pytest.approx(stored_ci, abs=1e-12)
        for guided in ("tiny-sd15", "tiny-sd21"):
            row = table[(table["teacher"] == guided) & (table["test_set"] == dataset)].iloc[0]
            assert row["d_auc"] == pytest.approx(aucs[guided] - aucs["none"], abs=1e-9)
            # one seed: the point and no interval (a video bootstrap says nothing of seeds)
            assert np.isnan(row["d_auc_low"]) and np.isnan(row["d_auc_high"])
            assert row["d_ci_method"] == NO_INTERVAL
        first = table[(table["teacher"] == "none") & (table["test_set"] == dataset)].iloc[0]
        assert first["d_auc"] == 0 and np.isnan(first["d_auc_low"])
        # DeLong against the baseline on the frames both scored (frames joined by path here)
        from ablate.report.delong import delong_test

        for guided in ("tiny-sd15", "tiny-sd21"):
            both = scores[guided][scores[guided]["dataset"] == dataset].merge(
                scores["none"][scores["none"]["dataset"] == dataset], on="path")
            want = delong_test(both["label_x"], both["score_x"], both["score_y"]).p_value
            row = table[(table["teacher"] == guided) & (table["test_set"] == dataset)].iloc[0]
            assert row["p_delong"] == pytest.approx(want, rel=1e-10)
    assert table[table["test_set"] == AVG]["p_delong"].isna().all()
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
    """A two-teacher, one-test-set, one-seed comparison table, as comparison_table returns it."""
    rows = []
    for teacher, auc in (("none", 0.6), ("tiny-sd15", auc_b)):
        rows.append({"teacher": teacher, "test_set": "synth-warp", "seeds": 1, "auc": auc,
                     "auc_low": auc - 0.05, "auc_high": auc + 0.05, "eer": 1 - auc,
                     "eer_low": 0.9 - auc, "eer_high": 1.1 - auc, "ci_method": RUN_BOOT,
                     "d_seeds": 1, "d_auc": auc - 0.6, "d_eer": 0.6 - auc,
                     "d_ci_method": NO_INTERVAL, "note": "", "step_time_s": 0.1,
                     "peak_mem_mb": 100.0, "params_trainable": 1000})
    return pd.DataFrame(rows).reindex(columns=TABLE_COLUMNS)


def test_second_comparison_never_overwrites_the_first(tmp_path):
    from ablate.compare_output import COMPARISON_FILES, write_comparison

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


# ---------------------------------------------------------------- intervals over seeds
# A comparison recorded straight into a SQLite results DB (no training): each run's stored
# frame AUC/EER per test set, and optionally its per-frame scores. Every expected interval
# below is computed by hand from the per-seed values (scipy's t quantile), never by the
# code under test.

FAKE = {"none": None, "sd15": {"name": "fake-sd15"}, "sd3": {"name": "fake-sd3"}}
T0 = pd.Timestamp("2024-01-01").to_pydatetime()
RUN_CI = 0.02  # half-width of each run's stored video-bootstrap CI in fake_comparison


def fake_comparison(tmp_path: Path, aucs: dict, scores: dict | None = None,
                    teachers: dict | None = None) -> ResultsDB:
    """aucs: {(teacher, seed): {test set: frame AUC}} (EER = 1 - AUC here), one finished
    trial each, in this order; scores: {(teacher, seed): per-frame scores frame}."""
    teachers = teachers or FAKE
    db = ResultsDB(f"sqlite:///{tmp_path / 'r.db'}")
    sweep = db.start_sweep("cmp", "space", {}, "test")
    for i, ((teacher, seed), per_set) in enumerate(aucs.items()):
        metrics = []
        for dataset, auc in per_set.items():
            for metric, value in (("auc", auc), ("eer", 1 - auc)):
                metrics.append({"dataset": dataset, "split": "test", "level": "frame",
                                "metric": metric, "value": value, "ci_low": value - RUN_CI,
                                "ci_high": value + RUN_CI, "n": 100})
        run_dir = None
        if scores is not None and (teacher, seed) in scores:
            run_dir = tmp_path / "runs" / f"t{i}"
            run_dir.mkdir(parents=True)
            scores[(teacher, seed)].to_csv(run_dir / "scores.csv", index=False)
        cfg = teachers[teacher]
        recipe = ({"guide": {"name": "none"}} if cfg is None
                  else {"guide": {"name": "paper"}, "teacher": cfg})
        db.record_trial(sweep, f"t{i}", recipe_hash=f"{teacher}-{seed}", recipe=recipe,
                        seed=seed, status="finished", started=T0, ended=T0, step_time_s=0.1,
                        peak_mem_mb=100.0, params_trainable=1000, params_inference=1000,
                        run_dir=None if run_dir is None else str(run_dir), metrics=metrics)
    return db


def t_by_hand(values) -> tuple[float, float, float]:
    """Mean and Student-t 95% interval of `values`, written out."""
    from scipy import stats

    x = np.asarray(values, dtype=float)
    half = stats.t.ppf(0.975, len(x) - 1) * x.std(ddof=1) / np.sqrt(len(x))
    return x.mean(), x.mean() - half, x.mean() + half


def row_of(table: pd.DataFrame, teacher: str, test_set: str) -> pd.Series:
    hit = table[(table["teacher"] == teacher) & (table["test_set"] == test_set)]
    assert len(hit) == 1, (teacher, test_set, table[["teacher", "test_set"]])
    return hit.iloc[0]


# 3 seeds, 2 test sets. sd15's gain is mostly a per-seed effect shared by both test sets
# (seed 0: +0.10, seed 1: +0.00, seed 2: +0.05): the test sets of one run are not
# independent draws, which an interval over (seed, test set) pairs would pretend.
BASE = {"A": [0.70, 0.72, 0.74], "B": [0.60, 0.61, 0.65]}
GAIN = {"A": [0.101, 0.001, 0.052], "B": [0.099, -0.001, 0.048]}
THREE_SEEDS = {
    **{("none", s): {d: BASE[d][s] for d in BASE} for s in range(3)},
    **{("sd15", s): {d: BASE[d][s] + GAIN[d][s] for d in BASE} for s in range(3)},
}


def test_every_interval_is_over_seeds(tmp_path):
    db = fake_comparison(tmp_path, THREE_SEEDS)
    table = comparison_table(db, "cmp", {"none": None, "sd15": FAKE["sd15"]})
    assert list(table.columns[:3]) == ["teacher", "test_set", "seeds"]
    assert [(r.teacher, r.test_set) for r in table.itertuples()] == [
        ("none", "A"), ("sd15", "A"), ("none", "B"), ("sd15", "B"), ("none", AVG),
        ("sd15", AVG)]
    for dataset in ("A", "B"):
        for teacher, per_seed in (("none", BASE[dataset]),
                                  ("sd15", np.add(BASE[dataset], GAIN[dataset]))):
            row = row_of(table, teacher, dataset)
            assert row["seeds"] == 3 and row["ci_method"] == "t over seeds"
            want = t_by_hand(per_seed)
            assert (row["auc"], row["auc_low"], row["auc_high"]) == pytest.approx(want)
            eer = t_by_hand(1 - np.asarray(per_seed))
            assert (row["eer"], row["eer_low"], row["eer_high"]) == pytest.approx(eer)
        row = row_of(table, "sd15", dataset)  # Δ: per-seed paired differences, t over seeds
        assert row["d_seeds"] == 3 and row["d_ci_method"] == "t over matched seeds"
        want = t_by_hand(GAIN[dataset])
        assert (row["d_auc"], row["d_auc_low"], row["d_auc_high"]) == pytest.approx(want)
        assert (row["d_eer"], row["d_eer_low"], row["d_eer_high"]) == pytest.approx(
            (-want[0], -want[2], -want[1]))
        assert row["note"] == ""

    avg = row_of(table, "sd15", AVG)
    seed_means = np.mean([GAIN["A"], GAIN["B"]], axis=0)  # [0.100, 0.000, 0.050]
    want = t_by_hand(seed_means)
    assert avg["d_ci_method"] == "t over seed means (test sets averaged within each seed)"
    assert (avg["d_auc"], avg["d_auc_low"], avg["d_auc_high"]) == pytest.approx(want)
    # the width is that of the t interval over the 3 seed means (t_2 = 4.303, sd = 0.05):
    assert avg["d_auc_high"] - avg["d_auc_low"] == pytest.approx(
        2 * 4.302653 * 0.05 / np.sqrt(3), rel=1e-5)
    # ... several times what a percentile bootstrap over the 6 (seed, test set) pairs gives
    pairs = np.concatenate([GAIN["A"], GAIN["B"]])
    draws = np.random.default_rng(0).choice(pairs, size=(4000, pairs.size)).mean(axis=1)
    pairs_width = np.subtract(*np.quantile(draws, [0.975, 0.025]))
    assert avg["d_auc_high"] - avg["d_auc_low"] > 3 * pairs_width
    assert avg["sd_seeds"] == pytest.approx(0.05)
    assert avg["d_seeds"] == 3 and avg["seeds"] == 3
    # the teacher's own Avg: AUC averaged over test sets within each seed, then t
    own = np.mean([np.add(BASE["A"], GAIN["A"]), np.add(BASE["B"], GAIN["B"])], axis=0)
    assert (avg["auc"], avg["auc_low"], avg["auc_high"]) == pytest.approx(t_by_hand(own))
    # power: the MDE of a paired t test over 3 seeds at sd 0.05, and the seeds 1 pt needs
    from scipy import optimize, stats

    def power(effect: float, n: int) -> float:
        crit, nc = stats.t.ppf(0.975, n - 1), effect / (0.05 / np.sqrt(n))
        return stats.nct.sf(crit, n - 1, nc) + stats.nct.cdf(-crit, n - 1, nc)

    assert avg["mde"] == pytest.approx(optimize.brentq(lambda e: power(e, 3) - 0.8, 1e-6, 1))
    needed = next(n for n in range(2, 1000) if power(0.01, n) >= 0.8)
    assert avg["seeds_needed"] == needed
    base_avg = row_of(table, "none", AVG)
    assert base_avg["d_auc"] == 0 and np.isnan(base_avg["d_auc_low"]) and np.isnan(
        base_avg["mde"])
    assert table["p_delong"].isna().all()  # no readable scores: no DeLong


def test_hand_worked_two_seed_difference(tmp_path):
    # Δ = 0.01 and 0.03: mean 0.02, sd 0.01414, se 0.01, t_1(0.975) = 12.7062
    db = fake_comparison(tmp_path, {("none", 0): {"A": 0.70}, ("none", 1): {"A": 0.70},
                                    ("sd15", 0): {"A": 0.71}, ("sd15", 1): {"A": 0.73}})
    table = comparison_table(db, "cmp", {"none": None, "sd15": FAKE["sd15"]})
    for test_set in ("A", AVG):  # one test set: the Avg is the same numbers
        row = row_of(table, "sd15", test_set)
        assert row["d_auc"] == pytest.approx(0.02)
        assert row["d_auc_low"] == pytest.approx(0.02 - 0.127062, abs=1e-6)
        assert row["d_auc_high"] == pytest.approx(0.02 + 0.127062, abs=1e-6)
    assert row_of(table, "none", "A")["auc_low"] == row_of(table, "none", "A")["auc"] == 0.70


def test_one_seed_gives_no_interval_for_a_difference(tmp_path):
    db = fake_comparison(tmp_path, {("none", 0): {"A": 0.70, "B": 0.60},
                                    ("sd15", 0): {"A": 0.75, "B": 0.62}})
    table = comparison_table(db, "cmp", {"none": None, "sd15": FAKE["sd15"]})
    for dataset, auc, gain in (("A", 0.75, 0.05), ("B", 0.62, 0.02)):
        row = row_of(table, "sd15", dataset)
        # the teacher's own AUC: that run's stored video-bootstrap CI, labelled as such
        assert (row["auc"], row["auc_low"], row["auc_high"]) == pytest.approx(
            (auc, auc - RUN_CI, auc + RUN_CI))
        assert row["ci_method"] == "video bootstrap (1 seed: test sample only)"
        assert row["d_auc"] == pytest.approx(gain)
        assert np.isnan(row["d_auc_low"]) and np.isnan(row["d_auc_high"])
        assert row["d_ci_method"] == "no interval (1 seed)"
    avg = row_of(table, "sd15", AVG)
    assert avg["d_auc"] == pytest.approx(0.035) and np.isnan(avg["d_auc_low"])
    assert avg["d_ci_method"] == "no interval (1 seed)" and np.isnan(avg["mde"])
    assert avg["ci_method"] == "no interval (1 seed)" and np.isnan(avg["auc_low"])
    shown = display_table(table)
    cells = shown[shown["teacher"] == "sd15"]["ΔAUC vs none [95% CI over seeds]"]
    assert list(cells) == ["+0.050", "+0.020", "+0.035"]  # points, never an interval
    note = markdown(shown)
    assert "[" not in "".join(cells) and "no interval (1 seed)" in note


def test_unmatched_seeds_use_only_the_matched_ones_and_say_so(tmp_path):
    base = {0: 0.70, 1: 0.72, 2: 0.74}
    mine = {1: 0.80, 2: 0.75, 3: 0.90}  # seed 0 missing, seed 3 extra
    db = fake_comparison(tmp_path, {**{("none", s): {"A": v} for s, v in base.items()},
                                    **{("sd15", s): {"A": v} for s, v in mine.items()}})
    table = comparison_table(db, "cmp", {"none": None, "sd15": FAKE["sd15"]})
    row = row_of(table, "sd15", "A")
    assert row["seeds"] == 3 and row["d_seeds"] == 2
    # own AUC: all three of its seeds; Δ: seeds 1 and 2 only (0.08, 0.01)
    assert (row["auc"], row["auc_low"], row["auc_high"]) == pytest.approx(
        t_by_hand([0.80, 0.75, 0.90]))
    assert (row["d_auc"], row["d_auc_low"], row["d_auc_high"]) == pytest.approx(
        t_by_hand([0.08, 0.01]))
    assert "matched seeds 1, 2 only" in row["note"] and "seeds differ" in row["note"]
    avg = row_of(table, "sd15", AVG)
    assert avg["d_seeds"] == 2 and "matched seeds 1, 2 only" in avg["note"]
    assert (avg["d_auc"], avg["d_auc_low"], avg["d_auc_high"]) == pytest.approx(
        t_by_hand([0.08, 0.01]))
    assert row_of(table, "none", "A")["note"] == ""
    shown = display_table(table)
    assert shown[(shown["teacher"] == "sd15") & (shown["test set"] == "A")]["seeds"].iloc[0] \
        == "3 (2 matched)"


def test_a_seed_missing_a_test_set_leaves_the_avg(tmp_path):
    aucs = {**{("none", s): {"A": 0.7, "B": 0.6} for s in range(3)},
            ("sd15", 0): {"A": 0.8, "B": 0.7}, ("sd15", 1): {"A": 0.75, "B": 0.6},
            ("sd15", 2): {"A": 0.9}}  # seed 2 has no B
    table = comparison_table(fake_comparison(tmp_path, aucs), "cmp",
                             {"none": None, "sd15": FAKE["sd15"]})
    avg = row_of(table, "sd15", AVG)
    assert avg["d_seeds"] == 2 and "seed(s) 2 left out" in avg["note"]
    assert (avg["d_auc"], avg["d_auc_low"], avg["d_auc_high"]) == pytest.approx(
        t_by_hand([0.1, 0.025]))
    assert row_of(table, "sd15", "A")["d_seeds"] == 3  # per test set: every matched seed


def test_markdown_escapes_pipes():
    frame = pd.DataFrame({"a|b": ["x|y"], "c": ["z"]})
    assert markdown(frame) == "| a\\|b | c |\n| --- | --- |\n| x\\|y | z |"
    label = "sd15[path=/m/a|b]"
    table = tiny_table().assign(teacher=["none", label])
    for line in markdown(display_table(table)).splitlines():
        unescaped = line.replace("\\|", "")
        assert unescaped.count("|") == len(display_table(table).columns) + 1, line


def frames_of(rng: np.random.Generator, signal: float, datasets=("A", "B")) -> pd.DataFrame:
    """Per-frame scores: 10 real + 10 fake videos per test set, 3 frames each."""
    rows = []
    for dataset in datasets:
        for v in range(20):
            label = int(v >= 10)
            centre = signal * label + rng.normal(0, 0.5)  # shared by the video's frames
            for f in range(3):
                rows.append({"dataset": dataset, "path": f"{dataset}/v{v:02d}/f{f}.png",
                             "video_id": f"{dataset}-v{v:02d}", "label": label,
                             "score": centre + rng.normal(0, 0.3)})
    return pd.DataFrame(rows)


def test_avg_two_stage_interval_and_delong_from_scores(tmp_path):
    from ablate.metrics import bootstrap_values, eer
    from ablate.report.stats import two_stage_interval

    rng = np.random.default_rng(7)
    signals = {"none": [0.8, 0.9, 1.0], "sd15": [1.4, 1.0, 1.2]}
    scores = {(t, s): frames_of(rng, signals[t][s]) for t in signals for s in range(3)}
    aucs = {key: {d: roc_auc_score(f[f["dataset"] == d]["label"], f[f["dataset"] == d]["score"])
                  for d in ("A", "B")} for key, f in scores.items()}
    db = fake_comparison(tmp_path, aucs, {k: v.copy() for k, v in scores.items()})
    table = comparison_table(db, "cmp", {"none": None, "sd15": FAKE["sd15"]}, n_boot=200)
    avg = row_of(table, "sd15", AVG)
    assert avg["d_2s_method"] == TWO_STAGE and avg["d_2s_seeds"] == 3
    # the same centre as the interval over seed means (the stored AUCs are the scores')
    diffs = [np.mean([aucs[("sd15", s)][d] - aucs[("none", s)][d] for d in "AB"])
             for s in range(3)]
    centre, low, high = t_by_hand(diffs)
    assert avg["d_auc_2s"] == pytest.approx(centre) == avg["d_auc"]
    assert (avg["d_auc_low"], avg["d_auc_high"]) == pytest.approx((low, high))
    # the two-stage interval adds test-sample variance: never narrower than over seeds alone
    assert avg["d_auc_2s_low"] <= low + 1e-12 and avg["d_auc_2s_high"] >= high - 1e-12
    # and is the two-stage interval of each seed's Δ under video resamples that draw the
    # same videos for every run (bootstrap seed 0, frames in path order)
    for metric in ("auc", "eer"):
        observed, replicates = [], []
        for s in range(3):
            obs, reps = [], []
            for d in "AB":
                a, b = (scores[(t, s)][scores[(t, s)]["dataset"] == d].sort_values("path")
                        for t in ("sd15", "none"))
                fn = roc_auc_score if metric == "auc" else eer
                obs.append(fn(a["label"], a["score"]) - fn(b["label"], b["score"]))
                reps.append(bootstrap_values(a["video_id"].to_numpy(), a["label"].to_numpy(),
                                             a["score"].to_numpy(), metric, n_boot=200,
                                             seed=0)[0]
                            - bootstrap_values(b["video_id"].to_numpy(), b["label"].to_numpy(),
                                               b["score"].to_numpy(), metric, n_boot=200,
                                               seed=0)[0])
            observed.append(obs)
            replicates.append(reps)
        want = two_stage_interval(np.array(observed), np.array(replicates))
        got = [avg[f"d_{metric}_2s"], avg[f"d_{metric}_2s_low"], avg[f"d_{metric}_2s_high"]]
        assert got == pytest.approx(want[:3], abs=1e-12)
    # DeLong per test set (Avg rows have none); Holm over the 2 test sets, by hand
    p = [row_of(table, "sd15", d)["p_delong"] for d in "AB"]
    assert np.isfinite(p).all() and np.isnan(avg["p_delong"])
    holm = np.minimum(1, np.maximum.accumulate((2 - np.arange(2)) * np.sort(p)))
    got = np.sort([row_of(table, "sd15", d)["p_delong_holm"] for d in "AB"])
    assert got == pytest.approx(holm)

    folder = tmp_path / "out"
    from ablate.compare_output import write_comparison

    write_comparison(table, folder)
    md = (folder / "compare.md").read_text()
    for text in ("ΔAUC vs none [95% CI over seeds]", "ΔAUC [95% CI, seeds × videos]",
                 "MDE ΔAUC", "t over matched seeds", TWO_STAGE,
                 "t over seed means (test sets averaged within each seed)",
                 "not a verdict on a teacher", "test-sample variance"):
        assert text in md, text
    csv = pd.read_csv(folder / "compare.csv")
    assert list(csv.columns) == [*TABLE_COLUMNS, "params_frozen"]


def test_one_seed_note_says_test_sample_only(tmp_path):
    from ablate.compare_output import write_comparison

    write_comparison(tiny_table(), tmp_path / "cmp")
    md = (tmp_path / "cmp" / "compare.md").read_text()
    assert "video bootstrap (1 seed: test sample only)" in md
    assert "no interval (1 seed)" in md and "--seeds 3" in md
    assert "not a verdict on a teacher" in md


def test_the_cpu_default_is_the_shipped_space_and_the_recipe_it_always_was():
    """Read from search_spaces/compare-cpu.yaml; the values are those the default had as
    code before it moved there, so every stored comparison keeps its recipe hash."""
    from ablate.compare import cpu_default

    fixed, tests = cpu_default()
    assert fixed == {"backbone": "tiny", "image_size": 64, "data.train": "synth-blend",
                     "train": "cpu", "train.steps": 240, "train.batch_size": 8,
                     "train.eval_every": 40, "train.log_every": 20}
    assert tests == ["synth-blend", "synth-colour", "synth-warp", "synth-lowres"]
