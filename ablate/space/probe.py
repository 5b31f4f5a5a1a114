"""Composition probes of validate_space: slot choices must be registered variants, keys
must exist in the recipe, and each one-param-at-a-time variation must compose. Broken
fixed items and params are reported and left out of later probes, so one mistake is
reported once rather than in every configuration."""

from __future__ import annotations

from typing import Any

from ablate.core.errors import AblateError
from ablate.core.names import SLOTS
from ablate.recipe import compose, recipe_hash
from ablate.registry import registry
from ablate.space.check import _Check
from ablate.space.model import Param, format_value


def _registered(check: _Check) -> list[Param]:
    """Slot choices must name registered variants; returns the params left to probe."""
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
    return (f"{where}: unknown {slot} {name!r}; registered {slot} variants: "
            f"{', '.join(registry(slot).names())}")


def _without(p: Param, bad: list[Any]) -> Param:
    return Param(p.key, p.kind, tuple(v for v in p.choices if v not in bad), when=p.when)


def _composable(check: _Check, params: list[Param]) -> list[Param]:
    """Keys must exist in the recipe; params whose key does not are left out of later probes."""
    try:
        compose(check.overrides(assignment(params, {})))
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
            compose(check.overrides(assignment(lineage, {p.key: p.default})))
            kept.append(p)
        except AblateError as err:
            check.problem(f"params.{p.key}: {err}")
    return kept


def _pinpoint_fixed(check: _Check) -> bool:
    """Report (and drop) the fixed overrides that break the recipe; False if still broken.

    Adds them one by one, groups (`teacher: sd15`) before their keys (`teacher.path`).
    """
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


def assignment(params: list[Param], forced: dict[str, Any]) -> dict[str, Any]:
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


def probe_assignments(params: list[Param]) -> dict[str, dict[str, Any]]:
    """Each one-param-at-a-time variation of the defaults (every choice, both ends of a
    range), conditions met: {label: params}. The dry run composes and builds these; the
    sweep's memory preflight estimates them."""
    found: dict[str, dict[str, Any]] = {}
    for p in [None, *params]:
        for value in p.probe_values() if p else [None]:
            trial = assignment(params, {p.key: value} if p else {})
            if p and trial.get(p.key) != value:
                continue  # its `when` contradicts itself; nothing to probe
            label = " ".join(f"{k}={format_value(v)}" for k, v in trial.items()) or "(fixed only)"
            found.setdefault(label, trial)
    return found


def _probe_configs(check: _Check, params: list[Param]) -> dict[str, Any]:
    """Compose each one-param-at-a-time variation; returns {label: recipe}."""
    cfgs: dict[str, Any] = {}
    for label, trial in probe_assignments(params).items():
        try:
            cfgs[label] = compose(check.overrides(trial))
        except AblateError as err:
            check.problem(f"{label}: {err}")
    return cfgs


def _design_configs(check: _Check) -> dict[str, Any]:
    """Compose every cell of the space's design; two cells that make one recipe (a level the
    recipe ignores, e.g. a filter with guide=none) are a problem, not a silent duplicate."""
    cfgs: dict[str, Any] = {}
    by_hash: dict[str, str] = {}
    for cell in check.space.design.cells():
        try:
            cfg = compose([*check.overrides({}), *cell.overrides()])
        except AblateError as err:
            check.problem(f"cell {cell.label}: {err}")
            continue
        digest = recipe_hash(cfg)
        if digest in by_hash:
            check.problem(f"cells {by_hash[digest]} and {cell.label} are the same recipe; "
                          "drop the level that changes nothing")
            continue
        by_hash[digest] = cell.label
        cfgs[cell.label] = cfg
    return cfgs
