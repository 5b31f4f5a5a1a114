"""Hyperparameter importance from the sweep's Optuna study (same database, study = sweep name).

Optuna 5's `get_param_importances` defaults to PED-ANOVA; the report asks for
fANOVA explicitly (a random forest's functional ANOVA, the classic choice) unless
told otherwise. fANOVA and MDI only assess params present in every completed
trial, so conditional params (filter.heads, guide.width) are left out, and the
report names them; PED-ANOVA assesses those too.

Importances describe the trials that were sampled. An adaptive sampler (TPE,
NSGA-II) concentrates them where results are good, so the importances there are
biased toward that region; random and grid samples are not.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import sqlalchemy as sa

from ablate.core.errors import AblateError
from ablate.report import EVALUATORS
from ablate.report.data import SweepData

UNBIASED_SAMPLERS = {"random", "grid"}
FEW_TRIALS = 10


@dataclass
class Importance:
    """Importances per objective (rows: objective, param, importance) and what to say about them."""

    table: pd.DataFrame
    notes: list[str] = field(default_factory=list)
    sampler: str | None = None
    evaluator: str = "fanova"
    n_trials: int = 0


def _evaluator(name: str) -> Any:
    from optuna import importance

    if name == "fanova":
        return importance.FanovaImportanceEvaluator(seed=0)
    if name == "mdi":
        return importance.MeanDecreaseImpurityImportanceEvaluator(seed=0)
    if name == "ped-anova":
        return importance.PedAnovaImportanceEvaluator()
    raise AblateError(f"unknown importance evaluator {name!r}; choose from {', '.join(EVALUATORS)}")


def sampler_name(settings: dict[str, Any]) -> str | None:
    """The sweep's Optuna sampler as the driver stored it (None: not recorded, so unknown)."""
    sampler = settings.get("sampler")
    if isinstance(sampler, dict):
        sampler = sampler.get("name")
    return str(sampler) if sampler else None


def sampler_note(sampler: str | None) -> str:
    """Whether these importances can be taken at face value, given how trials were sampled."""
    if sampler in UNBIASED_SAMPLERS:
        return (f"Trials were sampled by {sampler}, independently of their results, so these "
                "importances are not biased by the search.")
    what = f"by {sampler}, an adaptive sampler" if sampler else "by an unknown sampler"
    return (f"Caution: trials were sampled {what}. Adaptive samplers (TPE, NSGA-II) put most "
            "trials in regions that already scored well, so importances describe that region "
            "and are biased toward it, not the whole space. For unbiased importances run the "
            "space with `sampler: {name: random}` (or grid).")


def _has_study(url: str, name: str) -> bool:
    """Whether Optuna's tables and this study exist (checked without creating anything)."""
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            if not sa.inspect(conn).has_table("studies"):
                return False
            found = conn.execute(sa.text("SELECT 1 FROM studies WHERE study_name = :n"),
                                 {"n": name}).first()
            return found is not None
    finally:
        engine.dispose()


def param_importance(data: SweepData, evaluator: str = "fanova") -> Importance:
    """Importances of the sweep's params for each objective; notes explain any gap."""
    empty = pd.DataFrame(columns=["objective", "param", "importance"])
    sampler = sampler_name(data.settings)
    result = Importance(empty, sampler=sampler, evaluator=evaluator)
    if data.settings.get("design"):
        result.notes.append("A design samples nothing, so there is no importance to estimate: "
                            "each factor's effect is its paired row in the ablation table.")
        return result
    try:
        present = _has_study(data.optuna_url, data.name)
    except sa.exc.SQLAlchemyError as exc:
        result.notes.append(f"Importance skipped: cannot read the Optuna tables ({exc}).")
        return result
    if not present:
        result.notes.append(f"Importance skipped: no Optuna study named {data.name!r} in the "
                            "database (a compare-teachers sweep or a design samples nothing; a report of "
                            "several sweeps has no one study).")
        return result
    try:
        study, complete = _load(data)
    except Exception as exc:  # noqa: BLE001 - an optional section must not sink the report
        result.notes.append(f"Importance skipped: cannot load the Optuna study "
                            f"({type(exc).__name__}: {exc}).")
        return result
    result.n_trials = len(complete)
    if len(complete) < 2:
        result.notes.append(f"Importance skipped: the Optuna study has {len(complete)} completed "
                            "trial(s); at least 2 are needed.")
        return result
    params = _assessable(complete, evaluator, result.notes)
    if not params:
        return result
    rows = []
    for i, objective in enumerate(_objective_names(data, study)):
        try:
            values = _importances(study, evaluator, params, i)
        except Exception as exc:  # noqa: BLE001 - e.g. too few distinct values for a forest
            result.notes.append(f"Importance for {objective} failed ({type(exc).__name__}: "
                                f"{exc}).")
            continue
        rows += [{"objective": objective, "param": p, "importance": v} for p, v in values.items()]
    result.table = pd.DataFrame(rows, columns=empty.columns)
    if len(complete) < FEW_TRIALS:
        result.notes.append(f"Only {len(complete)} completed trials: importances are noisy.")
    result.notes.append(sampler_note(sampler))
    return result


def _load(data: SweepData) -> tuple[Any, list[Any]]:
    import optuna

    optuna.logging.set_verbosity(logging.WARNING)
    storage = optuna.storages.RDBStorage(data.optuna_url, skip_table_creation=True)
    study = optuna.load_study(study_name=data.name, storage=storage)
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    # told COMPLETE but not this sweep's runs: a point outside the space's constraints
    # (never trained) and a trial copied from an earlier sweep by --warm-start
    return study, [t for t in complete
                   if "infeasible" not in t.user_attrs and "warm_start_from" not in t.user_attrs]


def _assessable(complete: list[Any], evaluator: str, notes: list[str]) -> list[str]:
    """Params to assess: all (PED-ANOVA) or those in every completed trial, naming the rest."""
    seen = list(dict.fromkeys(p for t in complete for p in t.params))
    if evaluator == "ped-anova":
        params = seen
    else:
        params = [p for p in seen if all(p in t.params for t in complete)]
        left_out = [p for p in seen if p not in params]
        if left_out:
            notes.append(f"Not assessed (conditional, absent from some trials): "
                         f"{', '.join(left_out)}; `--importance ped-anova` includes them.")
    varied = [p for p in params if len({repr(t.params.get(p)) for t in complete}) > 1]
    constant = [p for p in params if p not in varied]
    if constant:
        notes.append(f"Not assessed (one value in every completed trial): {', '.join(constant)}.")
    if not varied:
        notes.append("Importance skipped: no param took more than one value.")
    return varied


def _objective_names(data: SweepData, study: Any) -> list[str]:
    names = [str(o.get("metric")) for o in data.objectives]
    n = len(study.directions)
    return names[:n] if len(names) >= n else [f"objective {i}" for i in range(n)]


def _importances(study: Any, evaluator: str, params: list[str], index: int) -> dict[str, float]:
    import optuna

    target = None if len(study.directions) == 1 else (lambda t, i=index: t.values[i])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return optuna.importance.get_param_importances(
            study, evaluator=_evaluator(evaluator), params=params, target=target)
