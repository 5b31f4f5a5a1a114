"""`ablate sweep --warm-start SWEEP`: seed a new sweep's sampler with an earlier sweep's trials.

The earlier sweep's Optuna study (named after it, in the same results DB) lends its
COMPLETE trials (not infeasible points, which were never trained, and not trials it was
itself warm-started with) to the new study before its first ask, as what they were: the
same params, distributions and values, marked `warm_start_from`. PRUNED trials are not
copied. They are never re-run, never count toward the new sweep's budget
(`ablate.sweep.reconcile.counted_trials`) and get no results-DB rows: they are not its runs.

A sampler only learns from them if they mean the same thing, so the earlier study must
have the same objectives and, for every param, the very distribution this space suggests.
"""

from __future__ import annotations

import json
from typing import Any

from ablate.core.errors import AblateError
from ablate.space.model import INFEASIBLE_ATTR, SearchSpace

WARM_START_ATTR = "warm_start_from"  # a copied trial's user attr: the sweep it came from
WARM_NUMBER_ATTR = "warm_start_number"  # ... and its number in that sweep's study
CONSTRAINTS_KEY = "constraints"  # what constrained samplers read from system attrs
SAME = "warm starts need the same distributions"


class _Recorder:
    """Stands in for an Optuna trial: records the distribution each suggest_* would create."""

    def __init__(self) -> None:
        self.distributions: dict[str, Any] = {}

    def suggest_categorical(self, name: str, choices: list) -> Any:
        import optuna  # lazy: reading a space needs no Optuna

        self.distributions[name] = optuna.distributions.CategoricalDistribution(choices)
        return choices[0]

    def suggest_int(self, name: str, low: int, high: int, step: int = 1,
                    log: bool = False) -> int:
        import optuna  # lazy: reading a space needs no Optuna

        self.distributions[name] = optuna.distributions.IntDistribution(low, high, log, step)
        return low

    def suggest_float(self, name: str, low: float, high: float, step: float | None = None,
                      log: bool = False) -> float:
        import optuna  # lazy: reading a space needs no Optuna

        self.distributions[name] = optuna.distributions.FloatDistribution(low, high, log, step)
        return low


def space_distributions(space: SearchSpace) -> dict[str, Any]:
    """The distribution each param of `space` is suggested from (what `Param.suggest` asks)."""
    recorder = _Recorder()
    for param in space.params:
        param.suggest(recorder)
    return recorder.distributions


def warm_trials(db, source: str, space: SearchSpace) -> list[Any]:  # noqa: ANN001
    """The earlier sweep's trials to copy; one-line AblateError when there is no such sweep
    or its space is not compatible with `space`. Reads only."""
    import optuna  # lazy: only a warm start needs it here

    if db.sweep_id(source) is None:
        names = list(db.list_sweeps()["name"])[-5:]
        there = f"sweeps there: {', '.join(names)}" if names else "it has no sweeps"
        raise AblateError(f"--warm-start {source}: no such sweep in {db.url} ({there}); "
                          "name one of `ablate sweeps`")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = optuna.load_study(study_name=source,
                                  storage=optuna.storages.RDBStorage(db.optuna_storage_url))
    except KeyError:
        raise AblateError(f"--warm-start {source}: it ran explicit recipes (a design or a "
                          "confirmation), not a search; name a search sweep") from None
    _check_objectives(db, source, study, space)
    trials = [t for t in study.get_trials(deepcopy=False,
                                          states=(optuna.trial.TrialState.COMPLETE,))
              if INFEASIBLE_ATTR not in t.user_attrs and WARM_START_ATTR not in t.user_attrs]
    _check_distributions(source, trials, space_distributions(space))
    return trials


def copy_trials(study, source: str, trials: list[Any]) -> int:  # noqa: ANN001
    """Add `trials` to `study` as finished trials marked `warm_start_from`; return how many
    it holds. Idempotent: a study that already holds warm-start trials gets none again."""
    import optuna  # lazy: only a warm start needs it here

    held = [t for t in study.get_trials(deepcopy=False) if WARM_START_ATTR in t.user_attrs]
    if held:
        return len(held)
    for t in trials:
        system = {k: v for k, v in t.system_attrs.items()  # both of Optuna's formats
                  if k == CONSTRAINTS_KEY or k.startswith(f"{CONSTRAINTS_KEY}:")}
        study.add_trial(optuna.trial.create_trial(
            params=t.params, distributions=t.distributions, values=t.values,
            user_attrs={WARM_START_ATTR: source, WARM_NUMBER_ATTR: t.number},
            system_attrs=system))
    return len(trials)


def _check_objectives(db, source: str, study, space: SearchSpace) -> None:  # noqa: ANN001
    row = db.list_sweeps().set_index("name").loc[source]
    stored = json.loads(row["settings_json"] or "{}").get("objectives") or []
    theirs = [(o["metric"], o["mode"]) for o in stored]
    directions = ["max" if d.name == "MAXIMIZE" else "min" for d in study.directions]
    ours = [(o.metric, o.mode) for o in space.objectives]
    if theirs != ours or [m for _, m in ours] != directions:
        said = ", ".join(f"{m} ({d})" for m, d in theirs) or ", ".join(directions)
        raise AblateError(f"--warm-start {source}: it optimised {said}, this space "
                          f"{', '.join(f'{m} ({d})' for m, d in ours)}; warm starts need the "
                          "same objectives")


def _check_distributions(source: str, trials: list[Any], ours: dict[str, Any]) -> None:
    """One line naming the first param whose distribution differs (or this space lacks)."""
    for t in trials:
        for key, theirs in t.distributions.items():
            if key not in ours:
                raise AblateError(f"--warm-start {source}: its param {key} is not in this "
                                  f"space; {SAME}")
            if theirs != ours[key]:
                both = hasattr(theirs, "choices") and hasattr(ours[key], "choices")
                differs = (f"has choices {list(theirs.choices)}, this space's "
                           f"{list(ours[key].choices)}" if both else
                           f"is {_describe(theirs)}, this space's {_describe(ours[key])}")
                raise AblateError(f"--warm-start {source}: its param {key} {differs}; {SAME}")


def _describe(dist: Any) -> str:
    if hasattr(dist, "choices"):
        return f"choices {list(dist.choices)}"
    extra = "".join([", log" if dist.log else "",
                     f", step {dist.step}" if dist.step is not None else ""])
    kind = type(dist).__name__.removesuffix("Distribution").lower()
    return f"{kind} range [{dist.low}, {dist.high}{extra}]"
