"""A search space's `constraints:`: quantities known before training, a sampler that never
trains a point outside them, and one-line errors (nothing written) for bad constraints.

Tiny twins only: the two guides of the tiny recipe differ in trainable parameters
(controlnet ~7.38e6, adapter ~6.90e6), so `params_trainable: {max: 7.0e6}` excludes one.
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import pytest

from ablate.core.errors import AblateError
from ablate.results import ResultsDB
from ablate.space import load_space
from ablate.sweep import run_sweep
from ablate.sweep.constraints import ConstraintCheck

SPACE = """
description: "test: constrained tiny trials"
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
  guide: {{choice: [controlnet, adapter]}}
budget: {{trials: {trials}, max_concurrent: 1}}
resources: {{cpu: 1, gpu: 0}}
tests: [synth-colour]
sampler: {{name: tpe, seed: 0}}
{extra}
"""
BETWEEN_GUIDES = "constraints: {params_trainable: {max: 7.0e6}}"


def write_space(folder: Path, extra: str = BETWEEN_GUIDES, trials: int = 2,
                name: str = "tiny") -> str:
    path = folder / f"{name}.yaml"
    path.write_text(SPACE.format(trials=trials, extra=extra))
    return str(path)




def test_params_trainable_before_training_is_what_the_built_detector_trains(tmp_path):
    from ablate.model.build import build_detector
    from ablate.recipe import compose

    space = load_space(write_space(tmp_path))
    check = ConstraintCheck(space)
    counts = {}
    for guide in ("controlnet", "adapter"):
        params = {"guide": guide}
        detector = build_detector(compose(space.overrides(params)))
        trained = sum(p.numel() for p in detector.parameters() if p.requires_grad)
        verdict = check.verdict(params)
        assert verdict.values["params_trainable"] == trained
        counts[guide] = trained
    assert counts["controlnet"] > 7.0e6 > counts["adapter"]  # what the space's bound splits
    check.verdict({"guide": "adapter"})
    assert len(check._params) == 2  # each architecture built once


def test_a_constrained_sweep_never_trains_an_infeasible_point(in_tmp):
    import optuna

    url = f"sqlite:///{in_tmp / 'r.db'}"
    summary = run_sweep(write_space(in_tmp, trials=3), db_url=url, name="cons", n_boot=20)
    rows = ResultsDB(url).trials("cons")
    assert len(rows) == 3 and set(rows["status"]) == {"finished"}
    assert ResultsDB(url).list_sweeps().set_index("name").loc["cons", "status"] == "finished"
    assert rows["recipe_json"].str.contains('"adapter"').all()  # every trained point feasible
    assert not rows["recipe_json"].str.contains('"controlnet"').any()
    assert (rows["params_trainable"] <= 7.0e6).all()
    runs = [p for p in (in_tmp / "results" / "runs" / "cons").iterdir() if p.is_dir()]
    assert len(runs) == 3  # a run folder per trained point, none for an infeasible one

    study = optuna.load_study(study_name="cons", storage=url)
    infeasible = [t for t in study.trials if "infeasible" in t.user_attrs]
    assert infeasible, "the sampler drew no controlnet point: pick another sampler seed"
    assert summary.infeasible == len(infeasible)
    for t in infeasible:
        assert t.params["guide"] == "controlnet"
        assert t.state == optuna.trial.TrialState.COMPLETE
        assert t.values == [-math.inf]  # the worst possible val_auc
        assert t.user_attrs["constraints"][0] > 0
        assert t.constraints["params_trainable"] > 0  # what TPE reads (Trial.set_constraint)
        assert "tune_trial_id" not in t.user_attrs  # never handed to Tune
    trained = [t for t in study.trials if "infeasible" not in t.user_attrs]
    assert len(trained) == 3
    for t in trained:
        assert t.params["guide"] == "adapter"
        assert t.constraints["params_trainable"] <= 0  # feasible points teach the boundary
    assert set(rows["tune_trial_id"].str.split(":").str[0]) == {
        t.user_attrs["tune_trial_id"] for t in trained}


def test_a_random_sampler_that_ignores_constraints_still_skips_infeasible_points(tmp_path):
    from ablate.sweep.searcher import StopLedger, TruthfulOptunaSearch

    space = load_space(write_space(tmp_path))
    space = replace(space, sampler=replace(space.sampler, name="random"))
    searcher = TruthfulOptunaSearch(space, "rand", f"sqlite:///{tmp_path / 's.db'}",
                                    StopLedger())
    configs = [searcher.suggest(f"t{i}") for i in range(4)]
    assert configs == [{"guide": "adapter"}] * 4
    assert searcher.infeasible > 0  # seeded: the random sampler drew controlnet too
    told = [t for t in searcher.study.trials if "infeasible" in t.user_attrs]
    assert len(told) == searcher.infeasible
    assert all(t.params == {"guide": "controlnet"} for t in told)


@pytest.mark.parametrize("extra,message", [
    ("constraints: {flops: {max: 1.0e9}}", "constraint on unknown quantity 'flops': known "
                                           "before training: params_trainable, peak_mem_gb"),
    ("constraints: {params_trainable: {max: lots}}", "constraints.params_trainable.max: must "
                                                     "be a number"),
    ("constraints: {params_trainable: {below: 5}}", "must be {max: <number>} and/or"),
    ("constraints: {params_trainable: {min: 9, max: 1}}", "no point can satisfy it"),
])
def test_a_bad_constraint_is_one_line(tmp_path, extra, message):
    with pytest.raises(AblateError) as err:
        load_space(write_space(tmp_path, extra=extra))
    assert message in str(err.value) and "\n" not in str(err.value)


def test_constraints_on_a_design_are_refused(tmp_path):
    path = tmp_path / "design.yaml"
    path.write_text(SPACE.format(trials=2, extra=BETWEEN_GUIDES)
                    .replace("budget: {trials: 2, max_concurrent: 1}", "")
                    .replace("sampler: {name: tpe, seed: 0}", "")
                    .replace("params:", "design: factorial\nfactors:")
                    .replace("{choice: [controlnet, adapter]}", "[controlnet, adapter]"))
    with pytest.raises(AblateError, match="constraints are for sampled searches") as err:
        load_space(str(path))
    assert "\n" not in str(err.value)


def test_constraints_that_exclude_every_point_stop_the_sweep_before_any_trial(in_tmp):
    url = f"sqlite:///{in_tmp / 'r.db'}"
    space = write_space(in_tmp, extra="constraints: {params_trainable: {max: 1.0e6}}")
    with pytest.raises(AblateError) as err:
        run_sweep(space, db_url=url, name="none", n_boot=20)
    text = str(err.value)
    assert "\n" not in text
    assert "its constraints exclude all 32 points sampled (params_trainable 6.9e+06..7.4e+06 " \
           "vs max 1e+06); loosen them" in text
    assert ResultsDB(url).list_sweeps().empty
    assert not (in_tmp / "results" / "runs").exists()


def test_spaces_and_the_dry_run_say_when_constraints_exclude_every_point(tmp_path):
    from conftest import run_cli

    space = write_space(tmp_path, extra="constraints: {params_trainable: {max: 1.0e6}}")
    for args in (("spaces", space), ("sweep", "--space", space, "--dry-run")):
        code, out, err = run_cli(*args, cwd=tmp_path)
        assert code == 2 and "constraints exclude all 32 points sampled" in err, (args, err)
        assert len(err.strip().splitlines()) == 1
    code, out, _ = run_cli("spaces", write_space(tmp_path, name="loose"), cwd=tmp_path)
    assert code == 0 and "constraints" not in out
