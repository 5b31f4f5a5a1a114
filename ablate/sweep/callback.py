"""The driver side of a sweep: the only writer of the results database, and the live view.

Each finished seed is written when its `seed` report arrives and each trial
checkpoint is noted when Tune has stored it. A row is keyed by its Tune trial
and seed; a resumed sweep never repeats one, because its workers only read
back (status `done`) the seeds this sweep already wrote.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ray.tune import Callback

from ablate import storage
from ablate.core.errors import AblateError
from ablate.core.selection import VAL_CURVE
from ablate.recipe import compose, recipe_hash, result_dict
from ablate.sweep.searcher import StopLedger
from ablate.sweep.trial import KIND, RUNG_CURVE, RUNG_METRIC, memory_key, trial_overrides


class ResultsCallback(Callback):
    """See the module docstring. Holds the database in driver memory only."""

    def __init__(self, db, sweep_id: int, total: int, space, grid: dict[str, list[str]],  # noqa: ANN001
                 ledger: StopLedger, code_version: str, storage_uri: str,
                 estimates_mb: dict[str, float] | None = None) -> None:
        self._db, self.sweep_id, self.total = db, sweep_id, total
        self.estimates_mb = estimates_mb or {}  # memory key -> the preflight's estimate
        self.space, self.grid, self.ledger = space, grid, ledger
        self.code_version, self.storage_uri = code_version, storage_uri
        self.recorded: set[tuple[str, int]] = set()  # (Tune trial id, seed) written
        self.settled: set[tuple[str, int]] = {  # (identity, seed) with a row: no checkpoints
            (r["identity"], int(r["seed"])) for r in db.sweep_rows(sweep_id)
            if r["seed"] is not None}
        self.ended: set[str] = set()
        self._curves: dict[str, list[tuple[int, str, float]]] = {}
        self._last_eval: dict[str, tuple[int, str, str]] = {}  # trial -> (seed, identity, hash)
        self.best: float | None = None

    def __getstate__(self) -> dict:  # Tune pickles callbacks with its experiment state
        state = self.__dict__.copy()
        state["_db"] = None
        return state

    # ------------------------------------------------------------ Tune hooks

    def on_trial_start(self, iteration, trials, trial, **info) -> None:  # noqa: ANN001
        _say(f"[{len(self.ended)}/{self.total} done] start {trial.trial_id} "
             f"{_params(trial.config)}")

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:  # noqa: ANN001
        kind = result.get(KIND)
        if kind == "seed":
            self._record_seed(trial, json.loads(result["seed_result"]))
        elif kind == "eval":
            self._on_eval(trial, result)

    def on_checkpoint(self, iteration, trials, trial, checkpoint, **info) -> None:  # noqa: ANN001
        """Tune stored a trial checkpoint: remember it, so a resumed sweep continues there.
        Tune hands callbacks the report that carried it first, so that says whose it is."""
        result = trial.last_result or {}
        if result.get(KIND) != "eval" or not result.get("identity"):
            return  # a `seed` report's checkpoint: only the list of finished seeds
        key = (result["identity"], int(result["seed"]))
        if key not in self.settled:
            uri = storage.locate(checkpoint.path, self.storage_uri)
            self._db.save_checkpoint(self.sweep_id, *key, int(result["step"]), uri)

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:  # noqa: ANN001
        result = trial.last_result or {}
        if result.get(KIND) == "final":
            self.ended.add(trial.trial_id)
            statuses = ", ".join(sorted({r["status"] for r in
                                         json.loads(result["seed_results"])}))
            _say(f"[{len(self.ended)}/{self.total}] {statuses} {trial.trial_id} "
                 f"val_auc {_fmt(result.get('val_auc'))} "
                 f"test_auc_mean {_fmt(result.get('test_auc_mean'))}")
        elif trial.trial_id in self.ledger.stopped:
            self.ended.add(trial.trial_id)
            self._record_unfinished(trial, "pruned", None)
            _say(f"[{len(self.ended)}/{self.total}] pruned {trial.trial_id}")
        # else: the sweep was interrupted under it; --resume runs it again

    def on_trial_error(self, iteration, trials, trial, **info) -> None:  # noqa: ANN001
        self.ended.add(trial.trial_id)
        error = _error_text(trial)
        self._record_unfinished(trial, "failed", error)
        _say(f"[{len(self.ended)}/{self.total}] FAILED {trial.trial_id}: {error} "
             f"(traceback: {getattr(trial, 'error_file', None) or 'none'})")

    # ------------------------------------------------------------ writing

    def _on_eval(self, trial, result: dict) -> None:  # noqa: ANN001
        if result.get("identity"):
            self._last_eval[trial.trial_id] = (int(result["seed"]), result["identity"],
                                               result.get("recipe_hash", ""))
        if not result.get("rung"):
            return
        auc = float(result[RUNG_METRIC])
        curve = str(result.get(RUNG_CURVE) or VAL_CURVE)  # the rule's signal's curve
        self._curves.setdefault(trial.trial_id, []).append(
            (int(result.get("step", 0)), curve, auc))
        self.best = auc if self.best is None else max(self.best, auc)
        _say(f"    {trial.trial_id} step {result.get('step')} {curve} {auc:.3f} "
             f"(best so far {self.best:.3f})")

    def _record_seed(self, trial, r: dict) -> None:  # noqa: ANN001
        key = (trial.trial_id, int(r["seed"]))
        if r["status"] == "done" or key in self.recorded:
            return  # written before this sweep was resumed, or before Tune retried the trial
        if not r.get("identity"):  # the recipe itself failed to compose
            r.update(zip(("recipe_hash", "recipe"), self._recipe(trial.config, r["seed"]),
                         strict=True))
            r["identity"] = r["recipe_hash"]
        cost = {} if r["status"] == "reused" else r  # reused: the cost stays with the original
        self._db.record_trial(
            self.sweep_id, f"{trial.trial_id}:{r['seed']}",
            recipe_hash=r["recipe_hash"], recipe=r["recipe"], seed=r["seed"],
            status=r["status"], started=_parse(r.get("started")), ended=_parse(r.get("ended")),
            error=r.get("error"), wall_s=cost.get("wall_s"),
            train_steps=cost.get("train_steps"), peak_mem_mb=cost.get("peak_mem_mb"),
            step_time_s=cost.get("step_time_s"), params_trainable=r.get("params_trainable"),
            params_inference=r.get("params_inference"), run_dir=r.get("run_dir"),
            reused_from=r.get("reused_from"), metrics=r.get("metrics") or [],
            curves=[tuple(c) for c in r.get("curves") or []],
            identity=r["identity"], data_sha=r.get("data_sha"),
            teacher_sha=r.get("teacher_sha"),
            # a reused seed was computed by the code that first ran it
            code_version=r.get("code_version") or self.code_version,
            estimated_mem_mb=self._estimate(trial.config, r["seed"]),
            # properties of the recipe's model, like its params: a reused seed keeps the
            # original's, as Optuna is told them
            train_gflops=r.get("train_gflops"), latency_ms=r.get("latency_ms"),
        )
        if r.get("resumed_from_step"):
            _say(f"    {trial.trial_id} seed {r['seed']} resumed at step "
                 f"{r['resumed_from_step']} from its trial checkpoint")
        self.recorded.add(key)
        self.settled.add((r["identity"], int(r["seed"])))
        self._db.delete_checkpoint(self.sweep_id, r["identity"], int(r["seed"]))

    def _record_unfinished(self, trial, status: str, error: str | None) -> None:  # noqa: ANN001
        """A trial that ended without its final report (pruned, or its worker died),
        under the first seed it had not recorded."""
        seeds = [s for s in self.space.seed_ids
                 if (trial.trial_id, s) not in self.recorded]
        if not seeds:
            return
        seed = seeds[0]
        recipe_hash, recipe = self._recipe(trial.config, seed)
        last = self._last_eval.get(trial.trial_id)
        identity = last[1] if last and last[0] == seed else recipe_hash
        self._db.record_trial(
            self.sweep_id, f"{trial.trial_id}:{seed}", recipe_hash=recipe_hash, recipe=recipe,
            seed=seed, status=status, started=None, ended=datetime.now(UTC), error=error,
            curves=self._curves.get(trial.trial_id, []), identity=identity,
            code_version=self.code_version, estimated_mem_mb=self._estimate(trial.config, seed),
        )
        self.recorded.add((trial.trial_id, seed))

    def _estimate(self, config: dict, seed: int) -> float | None:
        """The preflight's estimate of this trial's recipe (None: it was not estimated)."""
        return self.estimates_mb.get(memory_key(trial_overrides(self.space, config, self.grid,
                                                                seed)))

    def _recipe(self, config: dict, seed: int) -> tuple[str, dict]:
        try:
            cfg = compose(trial_overrides(self.space, config, self.grid, seed=seed))
            return recipe_hash(cfg), result_dict(cfg)
        except AblateError:  # the recipe itself is what failed: keep the choices
            return "", dict(config)


def _params(config: dict) -> str:
    return " ".join(f"{k}={v}" for k, v in config.items())


def _fmt(value: Any) -> str:
    try:
        return f"{float(value):.3f}"
    except (TypeError, ValueError):
        return "nan"


def _error_text(trial) -> str:  # noqa: ANN001
    path = getattr(trial, "error_file", None)
    if path and Path(path).is_file():
        lines = [ln for ln in Path(path).read_text().strip().splitlines() if ln.strip()]
        return lines[-1][:500] if lines else "unknown error"
    return "unknown error"


def _parse(stamp: str | None) -> datetime | None:
    return datetime.fromisoformat(stamp) if stamp else None


def _say(line: str) -> None:
    print(line, flush=True)
