"""parse_space: YAML text -> SearchSpace, section by section; every mistake is one
AblateError naming the file and the key, so a user can fix it without reading code."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from ablate.space.design import DESIGNS, Design
from ablate.space.model import (
    CONSTRAINT_QUANTITIES,
    KNOWN_METRICS,
    PARAM_FIELDS,
    SAMPLERS,
    TOP_KEYS,
    Confirm,
    Constraint,
    EarlyStopping,
    Objective,
    Param,
    Resources,
    SamplerSpec,
    Scalar,
    SearchSpace,
)
from ablate.space.reader import _read_yaml, _Where

_KEY = re.compile(r"^\+{0,2}[A-Za-z_][\w\-]*(\.[A-Za-z_][\w\-]*)*$")


def parse_space(text: str, path: Path) -> SearchSpace:
    """The parse behind load_space; every mistake is one AblateError naming file and key."""
    where = _Where(path)
    data = _read_yaml(text, where)
    unknown = sorted(set(data) - set(TOP_KEYS))
    if unknown:
        where.fail(unknown[0], f"unknown top-level key; valid keys: {', '.join(TOP_KEYS)}")
    fixed = _fixed(data.get("fixed"), where)
    design = _design(data, fixed, where)
    params = _params(data.get("params"), where) if design is None else design.params()
    clash = sorted(set(fixed) & {p.key for p in params})
    if clash:
        where.fail(f"params.{clash[0]}", "is also in fixed; keep it in one place")
    objectives = _objectives(data.get("objectives"), where)
    trials, max_concurrent = _budget(data.get("budget"), where)
    if design is not None:
        trials = design.size
    seeds, first_seed = _seeds(data.get("seeds", 1), where)
    confirm = _confirm(data.get("confirm"), where)
    if confirm is not None and ("seed" in fixed or any(p.key == "seed" for p in params)):
        where.fail("confirm", "the confirmation runs fresh seeds, so the space may not set "
                              "`seed` itself; use seeds: (a count, or {count, first})")
    if confirm is not None and design is not None:
        where.fail("confirm", "a design runs every cell on its seeds, so it already is the "
                              "confirmation; drop confirm: (it is for searches)")
    if seeds > 1 and ("seed" in fixed or any(p.key == "seed" for p in params)):
        where.fail("seeds", "seeds > 1 sets the recipe's seed itself; remove `seed` from fixed/params")
    tests = _tests(data.get("tests"), where)
    constraints = _constraints(data.get("constraints"), where)
    if constraints and design is not None:
        where.fail("constraints", "a design runs every one of its cells; constraints are for "
                                  "sampled searches (drop the cells that break them instead)")
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
        sampler=(SamplerSpec("grid", None) if design is not None
                 else _sampler(data.get("sampler"), params, len(objectives), where)),
        source_path=path,
        design=design,
        first_seed=first_seed,
        confirm=confirm,
        constraints=constraints,
    )


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


def _seeds(value: Any, where: _Where) -> tuple[int, int]:
    """`seeds: 3` (seeds 0, 1, 2) or `seeds: {count: 3, first: 3}` (seeds 3, 4, 5)."""
    if isinstance(value, dict):
        s = _section(value, "seeds", ("count", "first"), where)
        if "count" not in s:
            where.fail("seeds", "needs count:, e.g. {count: 3, first: 3}")
        return (_int(s["count"], "seeds.count", where, minimum=1),
                _int(s.get("first", 0), "seeds.first", where, minimum=0))
    return _int(value, "seeds", where, minimum=1), 0


def _confirm(value: Any, where: _Where) -> Confirm | None:
    """`confirm: {top: k, seeds: n}`: retrain the k best recipes on n fresh seeds."""
    if value is None:
        return None
    c = _section(value, "confirm", ("top", "seeds"), where)
    if "top" not in c or "seeds" not in c:
        where.fail("confirm", "needs top: and seeds:, e.g. {top: 3, seeds: 3}")
    return Confirm(_int(c["top"], "confirm.top", where, minimum=1),
                   _int(c["seeds"], "confirm.seeds", where, minimum=2))


def _constraints(value: Any, where: _Where) -> tuple[Constraint, ...]:
    """`constraints: {params_trainable: {max: 50.0e6}, peak_mem_gb: {max: 16}}`."""
    if value is None:
        return ()
    if not isinstance(value, dict) or not value:
        where.fail("constraints", "must map a quantity to bounds, e.g. "
                                  "{params_trainable: {max: 50.0e6}, peak_mem_gb: {max: 16}}")
    out = []
    for quantity, bounds in value.items():
        at = f"constraints.{quantity}"
        if quantity not in CONSTRAINT_QUANTITIES:
            where.fail(at, f"constraint on unknown quantity {quantity!r}: known before "
                           f"training: {', '.join(CONSTRAINT_QUANTITIES)}")
        if not isinstance(bounds, dict) or not bounds or set(bounds) - {"min", "max"}:
            where.fail(at, "must be {max: <number>} and/or {min: <number>}")
        for key, bound in bounds.items():
            if isinstance(bound, bool) or not isinstance(bound, (int, float)):
                where.fail(f"{at}.{key}", f"must be a number, not {bound!r}")
        low, high = bounds.get("min"), bounds.get("max")
        if low is not None and high is not None and low > high:
            where.fail(at, f"min {low} > max {high}: no point can satisfy it")
        out.append(Constraint(quantity, None if low is None else float(low),
                              None if high is None else float(high)))
    return tuple(out)


def _early_stopping(value: Any, where: _Where) -> EarlyStopping:
    e = _section(value, "early_stopping",
                 ("enabled", "grace_period", "reduction_factor", "brackets"), where)
    enabled = e.get("enabled", bool(e))
    if not isinstance(enabled, bool):
        where.fail("early_stopping.enabled", "must be true or false")
    grace = _int(e.get("grace_period", 1), "early_stopping.grace_period", where, minimum=1)
    factor = _number(e.get("reduction_factor", 2), "early_stopping.reduction_factor", where, 1,
                     strict=True)
    brackets = _int(e.get("brackets", 1), "early_stopping.brackets", where, minimum=1)
    return EarlyStopping(enabled, grace, factor, brackets)


def _resources(value: Any, where: _Where) -> Resources:
    r = _section(value, "resources", ("cpu", "gpu", "processes"), where)
    cpu = _number(r.get("cpu", 1), "resources.cpu", where, 0, strict=True)
    processes = _int(r.get("processes", 0), "resources.processes", where, minimum=0)
    gpu = r.get("gpu", 0)  # "auto": packed by memory estimates (ablate.sweep.preflight)
    gpu = gpu if gpu == "auto" else _number(gpu, "resources.gpu", where, 0)
    if gpu == "auto" and processes > 1:
        where.fail("resources.gpu", "auto packs one-process trials onto shared cards; with "
                                    "processes give a number of GPUs (one per process)")
    return Resources(cpu, gpu, processes)


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


def _design(data: dict, fixed: dict[str, Any], where: _Where) -> Design | None:
    """`design:` with its `factors:` and `reference:`; None for a sampled space."""
    kind = data.get("design")
    if kind is None:
        for key in ("factors", "reference"):
            if key in data:
                where.fail(key, "belongs to a design; add `design: one-at-a-time` (or factorial)")
        return None
    if kind not in DESIGNS:
        where.fail("design", f"unknown design {kind!r}; choose from {', '.join(DESIGNS)}")
    for key, why in (("params", "lists factors, not params"),
                     ("sampler", "runs every cell; it has no sampler"),
                     ("early_stopping", "runs every cell in full; drop early_stopping")):
        if key in data:
            where.fail(key, f"a design {why}")
    if "trials" in (data.get("budget") or {}):
        where.fail("budget.trials", "a design runs each of its cells once; drop budget.trials "
                                    "(budget.max_concurrent still applies)")
    factors = _factors(data.get("factors"), where)
    clash = sorted(set(fixed) & set(factors))
    if clash:
        where.fail(f"factors.{clash[0]}", "is also in fixed; keep it in one place")
    return Design(kind, factors, _reference(data.get("reference"), kind, factors, where))


def _factors(value: Any, where: _Where) -> dict[str, tuple[Scalar, ...]]:
    if not isinstance(value, dict) or not value:
        where.fail("factors", "a design needs factors: a mapping of recipe key -> levels, "
                              "e.g. {filter: [paper, conv_only], guide: [controlnet, none]}")
    out = {}
    for key, levels in value.items():
        at = f"factors.{key}"
        if not isinstance(key, str) or not _KEY.match(key):
            where.fail(at, "is not a recipe key (dotted names like guide.shared)")
        out[key] = _choices(levels, at, where)
        if len(out[key]) < 2:
            where.fail(at, "needs at least two levels (the reference's and an alternative)")
    return out


def _reference(value: Any, kind: str, factors: dict[str, tuple[Scalar, ...]],
               where: _Where) -> dict[str, Scalar]:
    """Every factor's reference level; a factorial design defaults to each first level."""
    if value is None:
        if kind == "one-at-a-time":
            where.fail("reference", "one-at-a-time needs a reference: a level for each factor, "
                                    f"e.g. {{{', '.join(f'{k}: {v[0]}' for k, v in factors.items())}}}")
        return {k: levels[0] for k, levels in factors.items()}
    if not isinstance(value, dict):
        where.fail("reference", "must map each factor to its reference level")
    for key, level in value.items():
        if key not in factors:
            where.fail(f"reference.{key}", f"is not a factor of the design; factors: "
                                           f"{', '.join(factors)}")
        if level not in factors[key]:
            where.fail(f"reference.{key}", f"{level!r} is not one of {key}'s levels "
                                           f"{list(factors[key])}")
    missing = [k for k in factors if k not in value]
    if missing:
        where.fail("reference", f"gives no level for factor(s) {', '.join(missing)}")
    return {k: value[k] for k in factors}
