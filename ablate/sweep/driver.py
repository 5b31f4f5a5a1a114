"""`ablate sweep`: validate, connect, plan from the database, run, and say how it ended.

Order matters for "bad input costs seconds": the database is opened (a bad URL
or a read-only file fails here), the space parsed, resources checked, the
storage probed, and only then are choices dry-run built and Ray started.
Nothing is written to the database before all of that passed.

How a sweep ends is read from the database and the Optuna study, never from
Tune's counters: `finished` only when every planned trial is settled there,
`interrupted` on Ctrl-C / SIGTERM with trials left, `failed` with the error on
any other exception. A heartbeat thread keeps `ablate sweeps` able to tell a
live driver from a dead one.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ablate.errors import AblateError
from ablate.sweep.cluster import (
    check_fits,
    check_request,
    check_versions,
    cluster_nodes,
    connect_ray,
    local_capacity,
    node_versions,
)
from ablate.sweep.reconcile import Plan, plan_resume
from ablate.sweep.trial import GRID_KEY, REPORT_METRICS, TrialContext, run_trial
from ablate.tracking import tune_callbacks
from ablate.version import code_version

RAY_DIR = Path("results/ray")
RUNS_DIR = Path("results/runs")
SPACES_DIR = Path("results/spaces")
HEARTBEAT_S = 15.0


@dataclass
class SweepSummary:
    name: str
    sweep_id: int
    db_url: str
    wall_s: float
    table: Any  # pandas.DataFrame


def run_sweep(
    space_name: str, trials: int | None = None, concurrency: int | None = None,
    db_url: str | None = None, address: str | None = None, name: str | None = None,
    resume: bool = False, force: bool = False, cpus: float | None = None,
    gpus: float | None = None, n_boot: int = 1000, grid: dict[str, list[str]] | None = None,
    settings: dict[str, Any] | None = None, mlflow: str | None = None, wandb: str | None = None,
    storage: str | None = None, reuse_any_version: bool = False,
) -> SweepSummary:
    """Run (or resume) one sweep and return its summary; see the module docstring."""
    import ray

    from ablate import storage as store
    from ablate.recipe import compose
    from ablate.results import ResultsDB
    from ablate.space import derive_space, load_space, parse_space, validate_space

    start = time.perf_counter()
    db = ResultsDB(db_url)  # a bad URL or an unwritable DB: an error before anything else
    space = load_space(space_name)
    name = _sweep_name(db, space.name, name, resume)
    stored = _stored_settings(db, name) if resume else {}
    if resume and stored.get("space_text"):  # the very space the sweep started with
        space = parse_space(stored["space_text"], Path(stored.get("space_file", space.name)))
    per_trial = {"cpu": cpus if cpus is not None else space.resources.cpu,
                 "gpu": gpus if gpus is not None else space.resources.gpu}
    check_request(per_trial["cpu"], per_trial["gpu"])
    if not (address or os.environ.get("RAY_ADDRESS")):
        check_fits(per_trial, [local_capacity()], "this machine")
    storage = storage or stored.get("storage")
    if storage:
        store.check_writable(storage)
    if resume and (mlflow or wandb):
        raise AblateError("--mlflow / --wandb are fixed when a sweep starts; resume without "
                          "them: the sweep logs where it began")
    if resume:
        _refuse_live(db, name)
    for note in validate_space(space):  # seconds; raises one error listing every problem
        _say(f"note: {note}")
    if settings and not resume:  # --set: the space with more fixed settings, validated too
        space = load_space(derive_space(space, settings, SPACES_DIR / name))
        for note in validate_space(space):
            _say(f"note: {note}")
    space_text = stored.get("space_text") or space.source_path.read_text()
    n_trials = len(grid) if grid else stored.get("trials") or trials or space.trials
    reference = compose(space.overrides())
    loggers = tune_callbacks(mlflow, wandb, name)  # a missing package fails here, not in Ray
    local = not (address or os.environ.get("RAY_ADDRESS"))
    if local and not storage:
        _prepare_data(reference)  # with a progress bar, before trials race to build it
    connect_ray(address)
    sweep_id = None
    heartbeat = _Heartbeat(db)
    try:
        check_fits(per_trial, cluster_nodes(), "the Ray cluster")
        if not local:
            check_versions(code_version(), node_versions())
        sweep_id = db.start_sweep(name, space.name, {
            "space_file": str(space.source_path), "space_text": space_text, "trials": n_trials,
            "resources": per_trial, "seeds": space.seeds, "force": force, "storage": storage,
            "objectives": [o.__dict__ for o in space.objectives],
            "sampler": "grid (explicit recipes)" if grid else space.sampler.name,
            "overrides": settings or stored.get("overrides") or {},
        }, code_version(), resume=resume)
        heartbeat.start(sweep_id)
        study = None if grid else _study(space, name, db)
        plan = (plan_resume(db, sweep_id, name, n_trials, space.seeds, study, space, grid)
                if resume else Plan(n_trials, labels=list(grid) if grid else None))
        if plan.trials == 0:
            _say(f"sweep {name}: nothing left to run")
        else:
            _run(space, space_text, db, name, sweep_id, plan, n_trials, per_trial, concurrency,
                 force, n_boot, reference, grid or {}, loggers, storage, local,
                 reuse_any_version)
        status = _ended(db, name, sweep_id, n_trials, space, grid, study)
        db.set_sweep_status(sweep_id, status)
        if status == "interrupted":
            raise AblateError(_interrupted(name, space_name))
    except KeyboardInterrupt:
        if sweep_id is not None:
            db.set_sweep_status(sweep_id, "interrupted")
        raise AblateError(_interrupted(name, space_name)) from None
    except AblateError as err:
        if sweep_id is not None and "interrupted" not in str(err):
            db.set_sweep_status(sweep_id, "failed", error=str(err))
        raise
    except BaseException as err:
        if sweep_id is not None:
            db.set_sweep_status(sweep_id, "failed", error=f"{type(err).__name__}: {err}"[:2000])
        raise
    finally:
        heartbeat.stop()
        if ray.is_initialized():
            ray.shutdown()
    from ablate.sweep.table import summary_table

    return SweepSummary(name, sweep_id, db.url, time.perf_counter() - start,
                        summary_table(db, name))


def _run(space, space_text: str, db, name: str, sweep_id: int, plan: Plan, n_trials: int,  # noqa: ANN001, PLR0913
         per_trial: dict, concurrency: int | None, force: bool, n_boot: int, reference,  # noqa: ANN001
         grid: dict[str, list[str]], loggers, storage: str | None, local: bool,  # noqa: ANN001
         reuse_any_version: bool) -> None:
    import ray
    from ray import tune

    from ablate import storage as store
    from ablate.sweep.callback import ResultsCallback
    from ablate.sweep.searcher import StopLedger, TruthfulOptunaSearch

    available = ray.cluster_resources().get("CPU", 1)
    limit = concurrency or space.max_concurrent or max(int(available // max(per_trial["cpu"], 1)), 1)
    runs = store.join(storage, name, "runs") if storage else str((RUNS_DIR / name).resolve())
    context = TrialContext(
        space_text=space_text, space_name=space.name, seeds=list(range(space.seeds)),
        runs_location=runs, reuse={} if force else reuse_table(db, reuse_any_version),
        done=plan.done, checkpoints=plan.checkpoints, force=force,
        threads=max(int(per_trial["cpu"]), 1), n_boot=n_boot,
        workdir=str(Path.cwd()) if local and not storage else None, grid=grid,
        benchmark=_uses_benchmark(reference),
    )
    ledger = StopLedger()
    callback = ResultsCallback(db, sweep_id, n_trials, space, grid, ledger, code_version(),
                               storage or str(RAY_DIR.resolve()))
    searcher = None if grid else TruthfulOptunaSearch(space, name, db.optuna_storage_url, ledger)
    trainable = tune.with_resources(tune.with_parameters(run_trial, context=context), per_trial)
    _say(f"sweep {name}: {plan.trials} of {n_trials} trials of space {space.name} x "
         f"{space.seeds} seed(s), up to {limit} at once, {per_trial} per trial; "
         f"results in {db.url}")
    tuner = tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            # an explicit grid (compare-teachers) runs every recipe once, in order
            search_alg=searcher,
            scheduler=None if grid else _scheduler(space, reference, ledger),
            num_samples=1 if grid else plan.trials, max_concurrent_trials=limit,
            # keep worker processes between trials: each new one re-imports torch and
            # diffusers (seconds per trial, outside trial compute)
            reuse_actors=True,
        ),
        param_space={GRID_KEY: tune.grid_search(plan.labels)} if grid else None,
        run_config=tune.RunConfig(
            # a fresh Tune experiment folder per (re)start: resume never reads Tune's state
            name=f"{name}-{datetime.now(UTC).strftime('%Y%m%d-%H%M%S')}",
            storage_path=storage or str(RAY_DIR.resolve()), callbacks=[callback, *loggers],
            # a trial never raises for its recipe (ablate.sweep.trial): a Tune error is a
            # lost worker, retried from the trial's last checkpoint
            failure_config=tune.FailureConfig(max_failures=2),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1), verbose=0,
        ),
    )
    with _sigterm_as_interrupt(), _quiet_tune():
        tuner.fit()


def _study(space, name: str, db):  # noqa: ANN001, ANN202
    from ablate.sweep.searcher import open_study

    return open_study(space, name, db.optuna_storage_url)


def _ended(db, name: str, sweep_id: int, n_trials: int, space, grid, study) -> str:  # noqa: ANN001
    """finished when the database and the study say every planned trial is settled."""
    if grid:
        left = plan_resume(db, sweep_id, name, n_trials, space.seeds, None, space, grid)
        return "finished" if left.trials == 0 else "interrupted"
    import optuna

    from ablate.sweep.reconcile import INTERRUPTED_ATTR

    states = optuna.trial.TrialState
    settled = [t for t in study.get_trials(deepcopy=False,
                                           states=(states.COMPLETE, states.PRUNED, states.FAIL))
               if not t.user_attrs.get(INTERRUPTED_ATTR)]
    return "finished" if len(settled) >= n_trials else "interrupted"


def _interrupted(name: str, space_name: str) -> str:
    return (f"sweep {name} interrupted; continue it with: ablate sweep --space {space_name} "
            f"--name {name} --resume")


def reuse_table(db, any_version: bool = False) -> dict[str, dict]:  # noqa: ANN001
    """Finished trials already in the DB, keyed "identity:seed", for workers to reuse.

    Only results of this code version, unless `any_version` (--reuse-any-version).
    Only what a reused result needs travels: its id, metrics, curves, sizes and
    source-val AUC (the scheduler's and Optuna's signal).
    """
    table: dict[str, dict] = {}
    trials = db.trials()
    if trials.empty:
        return table
    version = None if any_version else code_version()
    for row in trials[trials["status"] == "finished"].itertuples():
        key = f"{row.identity}:{row.seed}"
        if key in table or not row.identity:
            continue
        stored = db.finished_trial(row.identity, int(row.seed), code_version=version)
        if not stored:
            continue
        val = [m["value"] for m in stored["metrics"]
               if m["split"] == "val" and m["metric"] == "auc" and m["value"] is not None]
        table[key] = {
            "id": int(stored["id"]), "run_dir": stored["run_dir"],
            "params_trainable": stored["params_trainable"],
            "params_inference": stored["params_inference"],
            "step_time_s": stored["step_time_s"], "peak_mem_mb": stored["peak_mem_mb"],
            "wall_s": stored["wall_s"], "train_steps": stored["train_steps"],
            "val_auc": val[0] if val else None, "code_version": stored.get("code_version"),
            "metrics": stored["metrics"], "curves": [list(c) for c in stored["curves"]],
        }
    return table


def _stored_settings(db, name: str) -> dict[str, Any]:  # noqa: ANN001
    sweeps = db.list_sweeps()
    row = sweeps[sweeps["name"] == name]
    if row.empty or not row.iloc[0].get("settings_json"):
        return {}
    return json.loads(row.iloc[0]["settings_json"])


def _refuse_live(db, name: str) -> None:  # noqa: ANN001
    """Two drivers on one sweep would both write it: resume only a sweep nobody runs."""
    sweeps = db.list_sweeps()
    row = sweeps[sweeps["name"] == name].iloc[0]
    if row["status"] == "running" and not bool(row.get("stale", True)):
        raise AblateError(f"sweep {name} is running now (host {row.get('host')}, pid "
                          f"{row.get('pid')}); wait for it, or stop that driver first")


def _sweep_name(db, space: str, name: str | None, resume: bool) -> str:  # noqa: ANN001
    """The sweep's name; --resume without --name picks the newest unfinished sweep of the space."""
    if name:
        exists = db.sweep_id(name) is not None
        if resume and not exists:
            raise AblateError(f"no sweep named {name!r} in {db.url}; list them with "
                              "`ablate sweeps`, or drop --resume to start it")
        if not resume and exists:
            raise AblateError(f"sweep {name!r} already exists in {db.url}; pass --resume to "
                              "continue it or choose another --name")
        return name
    if resume:
        sweeps = db.list_sweeps()
        open_ = sweeps[(sweeps["space"] == space) & (sweeps["status"] != "finished")]
        if open_.empty:
            raise AblateError(f"no unfinished sweep of space {space} in {db.url} to resume; "
                              "name one with --name (see `ablate sweeps`)")
        return str(open_.iloc[-1]["name"])
    return f"{space}-{datetime.now(UTC).strftime('%Y%m%d-%H%M%S')}"


def _uses_benchmark(reference) -> bool:  # noqa: ANN001
    from ablate.data.loader import benchmark_datasets

    names = {str(reference.data.train), *map(str, reference.data.tests)}
    return bool(names & set(benchmark_datasets()))


def _prepare_data(reference) -> None:  # noqa: ANN001
    """Build the embedded benchmark once here, so concurrent trials never race to build it."""
    if _uses_benchmark(reference):
        from ablate.data.synthetic import ensure_benchmark

        ensure_benchmark(progress=True)


def _scheduler(space, cfg, ledger):  # noqa: ANN001, ANN202
    """ASHA on the first seed's source-val AUC, whatever the objectives are.

    Its clock is the evaluation index (`rung`); max_t is one past the last
    evaluation, so ASHA never stops a trial at its final report.
    """
    stop = space.early_stopping
    if not stop.enabled:
        return None
    from ablate.space import planned_evaluations
    from ablate.sweep.searcher import asha

    evaluations = planned_evaluations(cfg.train)
    return asha(ledger, max_t=evaluations + 1,
                grace_period=max(min(int(stop.grace_period), evaluations), 1),
                reduction_factor=float(stop.reduction_factor))


class _Heartbeat:
    """Writes the sweep's heartbeat every HEARTBEAT_S from a daemon thread."""

    def __init__(self, db) -> None:  # noqa: ANN001
        self.db, self._stop = db, threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, sweep_id: int) -> None:
        def beat() -> None:
            while not self._stop.wait(HEARTBEAT_S):
                with contextlib.suppress(Exception):  # a missed beat only ages the heartbeat
                    self.db.heartbeat(sweep_id)

        self._thread = threading.Thread(target=beat, name="ablate-heartbeat", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)


@contextlib.contextmanager
def _quiet_tune() -> Iterator[None]:
    """Tune's own logging repeats each failure's traceback; our live lines name the error
    and its error file instead. ABLATE_TUNE_LOG=INFO brings Tune's logging back."""
    import logging

    names = ("ray.tune", "ray.train", "ray.air")
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(os.environ.get("ABLATE_TUNE_LOG", "CRITICAL"))
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """`kill PID` stops the sweep like Ctrl-C: the DB stays consistent, --resume continues."""
    previous = signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, lambda *_: os.kill(os.getpid(), signal.SIGINT))
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _say(line: str) -> None:
    print(line, flush=True)


__all__ = ["REPORT_METRICS", "SweepSummary", "reuse_table", "run_sweep"]
