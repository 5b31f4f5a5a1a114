"""A search space's `constraints:`: quantities known before training, computed for a
sampled point from its composed recipe, so that a point outside the bounds is never trained.

- params_trainable: what a trained run records (`ablate.train.count_params`, trainable
  only: classifier, filters, weights, guide; never the frozen teacher), counted on the
  detector built under fake tensors (`ablate.bench.estimate.build`: no weights, no data);
- peak_mem_gb: the memory preflight's figure for the recipe (`estimate_recipe(...).needs_gb`:
  the tracked peak of the training step or evaluation plus its margin), at a data-parallel
  replica's batch as the preflight takes it;
- train_gflops: FLOPs of one training step at the recipe's batch, counted on fake tensors
  (`ablate.bench.cost.train_gflops`, the figure a trained trial records too).

Each is cached by what it depends on (the architecture; the architecture and the training
settings), so a sweep builds each distinct architecture once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ablate.core.errors import AblateError
from ablate.recipe import compose
from ablate.space.model import INFEASIBLE_ATTR, SearchSpace
from ablate.sweep.trial import memory_key

GB = 2**30
FEASIBILITY_SAMPLES = 32  # points validation draws to tell a space its constraints exclude all


@dataclass(frozen=True)
class Verdict:
    """One sampled point against the space's constraints."""

    values: dict[str, float]  # quantity -> its value for this point
    violations: list[float]  # one per constraint, in the space's order; > 0 violated
    reason: str  # empty when feasible

    @property
    def feasible(self) -> bool:
        return not self.reason


@dataclass
class ConstraintCheck:
    """Evaluates a space's constraints for sampled points, caching what it computed."""

    space: SearchSpace
    _params: dict[str, int] = field(default_factory=dict)
    _peak: dict[str, float] = field(default_factory=dict)
    _flops: dict[str, float] = field(default_factory=dict)

    def verdict(self, params: dict[str, Any]) -> Verdict:
        overrides = self.space.overrides(params)
        needed = {c.quantity for c in self.space.constraints}
        values = {q: QUANTITY[q](self, overrides) for q in sorted(needed)}
        violations = [c.violation(values[c.quantity]) for c in self.space.constraints]
        broken = [f"{c.quantity} {values[c.quantity]:.3g} vs {c.describe()}"
                  for c, v in zip(self.space.constraints, violations, strict=True) if v > 0]
        return Verdict(values, violations, "; ".join(broken))

    def params_trainable(self, overrides: list[str]) -> float:
        # lazy: the sweep driver starts without torch
        from ablate.bench.estimate import architecture_key, architecture_only, build

        cfg = compose(architecture_only(overrides))
        key = architecture_key(cfg)
        if key not in self._params:
            self._params[key] = build(cfg).trainable_params
        return float(self._params[key])

    def peak_mem_gb(self, overrides: list[str]) -> float:
        # lazy: the sweep driver starts without torch
        from ablate.bench.estimate import estimate_recipe
        from ablate.sweep.preflight import replica_batch  # lazy: that module loads torch

        key = memory_key(overrides)
        if key not in self._peak:
            batch = replica_batch(overrides, self.space.resources.data_parallel())
            self._peak[key] = estimate_recipe(overrides, batch=batch).needs_gb
        return self._peak[key]


    def train_gflops(self, overrides: list[str]) -> float:
        # lazy: the sweep driver starts without torch
        from ablate.bench.cost import train_gflops

        key = memory_key(overrides)  # architecture and batch, as the memory estimate's
        if key not in self._flops:
            self._flops[key] = train_gflops(compose(overrides))
        return self._flops[key]


QUANTITY = {"params_trainable": ConstraintCheck.params_trainable,
            "peak_mem_gb": ConstraintCheck.peak_mem_gb,
            "train_gflops": ConstraintCheck.train_gflops}


def check_feasible(space: SearchSpace, n: int = FEASIBILITY_SAMPLES,
                   check: ConstraintCheck | None = None) -> None:
    """Before any trial: draw `n` points (random sampler, seeded) and raise one line when the
    constraints exclude all of them, with the range each violated quantity took."""
    if not space.constraints or space.design is not None:
        return
    check = check or ConstraintCheck(space)
    seen: dict[str, list[float]] = {}
    broken: set[int] = set()
    for params in sample_points(space, n):
        verdict = check.verdict(params)
        if verdict.feasible:
            return
        for q, v in verdict.values.items():
            seen.setdefault(q, []).append(v)
        broken |= {i for i, v in enumerate(verdict.violations) if v > 0}
    ranges = [f"{c.quantity} {min(seen[c.quantity]):.2g}..{max(seen[c.quantity]):.2g} vs "
              f"{c.describe()}" for i, c in enumerate(space.constraints) if i in broken]
    raise AblateError(f"search space {space.name}: its constraints exclude all {n} points "
                      f"sampled ({'; '.join(ranges)}); loosen them")


def sample_points(space: SearchSpace, n: int) -> list[dict[str, Any]]:
    """`n` points of the space drawn at random (seeded; no study is stored)."""
    # lazy: reading a space needs no Optuna
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    points = []
    for _ in range(n):
        trial = study.ask()
        points.append(space.define_by_run(trial))
        study.tell(trial, state=optuna.trial.TrialState.PRUNED)
    return points


def worst_values(space: SearchSpace) -> list[float]:
    """The objective values told for a point that was never trained: the worst possible
    (-inf for a maximised metric, +inf for a minimised one), so no sampler or best-trial
    query can read it as good; constrained samplers rank it by its violations anyway."""
    return [-float("inf") if o.mode == "max" else float("inf") for o in space.objectives]


def infeasible_count(study) -> int:  # noqa: ANN001
    """Points of a sweep's study told infeasible (never trained); 0 without a study."""
    if study is None:
        return 0
    return sum(1 for t in study.get_trials(deepcopy=False) if INFEASIBLE_ATTR in t.user_attrs)
