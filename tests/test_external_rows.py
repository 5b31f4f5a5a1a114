"""Published rows (`ablate report --external`): shown apart, never in a statistic.

A DB of measured rows is reported with and without an external file whose numbers are
extreme (0 and 100): every CSV the report writes must be the same, and its means equal a
numpy recomputation from the DB rows written here. Bad files are one-line errors.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import run_cli
from scipy.stats import rankdata

from ablate.core.errors import AblateError
from ablate.report import build_report
from ablate.report.external import load_external
from ablate.results import ResultsDB

T0 = datetime(2025, 5, 1, 12, 0, 0)
TESTS = ["celebdf", "dfd", "wilddeepfake"]
SEEDS = [0, 1, 2]
# recipe (filter, or None for the plain baseline) -> test set -> AUC per seed
AUC = {"paper": {"celebdf": [0.80, 0.83, 0.84], "dfd": [0.90, 0.93, 0.95],
                 "wilddeepfake": [0.70, 0.74, 0.73]},
       "no_mhsa": {"celebdf": [0.78, 0.79, 0.83], "dfd": [0.88, 0.90, 0.92],
                   "wilddeepfake": [0.69, 0.70, 0.74]},
       "code": {"celebdf": [0.75, 0.81, 0.80], "dfd": [0.91, 0.89, 0.90],
                "wilddeepfake": [0.72, 0.71, 0.69]},
       None: {"celebdf": [0.70, 0.74, 0.72], "dfd": [0.85, 0.86, 0.84],
              "wilddeepfake": [0.66, 0.65, 0.68]}}
EXTREME = {"source": "A made-up paper, Table 9",
           "protocol": {"train": {"data": "FF++", "compression": "c23", "frames_per_video": 270},
                        "test": {"frames_per_video": 100, "level": "frame"}},
           "tests": {"CDF": "celebdf", "DFD": "dfd", "WDF": "wilddeepfake"},
           "rows": [{"label": "EXT-HIGH", "auc": {"CDF": 100.0, "DFD": 100.0, "WDF": 100.0,
                                                  "avg": 100.0},
                     "eer": {"CDF": 0.0, "DFD": 0.0, "WDF": 0.0, "avg": 0.0}},
                    {"label": "EXT-LOW", "auc": {"CDF": 0.0, "DFD": 0.0, "WDF": 0.0,
                                                 "avg": 0.0},
                     "eer": {"CDF": 100.0, "DFD": 100.0, "WDF": 100.0}}]}


def recipe(filt: str | None, seed: int) -> dict:
    common = {"backbone": {"name": "tiny"}, "train": {"lr": 1e-4},
              "data": {"train": "ffpp", "tests": TESTS}, "image_size": 64, "seed": seed}
    if filt is None:
        return {**common, "guide": {"name": "none"}}
    return {**common, "filter": {"name": filt}, "weight": {"name": "paper"},
            "guide": {"name": "controlnet"}, "teacher": {"name": "tiny-sd15"}}


def label(filt: str | None) -> str:
    return "guide=none" if filt is None else f"filter={filt} guide=controlnet"


@pytest.fixture(scope="module")
def db_url(tmp_path_factory) -> str:
    url = f"sqlite:///{tmp_path_factory.mktemp('ext') / 'ext.db'}"
    with ResultsDB(url) as db:
        sid = db.start_sweep("x", "modules", {"objectives": [
            {"metric": "val_auc", "mode": "max"}, {"metric": "params_trainable",
                                                   "mode": "min"}]}, "v1")
        for k, (filt, per) in enumerate(AUC.items()):
            for seed in SEEDS:
                rows = [{"dataset": "ffpp", "split": "val", "level": "frame", "metric": "auc",
                         "value": 0.9 + 0.01 * k + 0.001 * seed}]
                for test in TESTS:
                    auc = per[test][seed]
                    rows += [{"dataset": test, "split": "test", "level": "frame",
                              "metric": "auc", "value": auc},
                             {"dataset": test, "split": "test", "level": "frame",
                              "metric": "eer", "value": round(1 - auc, 6)}]
                db.record_trial(sid, f"{filt}:{seed}", recipe_hash=f"{filt}-{seed}",
                                recipe=recipe(filt, seed), seed=seed, status="finished",
                                started=T0, ended=T0, metrics=rows,
                                params_trainable=1000 - 100 * k)
    return url


@pytest.fixture(scope="module")
def both(db_url, tmp_path_factory):
    """The report without, and with, the extreme external rows (plus the shipped ones)."""
    folder = tmp_path_factory.mktemp("reports")
    ext = folder / "extreme.yaml"
    ext.write_text(yaml.safe_dump(EXTREME))
    plain = build_report("x", db_url, folder / "plain", formats="md,html,tex,csv")
    with_ext = build_report("x", db_url, folder / "ext", formats="md,html,tex,csv",
                            external=[str(ext), "diffusionfake"])
    return plain, with_ext


def test_external_rows_change_no_statistic(both):
    plain, with_ext = both
    csvs = sorted(p.name for p in plain.folder.glob("*.csv"))
    assert {"main.csv", "ablation.csv", "guidance.csv", "ranks.csv", "pareto.csv",
            "baseline_vs_guidance.csv", "ablation_pairs.csv"} <= set(csvs)
    for name in csvs:  # every number the report computes, unchanged
        a, b = (pd.read_csv(f.folder / name) for f in both)
        pd.testing.assert_frame_equal(a, b, obj=name)
    assert sorted(p.name for p in with_ext.folder.glob("*.csv")) == sorted(
        [*csvs, "external.csv"])
    # the measured rows of the main table (their bold "best" marks included) are unchanged
    measured = [line for line in plain.main_markdown.splitlines() if line.startswith("| ")]
    assert measured == [line for line in with_ext.main_markdown.splitlines()
                        if line.startswith("| ") and "†" not in line]
    assert "**100.00" not in with_ext.main_markdown and "**0.00" not in with_ext.main_markdown


def test_the_means_are_the_db_rows_means(both):
    """Recomputed with numpy from AUC above: per set, the Avg (sets within seed, then seeds),
    and the mean ranks within each test set."""
    _, with_ext = both
    main = pd.read_csv(with_ext.folder / "main.csv")
    auc = main[(main["level"] == "frame") & (main["metric"] == "auc")].set_index(
        ["label", "dataset"])
    assert set(auc.index.get_level_values("label")) == {label(f) for f in AUC}
    for filt, per in AUC.items():
        for test in TESTS:
            assert auc.loc[(label(filt), test), "mean"] == pytest.approx(np.mean(per[test]))
        per_seed = np.mean([per[t] for t in TESTS], axis=0)
        assert auc.loc[(label(filt), "avg"), "mean"] == pytest.approx(per_seed.mean())
    means = np.array([[np.mean(AUC[f][t]) for t in TESTS] for f in AUC])  # recipes x sets
    mean_ranks = rankdata(-means, axis=0).mean(axis=1)
    got = pd.read_csv(with_ext.folder / "ranks.csv").set_index("recipe")["mean_rank"]
    assert len(got) == len(AUC) - 1  # every recipe but the reference, ranked against it
    for filt, expected in zip(AUC, mean_ranks, strict=True):
        if label(filt) in got:
            assert got[label(filt)] == pytest.approx(expected)


def test_published_rows_are_typeset_apart(both):
    _, with_ext = both
    md = with_ext.main_markdown
    assert "| *EXT-HIGH †* | *100.00* | *0.00* | *100.00* |" in md
    assert md.count("*reported*") == 4  # EXT-HIGH, EXT-LOW, and the paper's EN-B4 rows
    # the paper's average is over 5 sets, this report has 3: its Avg cells stay empty
    assert ("| *EN-B4 + DiffusionFake †* | *83.17* | - | *91.71* | - | *75.17* | - | - | - | "
            "*reported* |") in md
    assert "never in a mean, interval, bold, rank or test" in md
    html = (with_ext.folder / "report.html").read_text()
    assert '<tr class="apart"><td class="l">EXT-HIGH †</td>' in html
    assert "tr.apart td{color:#888" in html
    tex = (with_ext.folder / "main.tex").read_text()
    assert r"\textcolor{gray}{EXT-HIGH \textsuperscript{\dag}}" in tex
    text = (with_ext.folder / "report.md").read_text()
    assert "## Published results (reported, not measured)" in text
    assert "Source: A made-up paper, Table 9" in text and "ViT-B + DiffusionFake †" in text
    ext = pd.read_csv(with_ext.folder / "external.csv")
    assert set(ext["kind"]) == {"reported"}
    high = ext[(ext["label"] == "EXT-HIGH") & (ext["metric"] == "auc")]
    assert set(high["dataset"]) == {*TESTS, "avg"} and set(high["value_pct"]) == {100.0}


def test_the_shipped_table_is_the_papers(db_url):
    rows = {r.label: r for r in load_external(["diffusionfake"], [], {})}
    sets = ["celebdf", "wilddeepfake", "dfdc_preview", "dfd", "diffswap"]
    ours = rows["EN-B4 + DiffusionFake"]
    assert [ours.values["auc"][s] for s in sets] == [83.17, 75.17, 77.35, 91.71, 82.02]
    assert ours.avg == {"auc": 81.88}
    assert [rows["EN-B4"].values["auc"][s] for s in sets] == [73.51, 70.04, 70.51, 87.57, 77.38]
    assert rows["EN-B4"].avg == {"auc": 75.80}
    for name, avg in (("ViT-B + DiffusionFake", 83.78), ("ViT-B", 77.44)):
        assert rows[name].values == {} and rows[name].avg == {"auc": avg}  # averages only
    p = ours.protocol
    assert p["train"] == {"data": "FF++ (Deepfakes, Face2Face, FaceSwap, NeuralTextures)",
                          "compression": "c23", "frames_per_video": 270}
    assert p["test"]["frames_per_video"] == 100 and p["test"]["level"] == "frame"
    assert p["checkpoint_selection"] is None  # not stated: null, not guessed


BAD = [
    ({**EXTREME, "protocol": None}, "row 'EXT-HIGH' has no protocol"),
    ({**EXTREME, "source": None}, "row 'EXT-HIGH' has no `source`"),
    ({**EXTREME, "tests": {"CDF": "celebdf-v9", "DFD": "dfd", "WDF": "wilddeepfake"}},
     "unknown test set 'CDF'"),
    ({**EXTREME, "rows": [{"label": "R", "auc": {"CDF": "high"}}]}, "'high' is not a number"),
    ({**EXTREME, "rows": [{"label": "R", "auc": {"CDF": 183.2}}]}, "183.2 is not a number in"),
    ({**EXTREME, "rows": [{"label": "R", "auc": {"CDF": True}}]}, "True is not a number"),
    ({**EXTREME, "protocol": {"test": {"level": "frame"}, "frames": 3}},
     "unknown protocol key 'frames'"),
    ({**EXTREME, "protocol": {"train": {"compression": "c23"}}}, "protocol test.level must be"),
    ({**EXTREME, "rows": []}, "needs a non-empty `rows:` list"),
    ({**EXTREME, "rows": [{"label": "R"}]}, "row 'R' has no numbers"),
]


@pytest.mark.parametrize(("content", "says"), BAD, ids=[s for _, s in BAD])
def test_a_bad_external_file_is_one_line(db_url, tmp_path, content, says):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(content))
    with pytest.raises(AblateError) as err:
        build_report("x", db_url, tmp_path / "rep", formats="csv", external=[str(path)])
    assert says in str(err.value) and "\n" not in str(err.value), str(err.value)
    assert str(path) in str(err.value)
    assert not (tmp_path / "rep").exists()  # refused before anything is written


def test_the_cli_takes_shipped_names_and_refuses_unknown_ones(db_url, tmp_path):
    code, out, _ = run_cli("report", "--sweep", "x", "--db", db_url, "--out",
                           str(tmp_path / "ok"), "--format", "md",
                           "--external", "diffusionfake", cwd=tmp_path)
    assert code == 0 and "EN-B4 + DiffusionFake †" in out
    code, _, err = run_cli("report", "--sweep", "x", "--db", db_url, "--out",
                           str(tmp_path / "no"), "--external", "nosuchpaper", cwd=tmp_path)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "not a shipped name (shipped: diffusionfake)" in err
    assert Path(tmp_path / "no").exists() is False
