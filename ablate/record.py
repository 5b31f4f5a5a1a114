"""`ablate train` and `ablate record`: a single run that survives a crash and counts in the
results database as a sweep's trial does.

- `train_run`: fixes the run folder, writes its recipe there, keeps the training state of each
  validation in it (ablate/run_state.py) and, once training ends, marks it finished.
- `resume_run`: continues such a run from its last state, with the sweep's resume; on the
  CPU it ends exactly as the uninterrupted run would (weights, curves, selection) with the
  latent cache off, and equal up to float rounding with it on (ablate.train.train says why).
- `record_run`: evaluates a finished run on its test sets (bootstrap CIs, per-frame scores)
  and writes it into the results DB as one trial of a sweep of recorded runs, with what a
  sweep trial's row carries (recipe, reuse key, seed, metrics with provenance, curves, run
  folder), so `ablate report --sweep NAME` reads it as a one-cell sweep. Runs of one recipe on
  several seeds recorded into one sweep are that cell's seeds; a later sweep may reuse them.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
from omegaconf import DictConfig

from ablate.checkpoint import RECIPE, RUN_INFO, resolve_run
from ablate.core.errors import AblateError
from ablate.core.names import SCORES
from ablate.core.schema import setting
from ablate.data_parallel import train_parallel
from ablate.evaluate import evaluate_run
from ablate.recipe import load_yaml, result_dict
from ablate.results import ResultsDB
from ablate.reuse_key import reuse_key
from ablate.run_state import (
    FINISHED,
    finish,
    forget_unstarted,
    inspect_run,
    keep_state,
    plan_folder,
    resumable,
    resume_recipe,
    write_recipe,
)
from ablate.schedule import run_precision
from ablate.sweep.trial import selection_rows
from ablate.train import RunResult, train
from ablate.version import code_version

RECORDED = "recorded runs"  # the `space` of a sweep that `ablate record` writes


@dataclass
class Recorded:
    """Where `record_run` put a run: its sweep, the DB, and whether it replaced its own
    earlier record (the same run folder recorded again)."""

    sweep: str
    db_url: str
    replaced: bool
    metrics: pd.DataFrame


@dataclass
class Trained:
    """A finished `ablate train`: the run, the step it resumed after (None: from the start)
    and, with a database, where it was recorded."""

    result: RunResult
    resumed_at: int | None = None
    recorded: Recorded | None = None


# ---------------------------------------------------------------- training


def train_run(cfg: DictConfig, progress: bool = True, db_url: str | None = None,
              sweep: str | None = None,
              on_start: Callable[[Path], None] | None = None) -> Trained:
    """Train a composed recipe into a run folder that a crash does not lose (see the module
    doc); with `db_url`, record it at the end (the database is checked first: seconds, not
    hours). `on_start(folder)` names the folder once its first state is saved (from then on
    it can be resumed; a recipe or data error before that stays a one-line error)."""
    folder = plan_folder(cfg)
    if db_url is not None:
        check_target(db_url, sweep or folder.name)
    created = write_recipe(cfg, folder)
    try:
        result = _train(cfg, folder, progress, on_first_state=on_start)
    except BaseException:
        forget_unstarted(folder, created)
        raise
    return Trained(result, None, _record_after(folder, db_url, sweep, progress))


def resume_run(path: str | Path, overrides: list[str] | tuple[str, ...] = (),
               progress: bool = True, db_url: str | None = None,
               sweep: str | None = None) -> Trained:
    """Continue the run in `path` from its last state; `overrides` may change only what
    leaves the result alone (one line naming both recipe hashes otherwise)."""
    run = resumable(path)
    cfg = resume_recipe(run.folder, overrides)
    if db_url is not None:
        check_target(db_url, sweep or run.folder.name)
    result = _train(cfg, run.folder, progress, run.state)
    return Trained(result, run.step, _record_after(run.folder, db_url, sweep, progress))


def _train(cfg: DictConfig, folder: Path, progress: bool, resume_from: Path | None = None,
           on_first_state: Callable[[Path], None] | None = None) -> RunResult:
    """One run (data-parallel with train.processes > 1), its state kept in `folder` at each
    validation; marked finished once it has written its weights."""
    saved = [resume_from is not None]

    def on_checkpoint(step: int, signal: float, state: Path) -> None:
        keep_state(folder, state)
        if not saved[0] and on_first_state is not None:
            on_first_state(folder)
        saved[0] = True

    processes = int(setting(cfg, "train.processes"))
    if processes > 1:
        result = train_parallel(cfg, processes, on_checkpoint=on_checkpoint,
                                resume_from=resume_from, progress=progress)
    else:
        result = train(cfg, progress=progress, on_checkpoint=on_checkpoint,
                       resume_from=resume_from)
    finish(folder, code_version())
    return result


def _record_after(folder: Path, db_url: str | None, sweep: str | None,
                  progress: bool) -> Recorded | None:
    return None if db_url is None else record_run(folder, db_url, sweep, progress=progress)


# ---------------------------------------------------------------- recording


def record_run(path: str | Path, db_url: str | None = None, sweep: str | None = None,
               tests: list[str] | None = None, n_boot: int = 1000, device: str = "auto",
               progress: bool = True) -> Recorded:
    """Evaluate the finished run in `path` and record it in sweep `sweep` (default: the run
    folder's name) of the results DB (default: $ABLATE_DB or results/ablate.db).

    `tests` (default: the recipe's data.tests) become the recorded recipe's data.tests, as a
    sweep's test sets do, so the row's recipe hash and identity are those of a sweep trial
    of the same recipe tested on them. Recording the same folder again replaces its row;
    another folder with the same recipe and seed in the sweep is refused (it would count one
    training run twice)."""
    folder = _finished(path)
    info = json.loads((folder / RUN_INFO).read_text())
    cfg = load_yaml(folder / RECIPE)
    cfg.data.tests = list(tests or cfg.data.tests)
    name = sweep or folder.name
    key = reuse_key(cfg, _precision(cfg, info))
    trial_id = f"run:{folder.resolve()}"
    with ResultsDB(db_url) as db:
        replaced = _check_sweep(db, name, trial_id, key["identity"], int(cfg.seed))
        metrics, _ = evaluate_run(folder, list(cfg.data.tests), device, n_boot, progress,
                                  scores_out=folder / SCORES)
        sweep_id = db.start_sweep(name, RECORDED, {"recorded_runs": True, "objectives": []},
                                  code_version(), resume=db.sweep_id(name) is not None)
        db.record_trial(sweep_id, trial_id, **trial_row(cfg, info, metrics, folder, key))
        db.set_sweep_status(sweep_id, "finished")
        url = db.safe_url
    return Recorded(name, url, replaced, metrics)


def _finished(path: str | Path) -> Path:
    """The run folder at `path`, refused in one line unless it finished training."""
    run = inspect_run(path)
    if run.status != FINISHED:
        raise AblateError(f"run {run.folder} has not finished ({run.status}"
                          f"{f' at step {run.step}' if run.step else ''}); finish it with "
                          f"`ablate train --resume {run.folder}`, then record it")
    return resolve_run(run.folder)


def _precision(cfg: DictConfig, info: dict) -> str:
    """The precision the run computed in (run.json's speed), for its identity; runs saved
    without it: what its recipe resolves to here."""
    found = (info.get("speed") or {}).get("precision")
    return str(found) if found else run_precision(cfg)


def check_target(db_url: str | None, sweep: str) -> None:
    """Fail now, not after training, when the DB cannot be opened or `sweep` is a sweep
    that `ablate sweep` ran (recorded runs go into sweeps of their own)."""
    with ResultsDB(db_url) as db:
        _check_sweep(db, sweep, None, None, None)


def _check_sweep(db: ResultsDB, name: str, trial_id: str | None, identity: str | None,
                 seed: int | None) -> bool:
    """Whether the run is in sweep `name` already (its row is replaced); one line when the
    sweep is not one of recorded runs, or holds this recipe and seed from another folder."""
    sweep_id = db.sweep_id(name)
    if sweep_id is None:
        return False
    sweeps = db.list_sweeps()
    space = sweeps.loc[sweeps["name"] == name, "space"].iloc[0]
    if space != RECORDED:
        raise AblateError(f"sweep {name} in {db.url} was run by `ablate sweep` (space {space}); "
                          "record runs into a sweep of their own: --sweep ANOTHER_NAME")
    rows = db.sweep_rows(sweep_id)
    if any(r["tune_trial_id"] == trial_id for r in rows):
        return True
    twin = next((r for r in rows if identity is not None and r["identity"] == identity
                 and r["seed"] == seed), None)
    if twin is not None:
        raise AblateError(f"sweep {name} already holds this recipe with seed {seed} (identity "
                          f"{identity}, run {twin['run_dir']}); one training run may count "
                          "once: record another seed, or into another --sweep")
    return False


def trial_row(cfg: DictConfig, info: dict, metrics: pd.DataFrame, folder: Path,
              key: dict) -> dict:
    """The keyword arguments of `ResultsDB.record_trial` for a finished run, as a sweep's
    trial fills them (ablate/sweep/trial.py): the source val row (with the training data's
    protocol), the proxy's row when one chose the checkpoint, then every test row."""
    selection = info.get("selection") or {}
    ended = datetime.fromtimestamp((folder / RUN_INFO).stat().st_mtime, UTC)
    return {
        "recipe_hash": key["recipe_hash"], "recipe": result_dict(cfg), "seed": int(cfg.seed),
        "status": "finished", "started": None, "ended": ended, "wall_s": info.get("wall_s"),
        "train_steps": info.get("steps"), "step_time_s": info.get("step_time_s"),
        "params_trainable": info.get("params_trainable"),
        "params_inference": info.get("params_inference"), "peak_mem_mb": info.get("peak_mem_mb"),
        "run_dir": str(folder.resolve()),
        "metrics": [*selection_rows(cfg, selection), *metrics.to_dict("records")],
        "curves": [tuple(c) for c in info.get("curves") or []], "identity": key["identity"],
        "data_sha": key.get("data_sha"), "teacher_sha": key.get("teacher_sha"),
        "code_version": info.get("code_version"),  # None: trained before runs recorded it
    }
