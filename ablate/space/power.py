"""Power before a sweep: how many seeds a space needs, from the spread of earlier runs.

`ablate spaces NAME --power` answers from the results database, never from a guess:

- the spread: the between-seed standard deviation of a paired difference in test AUC
  (the mean over test sets within each seed, then the sd over seeds:
  `stats.seed_interval`, the same number the report's ablation rows show as sd_seeds).
  Without a paired comparison (one recipe only), the sd of one recipe's per-seed mean
  test AUC, times sqrt(2): the sd of a difference of two recipes whose seeds vary
  independently (when same-seed runs of two recipes move together, a paired difference
  is smaller, so then this errs on the safe side).
- where it comes from, the first that has one, in order: runs of the space's own recipes
  (the same recipe hash: a design's cells, a search's fixed part), else any sweep of the
  space's name (e.g. run with --set), else the newest sweep holding >= 2 seeds of one
  recipe. Within that source, a paired estimate beats a per-recipe one, and among several
  the largest sd is used (the conservative choice); the output says which and why.
- the answer: the minimum detectable effect at the space's seeds and the seeds needed
  for the chosen effect (`stats.minimum_detectable_effect`, `stats.seeds_needed`: the
  two-sided paired t test over seeds at ALPHA with POWER).

No estimate (no database, no run with 2 seeds) is an answer too: "unknown", with the
pilot command that would give one. A bad --db is an AblateError (one line).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from ablate.core.errors import AblateError
from ablate.core.schema import setting
from ablate.recipe import compose, recipe_hash
from ablate.report.data import RESULT_STATUSES, load_sweep
from ablate.report.reference import choose_reference
from ablate.results import DEFAULT_URL, ResultsDB, default_url, require_existing_db
from ablate.space.model import SearchSpace

PILOT_SEEDS = 3
SOURCES = {  # where an estimate came from -> how the output says it
    "recipes": "earlier runs of this space's own recipes (the same recipe hash)",
    "space": "earlier sweeps of space {name}, not of its recipes as they compose now "
             "(e.g. run with --set)",
    "newest": "the newest sweep in the DB with >= 2 seeds of one recipe, not of this space: "
              "a rough guide only",
}


@dataclass(frozen=True)
class Estimate:
    """One between-seed spread of a difference of two recipes, in AUC units."""

    sd: float  # sd over seeds of the difference (per-recipe: sqrt(2) x sd_recipe)
    paired: bool  # a measured paired difference, or sqrt(2) x one recipe's sd
    sweep: str
    what: str  # "guide=none vs reference", or the recipe's label
    n_seeds: int
    n_tests: int  # test sets averaged within each seed
    sd_recipe: float = float("nan")  # per-recipe only: the one recipe's sd


@dataclass(frozen=True)
class Power:
    """The answer for one space; `estimate` None means unknown (`reason`, `pilot`)."""

    space: str
    seeds: int  # seeds per recipe the space runs
    effect: float  # AUC units (0.01 = 1 point)
    estimate: Estimate | None = None
    source: str = ""  # a SOURCES key
    candidates: list[Estimate] = field(default_factory=list)  # of the chosen kind and source
    mde: float = float("nan")
    needed: int | None = None
    reason: str = ""
    pilot: str = ""

    def lines(self) -> list[str]:
        """What `ablate spaces NAME --power` prints."""
        if self.estimate is None:
            return [f"power for space {self.space}: unknown, {self.reason}. Run a short "
                    f"pilot ({PILOT_SEEDS} seeds per recipe; fewer steps give a rougher "
                    f"estimate), e.g. `{self.pilot}`, then `ablate spaces {self.space} --power`"]
        # lazy: loads scipy only when called
        from ablate.report.stats import ALPHA, MAX_SEEDS, POWER

        e = self.estimate
        plural = "s" if self.seeds != 1 else ""
        out = [f"power for space {self.space} ({self.seeds} seed{plural} per recipe)"]
        where = (f"sweep {e.sweep}, {e.what}, {e.n_seeds} seeds, mean over {e.n_tests} test "
                 f"set{'s' if e.n_tests != 1 else ''} per seed")
        if e.paired:
            out.append(f"  between-seed sd of a paired ΔAUC: {_pts(e.sd)} points ({where})")
        else:
            out.append(f"  between-seed sd of a ΔAUC: {_pts(e.sd)} points = √2 x "
                       f"{_pts(e.sd_recipe)}, the sd of one recipe's per-seed mean test AUC "
                       f"({where}); assumes two recipes' seeds vary independently (no paired "
                       "comparison to measure it; same-seed runs that move together "
                       "make a paired difference smaller)")
        source = SOURCES[self.source].format(name=self.space)
        if len(self.candidates) > 1:
            sds = [c.sd for c in self.candidates]
            kind = "paired comparisons" if e.paired else "recipes"
            source += (f"; the largest of {len(sds)} {kind} ({_pts(min(sds))} to "
                       f"{_pts(max(sds))} points), the conservative choice")
        out.append(f"  from: {source}")
        test = f"{POWER:.0%} power, α = {ALPHA:g}, paired t over seeds"
        if self.seeds >= 2:
            out.append(f"  smallest effect {self.seeds} seeds detect ({test}): "
                       f"{_pts(self.mde)} points")
        else:
            out.append(f"  smallest effect 1 seed detects ({test}): none, a t test over "
                       "seeds needs >= 2")
        needed = f"more than {MAX_SEEDS}" if self.needed is None else str(self.needed)
        out.append(f"  seeds needed for a {self.effect * 100:g}-point effect: {needed}")
        return out


def _pts(value: float) -> str:
    return f"{value * 100:.2f}"


def space_power(space: SearchSpace, db_url: str | None = None,
                effect: float | None = None) -> Power:
    """The power answer for `space` from the results DB at `db_url` (default: $ABLATE_DB,
    else results/ablate.db). An explicit URL (argument or $ABLATE_DB) that cannot be
    opened, or names no SQLite file, raises AblateError; a missing default file is
    "unknown". `effect`: AUC units (default stats.DEFAULT_EFFECT, 1 point)."""
    import sqlalchemy as sa

    # lazy: loads scipy only when called
    from ablate.report.stats import DEFAULT_EFFECT, minimum_detectable_effect, seeds_needed

    effect = DEFAULT_EFFECT if effect is None else float(effect)
    seeds = verdict_seeds(space)
    base = Power(space.name, seeds, effect)
    recipes = _space_recipes(space)
    url = db_url or default_url()
    explicit = bool(db_url or os.environ.get("ABLATE_DB"))
    default_file = Path(sa.make_url(DEFAULT_URL).database).resolve()
    if not explicit and not default_file.is_file():
        return _unknown(base, space, recipes, None, f"no results database at {default_file}")
    require_existing_db(url)  # an explicit URL: a mistyped path is an error, not "unknown"
    with ResultsDB(url) as db:
        shown = db.safe_url if explicit else None
        found = _find(db, space, recipes)
    if isinstance(found, str):
        return _unknown(base, space, recipes, shown, found)
    source, candidates = found
    best = max(candidates, key=lambda c: c.sd)
    return Power(space.name, seeds, effect, best, source, candidates,
                 minimum_detectable_effect(best.sd, seeds), seeds_needed(effect, best.sd))


def verdict_seeds(space: SearchSpace) -> int:
    """The seeds the report's verdicts rest on: a search's confirmation seeds, when it has
    one, else the space's seeds."""
    return space.confirm.seeds if space.confirm is not None else space.seeds


# ---------------------------------------------------------------- the space's recipes


@dataclass(frozen=True)
class _Recipe:
    label: str  # "reference", "guide=none", or "fixed settings" for a search
    cfg: Any  # the composed recipe (DictConfig), seed as composed


def _space_recipes(space: SearchSpace) -> list[_Recipe]:
    """The recipes the space runs: a design's cells (reference first), a search's fixed part."""
    if space.design is None:
        return [_Recipe("fixed settings", compose(space.overrides()))]
    return [_Recipe(c.label, compose([*space.overrides(), *c.overrides()]))
            for c in space.design.cells()]


def _hashes(recipes: list[_Recipe], seeds: list[int]) -> dict[str, str]:
    """recipe hash -> recipe label, for each of `seeds` (the hash includes the seed)."""
    out = {}
    for r in recipes:
        cfg = r.cfg.copy()
        for seed in seeds:
            cfg.seed = int(seed)
            out[recipe_hash(cfg)] = r.label
    return out


# ---------------------------------------------------------------- the estimates


def _find(db: Any, space: SearchSpace,
          recipes: list[_Recipe]) -> tuple[str, list[Estimate]] | str:
    """(source, estimates) from the first tier with a paired difference, else from the first
    with one recipe's spread (a measured paired spread beats an assumed one), or why none
    has one (a phrase)."""
    sweeps = db.list_sweeps()
    if sweeps.empty:
        return "no sweeps in the results DB"
    trials = db.trials()
    done = trials[trials["status"].isin(RESULT_STATUSES) & trials["seed"].notna()]
    hashes = _hashes(recipes, sorted({int(s) for s in done["seed"]}))
    newest_first = [str(n) for n in
                    sweeps.sort_values(["created", "id"], ascending=False)["name"]]
    mine = set(done.loc[done["recipe_hash"].isin(hashes), "sweep"])
    same_space = set(sweeps.loc[sweeps["space"] == space.name, "name"])
    tiers: list[tuple[str, list[str], Callable]] = [
        ("recipes", [n for n in newest_first if n in mine],
         lambda v, _reference: _own_recipes(v, hashes, recipes)),
        ("space", [n for n in newest_first if n in same_space], _as_reported),
        ("newest", newest_first, _as_reported),
    ]
    cache: dict[str, tuple[pd.DataFrame, str] | None] = {}
    most = 0  # the most seeds any recipe has, for the "why not"
    fallback: tuple[str, list[Estimate]] | None = None  # the first tier's per-recipe spread
    for source, names, shape in tiers:
        paired, single = [], []
        for name in names:
            if name not in cache:
                cache[name] = _sweep_values(db, name)
            if cache[name] is None:
                continue
            v, anchor, anchor_label = shape(*cache[name])
            if v.empty:
                continue
            most = max(most, int(v.groupby("config")["seed"].nunique().max()))
            p, s = _paired(v, anchor, anchor_label, name), _per_recipe(v, name)
            paired += p
            single += s
            if source == "newest" and (p or s):
                break  # only the newest sweep that has one
        if paired:
            return source, paired
        fallback = fallback or ((source, single) if single else None)
    if fallback:  # no tier measured a paired difference: one recipe's spread, times √2
        return fallback
    if most == 1:
        return ("every recipe in the results DB has test AUC from 1 seed only, so there is "
                "no between-seed spread to measure")
    return "no finished run in the results DB has test AUC"


def _sweep_values(db: Any, name: str) -> tuple[pd.DataFrame, str] | None:
    """(one sweep's frame test AUC per recipe, seed and test set, the report's reference
    recipe), counted the way the report counts them (`load_sweep`: finished or reused, one
    per recipe and seed), with recipe_hash and label; None when it has nothing to report."""
    # lazy: loads scipy only when called
    from ablate.report.tables import AVG, seed_values

    try:
        data = load_sweep(db, name)
    except AblateError:  # no finished trials, no test metrics
        return None
    v = seed_values(data)
    v = v[(v["level"] == "frame") & (v["metric"] == "auc") & (v["dataset"] != AVG)]
    v = v.dropna(subset=["value"])
    if v.empty:
        return None
    v = v.assign(recipe_hash=v["trial_id"].map(data.counted.set_index("id")["recipe_hash"]))
    columns = ["config", "label", "recipe_hash", "seed", "dataset", "value"]
    return v[columns].reset_index(drop=True), choose_reference(data).config


def _as_reported(v: pd.DataFrame, reference: str) -> tuple[pd.DataFrame, str, str]:
    """(a sweep's runs, labelled as the report labels them; the report's reference, which
    the others pair against; its label)."""
    label = v.loc[v["config"] == reference, "label"]
    return v, reference, f"{label.iloc[0] if len(label) else 'its reference'} (reference)"


def _own_recipes(v: pd.DataFrame, hashes: dict[str, str],
                 recipes: list[_Recipe]) -> tuple[pd.DataFrame, str, str]:
    """(the sweep's runs of the space's own recipes, labelled as the space names them; the
    recipe the others pair against: the design's reference, else its first cell present;
    its label)."""
    v = v[v["recipe_hash"].isin(hashes)]
    v = v.assign(label=v["recipe_hash"].map(hashes))
    order = {r.label: i for i, r in enumerate(recipes)}
    present = sorted(set(v["label"]), key=order.__getitem__)
    if not present:
        return v, "", ""
    return v, str(v.loc[v["label"] == present[0], "config"].iloc[0]), present[0]


def _paired(v: pd.DataFrame, anchor: str, anchor_label: str, sweep: str) -> list[Estimate]:
    """Each recipe against the anchor, on the seeds and test sets both have."""
    # lazy: loads scipy only when called
    from ablate.report.stats import seed_interval

    ref = v[v["config"] == anchor]
    if ref.empty:
        return []
    out = []
    for _config, mine in v[v["config"] != anchor].groupby("config", sort=False):
        d = mine.merge(ref[["seed", "dataset", "value"]], on=["seed", "dataset"],
                       suffixes=("", "_ref"))
        found = seed_interval(d.assign(diff=d["value"] - d["value_ref"]))
        if found.n_seeds >= 2 and math.isfinite(found.sd):
            out.append(Estimate(found.sd, True, sweep, f"{mine['label'].iloc[0]} vs {anchor_label}",
                                found.n_seeds, int(d["dataset"].nunique())))
    return out


def _per_recipe(v: pd.DataFrame, sweep: str) -> list[Estimate]:
    """Each recipe with >= 2 seeds: sqrt(2) x the sd of its per-seed mean test AUC."""
    # lazy: loads scipy only when called
    from ablate.report.stats import seed_means

    out = []
    for _config, mine in v.groupby("config", sort=False):
        means, _note = seed_means(mine, "value")
        if len(means) >= 2:
            sd = float(means.std(ddof=1))
            out.append(Estimate(math.sqrt(2) * sd, False, sweep, str(mine["label"].iloc[0]),
                                len(means), int(mine["dataset"].nunique()), sd))
    return out


# ---------------------------------------------------------------- unknown


def _unknown(base: Power, space: SearchSpace, recipes: list[_Recipe], db: str | None,
             reason: str) -> Power:
    return Power(base.space, base.seeds, base.effect, reason=reason,
                 pilot=pilot_command(space, recipes, db))


def pilot_command(space: SearchSpace, recipes: list[_Recipe] | None = None,
                  db: str | None = None) -> str:
    """A short pilot that gives an estimate: the space (a search: 2 of its recipes) at a
    quarter of its steps, on >= PILOT_SEEDS seeds (a copy of the space file when it has
    fewer)."""
    recipes = recipes if recipes is not None else _space_recipes(space)
    target = space.name
    if space.seeds < PILOT_SEEDS or space.confirm is not None:
        target = (f"<a copy of {space.source_path or space.name} with seeds: {PILOT_SEEDS}"
                  f"{' and no confirm:' if space.confirm is not None else ''}>")
    parts = ["ablate sweep --space", target]
    if space.design is None:
        parts.append("--trials 2")
    steps = setting(recipes[0].cfg, "train.steps")
    searched = {p.key for p in space.params}
    if (isinstance(steps, int) and steps >= 8 and not setting(recipes[0].cfg, "train.epochs")
            and "train.steps" not in searched):
        parts.append(f"--set train.steps={steps // 4}")
    if db:
        parts.append(f"--db {db}")
    return " ".join(parts)
