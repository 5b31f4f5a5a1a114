"""Resume planning when the driver died between `study.ask()` and its last `suggest_*`.

The kill -9 fault test can land there (the driver asks for the next trial the moment one
finishes); the study then holds a RUNNING trial with only some of its params. Here that
moment is made by hand, on a real Optuna study in SQLite, without Ray.
"""

from __future__ import annotations

import optuna
import pytest
from test_sweep import write_space

from ablate.space import load_space
from ablate.sweep.reconcile import INTERRUPTED_ATTR, settle_study
from ablate.sweep.searcher import RETRY_OF_ATTR, open_study


@pytest.mark.parametrize("suggested_before_kill", [0, 1])
def test_a_grid_trial_cut_off_mid_suggestion_is_rerun_at_its_own_grid_point(
        tmp_path, suggested_before_kill):
    space = load_space(write_space(tmp_path, sampler="grid"))
    assert len(space.params) == 2
    study = open_study(space, "k", f"sqlite:///{tmp_path / 'r.db'}")
    cut = study.ask()  # the driver dies after `suggested_before_kill` of its two params
    for param in space.params[:suggested_before_kill]:
        param.suggest(cut)
    frozen = study.trials[cut.number]
    # the grid point Optuna gave this trial when it was asked (Optuna's own bookkeeping)
    sampler = study.sampler
    point = dict(zip(sampler._param_names, sampler._all_grids[frozen.system_attrs["grid_id"]],
                     strict=True))
    assert len(frozen.params) == suggested_before_kill

    settle_study(study, {}, seeds=1, space=space)

    settled = study.trials[cut.number]
    assert settled.state == optuna.trial.TrialState.FAIL
    assert settled.user_attrs[INTERRUPTED_ATTR] is True
    rerun = study.ask()  # the resumed driver's first trial: the same recipe, complete
    assert space.define_by_run(rerun) == point
    assert study.trials[rerun.number].user_attrs[RETRY_OF_ATTR] == cut.number


def test_a_trials_mean_test_auc_leaves_out_breakdowns_of_a_test_set():
    """DF40's per-method rows (`df40.csv::...`) repeat frames of the pooled test set: the
    objective `test_auc_mean` averages test sets, each once (here by hand: (0.6 + 0.9) / 2)."""
    from ablate.sweep.trial import summarise

    def auc(dataset: str, value: float) -> dict:
        return {"split": "test", "level": "frame", "metric": "auc", "dataset": dataset,
                "value": value}

    seed = {"metrics": [auc("df40.csv", 0.6), auc("df40.csv::df40/simswap", 0.2),
                        auc("df40.csv::family:FS", 0.3), auc("celebdf", 0.9)]}
    assert summarise([seed])["test_auc_mean"] == pytest.approx(0.75)
