"""`ablate sweep --warm-start SWEEP`: an earlier sweep's finished trials seed a new sweep's
sampler, are never re-run nor counted, and only a compatible space may take them.

The compatibility checks run on hand-made studies in a temp SQLite (no Ray); one real sweep
pair (tiny twins, as in test_constraints) checks the whole path.
"""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from ablate.core.errors import AblateError
from ablate.results import ResultsDB
from ablate.space import load_space
from ablate.sweep import run_sweep
from ablate.sweep.reconcile import counted_trials
from ablate.sweep.searcher import open_study
from ablate.sweep.warm_start import (
    WARM_NUMBER_ATTR,
    WARM_START_ATTR,
    copy_trials,
    space_distributions,
    warm_trials,
)

SPACE = """
description: "test: warm-started tiny trials"
fixed:
  teacher: tiny-sd15
  backbone: tiny
  image_size: 32
  data.train: synth-blend
  train: cpu
  train.steps: 3
  train.batch_size: 4
  train.eval_every: 0
  train.log_every: 3
  filter: paper
params:
{params}
objectives: [{objective}]
budget: {{trials: 2, max_concurrent: 1}}
resources: {{cpu: 1, gpu: 0}}
tests: [synth-colour]
sampler: {{name: tpe, seed: 0}}
"""
GUIDE = "  guide: {choice: [controlnet, adapter]}"
LR = "  train.lr: {float: [1.0e-5, 1.0e-3], log: true}"


def write_space(folder: Path, params: str = GUIDE,
                objective: str = "{metric: val_auc, mode: max}", name: str = "tiny") -> str:
    path = folder / f"{name}.yaml"
    path.write_text(SPACE.format(params=params, objective=objective))
    return str(path)


def earlier_sweep(tmp_path: Path, params: str = GUIDE) -> tuple[ResultsDB, object]:
    """Sweep `early` by hand: its row and a study with one trial of each kind."""
    space = load_space(write_space(tmp_path, params, name="early"))
    db = ResultsDB(f"sqlite:///{tmp_path / 'r.db'}")
    db.start_sweep("early", space.name, {"objectives": [{"metric": "val_auc", "mode": "max"}]},
                   "v0")
    study = open_study(space, "early", db.optuna_storage_url)
    dists = space_distributions(space)
    first = {k: d.choices[0] if hasattr(d, "choices") else d.low for k, d in dists.items()}
    states = optuna.trial.TrialState
    for values, state, attrs in [([0.7], states.COMPLETE, {}), ([0.6], states.COMPLETE, {}),
                                 ([-float("inf")], states.COMPLETE, {"infeasible": "too big"}),
                                 (None, states.PRUNED, {}), (None, states.FAIL, {}),
                                 ([0.9], states.COMPLETE, {WARM_START_ATTR: "older"})]:
        study.add_trial(optuna.trial.create_trial(params=first, distributions=dists,
                                                  values=values, state=state, user_attrs=attrs))
    return db, study


def test_a_compatible_study_lends_its_complete_trials_once_and_none_count(tmp_path):
    db, early = earlier_sweep(tmp_path)
    space = load_space(write_space(tmp_path, name="late"))
    found = warm_trials(db, "early", space)
    assert [t.number for t in found] == [0, 1]  # not infeasible, pruned, failed or copied
    late = open_study(space, "late", db.optuna_storage_url)
    assert copy_trials(late, "early", found) == 2
    assert copy_trials(late, "early", found) == 2  # a second call (a resume) adds none
    copied = late.trials
    assert len(copied) == 2
    for t, source in zip(copied, early.trials[:2], strict=True):
        assert t.state == optuna.trial.TrialState.COMPLETE
        assert t.params == source.params and t.values == source.values
        assert t.user_attrs == {WARM_START_ATTR: "early", WARM_NUMBER_ATTR: source.number}
    assert counted_trials(late) == 0  # the new sweep's budget counts only its own trials
    late.tell(late.ask({"guide": optuna.distributions.CategoricalDistribution(
        ["controlnet", "adapter"])}), [0.5])
    assert counted_trials(late) == 1


def test_other_choices_name_the_param(tmp_path):
    db, _ = earlier_sweep(tmp_path)
    space = load_space(write_space(
        tmp_path, "  guide: {choice: [controlnet, adapter, none]}", name="late"))
    with pytest.raises(AblateError) as err:
        warm_trials(db, "early", space)
    assert str(err.value) == (
        "--warm-start early: its param guide has choices ['controlnet', 'adapter'], this "
        "space's ['controlnet', 'adapter', 'none']; warm starts need the same distributions")


def test_another_range_names_the_param(tmp_path):
    db, _ = earlier_sweep(tmp_path, f"{GUIDE}\n{LR}")
    space = load_space(write_space(
        tmp_path, f"{GUIDE}\n  train.lr: {{float: [1.0e-5, 1.0e-2], log: true}}", name="late"))
    with pytest.raises(AblateError, match=r"its param train.lr is float range \[1e-05, 0.001, "
                                          r"log\], this space's float range \[1e-05, 0.01, log\]"):
        warm_trials(db, "early", space)


def test_a_param_this_space_lacks_counts_as_different(tmp_path):
    db, _ = earlier_sweep(tmp_path, f"{GUIDE}\n{LR}")
    space = load_space(write_space(tmp_path, name="late"))
    with pytest.raises(AblateError, match="its param train.lr is not in this space"):
        warm_trials(db, "early", space)


def test_other_objectives_are_refused(tmp_path):
    db, _ = earlier_sweep(tmp_path)
    space = load_space(write_space(tmp_path, objective="{metric: test_auc_mean, mode: max}",
                                   name="late"))
    with pytest.raises(AblateError, match="it optimised val_auc .max., this space "
                                          "test_auc_mean .max.; warm starts need the same"):
        warm_trials(db, "early", space)


def test_an_unknown_sweep_lists_the_ones_there(tmp_path):
    space = load_space(write_space(tmp_path, name="late"))
    empty = ResultsDB(f"sqlite:///{tmp_path / 'empty.db'}")
    with pytest.raises(AblateError, match=r"no such sweep .*\(it has no sweeps\)"):
        warm_trials(empty, "nope", space)
    db, _ = earlier_sweep(tmp_path)
    with pytest.raises(AblateError, match=r"no such sweep .*\(sweeps there: early\)"):
        warm_trials(db, "nope", space)


def test_an_incompatible_warm_start_writes_nothing(in_tmp):
    db, _ = earlier_sweep(in_tmp)
    late = write_space(in_tmp, "  guide: {choice: [adapter]}", name="late")
    with pytest.raises(AblateError, match="its param guide has choices"):
        run_sweep(late, db_url=db.url, name="late", warm_start="early", n_boot=20)
    assert db.sweep_id("late") is None
    assert optuna.study.get_all_study_names(db.optuna_storage_url) == ["early"]


def test_a_warm_started_sweep_runs_only_its_own_budget(in_tmp):
    url = f"sqlite:///{in_tmp / 'r.db'}"
    run_sweep(write_space(in_tmp, name="early"), db_url=url, name="early", n_boot=20)
    run_sweep(write_space(in_tmp, name="late"), db_url=url, name="late", warm_start="early",
              n_boot=20)
    db = ResultsDB(url)
    early = optuna.load_study(study_name="early", storage=url)
    late = optuna.load_study(study_name="late", storage=url)
    done = [t for t in early.trials if t.state == optuna.trial.TrialState.COMPLETE]
    copied = [t for t in late.trials if WARM_START_ATTR in t.user_attrs]
    own = [t for t in late.trials if WARM_START_ATTR not in t.user_attrs]
    assert done and [(t.params, t.values) for t in copied] == [(t.params, t.values)
                                                                for t in done]
    assert {t.user_attrs[WARM_START_ATTR] for t in copied} == {"early"}
    assert late.trials[:len(copied)] == copied  # added before the first ask
    assert len(own) == 2 and counted_trials(late) == 2
    rows = db.trials("late")
    assert len(rows) == 2  # its own runs only: one seed each
    assert set(rows["tune_trial_id"].str.split(":").str[0]) == {
        t.user_attrs["tune_trial_id"] for t in own}
    sweeps = db.list_sweeps().set_index("name")
    assert sweeps.loc["late", "status"] == "finished"
    assert '"warm_start": "early"' in sweeps.loc["late", "settings_json"]


def test_the_dry_run_checks_the_warm_start_too(tmp_path):
    from conftest import run_cli

    space = write_space(tmp_path)
    url = f"sqlite:///{tmp_path / 'r.db'}"
    ResultsDB(url).close()
    code, _, err = run_cli("sweep", "--space", space, "--dry-run", "--db", url,
                           "--warm-start", "nope", cwd=tmp_path)
    assert code == 2 and "--warm-start nope: no such sweep" in err, err
    assert len(err.strip().splitlines()) == 1
