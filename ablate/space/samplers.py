"""How a sweep asks Optuna for trials: define-by-run over a space's (conditional) params,
the sampler the space names, and the grid of a grid search. Optuna is imported lazily."""

from __future__ import annotations

import warnings
from typing import Any

# `space` is an ablate.space.model.SearchSpace; not imported, because model's methods
# call into this module (the two must not import each other)
SearchSpace = Any
Scalar = Any


def define_by_run(space: SearchSpace, trial: Any) -> dict[str, Any]:
    """Optuna define-by-run: suggest params in order, skipping inactive ones.

    Only calls `trial.suggest_*` and returns constants, as Ray Tune's
    OptunaSearch requires (it wraps the trial to capture the suggestions).
    """
    chosen: dict[str, Any] = {}
    for p in space.params:
        if p.active(chosen):
            chosen[p.key] = p.suggest(trial)
    return chosen


def make_sampler(space: SearchSpace) -> Any:
    """The Optuna sampler the space asks for (TPE groups conditional params)."""
    import optuna

    name, seed = space.sampler.name, space.sampler.seed
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "grid":
        return optuna.samplers.GridSampler(grid(space), seed=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if name == "nsga2":
            return optuna.samplers.NSGAIISampler(seed=seed)
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True)


def grid(space: SearchSpace) -> dict[str, list[Scalar]]:
    """Every param's choices (grid sampler only: all params categorical)."""
    return {p.key: list(p.choices) for p in space.params}
