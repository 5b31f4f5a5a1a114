"""Search spaces: small declarative YAML files (`search_spaces/<name>.yaml`) saying
which recipe keys a sweep varies, how it scores a trial and what it may spend.

    space = load_space("quick")          # strict parse: one-line AblateError per mistake
    notes = validate_space(space)        # seconds: keys, variants, a dry-run build of each choice
    params = space.define_by_run(trial)  # Optuna define-by-run (what Ray's OptunaSearch calls)
    cfg = compose(space.overrides(params, seed=0))

A param is `key: {choice: [...]}`, `{int: [lo, hi], step, log}` or
`{float: [lo, hi], step, log}`, optionally `when: {other_key: value(s)}` (it is only
chosen when an earlier param took one of those values).
"""

from __future__ import annotations

import json
import logging
import math
import re
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import yaml

from ablate.errors import AblateError

KNOWN_METRICS = (
    "val_auc", "test_auc_mean", "params_trainable", "params_inference",
    "step_time_s", "wall_s", "peak_mem_mb",
)
SAMPLERS = ("tpe", "random", "grid", "nsga2")
TOP_KEYS = ("description", "fixed", "params", "objectives", "budget", "seeds",
            "early_stopping", "resources", "tests", "sampler")
PARAM_FIELDS = ("choice", "int", "float", "log", "step", "when")
TINY_PREFIX = "tiny-"  # teachers not starting with it load real weights (minutes)
MODEL_KEYS = ("backbone", "filter", "weight", "guide", "teacher", "loss", "image_size")
_KEY = re.compile(r"^\+{0,2}[A-Za-z_][\w\-]*(\.[A-Za-z_][\w\-]*)*$")
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
    """ASHA on the val metric reported at each eval (needs train.eval_every > 0)."""

    enabled: bool = False
    grace_period: int = 1
    reduction_factor: float = 2


@dataclass(frozen=True)
class Resources:
    """Per trial; fractions allowed (two trials can share one GPU with gpu: 0.5)."""

    cpu: float = 1
    gpu: float = 0


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

        Only calls `trial.suggest_*` and returns constants, as Ray Tune's
        OptunaSearch requires (it wraps the trial to capture the suggestions).
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
        """The Optuna sampler the space asks for (TPE groups conditional params)."""
        import optuna

        name, seed = self.sampler.name, self.sampler.seed
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


# --- finding and loading -------------------------------------------------------------------------


def spaces_dirs() -> list[Path]:
    """Folders searched for spaces by name: built-in, plugins', $ABLATE_SPACES_PATH."""
    from ablate.locations import search_path

    return search_path("search_spaces")


def list_spaces() -> list[tuple[str, str]]:
    """(name, description) of every space on the search path; a broken file says so."""
    from ablate.locations import find, names

    out = []
    for name in names("search_spaces"):
        path = find("search_spaces", f"{name}.yaml")
        try:
            out.append((name, load_space(str(path)).description))
        except AblateError as err:
            out.append((name, f"(invalid: {err})"))
    return out


def load_space(name_or_path: str | Path) -> SearchSpace:
    """Parse a space by name (search_spaces/<name>.yaml) or by file path, strictly."""
    path = _find(str(name_or_path))
    try:
        text = path.read_text()
    except OSError as err:
        raise AblateError(f"cannot read search space {path}: {err.strerror}") from None
    return parse_space(text, path)


def _find(name_or_path: str) -> Path:
    path = Path(name_or_path).expanduser()
    looks_like_path = path.suffix in (".yaml", ".yml") or "/" in name_or_path
    if looks_like_path or path.is_file():
        if not path.is_file():
            raise AblateError(f"search space file {path} does not exist")
        return path
    from ablate.locations import find, names

    candidate = find("search_spaces", f"{name_or_path}.yaml")
    if candidate is None:
        known = ", ".join(names("search_spaces")) or "none"
        where = ", ".join(str(p) for p in spaces_dirs())
        raise AblateError(
            f"unknown search space {name_or_path!r}; spaces in {where}: {known} "
            "(or give a path to a .yaml file)"
        )
    return candidate


def parse_settings(items: list[str] | tuple[str, ...], flag: str) -> dict[str, object]:
    """`key=value` items as a space's `fixed` mapping (values typed as YAML)."""
    fixed: dict[str, object] = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise AblateError(f"{flag} {item!r} is not key=value")
        fixed[key] = yaml.safe_load(value) if value else None
    return fixed


def derive_space(space: SearchSpace, settings: dict[str, Any], folder: Path) -> Path:
    """A copy of `space` with more fixed settings, written to folder/<space name>.yaml.

    `ablate sweep --set KEY=VALUE` uses it: workers read the derived file, the
    space keeps its name, and the file stays beside the results as provenance.
    """
    if space.source_path is None:
        raise AblateError(f"search space {space.name} has no file to derive from")
    data = _read_yaml(space.source_path.read_text(), _Where(space.source_path))
    searched = sorted(set(settings) & {p.key for p in space.params})
    if searched:
        raise AblateError(f"--set {searched[0]} fixes a key that space {space.name} searches; "
                          "copy the space file and edit it instead")
    data["fixed"] = {**(data.get("fixed") or {}), **settings}
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{space.name}.yaml"
    path.write_text(f"# {space.source_path} with --set {settings}\n"
                    + yaml.safe_dump(data, sort_keys=False))
    return path


def parse_space(text: str, path: Path) -> SearchSpace:
    """The parse behind load_space; every mistake is one AblateError naming file and key."""
    where = _Where(path)
    data = _read_yaml(text, where)
    unknown = sorted(set(data) - set(TOP_KEYS))
    if unknown:
        where.fail(unknown[0], f"unknown top-level key; valid keys: {', '.join(TOP_KEYS)}")
    fixed = _fixed(data.get("fixed"), where)
    params = _params(data.get("params"), where)
    clash = sorted(set(fixed) & {p.key for p in params})
    if clash:
        where.fail(f"params.{clash[0]}", "is also in fixed; keep it in one place")
    objectives = _objectives(data.get("objectives"), where)
    trials, max_concurrent = _budget(data.get("budget"), where)
    seeds = _int(data.get("seeds", 1), "seeds", where, minimum=1)
    if seeds > 1 and ("seed" in fixed or any(p.key == "seed" for p in params)):
        where.fail("seeds", "seeds > 1 sets the recipe's seed itself; remove `seed` from fixed/params")
    tests = _tests(data.get("tests"), where)
    if tests is not None and "data.tests" in fixed:
        where.fail("tests", "give the test sets either as tests: or as fixed data.tests, not both")
    return SearchSpace(
        name=path.stem,
        description=_description(data.get("description", ""), where),
        fixed=fixed,
        params=params,
        objectives=objectives,
        trials=trials,
        max_concurrent=max_concurrent,
        seeds=seeds,
        early_stopping=_early_stopping(data.get("early_stopping"), where),
        resources=_resources(data.get("resources"), where),
        tests=tests,
        sampler=_sampler(data.get("sampler"), params, len(objectives), where),
        source_path=path,
    )


class _Where:
    """Names the file in every message, so an error says where to look."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def fail(self, key: str, message: str) -> NoReturn:
        raise AblateError(f"search space {self.path}: {key}: {message}")


class _Loader(yaml.SafeLoader):
    """SafeLoader that reads 1e-5 as a float (YAML 1.2) and rejects duplicate keys."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$"),
    list("-+0123456789."),
)


def _mapping(loader: _Loader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: set = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            line = key_node.start_mark.line + 1
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r} (line {line})", key_node.start_mark
            )
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)


def _read_yaml(text: str, where: _Where) -> dict:
    try:
        data = yaml.load(text, Loader=_Loader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise AblateError(f"search space {where.path}{line}: malformed YAML: {problem}") from None
    if data is None:
        raise AblateError(f"search space {where.path} is empty; see search_spaces/quick.yaml")
    if not isinstance(data, dict):
        raise AblateError(f"search space {where.path} must be a mapping of {', '.join(TOP_KEYS)}")
    return data


# --- the sections --------------------------------------------------------------------------------


def _description(value: Any, where: _Where) -> str:
    if not isinstance(value, str):
        where.fail("description", "must be a string")
    return value.strip()


def _fixed(value: Any, where: _Where) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        where.fail("fixed", "must be a mapping of recipe overrides, e.g. `train.steps: 40`")
    for key in value:
        if not isinstance(key, str) or not _KEY.match(key):
            where.fail(f"fixed.{key}", "is not a recipe key (dotted names like train.lr)")
    return dict(value)


def _params(value: Any, where: _Where) -> list[Param]:
    if value is None:
        return []
    if not isinstance(value, dict):
        where.fail("params", "must be a mapping of key: {choice|int|float: ...}")
    params: list[Param] = []
    for key, spec in value.items():
        params.append(_param(key, spec, params, where))
    return params


def _param(key: Any, spec: Any, earlier: list[Param], where: _Where) -> Param:
    at = f"params.{key}"
    if not isinstance(key, str) or not _KEY.match(key):
        where.fail(at, "is not a recipe key (dotted names like train.lr; no '/')")
    if not isinstance(spec, dict):
        where.fail(at, "must be a mapping like {choice: [a, b]} or {float: [1e-5, 1e-3], log: true}")
    unknown = sorted(set(spec) - set(PARAM_FIELDS))
    if unknown:
        where.fail(at, f"unknown field {unknown[0]!r}; fields: {', '.join(PARAM_FIELDS)}")
    kinds = [k for k in ("choice", "int", "float") if k in spec]
    if len(kinds) != 1:
        where.fail(at, "needs exactly one of choice:, int: or float:")
    kind = kinds[0]
    log = spec.get("log", False)
    if not isinstance(log, bool):
        where.fail(f"{at}.log", "must be true or false")
    when = _when(spec.get("when"), at, earlier, where)
    if kind == "choice":
        if "log" in spec or "step" in spec:
            where.fail(at, "log/step apply to int/float ranges, not to choice")
        return Param(key, kind, _choices(spec["choice"], at, where), when=when)
    low, high = _range(spec[kind], kind, at, where)
    step = _step(spec.get("step"), kind, at, where)
    if log and low <= 0:
        where.fail(at, f"log scale needs low > 0 (got {low})")
    if log and step is not None and not (kind == "int" and step == 1):
        where.fail(at, "log scale cannot have a step (Optuna samples it continuously)")
    return Param(key, kind, low=low, high=high, log=log, step=step, when=when)


def _choices(value: Any, at: str, where: _Where) -> tuple[Scalar, ...]:
    if not isinstance(value, list) or not value:
        where.fail(at, "choice must be a non-empty list, e.g. {choice: [paper, code]}")
    for v in value:
        if isinstance(v, (list, dict)):
            where.fail(at, f"choice values must be scalars (Optuna's categorical), not {v!r}")
    if len({json.dumps(v) for v in value}) != len(value):
        where.fail(at, "choice lists a value twice")
    return tuple(value)


def _range(value: Any, kind: str, at: str, where: _Where) -> tuple[Any, Any]:
    ok_type = int if kind == "int" else (int, float)
    if (
        not isinstance(value, list) or len(value) != 2
        or any(isinstance(v, bool) or not isinstance(v, ok_type) for v in value)
    ):
        where.fail(at, f"{kind} must be [low, high] of {kind}s, e.g. {{{kind}: "
                       f"{'[16, 64]' if kind == 'int' else '[1.0e-5, 1.0e-3]'}}}")
    low, high = value
    if low > high:
        where.fail(at, f"range low {low} > high {high}")
    return (low, high) if kind == "int" else (float(low), float(high))


def _step(value: Any, kind: str, at: str, where: _Where) -> float | int | None:
    if value is None:
        return None
    ok_type = int if kind == "int" else (int, float)
    if isinstance(value, bool) or not isinstance(value, ok_type) or value <= 0:
        where.fail(f"{at}.step", f"must be a positive {kind}")
    return value if kind == "int" else float(value)


def _when(value: Any, at: str, earlier: list[Param], where: _Where) -> dict[str, tuple]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not value:
        where.fail(f"{at}.when", "must map an earlier param to its value(s), e.g. {guide: adapter}")
    known = {p.key: p for p in earlier}
    out: dict[str, tuple] = {}
    for key, allowed in value.items():
        if key not in known:
            where.fail(f"{at}.when.{key}", "is not a param listed before this one (params are "
                                           f"chosen in order); earlier params: "
                                           f"{', '.join(known) or 'none'}")
        values = tuple(allowed) if isinstance(allowed, list) else (allowed,)
        parent = known[key]
        bad = [v for v in values if parent.kind == "choice" and v not in parent.choices]
        if not values or bad:
            where.fail(f"{at}.when.{key}", f"value {bad[0] if bad else '[]'!r} is not one of "
                                           f"{key}'s choices {list(parent.choices)}")
        out[key] = values
    return out


def _objectives(value: Any, where: _Where) -> list[Objective]:
    if value is None:
        return [Objective("val_auc", "max")]
    if not isinstance(value, list) or not value:
        where.fail("objectives", "must be a list like [{metric: val_auc, mode: max}]")
    if len(value) > 2:
        where.fail("objectives", f"at most 2 objectives (a Pareto pair), got {len(value)}")
    out = []
    for i, item in enumerate(value):
        at = f"objectives[{i}]"
        if not isinstance(item, dict) or set(item) != {"metric", "mode"}:
            where.fail(at, "must be {metric: <name>, mode: min|max}")
        if item["metric"] not in KNOWN_METRICS:
            where.fail(f"{at}.metric", f"unknown metric {item['metric']!r}; "
                                       f"known: {', '.join(KNOWN_METRICS)}")
        if item["mode"] not in ("min", "max"):
            where.fail(f"{at}.mode", f"must be min or max, not {item['mode']!r}")
        out.append(Objective(item["metric"], item["mode"]))
    if len({o.metric for o in out}) != len(out):
        where.fail("objectives", "the same metric is listed twice")
    return out


def _section(value: Any, name: str, fields: tuple[str, ...], where: _Where) -> dict:
    """A small mapping section with a fixed set of fields."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        where.fail(name, f"must be a mapping with fields {', '.join(fields)}")
    unknown = sorted(set(value) - set(fields))
    if unknown:
        where.fail(f"{name}.{unknown[0]}", f"unknown field; fields: {', '.join(fields)}")
    return value


def _int(value: Any, at: str, where: _Where, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        where.fail(at, f"must be an integer >= {minimum}, not {value!r}")
    return value


def _number(value: Any, at: str, where: _Where, minimum: float, strict: bool = False) -> float:
    bad = isinstance(value, bool) or not isinstance(value, (int, float))
    if bad or value < minimum or (strict and value == minimum):
        where.fail(at, f"must be a number {'>' if strict else '>='} {minimum}, not {value!r}")
    return value


def _budget(value: Any, where: _Where) -> tuple[int, int]:
    b = _section(value, "budget", ("trials", "max_concurrent"), where)
    trials = _int(b.get("trials", 8), "budget.trials", where, minimum=1)
    return trials, _int(b.get("max_concurrent", 1), "budget.max_concurrent", where, minimum=1)


def _early_stopping(value: Any, where: _Where) -> EarlyStopping:
    e = _section(value, "early_stopping", ("enabled", "grace_period", "reduction_factor"), where)
    enabled = e.get("enabled", bool(e))
    if not isinstance(enabled, bool):
        where.fail("early_stopping.enabled", "must be true or false")
    grace = _int(e.get("grace_period", 1), "early_stopping.grace_period", where, minimum=1)
    factor = _number(e.get("reduction_factor", 2), "early_stopping.reduction_factor", where, 1,
                     strict=True)
    return EarlyStopping(enabled, grace, factor)


def _resources(value: Any, where: _Where) -> Resources:
    r = _section(value, "resources", ("cpu", "gpu"), where)
    cpu = _number(r.get("cpu", 1), "resources.cpu", where, 0, strict=True)
    return Resources(cpu, _number(r.get("gpu", 0), "resources.gpu", where, 0))


def _tests(value: Any, where: _Where) -> list[str] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
        where.fail("tests", "must be a non-empty list of dataset names, e.g. [synth-blend, celebdf]")
    return list(value)


def _sampler(value: Any, params: list[Param], n_objectives: int, where: _Where) -> SamplerSpec:
    s = _section(value, "sampler", ("name", "seed"), where)
    name = s.get("name", "nsga2" if n_objectives > 1 else "tpe")
    if name not in SAMPLERS:
        where.fail("sampler.name", f"unknown sampler {name!r}; choose from {', '.join(SAMPLERS)}")
    seed = s.get("seed", 0)
    if seed is not None:
        seed = _int(seed, "sampler.seed", where, minimum=0)
    if name == "grid" and any(p.kind != "choice" or p.when for p in params):
        where.fail("sampler.name", "grid needs every param to be an unconditional choice")
    if name == "grid" and not params:
        where.fail("sampler.name", "grid needs at least one param")
    return SamplerSpec(name, seed)


# --- validation before any trial starts ----------------------------------------------------------


@dataclass
class _Check:
    """Problems and notes collected over one validation (reported all at once)."""

    space: SearchSpace
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    fixed: dict[str, Any] = field(default_factory=dict)  # fixed overrides not yet found broken

    def __post_init__(self) -> None:
        self.fixed = dict(self.space.fixed)

    def problem(self, text: str) -> None:
        if text not in self.problems:
            self.problems.append(text)

    def overrides(self, params: dict[str, Any]) -> list[str]:
        """The trial's overrides, leaving out fixed items already reported as broken."""
        values = {**self.fixed, **params}
        if self.space.tests is not None:
            values["data.tests"] = list(self.space.tests)
        return [f"{k}={format_value(v)}" for k, v in values.items()]


def validate_space(space: SearchSpace, build: bool = True) -> list[str]:
    """Check a space before a sweep spends anything; raise one error listing every problem.

    Composes the fixed overrides with each param at a representative value, checks
    slot choices against the registries and (build=True) builds each distinct
    detector once and runs one guided forward on 2 random images. Returns notes.
    """
    check = _Check(space)
    params = _registered(check)
    params = _composable(check, params)
    cfgs = _probe_configs(check, params)
    _check_teachers(check, list(cfgs.values()))
    _check_encoders(check, list(cfgs.values()))
    _check_datasets(check, list(cfgs.values()))
    if cfgs and space.early_stopping.enabled:
        _check_rungs(check, next(iter(cfgs.values())))
    if build:
        _dry_run(check, cfgs)
    if any(m.startswith("test_") for m in space.metrics):
        check.notes.append(
            "an objective is a test-set metric: recipes are then chosen on the test sets and "
            "their test numbers are optimistically biased; use val_auc for honest cross-dataset "
            "claims"
        )
    if space.sampler.name == "grid":
        size = math.prod(len(p.choices) for p in space.params)
        if size != space.trials:
            check.notes.append(f"grid has {size} points but budget.trials is {space.trials}")
    if check.problems:
        n = len(check.problems)
        lines = "\n".join(f"  - {p}" for p in check.problems)
        where = f" ({space.source_path})" if space.source_path else ""
        raise AblateError(
            f"search space {space.name} has {n} problem{'s' if n > 1 else ''}{where}:\n{lines}"
        )
    return check.notes


def _registered(check: _Check) -> list[Param]:
    """Slot choices must name registered variants; returns the params left to probe."""
    from ablate.registry import registry
    from ablate.slots import SLOTS

    for key, value in check.space.fixed.items():
        if key in SLOTS and value not in registry(key):
            check.problem(_unknown_variant(key, value, "fixed"))
            del check.fixed[key]
    kept = []
    for p in check.space.params:
        bad = [v for v in p.choices if p.key in SLOTS and v not in registry(p.key)]
        for v in bad:
            check.problem(_unknown_variant(p.key, v, f"params.{p.key}"))
        kept.append(p if not bad else _without(p, bad))
    return [p for p in kept if p.kind != "choice" or p.choices]


def _unknown_variant(slot: str, name: Any, where: str) -> str:
    from ablate.registry import registry

    return (f"{where}: unknown {slot} {name!r}; registered {slot} variants: "
            f"{', '.join(registry(slot).names())}")


def _without(p: Param, bad: list[Any]) -> Param:
    return Param(p.key, p.kind, tuple(v for v in p.choices if v not in bad), when=p.when)


def _composable(check: _Check, params: list[Param]) -> list[Param]:
    """Keys must exist in the recipe; params whose key does not are left out of later probes."""
    from ablate.recipe import compose

    try:
        compose(check.overrides(_assignment(params, {})))
        return params  # the common case: everything composes at its default
    except AblateError:
        pass
    try:
        compose(check.overrides({}))
    except AblateError:
        if not _pinpoint_fixed(check):
            return []
    kept: list[Param] = []
    for p in params:
        lineage = [q for q in kept if q.key in _ancestors(params, p)] + [p]
        if len(lineage) <= len(_ancestors(params, p)):
            continue  # an ancestor failed already (and was reported)
        try:
            compose(check.overrides(_assignment(lineage, {p.key: p.default})))
            kept.append(p)
        except AblateError as err:
            check.problem(f"params.{p.key}: {err}")
    return kept


def _pinpoint_fixed(check: _Check) -> bool:
    """Report (and drop) the fixed overrides that break the recipe; False if still broken.

    Adds them one by one, groups (`teacher: sd15`) before their keys (`teacher.path`).
    """
    from ablate.recipe import compose

    good: dict[str, Any] = {}
    for key in sorted(check.fixed, key=lambda k: "." in k):
        try:
            compose([f"{k}={format_value(v)}" for k, v in {**good, key: check.fixed[key]}.items()])
            good[key] = check.fixed[key]
        except AblateError as err:
            check.problem(f"fixed.{key}: {err}")
    check.fixed = {k: v for k, v in check.fixed.items() if k in good}
    try:
        compose(check.overrides({}))
        return True
    except AblateError as err:
        check.problem(f"fixed: {err}")
        return False


def _ancestors(params: list[Param], p: Param) -> set[str]:
    """The keys p's `when` depends on, transitively."""
    by_key = {q.key: q for q in params}
    keys: set[str] = set()
    todo = list(p.when)
    while todo:
        key = todo.pop()
        if key not in keys and key in by_key:
            keys.add(key)
            todo.extend(by_key[key].when)
    return keys


def _assignment(params: list[Param], forced: dict[str, Any]) -> dict[str, Any]:
    """A full trial: forced values, their `when` conditions met, defaults elsewhere."""
    forced = dict(forced)
    for p in reversed(params):  # conditions point backwards, so one reverse pass suffices
        if p.key in forced:
            for key, allowed in p.when.items():
                forced.setdefault(key, allowed[0])
    chosen: dict[str, Any] = {}
    for p in params:
        if p.active(chosen):
            chosen[p.key] = forced.get(p.key, p.default)
    return chosen


def _probe_configs(check: _Check, params: list[Param]) -> dict[str, Any]:
    """Compose each one-param-at-a-time variation; returns {label: recipe}."""
    from ablate.recipe import compose

    cfgs: dict[str, Any] = {}
    seen: set[str] = set()
    for p in [None, *params]:
        for value in p.probe_values() if p else [None]:
            trial = _assignment(params, {p.key: value} if p else {})
            if p and trial.get(p.key) != value:
                continue  # its `when` contradicts itself; nothing to probe
            label = " ".join(f"{k}={format_value(v)}" for k, v in trial.items()) or "(fixed only)"
            if label in seen:
                continue
            seen.add(label)
            try:
                cfgs[label] = compose(check.overrides(trial))
            except AblateError as err:
                check.problem(f"{label}: {err}")
    return cfgs


def _check_datasets(check: _Check, cfgs: list[Any]) -> None:
    """Every train/test set must be a manifest, a benchmark family or a ready dataset config."""
    from ablate.locations import find
    from ablate.recipe import options

    names = [n for cfg in cfgs for n in (cfg.data.train, *cfg.data.tests)]
    try:
        from ablate.data.loader import MANIFEST_DIR, benchmark_datasets

        benchmark = benchmark_datasets()
    except Exception as err:  # noqa: BLE001 (data layer broken: say so, do not hide the rest)
        check.notes.append(f"datasets not checked ({type(err).__name__}: {err})")
        return
    for name in dict.fromkeys(str(n) for n in names):
        path = Path(name).expanduser()
        if path.suffix in (".csv", ".parquet"):
            if not path.is_file():
                check.problem(f"dataset manifest {path} does not exist")
        elif name not in benchmark and name not in options("data"):
            check.problem(f"unknown dataset {name!r}; use a manifest path or one of: "
                          f"{', '.join(benchmark + options('data'))}")
        elif name not in benchmark:
            _check_dataset_config(check, name, find("configs", f"data/{name}.yaml"), MANIFEST_DIR)


def _check_dataset_config(check: _Check, name: str, config: Path, manifest_dir: Path) -> None:
    data = yaml.safe_load(config.read_text()) or {}
    manifest = data.get("manifest") or manifest_dir / f"{name}.csv"
    if not Path(manifest).is_file() and not data.get("root"):
        check.problem(f"dataset {name} has no manifest ({manifest}) and no root: set root "
                      f"(the extracted face frames) or manifest in {config}")


@contextmanager
def _quiet_single_thread() -> Iterator[None]:
    """One torch thread (tiny forwards gain nothing from more, and on a busy machine
    oversubscribed threads made validation 10x slower) and no per-build log chatter."""
    import torch

    threads = torch.get_num_threads()
    loggers = [logging.getLogger(n) for n in ("diffusers", "ablate.model")]
    levels = [lg.level for lg in loggers]
    torch.set_num_threads(1)
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def _dry_run(check: _Check, cfgs: dict[str, Any]) -> None:
    """Build each distinct detector once (tiny teachers only) and run one guided forward."""
    with _quiet_single_thread():
        _dry_run_all(check, cfgs)


def _dry_run_all(check: _Check, cfgs: dict[str, Any]) -> None:
    teachers: dict[str, Any] = {}
    built: set[str] = set()
    skipped: dict[str, int] = {}
    from ablate.recipe import is_guided

    for label, cfg in cfgs.items():
        name = str(cfg.teacher.name)
        if is_guided(cfg) and not name.startswith(TINY_PREFIX):
            skipped[name] = skipped.get(name, 0) + 1
            continue
        identity = _model_identity(cfg)
        if identity in built:
            continue
        built.add(identity)
        try:
            _build_and_forward(cfg, teachers)
        except AblateError as err:
            check.problem(f"dry-run build of {label}: {err}")
        except Exception as err:  # noqa: BLE001 (shape errors etc. are what we look for)
            first = str(err).strip().splitlines()[0] if str(err).strip() else ""
            check.problem(f"dry-run build of {label}: {type(err).__name__}: {first}")
    if built:
        check.notes.append(f"dry-run built {len(built)} distinct detector(s), one guided "
                           "forward each (params varied one at a time)")
    for name, n in skipped.items():
        check.notes.append(f"dry-run build skipped for {n} configuration(s) with real teacher "
                           f"{name} (loading it takes minutes); only teacher.path was checked")


def _model_identity(cfg: Any) -> str:
    """The recipe parts a build depends on (train.lr and friends do not change it; the
    baseline builds only the encoder, so its filter or teacher do not either)."""
    from omegaconf import OmegaConf

    from ablate.recipe import is_guided

    keys = MODEL_KEYS if is_guided(cfg) else ("backbone", "guide", "image_size")
    parts = {k: OmegaConf.to_container(cfg[k], resolve=True) if k != "image_size" else cfg[k]
             for k in keys}
    return json.dumps(parts, sort_keys=True, default=str)


def _check_rungs(check: _Check, cfg: Any) -> None:
    """ASHA can only stop a trial between val reports; say when it never gets to."""
    grace = check.space.early_stopping.grace_period
    reports = planned_evaluations(cfg.train)
    if not cfg.train.get("eval_every"):
        check.notes.append("early_stopping is on but train.eval_every is 0: one val report "
                           "per trial, so ASHA stops nothing (set train.eval_every in fixed)")
    elif reports <= grace:
        check.notes.append(f"early_stopping: {reports} val reports per trial <= "
                           f"grace_period {grace}, so ASHA stops nothing")


def planned_evaluations(train_cfg) -> int:  # noqa: ANN001
    """Source-val evaluations a trial will make (ASHA's time axis): per epoch with
    `eval_every: epoch` and `epochs`, else steps // eval_every; at least one (the last)."""
    every, epochs = train_cfg.get("eval_every") or 0, train_cfg.get("epochs")
    if every == "epoch":
        return max(int(epochs or 1), 1)
    steps = int(train_cfg.get("steps") or 0)
    return max(steps // int(every), 1) if every and steps else 1


def _check_teachers(check: _Check, cfgs: list[Any]) -> None:
    from ablate.recipe import is_guided

    for cfg in cfgs:
        if is_guided(cfg) and not str(cfg.teacher.name).startswith(TINY_PREFIX):
            _check_real_teacher(check, cfg)


def _check_encoders(check: _Check, cfgs: list[Any]) -> None:
    """A paper encoder (one that takes random_init) needs local ImageNet weights."""
    where = check.space.source_path or check.space.name
    for b in {str(c.backbone): c.backbone for c in cfgs}.values():
        if "random_init" not in b or b.get("random_init"):
            continue
        path = b.get("pretrained_path")
        if not path:
            check.problem(f"backbone {b.name} has no weights: set backbone.pretrained_path to a "
                          f"local timm file (under fixed: in {where}), or "
                          "backbone.random_init: true to train from scratch on purpose")
        elif not Path(str(path)).expanduser().is_file():
            check.problem(f"backbone.pretrained_path {path} does not exist: set it in {where} "
                          f"to your local {b.name} weights")


def _check_real_teacher(check: _Check, cfg: Any) -> None:
    """A real teacher needs local weights (or random_init); nothing is downloaded."""
    t = cfg.teacher
    if t.get("random_init"):
        return
    path = t.get("path")
    where = check.space.source_path or check.space.name
    if not path:
        check.problem(
            f"teacher {t.name} has no weights: set teacher.path to a local diffusers folder or "
            f".safetensors file (under fixed: in {where}, or path: in "
            f"configs/teacher/{t.name}.yaml), or teacher.random_init: true for speed runs; "
            "nothing is downloaded"
        )
    elif not Path(str(path)).expanduser().exists():
        check.problem(f"teacher.path {path} does not exist: set teacher.path in {where} "
                      f"to your local {t.name} weights")


def _build_and_forward(cfg: Any, teachers: dict[str, Any]) -> None:
    """build_detector + one guided forward on 2 random images (catches shape/width errors)."""
    import torch
    from omegaconf import OmegaConf

    from ablate.model.build import build_detector, build_teacher
    from ablate.recipe import is_guided

    teacher = None
    if is_guided(cfg):  # the baseline builds no teacher
        key = json.dumps(OmegaConf.to_container(cfg.teacher, resolve=True), sort_keys=True)
        if key not in teachers:
            teachers[key] = build_teacher(cfg)
        teacher = teachers[key]
        teacher.check_image_size(cfg.image_size)  # build_detector skips it for a passed teacher
    detector = build_detector(cfg, teacher=teacher)
    g = torch.Generator().manual_seed(0)
    size = int(cfg.image_size)
    images = torch.rand(2, 3, size, size, generator=g) * 2 - 1
    with torch.no_grad():
        losses = detector.guided_losses(images, images.flip(-1), images, torch.tensor([0.0, 1.0]),
                                        generator=g)
    if not torch.isfinite(losses["total"]):
        raise AblateError(f"the guided loss is not finite ({float(losses['total'])})")
