"""Resume from the results database, the single source of truth.

`ablate sweep --resume` never restores Tune's pickled experiment state (it is
what a driver killed at the wrong moment leaves inconsistent). It starts a new
Tune run for what the database says is left:

- seeds this sweep already wrote are not run again (the worker gets them as
  `done` and only reads their numbers back);
- a seed that was cut off mid-training continues from its last trial
  checkpoint;
- each Optuna trial left RUNNING is settled from the rows the sweep wrote for
  it: PRUNED or FAIL if those say so, COMPLETE if all its seeds are in, else
  FAIL marked `interrupted` and its parameters enqueued, so the same recipe
  runs first. Interrupted trials do not count toward the budget.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from ablate.core.errors import AblateError
from ablate.recipe import compose, recipe_hash
from ablate.space.model import INFEASIBLE_ATTR
from ablate.sweep.trial import (
    COST_FIELDS,
    DONE_STATUSES,
    GRID_KEY,
    summarise,
    trial_overrides,
)
from ablate.sweep.warm_start import WARM_START_ATTR

INTERRUPTED_ATTR = "interrupted"


@dataclass
class Plan:
    """What a (resumed) sweep still has to run."""

    trials: int  # Tune samples to run now
    done: dict[str, dict] = field(default_factory=dict)  # "identity:seed" -> stored seed
    checkpoints: dict[str, str] = field(default_factory=dict)  # "identity:seed" -> uri
    labels: list[str] | None = None  # an explicit grid: its recipes still to run


def stored_seeds(db, sweep_name: str) -> dict[str, list[dict]]:  # noqa: ANN001
    """Rows of one sweep as seed results (with metrics), grouped by Tune trial id."""
    rows = db.trials(sweep_name)
    if rows.empty:
        return {}
    metrics = db.metrics(sweep_name)
    by_trial = {} if metrics.empty else {
        int(trial_id): [{k: plain_value(v) for k, v in m.items()} for m in group.to_dict("records")]
        for trial_id, group in metrics.groupby("trial_id")}
    out: dict[str, list[dict]] = {}
    for row in rows.to_dict("records"):
        records = by_trial.get(int(row["id"]), [])
        val = [m["value"] for m in records if m["split"] == "val" and m["metric"] == "auc"]
        seed = {k: plain_value(row.get(k)) for k in (
            "id", "tune_trial_id", "seed", "status", "identity", "recipe_hash", "run_dir",
            *COST_FIELDS, "error")}
        seed.update(val_auc=val[0] if val else None, metrics=records,
                    recipe=json.loads(row["recipe_json"]) if row.get("recipe_json") else {})
        out.setdefault(str(row["tune_trial_id"]).rsplit(":", 1)[0], []).append(seed)
    return out


def plan_resume(db, sweep_id: int, sweep_name: str, n_trials: int, seeds: int,  # noqa: ANN001
                study=None, space=None, grid: dict[str, list[str]] | None = None) -> Plan:  # noqa: ANN001
    """The Plan for resuming sweep `sweep_name`; settles its Optuna study on the way."""
    by_tune = stored_seeds(db, sweep_name)
    done = {f"{s['identity']}:{s['seed']}": s for rows in by_tune.values() for s in rows
            if s["status"] in DONE_STATUSES and s["identity"]}
    checkpoints = {f"{identity}:{seed}": c["uri"]
                   for (identity, seed), c in db.checkpoints(sweep_id).items()}
    if grid:
        labels = labels_left(space, grid, by_tune)
        return Plan(len(labels), done, checkpoints, labels)
    counted = settle_study(study, by_tune, seeds, space)
    return Plan(max(n_trials - counted, 0), done, checkpoints)


def settle_study(study, by_tune: dict[str, list[dict]], seeds: int, space) -> int:  # noqa: ANN001
    """Tell Optuna how each RUNNING trial ended; return the trials that count as run."""
    import optuna

    # lazy: that module imports this one
    from ablate.sweep.searcher import RETRY_OF_ATTR, retried_trials

    states = optuna.trial.TrialState
    for trial in study.get_trials(deepcopy=False, states=(states.RUNNING,)):
        # its own rows and those of the cut-off trials it continues
        owners = retried_trials(study, trial.number)
        rows = [r for owner in owners for r in by_tune.get(owner, [])]
        statuses = {r["status"] for r in rows}
        values = None
        if "pruned" in statuses:
            state = states.PRUNED
        elif len({r["seed"] for r in rows}) >= seeds:
            summary = summarise(rows)
            values = [summary.get(o.metric) for o in space.objectives]
            ok = all(v is not None and v == v for v in values)
            state, values = (states.COMPLETE, values) if ok else (states.FAIL, None)
        else:  # cut off: run the same recipe again, first
            study._storage.set_trial_user_attr(trial._trial_id, INTERRUPTED_ATTR, True)
            study.enqueue_trial(suggested(study, space, trial),
                                user_attrs={RETRY_OF_ATTR: trial.number}, skip_if_exists=False)
            state = states.FAIL
        study.tell(trial.number, values=values, state=state)
    return counted_trials(study)


def suggested(study, space, frozen) -> dict:  # noqa: ANN001
    """All params of a RUNNING trial. A driver killed between `study.ask()` and its last
    `suggest_*` leaves some unset, and a grid sampler refuses to enqueue a partial point; the
    missing ones are suggested now, on the same trial, so its sampler gives what it would have
    (a grid trial keeps its grid point, the params already stored keep their values)."""
    import optuna

    return space.define_by_run(optuna.Trial(study, frozen._trial_id))


def counted_trials(study) -> int:  # noqa: ANN001
    """Trials of the study that count toward its budget: settled, not cut off by a kill,
    trained (a point outside the space's constraints never was), and its own (not copied
    from an earlier sweep by --warm-start)."""
    import optuna

    states = optuna.trial.TrialState
    finished = (states.COMPLETE, states.PRUNED, states.FAIL)
    return sum(1 for t in study.get_trials(deepcopy=False, states=finished)
               if not t.user_attrs.get(INTERRUPTED_ATTR) and INFEASIBLE_ATTR not in t.user_attrs
               and WARM_START_ATTR not in t.user_attrs)


def labels_left(space, grid: dict[str, list[str]],  # noqa: ANN001
                by_tune: dict[str, list[dict]]) -> list[str]:
    """An explicit grid's labels whose seeds the sweep has not all written."""
    rows = [r for group in by_tune.values() for r in group
            if r["status"] in (*DONE_STATUSES, "pruned")]
    have = {(r["recipe_hash"], r["seed"]) for r in rows}
    left = []
    for label in grid:
        try:
            wanted = {(recipe_hash(compose(trial_overrides(space, {GRID_KEY: label}, grid, s))), s)
                      for s in space.seed_ids}
        except AblateError:  # written as the label's choices (ablate.sweep.callback._recipe)
            if not any(r["recipe"] == {GRID_KEY: label} for r in rows):
                left.append(label)
            continue
        if not wanted <= have:
            left.append(label)
    return left


def plain_value(value: Any) -> Any:
    """numpy scalars and pandas NaT/NaN as plain JSON-able values."""
    if value is None:
        return None
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and value != value:
        return None
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return value
