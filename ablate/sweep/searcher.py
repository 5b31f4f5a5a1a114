"""Optuna behind Ray Tune, told the truth about every trial.

Ray's own OptunaSearch tells Optuna that a trial ASHA stopped is COMPLETE
with the value of the rung it was stopped at, which biases TPE toward
recipes that merely looked good early. This searcher asks and tells through
Optuna's ask/tell API itself:

- a trial whose final report arrived: COMPLETE with its objectives, or FAIL
  when an objective is NaN (every seed diverged or failed);
- a trial the scheduler stopped (it is in the `StopLedger`): PRUNED;
- a trial that errored (its worker died after Tune's retries): FAIL;
- a trial that simply stopped because the sweep was interrupted: left RUNNING,
  for `ablate sweep --resume` to reconcile with the results database;
- a sampled point outside the space's `constraints:` (ablate.sweep.constraints): told
  COMPLETE at once with the worst possible objective values, its violations in the user attr
  `constraints` (what constrained samplers read: > 0 violated) and why in `infeasible`; it
  is never returned to Tune, so never trained and never in the results database, and the
  searcher asks again. Feasible points get their (<= 0) violations too, so the sampler
  learns where the boundary is.

The study lives in the results database, so it outlives the driver.
"""

from __future__ import annotations

import json
import math
from typing import Any

from ray.tune.schedulers import ASHAScheduler
from ray.tune.search import Searcher

from ablate.core.errors import AblateError
from ablate.core.selection import VAL_CURVE
from ablate.space.model import CONSTRAINTS_ATTR, INFEASIBLE_ATTR
from ablate.sweep.constraints import ConstraintCheck, worst_values
from ablate.sweep.trial import KIND, RETRY_KEY, RUNG, RUNG_CURVE, RUNG_METRIC

TUNE_ID_ATTR = "tune_trial_id"
RETRY_OF_ATTR = "retry_of"  # an enqueued trial's: the number of the cut-off trial it reruns
MAX_ASKS = 50  # infeasible points drawn in a row before the searcher gives up


class StopLedger:
    """Trial ids the scheduler stopped: what tells 'pruned' apart from 'interrupted'."""

    def __init__(self) -> None:
        self.stopped: set[str] = set()


class RecordingASHA(ASHAScheduler):
    """ASHA that writes each of its stop decisions into a StopLedger."""

    def __init__(self, ledger: StopLedger, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.ledger = ledger

    def on_trial_result(self, tune_controller, trial, result):  # noqa: ANN001, ANN201
        action = super().on_trial_result(tune_controller, trial, result)
        if action == self.STOP:
            self.ledger.stopped.add(trial.trial_id)
        return action


def asha(ledger: StopLedger, max_t: int, grace_period: int,
         reduction_factor: float, brackets: int = 1) -> RecordingASHA:
    """ASHA on the first seed's selection signal at each evaluation: its source-val AUC, or
    its proxy's under train.select=proxy (see ablate.sweep.trial); `brackets` > 1 is
    asynchronous Hyperband (EarlyStopping)."""
    return RecordingASHA(ledger, time_attr=RUNG, metric=RUNG_METRIC, mode="max", max_t=max_t,
                         grace_period=grace_period, reduction_factor=reduction_factor,
                         brackets=brackets)


class TruthfulOptunaSearch(Searcher):
    """Ask/tell Optuna search over a SearchSpace; see the module docstring."""

    def __init__(self, space, study_name: str, storage_url: str, ledger: StopLedger,  # noqa: ANN001
                 study=None) -> None:  # noqa: ANN001
        metrics = [o.metric for o in space.objectives]
        modes = [o.mode for o in space.objectives]
        super().__init__(metric=metrics if len(metrics) > 1 else metrics[0],
                         mode=modes if len(modes) > 1 else modes[0])
        self.space, self.study_name, self.ledger = space, study_name, ledger
        self.objectives = metrics
        self._storage_url = storage_url  # driver memory only: never pickled
        self._study = study
        self._live: dict[str, Any] = {}  # Tune trial id -> optuna.Trial
        self.constraints = ConstraintCheck(space) if space.constraints else None
        self.infeasible = 0  # points told infeasible by this searcher (never trained)

    def __getstate__(self) -> dict:  # Tune pickles its search algorithm: no secrets in it
        state = self.__dict__.copy()
        state.update(_storage_url=None, _study=None, _live={})
        return state

    @property
    def study(self):  # noqa: ANN202
        if self._study is None:
            self._study = open_study(self.space, self.study_name, self._storage_url)
        return self._study

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        for _ in range(MAX_ASKS):
            trial = self.study.ask()
            config = self.space.define_by_run(trial)
            if self._feasible(trial, config):
                break
        else:
            raise AblateError(
                f"search space {self.space.name}: its constraints excluded all {MAX_ASKS} "
                "points the sampler drew in a row; loosen them")
        trial.set_user_attr(TUNE_ID_ATTR, trial_id)
        self._live[trial_id] = trial
        owners = retried_trials(self.study, trial.number)[1:]
        return {**config, RETRY_KEY: owners} if owners else config

    def _feasible(self, trial, config: dict[str, Any]) -> bool:  # noqa: ANN001
        """Store the point's constraint values; tell an infeasible point at once (see the
        module docstring) and say False."""
        if self.constraints is None:
            return True
        import optuna

        verdict = self.constraints.verdict(config)
        trial.set_user_attr(CONSTRAINTS_ATTR, verdict.violations)
        for constraint, violation in zip(self.space.constraints, verdict.violations,
                                         strict=True):  # what TPE and NSGA-II read
            trial.set_constraint(constraint.quantity, violation)
        if verdict.feasible:
            return True
        trial.set_user_attr(INFEASIBLE_ATTR, verdict.reason)
        self.study.tell(trial, values=worst_values(self.space),
                        state=optuna.trial.TrialState.COMPLETE)
        self.infeasible += 1
        return False

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        """A single objective that the rung values measure also gets them, which TPE reads
        for pruned trials; multi-objective studies cannot hold intermediate values."""
        trial = self._live.get(trial_id)
        if (trial is None or not rung_measures(self.objectives, result)
                or not result.get(RUNG) or not _finite(result.get(RUNG_METRIC))):
            return
        trial.report(float(result[RUNG_METRIC]), step=int(result[RUNG]))

    def on_trial_complete(self, trial_id: str, result: dict | None = None,
                          error: bool = False) -> None:
        import optuna

        trial = self._live.pop(trial_id, None)
        if trial is None:
            return
        state, values = verdict(result, error, trial_id in self.ledger.stopped, self.objectives)
        if state is None:
            return  # interrupted: `ablate sweep --resume` reconciles it with the database
        self.study.tell(trial, values=values,
                        state=getattr(optuna.trial.TrialState, state))

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "w") as f:
            json.dump({"study": self.study_name, "note": "state lives in the results DB"}, f)

    def restore(self, checkpoint_path: str) -> None:  # resume rebuilds from the DB instead
        pass


def rung_measures(objectives: list[str], result: dict) -> bool:
    """Whether a report's rung value is a point of the single objective: `select_auc` is
    always what the rung measures (the rule's signal); `val_auc` only while that signal is
    the source val AUC (not under train.select=proxy, whose rungs are the proxy's AUC)."""
    if objectives == ["select_auc"]:
        return True
    return objectives == ["val_auc"] and result.get(RUNG_CURVE, VAL_CURVE) == VAL_CURVE


def retried_trials(study, number: int) -> list[str]:  # noqa: ANN001
    """Tune ids of trial `number` and of the chain of cut-off trials it continues."""
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    owners: list[str] = []
    current: int | None = number
    while current is not None:
        owners.append(trials[current].user_attrs.get(TUNE_ID_ATTR, ""))
        current = trials[current].user_attrs.get(RETRY_OF_ATTR)
    return owners


def verdict(result: dict | None, error: bool, stopped: bool,
            objectives: list[str]) -> tuple[str | None, list[float] | None]:
    """(Optuna state name, values) for how a trial ended; (None, None) if it did not end."""
    result = result or {}
    if error:
        return "FAIL", None
    if result.get(KIND) == "final":
        values = [result.get(m) for m in objectives]
        if all(_finite(v) for v in values):
            return "COMPLETE", [float(v) for v in values]
        return "FAIL", None
    if stopped:
        return "PRUNED", None
    return None, None


def open_study(space, name: str, storage_url: str):  # noqa: ANN001, ANN201
    """The sweep's study in the results DB (created on first use)."""
    import optuna

    directions = ["maximize" if o.mode == "max" else "minimize" for o in space.objectives]
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.create_study(
        study_name=name, storage=optuna.storages.RDBStorage(storage_url),
        sampler=space.make_sampler(), directions=directions, load_if_exists=True)


def _finite(value: Any) -> bool:
    try:
        return value is not None and math.isfinite(float(value))
    except (TypeError, ValueError):
        return False
