"""The report's "Structure search" section, from a results DB written by hand (no training).

A search `s` over filter, filter.heads (conditional: only for filter in paper, code) and
train.lr (log scale), and its confirmation `s-confirm`: 4 recipes on 3 fresh seeds and 2
test sets, with known AUCs, params and peak memory. Every expected number is worked here
(front by hand; means and intervals with numpy and scipy), never read from the report's code.
"""

from __future__ import annotations

import json
import re
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution
from scipy import stats

from ablate.report import build_report
from ablate.report.data import load_sweep
from ablate.report.structure import (
    confirmed_front,
    searched_params,
    slice_data,
    trial_params,
)
from ablate.results import ResultsDB

T0 = datetime(2026, 1, 5, 9, 0, 0)
TESTS = ["synth-colour", "synth-warp"]
SPACE = """\
fixed:
  teacher: tiny-sd15
params:
  filter: {choice: [paper, code, no_mhsa]}
  filter.heads: {choice: [2, 4], when: {filter: [paper, code]}}
  train.lr: {float: [1.0e-5, 1.0e-3], log: true}
objectives:
  - {metric: val_auc, mode: max}
confirm: {top: 4, seeds: 3}
"""
# search recipes (filter, heads in the composed recipe, lr) -> (val AUC, test AUC, params)
# no_mhsa's composed recipe still carries heads: 4 (the config's default), but the space
# never sampled it there (`when`), so its slice must leave those trials out.
SEARCH = {
    "A": (("paper", 4, 1e-4), 0.90, 0.80, 1000),
    "B": (("code", 2, 3e-4), 0.88, 0.78, 500),
    "C": (("no_mhsa", 4, 1e-4), 0.86, 0.75, 800),
    "D": (("paper", 2, 1e-5), 0.84, 0.70, 200),
    # search only, never confirmed: the best AUC at the lowest cost. Its numbers are
    # selected-on, so it must not enter the confirmed front (it would dominate A-D).
    "E": (("code", 4, 1e-3), 0.99, 0.95, 10),
    "F": (("no_mhsa", 4, 5e-5), 0.80, 0.66, 900),
}
HAS_HEADS = {"A", "B", "D", "E"}  # filter in (paper, code)
# confirmation: recipe -> per test set, AUC for seeds 3, 4, 5; peak memory (MB)
CONFIRM = {
    "A": {"synth-colour": [0.82, 0.84, 0.80], "synth-warp": [0.78, 0.80, 0.76]},
    "B": {"synth-colour": [0.80, 0.79, 0.82], "synth-warp": [0.76, 0.79, 0.74]},
    "C": {"synth-colour": [0.77, 0.76, 0.78], "synth-warp": [0.73, 0.75, 0.71]},
    "D": {"synth-colour": [0.72, 0.71, 0.73], "synth-warp": [0.69, 0.68, 0.67]},
}
MEM = {"A": 3000.0, "B": 2000.0, "C": 1000.0, "D": 1500.0}
CONFIRM_SEEDS = [3, 4, 5]
# Hand-worked fronts (higher AUC, lower cost). Avg AUC: A 0.80 > B 0.783 > C 0.75 > D 0.70.
# params A 1000, B 500, C 800, D 200: C is beaten by B (higher AUC, fewer params).
# peak mem A 3000, B 2000, C 1000, D 1500: D is beaten by C (higher AUC, less memory).
FRONT = {"params_trainable": {"A", "B", "D"}, "peak_mem_mb": {"A", "B", "C"}}


def recipe(key: tuple[str, int, float], seed: int) -> dict:
    filt, heads, lr = key
    return {"backbone": {"name": "tiny"}, "filter": {"name": filt, "heads": heads},
            "weight": {"name": "paper"}, "guide": {"name": "controlnet"},
            "teacher": {"name": "tiny-sd15"}, "train": {"lr": lr},
            "data": {"train": "synth-blend", "tests": TESTS}, "image_size": 64, "seed": seed}


def auc_rows(val: float | None, tests: dict[str, float]) -> list[dict]:
    rows = [{"dataset": t, "split": "test", "level": "frame", "metric": "auc", "value": v}
            for t, v in tests.items()]
    if val is not None:
        rows.append({"dataset": "synth-blend", "split": "val", "level": "frame",
                     "metric": "auc", "value": val})
    return rows


def add_study(url: str) -> None:
    """The search's Optuna study, with a warm-start trial that was never trained here:
    filter=no_mhsa, lr 1e-3 (a value no DB row has), which must appear nowhere."""
    study = optuna.create_study(study_name="s", storage=url, direction="maximize")
    dists = {"filter": CategoricalDistribution(["paper", "code", "no_mhsa"]),
             "train.lr": FloatDistribution(1e-5, 1e-3, log=True)}
    for name, ((filt, _, lr), val, _, _) in SEARCH.items():
        study.add_trial(optuna.trial.create_trial(
            params={"filter": filt, "train.lr": lr}, distributions=dists, values=[val],
            user_attrs={"label": name}))
    study.add_trial(optuna.trial.create_trial(
        params={"filter": "no_mhsa", "train.lr": 7e-4}, distributions=dists, values=[0.97],
        user_attrs={"warm_start_from": "old"}))


def build_db(url: str, confirm: bool = True, asked: bool = True) -> dict[str, int]:
    """The DB; returns search name -> counted search trial id."""
    ids = {}
    with ResultsDB(url) as db:
        settings = {"objectives": [{"metric": "val_auc", "mode": "max"}], "sampler": "tpe",
                    "space_text": SPACE if asked else SPACE.replace("confirm:", "# confirm:"),
                    **({"confirmation": "s-confirm"} if asked else {})}
        sid = db.start_sweep("s", "structure", settings, "v1")
        for name, (key, val, test, params) in SEARCH.items():
            ids[name] = db.record_trial(
                sid, f"{name}:0", recipe_hash=f"{name}-0", recipe=recipe(key, 0), seed=0,
                status="finished", started=T0, ended=T0 + timedelta(minutes=2),
                params_trainable=params, peak_mem_mb=MEM.get(name, 500.0),
                metrics=auc_rows(val, dict.fromkeys(TESTS, test)))
        # a failed trial: no result, no point anywhere
        db.record_trial(sid, "G:0", recipe_hash="G-0", recipe=recipe(("paper", 2, 2e-4), 0),
                        seed=0, status="failed", started=T0, ended=T0, error="boom",
                        metrics=auc_rows(0.5, dict.fromkeys(TESTS, 0.5)))
        add_study(db.optuna_storage_url)
        if confirm:
            cid = db.start_sweep("s-confirm", "s-confirm", {
                "objectives": [{"metric": "val_auc", "mode": "max"}], "confirms": "s",
                "sampler": "grid (explicit recipes)"}, "v1")
            for name, per_test in CONFIRM.items():
                key, _, _, params = SEARCH[name]
                for i, seed in enumerate(CONFIRM_SEEDS):
                    db.record_trial(
                        cid, f"{name}:{seed}", recipe_hash=f"{name}-{seed}",
                        recipe=recipe(key, seed), seed=seed, status="finished", started=T0,
                        ended=T0 + timedelta(minutes=2), params_trainable=params,
                        peak_mem_mb=MEM[name],
                        metrics=auc_rows(0.9, {t: v[i] for t, v in per_test.items()}))
    return ids


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict[str, int]]:
    url = f"sqlite:///{tmp_path_factory.mktemp('structure') / 'r.db'}"
    return url, build_db(url)


@pytest.fixture(scope="module")
def report(db, tmp_path_factory: pytest.TempPathFactory):
    return build_report("s", db[0], tmp_path_factory.mktemp("rep") / "s", formats="md,csv")


def labels_of(url: str, sweep: str) -> dict[str, str]:
    """Recipe letter -> the report's label of it (matched on the DB's recipe text)."""
    with ResultsDB(url) as db:
        data = load_sweep(db, sweep)
    out = {}
    for r in data.counted.itertuples():
        rec = json.loads(r.recipe_json)
        key = (rec["filter"]["name"], rec["filter"]["heads"], rec["train"]["lr"])
        out.update({name: r.label for name, (k, *_) in SEARCH.items() if k == key})
    return out


def expected_auc(name: str) -> tuple[float, float, float]:
    """Independent: each seed's mean over the test sets, then numpy mean and scipy's
    Student-t 95% interval over the seeds."""
    per_seed = np.mean([CONFIRM[name][t] for t in TESTS], axis=0)
    mean = float(np.mean(per_seed))
    low, high = stats.t.interval(0.95, len(per_seed) - 1, loc=mean, scale=stats.sem(per_seed))
    return mean, float(low), float(high)


# ---------------------------------------------------------------- the front


def test_confirmed_front_is_the_hand_worked_one(db) -> None:
    url, _ = db
    with ResultsDB(url) as rdb:
        data = load_sweep(rdb, "s-confirm")
    front = confirmed_front(data)
    labels = {v: k for k, v in labels_of(url, "s-confirm").items()}
    front["name"] = front["label"].map(labels)
    assert set(front["cost"]) == {"params_trainable", "peak_mem_mb"}  # the costs recorded
    assert set(front["name"]) == set(CONFIRM)  # confirmation runs only: no E, F
    for cost, on in FRONT.items():
        part = front[front["cost"] == cost].set_index("name")
        assert set(part.index[part["on_front"]]) == on, cost
        assert set(part.index[~part["on_front"]]) == set(CONFIRM) - on, cost


def test_front_auc_and_interval_equal_an_independent_t_interval(report, db) -> None:
    url, _ = db
    front = pd.read_csv(report.folder / "structure_front.csv")
    labels = labels_of(url, "s-confirm")
    md = (report.folder / "report.md").read_text()
    section = md.split("## Structure search", 1)[1].split("\n## ", 1)[0]
    rows = {line.split("|")[1].strip(): [c.strip().strip("*") for c in line.split("|")[2:-1]]
            for line in section.splitlines() if line.startswith("| filter")}
    assert set(rows) == {labels[n] for n in CONFIRM}
    for name in CONFIRM:
        mean, low, high = expected_auc(name)
        part = front[front["label"] == labels[name]]
        assert len(part) == 2  # one row per cost
        assert part["auc_mean"].to_numpy() == pytest.approx([mean] * 2, abs=1e-12)
        assert part["auc_low"].to_numpy() == pytest.approx([low] * 2, abs=1e-12)
        assert part["auc_high"].to_numpy() == pytest.approx([high] * 2, abs=1e-12)
        assert set(part["n_seeds"]) == {3}
        cells = rows[labels[name]]
        assert cells[0] == f"{mean * 100:.2f} [{low * 100:.2f}, {high * 100:.2f}]"
        assert cells[1] == "3"
        params = SEARCH[name][3]
        assert cells[2:] == [f"{params:,}" if params >= 1000 else str(params),
                             "yes" if name in FRONT["params_trainable"] else "no",
                             f"{int(MEM[name]):,}",
                             "yes" if name in FRONT["peak_mem_mb"] else "no"]


# ---------------------------------------------------------------- slices


def test_slices_hold_exactly_the_trials_that_had_each_param(db) -> None:
    url, ids = db
    with ResultsDB(url) as rdb:
        data = load_sweep(rdb, "s")
    params = searched_params(data)
    assert [p.key for p in params] == ["filter", "filter.heads", "train.lr"]
    assert [p.log for p in params] == [False, False, True]
    wide = trial_params(data, params, "val_auc")
    points = slice_data(wide, params, "val_auc")
    by = {k: points[points["param"] == k] for k in ("filter", "filter.heads", "train.lr")}
    counted = {ids[n] for n in SEARCH}  # the failed trial G has no point
    assert set(by["filter"]["id"]) == counted and len(by["filter"]) == len(SEARCH)
    assert set(by["train.lr"]["id"]) == counted
    assert sorted(by["filter.heads"]["id"]) == sorted(ids[n] for n in HAS_HEADS)
    for name in SEARCH:
        key, val, _, _ = SEARCH[name]
        heads = by["filter.heads"].set_index("id")
        if name in HAS_HEADS:
            assert heads.loc[ids[name], "value"] == key[1]
        point = by["train.lr"].set_index("id").loc[ids[name]]
        assert point["value"] == key[2] and point["objective"] == pytest.approx(val)
    assert 7e-4 not in set(by["train.lr"]["value"])  # the warm-start trial: never trained


# ---------------------------------------------------------------- the section


def test_report_has_the_section_after_importance_and_writes_its_plots(report) -> None:
    md = (report.folder / "report.md").read_text()
    titles = re.findall(r"^## (.+)$", md, flags=re.M)
    assert titles[titles.index("Parameter importance") + 1] == "Structure search"
    section = md.split("## Structure search", 1)[1].split("\n## ", 1)[0]
    for png in ("structure_slices.png", "structure_parallel.png", "structure_front.png"):
        assert f"({png})" in section
        path = report.folder / png
        assert path.stat().st_size > 5000 and path in report.files
    assert "AUC vs cost, confirmed recipes" in section
    assert "Student-t 95% interval over seeds" in section
    assert "s-confirm" in section and "val_auc" in section
    assert "filter.heads" in section  # named as conditional


@pytest.mark.parametrize("asked, command", [
    (True, "ablate sweep --space structure --name s --resume"),
    (False, "add `confirm: {top: 3, seeds: 3}` to the search space"),
])
def test_without_confirmation_no_front_and_the_command_to_run_it(tmp_path: Path, asked: bool,
                                                                 command: str) -> None:
    url = f"sqlite:///{tmp_path / 'r.db'}"
    build_db(url, confirm=False, asked=asked)
    rep = build_report("s", url, tmp_path / "rep", formats="md,csv")
    md = (rep.folder / "report.md").read_text()
    section = md.split("## Structure search", 1)[1].split("\n## ", 1)[0]
    assert "drawn only from confirmation runs" in section
    assert "biased upward by selection" in section
    assert command in section
    assert not (rep.folder / "structure_front.png").exists()
    assert not (rep.folder / "structure_front.csv").exists()
    assert "AUC vs cost, confirmed recipes" not in section
    assert (rep.folder / "structure_slices.png").is_file()  # the search is still read


def test_parallel_axis_of_a_param_no_plotted_trial_had(tmp_path: Path) -> None:
    """A conditional param whose every plotted trial lacked it (no adapter trial finished in
    a structure search) gets only the '(absent)' tick, not a crash."""
    from ablate.report import plots
    from ablate.report.structure import ABSENT, Param

    wide = pd.DataFrame({"guide": ["controlnet", "controlnet"], "guide.width": [None, None],
                         "val_auc": [0.6, 0.7]})
    params = [Param("guide", "choice", ("controlnet", "adapter")),
              Param("guide.width", "choice", (16, 32), when={"guide": ("adapter",)})]
    assert plots.parallel_plot(wide, params, "val_auc", tmp_path).is_file()
    y, ticks, labels = plots._axis_position(params[1], wide["guide.width"])
    assert labels == [ABSENT] and np.all(y == ticks[0])


def test_slices_read_defaults_the_recipe_leaves_out_and_null_choices(tmp_path: Path) -> None:
    """guide.blocks=null and train.t_min=0.0 are left out of a stored recipe (the hash omits
    them at their defaults): the slices still show those trials, under "null" and 0.0."""
    url = f"sqlite:///{tmp_path / 'r.db'}"
    space = ("params:\n  train.t_min: {choice: [0.0, 0.3]}\n"
             "  guide: {choice: [controlnet, adapter]}\n"
             "  guide.blocks: {choice: [null, 1], when: {guide: controlnet}}\n"
             "  guide.inject: {choice: [all, mid], when: {guide.blocks: [null]}}\n"
             "objectives:\n  - {metric: val_auc, mode: max}\n")
    chosen = {"a": ({}, 0.7), "b": ({"train": {"t_min": 0.3}, "guide": {"blocks": 1}}, 0.6),
              "c": ({"guide": {"inject": "mid"}}, 0.8),
              # an adapter: its recipe reads blocks and inject at their defaults, but the
              # space gave it neither (inject hangs on blocks, which hangs on the guide)
              "d": ({"guide": {"name": "adapter", "width": 16}}, 0.5)}
    with ResultsDB(url) as db:
        sid = db.start_sweep("d", "structure", {"space_text": space, "objectives": [
            {"metric": "val_auc", "mode": "max"}], "sampler": "tpe"}, "v1")
        for name, (extra, val) in chosen.items():
            r = recipe(("paper", 4, 1e-4), 0)
            r["guide"].update(extra.get("guide", {}))
            r["train"].update(extra.get("train", {}))
            db.record_trial(sid, f"{name}:0", recipe_hash=name, recipe=r, seed=0,
                            status="finished", started=T0, ended=T0,
                            metrics=auc_rows(val, dict.fromkeys(TESTS, val)))
        data = load_sweep(db, "d")
    params = searched_params(data)
    wide = trial_params(data, params, "val_auc").sort_values("val_auc")  # d, b, a, c
    assert list(wide["train.t_min"]) == [0.0, 0.3, 0.0, 0.0]
    assert list(wide["guide.blocks"]) == [None, 1, "null", "null"]
    assert list(wide["guide.inject"]) == [None, None, "all", "mid"]  # b holds no mid block
