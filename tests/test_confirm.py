"""A search's confirmation stage, with real tiny sweeps through Ray Tune and Optuna.

Checked against the database's own rows (never the code under test): the confirmation
retrains the search's k best recipes by mean source-val AUC, on seeds the search never
used; the report takes its verdicts from those runs and labels the search's numbers; a
kill -9 during the confirmation loses and repeats nothing; one recipe against itself on
disjoint seeds (an A/A check on real runs) gives an interval that holds 0.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from test_sweep import write_space
from test_sweep_faults import _ablate, _kill_driver, _rows

from ablate.report import build_report
from ablate.results import ResultsDB
from ablate.space import load_space
from ablate.sweep import run_sweep

pytestmark = pytest.mark.slow

PARAMS = """  filter: {choice: [paper, conv_only, no_mhsa]}
  train.lr: {choice: [0.001, 0.0003]}"""


def confirm_space(folder: Path, trials: int = 3, seeds: int = 3, top: int = 2) -> str:
    path = Path(write_space(folder, params=PARAMS, trials=trials, sampler="random"))
    text = path.read_text().replace("seeds: 1", f"seeds: {seeds}")
    path.write_text(text + f"confirm: {{top: {top}, seeds: {seeds}}}\n")
    return str(path)


def _config(recipe_json: str) -> str:
    recipe = json.loads(recipe_json)
    return json.dumps({k: v for k, v in recipe.items() if k != "seed"}, sort_keys=True)


def _mean_val(db: ResultsDB, name: str) -> pd.Series:
    """Mean source-val frame AUC per recipe (without seed), by hand from the rows."""
    trials = db.trials(name)
    trials = trials[trials["status"].isin(["finished", "reused"])]
    m = db.metrics(name)
    val = m[(m["split"] == "val") & (m["level"] == "frame") & (m["metric"] == "auc")]
    per_trial = val.groupby("trial_id")["value"].mean()
    return trials.assign(config=trials["recipe_json"].map(_config),
                         val=trials["id"].map(per_trial)).groupby("config")["val"].mean()


def test_a_search_confirms_its_best_recipes_on_fresh_seeds_and_reports_from_them(in_tmp):  # noqa: F811
    url = f"sqlite:///{in_tmp / 'r.db'}"
    space = confirm_space(in_tmp)
    summary = run_sweep(space, db_url=url, name="s", n_boot=20)
    assert summary.confirmation is not None and summary.confirmation.name == "s-confirm"
    db = ResultsDB(url)
    search, confirm = db.trials("s"), db.trials("s-confirm")
    assert set(search["seed"]) == {0, 1, 2} and set(confirm["seed"]) == {3, 4, 5}  # fresh
    assert set(confirm["status"]) == {"finished"}
    best = _mean_val(db, "s").sort_values(ascending=False)
    assert len(best) >= 2
    assert set(confirm["recipe_json"].map(_config)) == set(best.index[:2])
    sweeps = db.list_sweeps().set_index("name")
    assert json.loads(sweeps.loc["s", "settings_json"])["confirmation"] == "s-confirm"
    assert json.loads(sweeps.loc["s-confirm", "settings_json"])["confirms"] == "s"

    report = build_report("s", url, in_tmp / "rep", formats="md,csv")
    main = pd.read_csv(report.folder / "main.csv")
    assert main["label"].nunique() == 2 and set(main["n_seeds"]) == {3}  # confirmation only
    md = (report.folder / "report.md").read_text()
    assert "verdicts from its confirmation runs" in md
    stage = md.split("## Search stage (selected-on numbers)", 1)[1]
    assert "selected-on, biased upward" in stage

    # resumed after it finished: nothing new runs in either sweep
    run_sweep(space, db_url=url, name="s", resume=True, n_boot=20)
    assert len(db.trials("s")) == len(search) and len(db.trials("s-confirm")) == len(confirm)
    # the confirmation resumed on its own (as its interrupted message once said): it keeps
    # confirming the winners, never the space's fixed recipe
    run_sweep(str(in_tmp / "results/spaces/s-confirm.yaml"), db_url=url, name="s-confirm",
              resume=True, n_boot=20)
    assert len(db.trials("s-confirm")) == len(confirm)

    # A/A on real runs: the winner against itself, search seeds 0-2 vs confirmation seeds
    # 3-5 (paired by position): the t interval over seed means must hold 0
    winner = best.index[0]
    mine = db.metrics("s")
    conf = db.metrics("s-confirm")

    def seed_means(metrics: pd.DataFrame, trials: pd.DataFrame) -> list[float]:
        ids = trials.loc[trials["recipe_json"].map(_config) == winner, "id"]
        t = metrics[metrics["trial_id"].isin(ids) & (metrics["split"] == "test")
                    & (metrics["level"] == "frame") & (metrics["metric"] == "auc")]
        return t.groupby("seed")["value"].mean().sort_index().tolist()

    a, b = seed_means(mine, search), seed_means(conf, confirm)
    d = np.subtract(b, a)
    half = stats.t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / np.sqrt(len(d))
    assert len(d) == 3 and d.mean() - half <= 0 <= d.mean() + half


def test_confirmation_killed_then_resumed_loses_and_repeats_nothing(tmp_path):
    url = f"sqlite:///{tmp_path / 'r.db'}"
    space = confirm_space(tmp_path, trials=2, seeds=2, top=2)
    proc = _ablate("sweep", "--space", space, "--db", url, "--name", "k", "--bootstrap", "20",
                   cwd=tmp_path)
    import time

    deadline = time.time() + 400
    while time.time() < deadline:  # the moment: one confirmation seed finished
        assert proc.poll() is None, proc.communicate()[0]
        rows = _rows(url, "k-confirm") if (tmp_path / "r.db").is_file() else None
        if rows is not None and (rows["status"] == "finished").sum() >= 1:
            break
        time.sleep(0.2)
    else:
        raise AssertionError("the confirmation never finished a seed")
    _kill_driver(proc, signal.SIGKILL)
    kept = _rows(url, "k-confirm")
    kept = kept[kept["status"] == "finished"]

    proc = _ablate("sweep", "--space", space, "--db", url, "--name", "k", "--resume",
                   "--bootstrap", "20", cwd=tmp_path)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out
    after = _rows(url, "k-confirm")
    assert len(after) == 4 and set(after["status"]) == {"finished"}, out  # 2 recipes x 2 seeds
    assert set(after["seed"]) == {2, 3}
    for row in kept.itertuples():  # finished before the kill: kept once, not trained again
        same = after[(after["identity"] == row.identity) & (after["seed"] == row.seed)]
        assert list(same["id"]) == [row.id] and list(same["ended"]) == [row.ended]
    assert ResultsDB(url).list_sweeps().set_index("name").loc["k-confirm", "status"] == "finished"


def test_a_sweep_named_like_the_confirmation_is_never_taken_over(tmp_path) -> None:
    from ablate.core.errors import AblateError

    url = f"sqlite:///{tmp_path / 'r.db'}"
    with ResultsDB(url) as db:
        db.start_sweep("h-confirm", "other", {"seeds": 3}, "v1")
    with pytest.raises(AblateError, match="not the confirmation of h"):
        run_sweep(confirm_space(tmp_path), db_url=url, name="h", n_boot=20)
    assert ResultsDB(url).sweep_id("h") is None  # refused before the search started


@pytest.mark.parametrize("text,message", [
    ("confirm: {top: 1, seeds: 1}\n", "confirm.seeds"),
    ("confirm: {top: 0, seeds: 3}\n", "confirm.top"),
    ("confirm: {top: 2}\n", "needs top: and seeds:"),
    ("confirm: {top: 2, seeds: 3, when: x}\n", "unknown field"),
    ("confirm: {top: 2, seeds: 3}\nfixed_seed\n", "may not set `seed`"),
])
def test_bad_confirm_sections_are_one_line(tmp_path, text, message):
    from ablate.core.errors import AblateError

    path = Path(write_space(tmp_path, params=PARAMS))
    body = path.read_text()
    if "fixed_seed" in text:  # the space fixes the seed itself
        body, text = body.replace("fixed:\n", "fixed:\n  seed: 4\n"), text.replace("fixed_seed\n", "")
    path.write_text(body + text)
    with pytest.raises(AblateError, match=message):
        load_space(str(path))


def test_confirm_in_a_design_is_refused_and_seeds_can_start_anywhere(tmp_path):
    from ablate.core.errors import AblateError

    design = Path("search_spaces/demo.yaml").read_text()
    path = tmp_path / "d.yaml"
    path.write_text(design + "confirm: {top: 1, seeds: 3}\n")
    with pytest.raises(AblateError, match="already is the confirmation"):
        load_space(str(path))
    path.write_text(design.replace("seeds: 3", "seeds: {count: 3, first: 3}"))
    space = load_space(str(path))
    assert space.seed_ids == [3, 4, 5]
    assert [o for o in space.overrides(seed=4) if o.startswith("seed=")] == ["seed=4"]
