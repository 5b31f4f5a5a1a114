"""The data model of a search space: frozen dataclasses a parsed YAML file becomes, the
vocabulary of the format (top-level keys, param fields, metrics, samplers) and
format_value, which turns a value back into Hydra override text.

Nothing here reads files; Optuna is imported only inside SearchSpace's sampling methods,
so that the model stays plain data.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ablate.core.errors import AblateError

KNOWN_METRICS = (
    "val_auc", "select_auc", "test_auc_mean", "params_trainable", "params_inference",
    "step_time_s", "wall_s", "peak_mem_mb", "train_gflops", "latency_ms",
)
SAMPLERS = ("tpe", "random", "grid", "nsga2")
TOP_KEYS = ("description", "fixed", "params", "objectives", "budget", "seeds",
            "early_stopping", "resources", "tests", "sampler", "design", "factors", "reference",
            "confirm", "constraints")
CONSTRAINT_QUANTITIES = ("params_trainable", "peak_mem_gb", "train_gflops")  # known before training
CONSTRAINTS_ATTR = "constraints"  # a study trial's user attr: violation amounts, > 0 violated
INFEASIBLE_ATTR = "infeasible"  # a study trial's user attr: why it was never trained
PARAM_FIELDS = ("choice", "int", "float", "log", "step", "when")
TINY_PREFIX = "tiny-"  # teachers not starting with it load real weights (minutes)
MODEL_KEYS = ("backbone", "filter", "weight", "guide", "teacher", "loss", "image_size")
_BARE = re.compile(r"^[A-Za-z_/.~][\w\-./~]*$")
_INTERPOLATION = re.compile(r"^\$\{[^${}]+\}$")  # ${image_size}: passed through, resolved
_RESERVED = {"true", "false", "null", "inf", "-inf", "+inf", "nan"}

Scalar = str | int | float | bool | None


# --- the data model ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Param:
    """One recipe key the search chooses; `when` makes it conditional on earlier params."""

    key: str
    kind: str  # choice | int | float
    choices: tuple[Scalar, ...] = ()
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    when: dict[str, tuple[Scalar, ...]] = field(default_factory=dict)

    def active(self, chosen: dict[str, Any]) -> bool:
        """True when every `when` key was chosen and took one of the listed values."""
        return all(k in chosen and chosen[k] in allowed for k, allowed in self.when.items())

    def suggest(self, trial: Any) -> Any:
        """Ask the Optuna trial (or Ray's captor of it) for a value; nothing else."""
        if self.kind == "choice":
            return trial.suggest_categorical(self.key, list(self.choices))
        if self.kind == "int":
            return trial.suggest_int(self.key, self.low, self.high, step=self.step or 1, log=self.log)
        return trial.suggest_float(self.key, self.low, self.high, step=self.step, log=self.log)

    @property
    def default(self) -> Any:
        """The value used for this param when validation varies another one."""
        return self.choices[0] if self.kind == "choice" else self.low

    def probe_values(self) -> list[Any]:
        """Values the dry run tries: every choice, or both ends of a range."""
        if self.kind == "choice":
            return list(self.choices)
        return [self.low] if self.low == self.high else [self.low, self.high]


@dataclass(frozen=True)
class Objective:
    metric: str
    mode: str  # min | max


@dataclass(frozen=True)
class EarlyStopping:
    """ASHA on the val metric reported at each eval (needs train.eval_every > 0).

    `brackets` > 1 is asynchronous Hyperband (Li et al., "A System for Massively Parallel
    Hyperparameter Tuning", 2020): ASHA run over that many brackets, each starting its
    successive halving at a later rung, so some trials are never cut early. With the TPE
    sampler this is Hyperband with TPE, a BOHB without Ray's TuneBOHB (which would bypass
    the Optuna study and its honest ledger of what was pruned).
    """

    enabled: bool = False
    grace_period: int = 1
    reduction_factor: float = 2
    brackets: int = 1


@dataclass(frozen=True)
class Resources:
    """Per trial; fractions allowed (two trials can share one GPU with gpu: 0.5).

    `processes` > 1 runs each trial's training data-parallel over that many processes
    (Ray Train), the trial's cpu and gpu split evenly among them; by default a trial with
    2 or more whole GPUs takes one process per GPU (gpu: 4 = one trial on 4 GPUs).
    """

    cpu: float = 1
    gpu: float | str = 0  # or "auto": a fraction packed by the memory preflight
    processes: int = 0  # 0: one per GPU when gpu >= 2, else 1

    def data_parallel(self, gpu: float | str | None = None) -> int:
        """Processes per trial; `gpu` overrides the space's (--gpus)."""
        gpu = self.gpu if gpu is None else gpu
        if self.processes:
            return self.processes
        if isinstance(gpu, str):  # auto: at most one card a trial
            return 1
        return int(gpu) if gpu >= 2 and float(gpu).is_integer() else 1


@dataclass(frozen=True)
class Confirm:
    """After a search: retrain the `top` best recipes by source-val on `seeds` fresh seeds.

    The search chose its winners on its own runs, so their numbers are biased upward (the
    winner's curse); the report's verdicts use the confirmation runs only.
    """

    top: int
    seeds: int


@dataclass(frozen=True)
class Constraint:
    """A bound on a quantity known before training (`CONSTRAINT_QUANTITIES`): a sampled
    point outside [low, high] is never trained."""

    quantity: str
    low: float | None = None
    high: float | None = None

    def violation(self, value: float) -> float:
        """How far `value` is outside the bounds (> 0 violated, <= 0 feasible), in the
        quantity's own units: what Optuna's constrained samplers read."""
        over = value - self.high if self.high is not None else -math.inf
        under = self.low - value if self.low is not None else -math.inf
        return float(max(over, under))

    def describe(self) -> str:
        bounds = [f"min {self.low:g}"] if self.low is not None else []
        bounds += [f"max {self.high:g}"] if self.high is not None else []
        return " ".join(bounds)


@dataclass(frozen=True)
class SamplerSpec:
    name: str = "tpe"
    seed: int | None = 0


@dataclass(frozen=True)
class SearchSpace:
    """A parsed search space; `trials` configurations, each run with `seeds` seeds."""

    name: str
    description: str
    fixed: dict[str, Any]
    params: list[Param]
    objectives: list[Objective]
    trials: int
    max_concurrent: int
    seeds: int
    early_stopping: EarlyStopping
    resources: Resources
    tests: list[str] | None
    sampler: SamplerSpec
    source_path: Path | None = None
    design: Any = None  # a space.design.Design: explicit cells instead of a sampler
    first_seed: int = 0  # seeds: {count: 3, first: 3} runs seeds 3, 4, 5
    confirm: Confirm | None = None
    constraints: tuple[Constraint, ...] = ()

    @property
    def seed_ids(self) -> list[int]:
        """The seeds every recipe runs with."""
        return list(range(self.first_seed, self.first_seed + self.seeds))

    @property
    def confirm_seed_ids(self) -> list[int]:
        """Fresh seeds for the confirmation stage: the ones right after the search's."""
        if self.confirm is None:
            return []
        start = self.first_seed + self.seeds
        return list(range(start, start + self.confirm.seeds))

    @property
    def metrics(self) -> list[str]:
        return [o.metric for o in self.objectives]

    @property
    def modes(self) -> list[str]:
        return [o.mode for o in self.objectives]

    @property
    def multi_objective(self) -> bool:
        return len(self.objectives) > 1

    @property
    def sampler_name(self) -> str:
        """What picks the recipes: the sampler, or the design and its size."""
        if self.design is not None:
            return f"design {self.design.kind} ({self.design.size} cells)"
        return self.sampler.name

    @property
    def total_runs(self) -> int:
        """Training runs the budget pays for: configurations x seeds."""
        return self.trials * self.seeds

    def param(self, key: str) -> Param:
        for p in self.params:
            if p.key == key:
                return p
        raise AblateError(f"search space {self.name} has no param {key!r}")

    def define_by_run(self, trial: Any) -> dict[str, Any]:
        """Optuna define-by-run: suggest params in order, skipping inactive ones.

        Only calls `trial.suggest_*` and returns constants (what Tune searchers expect).
        """
        chosen: dict[str, Any] = {}
        for p in self.params:
            if p.active(chosen):
                chosen[p.key] = p.suggest(trial)
        return chosen

    def overrides(self, params: dict[str, Any] | None = None, seed: int | None = None) -> list[str]:
        """Hydra overrides of one trial: fixed, then params, then tests and seed."""
        params = dict(params or {})
        unknown = sorted(set(params) - {p.key for p in self.params})
        if unknown:
            raise AblateError(
                f"search space {self.name} has no param(s) {', '.join(unknown)}; "
                f"its params: {', '.join(p.key for p in self.params) or 'none'}"
            )
        values: dict[str, Any] = {**self.fixed, **params}
        if self.tests is not None:
            values["data.tests"] = list(self.tests)
        if seed is not None:
            values["seed"] = seed
        return [f"{k}={format_value(v)}" for k, v in values.items()]

    def make_sampler(self) -> Any:
        """The Optuna sampler the space asks for (TPE groups conditional params); Optuna is
        imported here, so the model itself stays plain data."""
        import warnings

        import optuna

        name, seed = self.sampler.name, self.sampler.seed
        # TPE and NSGA-II read each trial's constraint values (`Trial.set_constraint`, set by
        # the searcher when a point is drawn); random and grid do not: the searcher still
        # skips (never trains) their infeasible points, but they do not learn to avoid them
        if name == "random":
            return optuna.samplers.RandomSampler(seed=seed)
        if name == "grid":
            return optuna.samplers.GridSampler(self.grid(), seed=seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            if name == "nsga2":
                return optuna.samplers.NSGAIISampler(seed=seed)
            return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True)

    def grid(self) -> dict[str, list[Scalar]]:
        """Every param's choices (grid sampler only: all params categorical)."""
        return {p.key: list(p.choices) for p in self.params}


def format_value(value: Any) -> str:
    """A Python value as Hydra override text that parses back to the same value."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else str(value)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(format_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{format_value(v)}" for k, v in value.items()) + "}"
    text = str(value)
    if (_BARE.match(text) and text.lower() not in _RESERVED) or _INTERPOLATION.match(text):
        return text
    text = text.replace("${", "\\${")  # a literal ${ inside a quoted value
    # Hydra unescapes only backslashes that precede a quote (or the closing quote)
    quoted = re.sub(r"(\\*)'", lambda m: m.group(1) * 2 + "\\'", text)
    return "'" + re.sub(r"(\\+)$", lambda m: m.group(1) * 2, quoted) + "'"
