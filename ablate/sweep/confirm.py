"""The confirmation stage of a search: its best recipes retrained on seeds it never used.

A search (TPE, NSGA-II, ASHA) keeps the recipes whose selection AUC came out best on
its own runs. Part of that lead is those runs' luck, so the winners' numbers, read off
the same runs, are biased upward (the winner's curse). With `confirm: {top: k, seeds: n}`
in a search space, the k best recipes by mean selection AUC are retrained on n fresh
seeds, in a sweep of their own named `<search>-confirm`. The selection AUC is what each
run's checkpoint rule (`train.select`) chose by, as ASHA saw it: the source-val AUC, or the
proxy's val AUC under `train.select=proxy` (ablate/core/selection.py). The report of the search then
takes its verdicts from that sweep only, and shows the search's numbers as selected-on.

The confirmation is an ordinary explicit-grid sweep (as compare-teachers runs), so resume,
reuse and kill -9 safety hold as for any sweep: `ablate sweep --name <search> --resume`
finishes the search if it must, then starts or resumes its confirmation.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ablate.core.errors import AblateError
from ablate.core.selection import signal_split
from ablate.provenance import is_part
from ablate.recipe import compose, recipe_hash
from ablate.space.model import format_value

CONFIRM_SUFFIX = "-confirm"
COUNTED = ("finished", "reused")


def confirmation_name(search: str) -> str:
    return f"{search}{CONFIRM_SUFFIX}"


@dataclass(frozen=True)
class Winner:
    """One recipe the search ranked among its best, and how to compose it again."""

    label: str  # the grid label of the confirmation sweep
    val_auc: float  # mean selection AUC over the search's seeds (source val, or the proxy's)
    seeds: int  # how many seeds the search ran it on
    overrides: tuple[str, ...]  # Hydra overrides of the search's params


def winners(db, search: str, space) -> list[Winner]:  # noqa: ANN001
    """The `space.confirm.top` recipes of sweep `search` with the best mean selection AUC
    (`selection_values`).

    A recipe is rebuilt from the search's params read off its stored recipe; the rebuilt
    recipe must hash like the stored one (checked on its first seed), or this fails.
    """
    trials = db.trials(search)
    trials = trials[trials["status"].isin(COUNTED) & trials["recipe_json"].notna()]
    if trials.empty:
        raise AblateError(f"search {search} has no finished trials to confirm")
    val = selection_values(trials, db.metrics(search))
    rows: dict[str, dict[str, Any]] = {}
    for t in trials.itertuples():
        recipe = json.loads(t.recipe_json)
        key = json.dumps({k: v for k, v in recipe.items() if k != "seed"}, sort_keys=True,
                         default=str)
        entry = rows.setdefault(key, {"recipe": recipe, "hash": t.recipe_hash,
                                      "seed": int(t.seed), "val": []})
        if int(t.id) in val.index:
            entry["val"].append(float(val[int(t.id)]))
    ranked = sorted((e for e in rows.values() if e["val"]),
                    key=lambda e: -sum(e["val"]) / len(e["val"]))
    if not ranked:
        raise AblateError(f"search {search} has no selection AUC to rank its recipes by")
    out = []
    for rank, entry in enumerate(ranked[: space.confirm.top], start=1):
        overrides = tuple(param_overrides(space, entry["recipe"]))
        _check_rebuilt(space, overrides, entry, search)
        out.append(Winner(f"top{rank}", sum(entry["val"]) / len(entry["val"]),
                          len(entry["val"]), overrides))
    return out


def selection_values(trials, m):  # noqa: ANN001, ANN201
    """trial id -> the AUC its checkpoint was chosen by: its frame AUC on the split its rule
    selects on (`proxy` rows under train.select=proxy, read off its recipe; else `val`)."""
    frame = m[(m["level"] == "frame") & (m["metric"] == "auc")
              & ~m["dataset"].map(is_part).astype(bool)]
    split = {int(t.id): signal_split(json.loads(t.recipe_json)) for t in trials.itertuples()}
    mine = frame[frame["split"] == frame["trial_id"].map(split)]
    return mine.groupby("trial_id")["value"].mean()


def param_overrides(space, recipe: dict) -> list[str]:  # noqa: ANN001
    """`key=value` for each of the space's params that the stored recipe holds; a group
    param (filter, weight, ...) is the chosen option's name."""
    out = []
    for p in space.params:
        node: Any = recipe
        for part in p.key.split("."):
            if not isinstance(node, dict) or part not in node:
                node = _MISSING
                break
            node = node[part]
        if node is _MISSING:
            continue  # an inactive conditional param, or a slot this recipe lacks
        if isinstance(node, dict):
            node = node.get("name", _MISSING)
            if node is _MISSING:
                continue
        out.append(f"{p.key}={format_value(node)}")
    return out


_MISSING = object()


def _check_rebuilt(space, overrides: tuple[str, ...], entry: dict, search: str) -> None:  # noqa: ANN001

    try:
        rebuilt = recipe_hash(compose([*space.overrides(seed=entry["seed"]), *overrides]))
    except AblateError as err:
        raise AblateError(f"cannot rebuild a recipe of search {search} for its confirmation: "
                          f"{err}") from None
    if rebuilt != entry["hash"]:
        raise AblateError(f"the recipe {' '.join(overrides)} of search {search} does not compose "
                          "to the recipe it ran (hash differs); confirm it by hand with a design "
                          "space")


def confirm_space_text(space_text: str, seeds: list[int], top: int) -> str:
    """The search space as the confirmation's: no params, sampler or pruning, fresh seeds."""
    data = yaml.safe_load(space_text) or {}
    for key in ("params", "confirm", "early_stopping", "sampler"):
        data.pop(key, None)
    data["description"] = f"confirmation of: {data.get('description', '')}".strip()
    budget = dict(data.get("budget") or {})
    data["budget"] = {"trials": top, **({"max_concurrent": budget["max_concurrent"]}
                                        if "max_concurrent" in budget else {})}
    data["seeds"] = {"count": len(seeds), "first": seeds[0]}
    data["early_stopping"] = {"enabled": False}
    data["sampler"] = {"name": "random", "seed": 0}
    return yaml.safe_dump(data, sort_keys=False)


def write_confirm_space(space_text: str, seeds: list[int], top: int, folder: Path,
                        name: str) -> Path:
    """The confirmation's space file, kept beside the other derived spaces for provenance."""
    folder.mkdir(parents=True, exist_ok=True)
    path = (folder / f"{name}.yaml").resolve()
    path.write_text(confirm_space_text(space_text, seeds, top))
    return path
