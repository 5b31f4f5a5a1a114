"""Every metric row says how it was computed: evaluate a tiny run, then read metrics.csv, the
results DB and the report; the hash of the scored rows; the eval recipe keys."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import run_cli
from sklearn.metrics import roc_auc_score, roc_curve

from ablate.checkpoint import RUN_INFO
from ablate.core.errors import AblateError
from ablate.data.manifest import load_manifest
from ablate.data.synthetic import ensure_benchmark
from ablate.evaluate import evaluate_run
from ablate.provenance import manifest_sha
from ablate.recipe import compose, recipe_hash, result_dict
from ablate.results import ResultsDB

TINY = ["backbone=tiny", "image_size=32", "train=cpu", "train.steps=4", "train.batch_size=4",
        "data.train=synth-blend", "data.tests=[synth-colour,synth-warp]"]
PROVENANCE = ["aggregation", "threshold", "threshold_from", "n_boot", "boot_seed", "boot_unit",
              "eer_convention", "manifest_sha"]


@pytest.fixture(scope="module")
def run_folder(tiny_run) -> Path:
    """The session's tiny run (tests/conftest.py), trained once per worker."""
    return tiny_run


@pytest.fixture(scope="module")
def colour_test() -> pd.DataFrame:
    """synth-colour's test rows, with an identity per video pair (2 videos share one)."""
    table = load_manifest(ensure_benchmark())
    rows = table[(table["dataset"] == "synth-colour") & (table["split"] == "test")].copy()
    videos = sorted(rows["video_id"].unique())
    pair = {v: f"person{i // 2}" for i, v in enumerate(videos)}
    rows["identity"] = rows["video_id"].map(pair)
    return rows.drop(columns=["path_text"]).reset_index(drop=True)


def _write(rows: pd.DataFrame, path: Path) -> str:
    """A manifest as a researcher's CSV (absolute paths, with the optional identity column)."""
    rows.to_csv(path, index=False)
    return str(path)


# ---------------------------------------------------------------- the scored rows' hash


def test_manifest_sha_ignores_order_and_location_but_not_content(colour_test):
    sha = manifest_sha(colour_test)
    assert sha == manifest_sha(colour_test.sample(frac=1.0, random_state=0))  # reordered
    moved = colour_test.assign(path=colour_test["path"].str.replace(
        str(Path(colour_test["path"].iloc[0]).parents[3]), "/elsewhere/data", regex=False))
    assert sha == manifest_sha(moved)  # the same tree in another folder
    changed = {
        "row dropped": colour_test.iloc[1:],
        "label": colour_test.assign(label=1 - colour_test["label"]),
        "path": colour_test.assign(path=colour_test["path"].str.replace("f00", "f99")),
        "video_id": colour_test.assign(video_id=colour_test["video_id"] + "x"),
        "split": colour_test.assign(split="val"),
    }
    for what, rows in changed.items():
        assert manifest_sha(rows) != sha, what
    assert manifest_sha(colour_test.assign(method="other")) == sha  # not a hashed column


# ---------------------------------------------------------------- eval -> csv -> DB


def _deepfakebench_eer(y, s) -> float:
    fpr, tpr, _ = roc_curve(y, s, pos_label=1)
    return float(fpr[np.nanargmin(np.absolute(1 - tpr - fpr))])


def test_eval_rows_carry_provenance_into_metrics_csv_and_the_db(run_folder, colour_test,
                                                                tmp_path):
    ident = _write(colour_test, tmp_path / "ident.csv")
    shuffled = _write(colour_test.sample(frac=1.0, random_state=1), tmp_path / "shuffled.csv")
    dropped = _write(colour_test.iloc[1:], tmp_path / "dropped.csv")
    scores_file = tmp_path / "scores.csv"
    metrics, folder = evaluate_run(run_folder, [ident, "synth-warp", shuffled, dropped],
                                   n_boot=40, progress=False, scores_out=scores_file,
                                   eer="nearest")
    csv = pd.read_csv(folder / "metrics.csv")
    assert set(PROVENANCE) <= set(csv.columns)
    threshold = json.loads((run_folder / RUN_INFO).read_text())["selection"]["threshold"]
    for name, unit in ((ident, "identity"), ("synth-warp", "video")):
        mine = csv[csv["dataset"] == name].set_index(["level", "metric"])
        assert set(mine["boot_unit"]) == {unit} and set(mine["n_boot"]) == {40}
        assert set(mine["boot_seed"]) == {0}  # the recipe's seed
        assert mine.loc[("frame", "eer"), "eer_convention"] == "nearest"
        assert mine.loc[("video", "eer"), "eer_convention"] == "nearest"
        assert mine.loc[("frame", "auc"), "eer_convention"] != "nearest"  # not an EER row
        assert mine.loc[("video", "auc"), "aggregation"] == "mean"
        assert mine.loc[("frame", "auc"), "aggregation"] == "none"
        assert mine.loc[("frame", "acc_thr"), "threshold"] == pytest.approx(threshold)
        assert mine.loc[("frame", "acc_thr"), "threshold_from"] == "source val EER point"
        assert mine.loc[("frame", "acc_05"), "threshold"] == 0.5
        assert mine.loc[("frame", "auc"), "threshold_from"] == "none"
        scores = pd.read_csv(scores_file).query("dataset == @name")
        assert mine.loc[("frame", "eer"), "value"] == pytest.approx(
            _deepfakebench_eer(scores["label"], scores["score"]), abs=1e-12)
        assert mine.loc[("frame", "auc"), "value"] == pytest.approx(
            roc_auc_score(scores["label"], scores["score"]))
    sha = csv.groupby("dataset")["manifest_sha"].unique().map(lambda v: v.tolist())
    assert all(len(v) == 1 for v in sha)  # one hash per test set, on all its rows
    assert sha[ident] == sha[shuffled] and sha[ident] != sha[dropped]
    assert sha[ident] == [manifest_sha(colour_test)]

    with ResultsDB(f"sqlite:///{tmp_path / 'r.db'}") as db:
        sid = db.start_sweep("s", "quick", {}, "v")
        db.record_trial(sid, "t:0", recipe_hash="h", recipe={}, seed=0, status="finished",
                        started=None, ended=None, metrics=metrics.to_dict("records"))
        stored = db.metrics().set_index(["dataset", "level", "metric"])
    expected = csv.set_index(["dataset", "level", "metric"])
    for column in PROVENANCE:
        got, want = stored[column].sort_index(), expected.loc[stored.index, column].sort_index()
        assert got.isna().tolist() == want.isna().tolist(), column
        known = want.notna()
        if column == "threshold":
            np.testing.assert_allclose(got[known].astype(float), want[known].astype(float))
        else:
            assert got[known].astype(str).tolist() == want[known].astype(str).tolist(), column


def test_identity_unit_without_identities_is_one_line_and_writes_nothing(
        run_folder, colour_test, tmp_path, monkeypatch):
    import ablate.evaluate

    def no_scoring(*_args, **_kw):
        raise AssertionError("a frame was scored before the settings were checked")

    monkeypatch.setattr(ablate.evaluate, "score", no_scoring)
    metrics_csv = run_folder / "metrics.csv"
    before = metrics_csv.read_bytes() if metrics_csv.exists() else None
    ident = _write(colour_test, tmp_path / "ident.csv")  # fine; the second test set is not
    code, _, err = run_cli("eval", str(run_folder), "--test", ident, "--test", "synth-warp",
                           "--quiet", "--bootstrap-unit", "identity", cwd=tmp_path)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "synth-warp" in err and "no identity column" in err and "bootstrap_unit=video" in err
    assert (metrics_csv.read_bytes() if metrics_csv.exists() else None) == before


def test_eval_cli_says_the_convention_and_unit(run_folder, colour_test, tmp_path):
    """Through a real process: the printed summary names the EER convention and the unit."""
    ident = _write(colour_test, tmp_path / "ident.csv")
    exe = Path(sys.executable).parent / "ablate"
    proc = subprocess.run([str(exe), "eval", str(run_folder), "--test", ident, "--quiet",
                           "--bootstrap", "20", "--eer", "nearest"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "ABLATE_CACHE": str(Path("results").resolve())})
    assert proc.returncode == 0, proc.stderr
    assert "EER: nearest ROC point (DeepfakeBench's)" in proc.stdout, proc.stdout
    assert "run bootstrap: 20 resamples by identity (seed 0)" in proc.stdout, proc.stdout


# ---------------------------------------------------------------- recipe keys


def test_eval_keys_at_their_defaults_keep_old_recipe_hashes():
    cfg = compose([])
    assert (cfg.eval.eer, cfg.eval.bootstrap_unit) == ("interpolated", "auto")
    # a recipe saved before the eval keys existed: the same config without them
    from omegaconf import OmegaConf, open_dict

    old = OmegaConf.create(OmegaConf.to_container(cfg))
    with open_dict(old):
        del old["eval"]
    assert recipe_hash(cfg) == recipe_hash(old) and "eval" not in result_dict(cfg)
    nearest = compose(["eval.eer=nearest"])
    assert recipe_hash(nearest) != recipe_hash(cfg)
    assert result_dict(nearest)["eval"] == {"eer": "nearest"}
    assert recipe_hash(compose(["eval.bootstrap_unit=video"])) != recipe_hash(cfg)
    with pytest.raises(AblateError, match="eval.eer must be one of interpolated, nearest"):
        compose(["eval.eer=brentq"])
    with pytest.raises(AblateError, match="eval.bootstrap_unit must be one of"):
        compose(["eval.bootstrap_unit=frame"])


# ---------------------------------------------------------------- the report says which


def _record_sweep(url: str, conventions: list[str]) -> None:
    t0 = datetime(2025, 3, 1)
    with ResultsDB(url) as db:
        sid = db.start_sweep("s", "modules", {}, "v")
        for i, convention in enumerate(conventions):
            rows = [{"dataset": "synth-blend", "split": "val", "level": "frame",
                     "metric": "auc", "value": 0.9}]
            for metric, value in (("auc", 0.8 - i / 100), ("eer", 0.2 + i / 100)):
                rows.append({"dataset": "synth-colour", "split": "test", "level": "frame",
                             "metric": metric, "value": value, "ci_low": value - 0.02,
                             "ci_high": value + 0.02, "n": 100, "n_boot": 500, "boot_seed": 0,
                             "boot_unit": "identity", "aggregation": "none",
                             "manifest_sha": "abc",
                             "eer_convention": convention if metric == "eer" else None})
            rows.append({"dataset": "synth-colour", "split": "test", "level": "video",
                         "metric": "auc", "value": 0.85, "n": 10, "aggregation": "mean",
                         "n_boot": 500, "boot_seed": 0, "boot_unit": "identity",
                         "manifest_sha": "abc"})
            recipe = {"filter": {"name": ["paper", "code"][i]}, "guide": {"name": "controlnet"},
                      "data": {"train": "synth-blend", "tests": ["synth-colour"]}, "seed": 0}
            db.record_trial(sid, f"t{i}:0", recipe_hash=f"h{i}", recipe=recipe, seed=0,
                            status="finished", started=t0, ended=t0 + timedelta(minutes=1),
                            metrics=rows)


@pytest.mark.parametrize("conventions, says", [
    (["interpolated", "interpolated"], "EER: interpolated (DiffusionFake's brentq)"),
    (["interpolated", "nearest"], "EER: mixed (interpolated (DiffusionFake's brentq), "
                                  "nearest ROC point (DeepfakeBench's)): not comparable"),
    ([None, None], "EER: unknown;"),  # rows recorded before schema v3 said nothing
])
def test_report_captions_say_the_eer_convention_and_bootstrap_unit(tmp_path, conventions,
                                                                   says):
    from ablate.report import build_report

    url = f"sqlite:///{tmp_path / 'r.db'}"
    _record_sweep(url, conventions)
    report = build_report("s", url, tmp_path / "out", "md,csv")
    text = (tmp_path / "out" / "report.md").read_text()
    caption = [ln for ln in text.splitlines() if "Metric provenance:" in ln]
    assert caption and all(says in ln for ln in caption), caption
    assert "run bootstrap: 500 resamples by identity (seed 0)" in caption[0]
    assert "video score: mean of its frames' probabilities" in caption[0]
    assert "every trial scored the same rows of each test set" in caption[0]
    assert report.folder == tmp_path / "out"


def test_each_trials_own_bootstrap_seed_is_not_called_incomparable():
    """Seeded trials resample with their own seed by design (the demo's 3 seeds): the caption
    says so instead of flagging the rows as not comparable."""
    from ablate.report.provenance import provenance_note

    rows = pd.DataFrame([{"dataset": "synth-colour", "split": "test", "level": "frame",
                          "metric": "eer", "eer_convention": "interpolated", "n_boot": 500,
                          "boot_seed": seed, "boot_unit": "video"} for seed in (0, 1, 2)])
    note = provenance_note(rows)
    assert "500 resamples by video (seed each trial's own)" in note, note
    assert "not comparable" not in note, note
    assert "(seed 0)" in provenance_note(rows[rows["boot_seed"] == 0])
