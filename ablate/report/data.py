"""One sweep's rows from the results database, shaped for the report.

A *config* is a recipe without its seed: the unit a table row describes. Seeds
of one config are repeated measurements of it. A trial counts as a result when
it finished or reused a finished result (a reused row carries copies of the
metrics); one (config, seed) counts once, so a recipe sampled twice by the
search does not shrink its own confidence interval.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from ablate.core.errors import AblateError
from ablate.core.names import SLOTS, is_baseline_flat, is_guidance_key
from ablate.report.combine import check_combinable
from ablate.report.versions import result_versions
from ablate.results import ResultsDB

RESULT_STATUSES = ("finished", "reused")
_STATUS_RANK = {"finished": 0, "reused": 1}


@dataclass
class SweepData:
    """Everything the report needs from the database for one sweep."""

    name: str
    info: dict[str, Any]  # space, status, created, code_version
    settings: dict[str, Any]
    db_url: str
    optuna_url: str
    trials: pd.DataFrame  # every trial, plus config, label, result_version, one column per slot
    counted: pd.DataFrame  # the trials that are results: one per (config, seed)
    metrics: pd.DataFrame  # metrics of counted trials, with config and label
    curves: pd.DataFrame  # curve points of every trial, with label and status
    tests: list[str]  # test sets in recipe order
    varying: list[str]  # dotted recipe keys whose value differs between counted configs
    flat: dict[str, dict[str, Any]] = field(default_factory=dict)  # config -> flat recipe
    sweeps: list[str] = field(default_factory=list)  # the sweeps read (several: one report)
    names: dict[str, str] = field(default_factory=dict)  # test set -> column header

    @property
    def objectives(self) -> list[dict[str, str]]:
        return list(self.settings.get("objectives") or [])


def load_sweep(db: ResultsDB, sweep: str | Sequence[str] | None) -> SweepData:
    """The sweep's data (newest sweep when None); AblateError when there is nothing to report.

    Several sweep names are read as one (`ablate report --sweep A --sweep B`): their trials
    pooled, one recipe + seed counted once, after `combine.check_combinable` has refused
    runs whose data, teacher or scored test rows differ between the sweeps.
    """
    sweeps = db.list_sweeps()
    if sweeps.empty:
        raise AblateError(f"no sweeps in {db.url}; run one first, e.g. `ablate sweep --space quick`")
    names = _names(sweeps, sweep)
    per = {n: db.trials(n) for n in names}  # AblateError listing the known sweeps when unknown
    for name, frame in per.items():
        _require_results(frame, name)
    trials = pd.concat(per.values(), ignore_index=True)
    rows = sweeps[sweeps["name"].isin(names)].set_index("name").loc[names]
    info = {k: _joined(rows[k]) for k in ("space", "status", "code_version")}
    info["created"] = rows["created"].min()
    settings = _shared_settings([_json_dict(t) for t in rows["settings_json"]])
    trials["result_version"] = result_versions(  # which code computed each trial's numbers
        trials, _origins(db, trials), dict(zip(sweeps["name"], sweeps["code_version"],
                                               strict=True)))
    trials = _annotate(trials)
    stored = pd.concat([db.metrics(n) for n in names], ignore_index=True)
    if len(names) > 1:
        check_combinable(trials[trials["status"].isin(RESULT_STATUSES)], stored)
    counted = _counted(trials)
    varying = varying_keys([_flat(c) for c in counted["config"].unique()])
    trials = _label(trials, counted, varying)
    counted = trials.loc[counted.index]
    metrics = _metrics(stored, counted)
    name = " + ".join(names)
    if not (metrics["split"] == "test").any():
        raise AblateError(f"sweep {name!r} has {len(counted)} finished trial(s) but no test "
                          "metrics in the database; nothing to report (were they evaluated?)")
    curves = _curves(pd.concat([db.curves(n) for n in names], ignore_index=True), trials)
    flat = {c: _flat(c) for c in counted["config"].unique()}
    return SweepData(name, info, settings, db.url, db.optuna_storage_url, trials, counted,
                     metrics, curves, _tests(counted, metrics), varying, flat, names)


def _names(sweeps: pd.DataFrame, sweep: str | Sequence[str] | None) -> list[str]:
    """The sweeps to read: the newest when None, else the names given (each once)."""
    if sweep is None:
        return [str(sweeps.sort_values(["created", "id"]).iloc[-1]["name"])]
    given = [sweep] if isinstance(sweep, str) else list(sweep)
    return list(dict.fromkeys(str(s) for s in given)) or _names(sweeps, None)


def _joined(values: pd.Series) -> Any:
    """One sweep's value, or the distinct values of several joined with ' + '."""
    distinct = list(dict.fromkeys(str(v) for v in values))
    return values.iloc[0] if len(distinct) == 1 else " + ".join(distinct)


def _shared_settings(settings: list[dict[str, Any]]) -> dict[str, Any]:
    """Several sweeps' settings: the keys every one of them holds alike (objectives, a
    reference, a sampler); a confirmation link belongs to one sweep only."""
    if len(settings) == 1:
        return settings[0]
    first, rest = settings[0], settings[1:]
    return {k: v for k, v in first.items() if k not in ("confirmation", "confirms")
            and all(k in s and s[k] == v for s in rest)}


def _origins(db: ResultsDB, trials: pd.DataFrame) -> pd.DataFrame:
    """The trials reused rows copy from: this sweep's, or every sweep's when one lies outside."""
    outside = set(trials["reused_from"].dropna().astype(int)) - set(trials["id"])
    return db.trials() if outside else trials


def _json_dict(text: Any) -> dict[str, Any]:
    if not isinstance(text, str) or not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


def _require_results(trials: pd.DataFrame, sweep: str) -> None:
    """No finished (or reused) trial: say what happened instead of writing an empty page."""
    if trials["status"].isin(RESULT_STATUSES).any():
        return
    if trials.empty:
        raise AblateError(f"sweep {sweep!r} has no trials yet; nothing to report")
    counts = trials["status"].value_counts()
    summary = ", ".join(f"{n} {s}" for s, n in counts.items())
    errors = trials["error"].dropna()
    first = f"; first error: {_one_line(errors.iloc[0])}" if len(errors) else ""
    raise AblateError(f"sweep {sweep!r} has no finished trials ({summary}); nothing to "
                      f"report{first}")


def _one_line(text: str, limit: int = 200) -> str:
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def flatten(recipe: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested recipe -> {dotted key: value}; lists become JSON text so values stay hashable."""
    out: dict[str, Any] = {}
    for key, value in recipe.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, f"{dotted}."))
        elif isinstance(value, list):
            out[dotted] = json.dumps(value)
        else:
            out[dotted] = value
    return out


def _annotate(trials: pd.DataFrame) -> pd.DataFrame:
    """Add config (recipe minus seed, as JSON) and one column per slot choice."""
    trials = trials.copy()
    recipes = [_json_dict(text) for text in trials["recipe_json"]]
    trials["config"] = [json.dumps({k: v for k, v in r.items() if k != "seed"}, sort_keys=True)
                        for r in recipes]
    for slot in SLOTS:
        trials[slot] = [slot_choice(r, slot) for r in recipes]
    return trials


def slot_choice(recipe: dict[str, Any], slot: str) -> str | None:
    """A slot's variant name, from a composed recipe ({slot: {name: ..}}) or flat choices."""
    value = recipe.get(slot)
    if isinstance(value, dict):
        value = value.get("name")
    return None if value is None else str(value)


def _counted(trials: pd.DataFrame) -> pd.DataFrame:
    """Finished or reused trials, one per (config, seed): finished first, then the newest."""
    ok = trials[trials["status"].isin(RESULT_STATUSES)].copy()
    ok["_rank"] = ok["status"].map(_STATUS_RANK)
    ok = ok.sort_values(["_rank", "id"], ascending=[True, False])
    keep = ok.drop_duplicates(["config", "seed"], keep="first").drop(columns="_rank")
    return keep.sort_values("id")


def _flat(config: str) -> dict[str, Any]:
    return flatten(json.loads(config))


def varying_keys(flats: list[dict[str, Any]]) -> list[str]:
    """Dotted keys whose value is not the same in every config: slots first, then the rest.

    A slot argument that only some configs have because the slot's variant changed
    (filter.heads exists for filter=paper, not for no_mhsa) varies only if it takes
    two values: the variant name already tells those configs apart. Settings only a
    guided recipe has (filter, teacher, ...) are compared among guided configs: the
    plain baseline (guide=none) lacks them, and guide.name already tells it apart.
    """
    guided = [f for f in flats if not is_baseline_flat(f)]
    # plugins.<slot>.*: the code identity of a variant the slot already names, not a factor
    keys = sorted({k for f in flats for k in f if not k.startswith("plugins.")})
    varying = [k for k in _varying(keys, flats) if not is_guidance_key(k)]
    varying += [k for k in _varying(keys, guided) if is_guidance_key(k)]
    return sorted(varying, key=_key_order)


def _varying(keys: list[str], flats: list[dict[str, Any]]) -> list[str]:
    keys = [k for k in keys if any(k in f for f in flats)]
    named = {k.split(".", 1)[0] for k in keys if k.endswith(".name") and k.count(".") == 1
             and len({json.dumps(f.get(k)) for f in flats}) > 1}
    varying = []
    for key in keys:
        present = [json.dumps(f[key], sort_keys=True) for f in flats if key in f]
        partly = len(present) < len(flats) and key.split(".", 1)[0] not in named
        if len(set(present)) > 1 or partly:
            varying.append(key)
    return varying


def _key_order(key: str) -> tuple[int, int, str]:
    head = key.split(".", 1)[0]
    slot = SLOTS.index(head) if head in SLOTS else len(SLOTS)
    return (slot, 0 if key == f"{head}.name" else 1, key)


def format_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def config_label(flat: dict[str, Any], varying: list[str]) -> str:
    """What tells this config apart: `filter=no_mhsa weight=paper`; slot names when none vary."""
    keys = varying or [f"{s}.name" for s in SLOTS if f"{s}.name" in flat]
    parts = []
    for key in (k for k in keys if k in flat):
        shown = key.removesuffix(".name") if key.count(".") == 1 and key.endswith(".name") else key
        parts.append(f"{shown}={format_value(flat.get(key))}")
    return " ".join(parts) or "recipe"


def _label(trials: pd.DataFrame, counted: pd.DataFrame, varying: list[str]) -> pd.DataFrame:
    """A unique, readable label per config (counted configs first, so they get the plain names)."""
    trials = trials.copy()
    order = list(dict.fromkeys([*counted["config"], *trials["config"]]))
    common = {k: v for k, v in _flat(counted["config"].iloc[0]).items() if k not in varying}
    labels: dict[str, str] = {}
    used: set[str] = set()
    for config in order:
        try:
            flat = flatten(json.loads(config))
        except (json.JSONDecodeError, AttributeError):
            flat = {}
        # a config with no result (pruned, failed) may differ in a key the results share
        extra = [k for k, v in flat.items() if k in common and v != common[k]]
        label = config_label(flat, varying + extra) if flat else "recipe"
        unique, n = label, 2
        while unique in used:
            unique, n = f"{label} #{n}", n + 1
        labels[config] = unique
        used.add(unique)
    trials["label"] = trials["config"].map(labels)
    return trials


def _metrics(metrics: pd.DataFrame, counted: pd.DataFrame) -> pd.DataFrame:
    """Metrics of the counted trials only, each with its config and label."""
    ids = counted.set_index("id")[["config", "label"]]
    mine = metrics[metrics["trial_id"].isin(ids.index)].copy()
    mine["config"] = mine["trial_id"].map(ids["config"])
    mine["label"] = mine["trial_id"].map(ids["label"])
    return mine.dropna(subset=["value"])


def _curves(curves: pd.DataFrame, trials: pd.DataFrame) -> pd.DataFrame:
    labels = trials.set_index("id")["label"]
    out = curves.copy()
    out["label"] = out["trial_id"].map(labels)
    return out.dropna(subset=["value"])


def _tests(counted: pd.DataFrame, metrics: pd.DataFrame) -> list[str]:
    """Test sets in the order the recipes list them; others (if any) after, sorted."""
    present = set(metrics.loc[metrics["split"] == "test", "dataset"])
    ordered: list[str] = []
    for text in counted["recipe_json"]:
        tests = (_json_dict(text).get("data") or {}).get("tests") or []
        ordered += [str(t) for t in tests if str(t) in present and str(t) not in ordered]
    return ordered + sorted(present - set(ordered))
