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

from ablate import storage as store
from ablate.core.errors import AblateError
from ablate.core.paths import RAY_DIR, RUNS_DIR, SPACES_DIR
from ablate.data.sources import benchmark_datasets
from ablate.recipe import compose
from ablate.results import METRIC_KEYS, ResultsDB
from ablate.space import derive_space, load_space, parse_space, planned_evaluations, validate_space
from ablate.sweep.cluster import (
    check_fits,
    check_request,
    check_versions,
    cluster_nodes,
    connect_ray,
    local_capacity,
    node_versions,
)
from ablate.sweep.confirm import confirmation_name
from ablate.sweep.constraints import check_feasible, infeasible_count
from ablate.sweep.reconcile import (
    Plan,
    counted_trials,
    labels_left,
    plain_value,
    plan_resume,
    stored_seeds,
)
from ablate.sweep.trial import COST_FIELDS, GRID_KEY, TrialContext, run_trial
from ablate.sweep.warm_start import copy_trials, warm_trials
from ablate.tracking import tune_callbacks
from ablate.version import code_version

HEARTBEAT_S = 15.0
AUTO = "auto"  # resources.gpu: auto packs trials onto GPUs by their memory estimates


@dataclass
class SweepSummary:
    name: str
    sweep_id: int
    db_url: str
    wall_s: float
    table: Any  # pandas.DataFrame
    confirmation: SweepSummary | None = None  # the search's confirmation sweep, if it had one
    infeasible: int = 0  # sampled points outside the space's constraints, never trained


def run_sweep(
    space_name: str, trials: int | None = None, concurrency: int | None = None,
    db_url: str | None = None, address: str | None = None, name: str | None = None,
    resume: bool = False, force: bool = False, cpus: float | None = None,
    gpus: float | None = None, n_boot: int = 1000, grid: dict[str, list[str]] | None = None,
    settings: dict[str, Any] | None = None, mlflow: str | None = None, wandb: str | None = None,
    storage: str | None = None, reuse_any_version: bool = False, stage: dict | None = None,
    device_memory: float | None = None, warm_start: str | None = None,
) -> SweepSummary:
    """Run (or resume) one sweep and return its summary; see the module docstring.

    A search space with `confirm:` then runs (or resumes) its confirmation sweep
    (`ablate.sweep.confirm`); `stage` is what a confirmation sweep records of its search.
    `warm_start` names an earlier sweep whose finished trials seed the sampler
    (`ablate.sweep.warm_start`).
    """
    import ray

    start = time.perf_counter()
    db = ResultsDB(db_url)  # a bad URL or an unwritable DB: an error before anything else
    space = load_space(space_name)
    name = _sweep_name(db, space.name, name, resume)
    row = _sweep_row(db, name) if resume else {}
    stored = json.loads(row["settings_json"]) if row.get("settings_json") else {}
    if stored.get("space_text"):  # resume: the very space the sweep started with
        space = parse_space(stored["space_text"], Path(stored.get("space_file", space.name)))
    if resume and not grid and stored.get("winners"):  # a confirmation: the recipes it confirms
        grid = {w["label"]: list(w["overrides"]) for w in stored["winners"]}
    per_trial = {"cpu": cpus if cpus is not None else space.resources.cpu,
                 "gpu": gpus if gpus is not None else space.resources.gpu}
    packed = per_trial["gpu"] == AUTO
    if packed:  # resolved by the memory preflight below, once the recipes are known
        per_trial["gpu"] = 1
    check_request(per_trial["cpu"], per_trial["gpu"])
    device_gb = _device_memory(device_memory, packed, stored, per_trial["gpu"])
    processes = space.resources.data_parallel(per_trial["gpu"])
    if processes > 1:  # one trial, data-parallel: its cpu and gpu split among the processes
        per_trial["processes"] = processes
    local = not (address or os.environ.get("RAY_ADDRESS"))
    if local:
        check_fits(per_trial, [local_capacity()], "this machine")
    storage = storage or stored.get("storage")
    if storage and not store.is_uri(storage):  # workers and a later resume see the same folder
        storage = str(store.local_path(storage))
    if storage:
        store.check_writable(storage)
    if resume and (mlflow or wandb):
        raise AblateError("--mlflow / --wandb are fixed when a sweep starts; resume without "
                          "them: the sweep logs where it began")
    if resume:
        _refuse_live(row, name)
    if space.confirm is not None and not grid:  # before a GPU-week, not after it
        _check_confirmation_name(db, name)
    if settings and not resume:  # --set: the space with more fixed settings
        space = load_space(derive_space(space, settings, SPACES_DIR / name))
    for note in validate_space(space):  # seconds; raises one error listing every problem
        _say(f"note: {note}")
    if not grid:  # constraints that exclude every point: one line before anything is written
        check_feasible(space)
    space_text = stored.get("space_text") or space.source_path.read_text()
    if space.design is not None and not grid:  # a design: its cells are the explicit grid
        if trials:
            raise AblateError(f"space {space.name} is a design of {space.design.size} cells; "
                              "it runs every cell, so drop --trials")
        grid = space.design.grid()
    n_trials = len(grid) if grid else stored.get("trials") or trials or space.trials
    warm = _warm_trials(db, warm_start, space, resume, grid)  # checked before any write
    preflight = stored.get("preflight") or (
        _preflight(space, grid, per_trial, processes, device_gb, packed) if device_gb else {})
    if packed:
        per_trial["gpu"] = preflight["gpu_share"]
    reference = compose(space.overrides())
    loggers = tune_callbacks(mlflow, wandb, name)  # a missing package fails here, not in Ray
    version = code_version()  # one `git describe` for the sweep row, reuse and the nodes
    if local:
        _prepare_data(reference)  # with a progress bar, before trials race to build it
    connect_ray(address)
    sweep_id = None
    heartbeat = _Heartbeat(db)
    infeasible = 0
    try:
        if not local:
            check_fits(per_trial, cluster_nodes(), "the Ray cluster")
            check_versions(version, node_versions())
        sweep_id = db.start_sweep(name, space.name, {
            "space_file": str(space.source_path), "space_text": space_text, "trials": n_trials,
            "resources": per_trial, "seeds": space.seeds, "force": force, "storage": storage,
            "objectives": [o.__dict__ for o in space.objectives],
            "sampler": ("grid (explicit recipes)" if grid and space.design is None
                        else space.sampler_name),
            **_design_settings(space),
            "overrides": settings or stored.get("overrides") or {},
            **({"preflight": preflight} if preflight else {}),
            **({"confirmation": confirmation_name(name)} if space.confirm and not grid else {}),
            **(stage or {}),
            **({"warm_start": warm_start, "warm_start_trials": len(warm)} if warm_start else {}),
        }, version, resume=resume)
        heartbeat.start(sweep_id)
        study = None if grid else _open_study(space, name, db)
        if warm_start:
            _say(f"sweep {name}: seeded with {copy_trials(study, warm_start, warm)} finished "
                 f"trial(s) of sweep {warm_start} (not re-run, not counted)")
        plan = (plan_resume(db, sweep_id, name, n_trials, space.seeds, study, space, grid)
                if resume else Plan(n_trials, labels=list(grid) if grid else None))
        if plan.trials == 0:
            _say(f"sweep {name}: nothing left to run")
        else:
            _run(_Run(space, space_text, db, name, sweep_id, plan, n_trials, per_trial,
                      concurrency, n_boot, reference, grid or {}, loggers, storage, local,
                      version, study,
                      {} if force else reuse_table(db, version, reuse_any_version),
                      preflight.get("estimates_mb", {})))
        status = _ended(db, name, sweep_id, n_trials, space, grid, study)
        infeasible = infeasible_count(study)
        if infeasible:
            _say(f"sweep {name}: {infeasible} sampled point(s) broke the space's constraints "
                 "and were never trained")
        db.set_sweep_status(sweep_id, status)
    except KeyboardInterrupt:
        status = "interrupted"
        if sweep_id is not None:
            db.set_sweep_status(sweep_id, status)
    except BaseException as err:
        if sweep_id is not None:
            text = str(err) if isinstance(err, AblateError) else f"{type(err).__name__}: {err}"
            db.set_sweep_status(sweep_id, "failed", error=text[:2000])
        raise
    finally:
        heartbeat.stop()
        if ray.is_initialized():
            ray.shutdown()
    if status == "interrupted":
        of = stage or stored
        again = (f"--space {of.get('search_space')} --name {of['confirms']} --resume (the "
                 "search, then its confirmation)" if of.get("confirms")
                 else f"--space {space_name} --name {name} --resume")
        raise AblateError(f"sweep {name} interrupted; continue it with: ablate sweep {again}")
    # lazy: that module imports this one
    from ablate.sweep.table import summary_table

    confirmation = None
    if space.confirm is not None and not grid:
        confirmation = _confirm(space, space_text, name, space_name, db, {
            "db_url": db_url, "address": address, "concurrency": concurrency, "cpus": cpus,
            "gpus": gpus, "n_boot": n_boot, "storage": storage, "force": force,
            "reuse_any_version": reuse_any_version, "mlflow": mlflow, "wandb": wandb,
            "device_memory": device_memory})
    return SweepSummary(name, sweep_id, db.url, time.perf_counter() - start,
                        summary_table(db, name), confirmation, infeasible)


def _warm_trials(db, source: str | None, space, resume: bool, grid) -> list:  # noqa: ANN001
    """The earlier sweep's trials a new search starts from; [] without --warm-start."""
    if not source:
        return []
    if resume:
        raise AblateError("--warm-start seeds a new sweep; a resumed one keeps the trials it "
                          "started with: drop --warm-start")
    if grid:
        raise AblateError(f"--warm-start: space {space.name} runs explicit recipes (a design), "
                          "with no sampler to seed; drop --warm-start")
    return warm_trials(db, source, space)


def _check_confirmation_name(db, search: str) -> None:  # noqa: ANN001
    """A sweep named like the confirmation of `search` must be that confirmation."""
    name = confirmation_name(search)
    taken = _sweep_row(db, name)
    if taken and json.loads(taken.get("settings_json") or "{}").get("confirms") != search:
        raise AblateError(f"sweep {name} exists and is not the confirmation of {search}; "
                          "run the search under another --name")


def _confirm(space, space_text: str, search: str, space_name: str, db,  # noqa: ANN001
             kwargs: dict) -> SweepSummary:
    """Retrain the search's best recipes on fresh seeds, in sweep `<search>-confirm`."""
    # lazy: that module imports this one
    from ablate.sweep.confirm import winners, write_confirm_space

    name = confirmation_name(search)  # not another's: checked before the search started
    found = winners(db, search, space)
    seeds = space.confirm_seed_ids
    _say(f"sweep {search}: confirming its {len(found)} best recipe(s) by selection AUC "
         f"(source val, or the proxy's under train.select=proxy) on fresh seeds "
         f"{', '.join(map(str, seeds))} (sweep {name}):")
    for w in found:
        _say(f"  {w.label}: selection AUC {w.val_auc:.4f} over {w.seeds} seed(s): "
             f"{' '.join(w.overrides) or '(the fixed recipe)'}")
    path = write_confirm_space(space_text, seeds, len(found), SPACES_DIR, name)
    resume = db.sweep_id(name) is not None
    if resume:  # trackers are fixed when a sweep starts: a resumed one logs where it began
        kwargs = {**kwargs, "mlflow": None, "wandb": None}
    return run_sweep(str(path), name=name, resume=resume,
                     grid={w.label: list(w.overrides) for w in found},
                     stage={"confirms": search, "search_space": space_name,
                            "winners": [w.__dict__ for w in found]},
                     **kwargs)


def _design_settings(space) -> dict[str, Any]:  # noqa: ANN001
    """What the report needs of a design: its kind, factors, and the cell to compare with."""
    if space.design is None:
        return {}
    d = space.design
    return {"design": {"kind": d.kind, "factors": {k: list(v) for k, v in d.factors.items()},
                       "reference": d.reference, "cells": d.size},
            "reference": dict(d.reference)}  # report.reference matches the cell by its levels


@dataclass
class _Run:
    """Everything one Tune run of a sweep needs (see run_sweep)."""

    space: Any
    space_text: str
    db: Any
    name: str
    sweep_id: int
    plan: Plan
    n_trials: int
    per_trial: dict
    concurrency: int | None
    n_boot: int
    reference: Any
    grid: dict[str, list[str]]
    loggers: Any
    storage: str | None
    local: bool
    version: str
    study: Any
    reuse: dict[str, dict]
    estimates_mb: dict[str, float]


def _run(r: _Run) -> None:
    import ray
    from ray import tune

    # lazy: that module imports this one
    from ablate.sweep.callback import ResultsCallback
    from ablate.sweep.searcher import StopLedger, TruthfulOptunaSearch

    available = ray.cluster_resources().get("CPU", 1)
    space, plan, per_trial = r.space, r.plan, r.per_trial
    limit = r.concurrency or space.max_concurrent or max(int(available // max(per_trial["cpu"], 1)), 1)
    runs = store.join(r.storage, r.name, "runs") if r.storage else str((RUNS_DIR / r.name).resolve())
    context = TrialContext(
        space_text=r.space_text, space_name=space.name, seeds=space.seed_ids,
        runs_location=runs, reuse=r.reuse, done=plan.done, checkpoints=plan.checkpoints,
        threads=max(int(per_trial["cpu"] / per_trial.get("processes", 1)), 1), n_boot=r.n_boot,
        workdir=str(Path.cwd()) if r.local else None, grid=r.grid,
        benchmark=_uses_benchmark(r.reference),
    )
    ledger = StopLedger()
    callback = ResultsCallback(r.db, r.sweep_id, r.n_trials, space, r.grid, ledger, r.version,
                               r.storage or str(RAY_DIR.resolve()), r.estimates_mb)
    searcher = None if r.grid else TruthfulOptunaSearch(space, r.name, r.db.optuna_storage_url,
                                                        ledger, r.study)
    context.planned_evaluations = _asha_evaluations(space, r.reference, r.grid)
    context.processes = per_trial.get("processes", 1)
    context.cpus_per_process = per_trial["cpu"] / context.processes
    context.gpus_per_process = per_trial["gpu"] / context.processes
    # a data-parallel trial only launches its Ray Train workers, which hold its resources
    # (Tune refuses an empty request: a hundredth of a CPU stands for none)
    request = ({"cpu": 0.01} if context.processes > 1
               else {k: per_trial[k] for k in ("cpu", "gpu")})
    trainable = tune.with_resources(tune.with_parameters(run_trial, context=context), request)
    _say(f"sweep {r.name}: {plan.trials} of {r.n_trials} trials of space {space.name} x "
         f"{space.seeds} seed(s), up to {limit} at once, {per_trial} per trial; "
         f"results in {r.db.url}")
    tuner = tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            # an explicit grid (compare-teachers) runs every recipe once, in order
            search_alg=searcher,
            scheduler=None if r.grid else _scheduler(space, context.planned_evaluations, ledger),
            num_samples=1 if r.grid else plan.trials, max_concurrent_trials=limit,
            # keep worker processes between trials: each new one re-imports torch and
            # diffusers (seconds per trial, outside trial compute)
            reuse_actors=True,
        ),
        param_space={GRID_KEY: tune.grid_search(plan.labels)} if r.grid else None,
        run_config=tune.RunConfig(
            # a fresh Tune experiment folder per (re)start: resume never reads Tune's state
            name=f"{r.name}-{datetime.now(UTC).strftime('%Y%m%d-%H%M%S')}",
            storage_path=r.storage or str(RAY_DIR.resolve()), callbacks=[callback, *r.loggers],
            # a trial never raises for its recipe (ablate.sweep.trial): a Tune error is a
            # lost worker, retried from the trial's last checkpoint
            failure_config=tune.FailureConfig(max_failures=2),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1), verbose=0,
        ),
    )
    with _sigterm_as_interrupt(), _quiet_tune():
        tuner.fit()


def _open_study(space, name: str, db):  # noqa: ANN001, ANN202
    # lazy: that module imports this one
    from ablate.sweep.searcher import open_study  # imports Ray: not at module level

    return open_study(space, name, db.optuna_storage_url)


def _ended(db, name: str, sweep_id: int, n_trials: int, space, grid, study) -> str:  # noqa: ANN001
    """finished when the database and the study say every planned trial is settled."""
    if grid:
        by_tune = stored_seeds(db, name)
        return "interrupted" if labels_left(space, grid, by_tune) else "finished"
    return "finished" if counted_trials(study) >= n_trials else "interrupted"


def reuse_table(db, version: str, any_version: bool = False) -> dict[str, dict]:  # noqa: ANN001
    """Finished trials already in the DB, keyed "identity:seed", for workers to reuse.

    The latest finished (not reused) row of each identity and seed, of code version
    `version` unless `any_version` (--reuse-any-version). Only what a reused result
    needs travels: its id, metrics, curves, sizes and source-val AUC (the scheduler's
    and Optuna's signal).
    """
    trials = db.trials()
    if trials.empty:
        return {}
    rows = trials[(trials["status"] == "finished") & trials["identity"].notna()]
    if not any_version:
        rows = rows[rows["code_version"] == version]
    if rows.empty:
        return {}
    rows = (rows.sort_values(["ended", "id"], ascending=False, na_position="last")
            .drop_duplicates(["identity", "seed"]))

    metrics = _grouped(db.metrics(), METRIC_KEYS)
    curves = _grouped(db.curves(), ("step", "name", "value"))
    table: dict[str, dict] = {}
    for row in rows.itertuples():
        mine = metrics.get(int(row.id), [])
        val = [m["value"] for m in mine
               if m["split"] == "val" and m["metric"] == "auc" and m["value"] is not None]
        table[f"{row.identity}:{int(row.seed)}"] = {
            "id": int(row.id), "run_dir": plain_value(row.run_dir),
            **{k: plain_value(getattr(row, k)) for k in COST_FIELDS},
            "val_auc": val[0] if val else None, "metrics": mine,
            "code_version": plain_value(row.code_version),  # the code that computed it
            "curves": [[c["step"], c["name"], c["value"]] for c in curves.get(int(row.id), [])],
        }
    return table


def _grouped(frame, keys: tuple[str, ...]) -> dict[int, list[dict]]:  # noqa: ANN001
    """trial id -> its rows of `frame` as plain dicts of `keys`."""
    if frame.empty:
        return {}
    return {int(trial_id): [{k: plain_value(v) for k, v in rec.items()}
                            for rec in group[list(keys)].to_dict("records")]
            for trial_id, group in frame.groupby("trial_id")}


def _sweep_row(db, name: str) -> dict[str, Any]:  # noqa: ANN001
    sweeps = db.list_sweeps()
    match = sweeps[sweeps["name"] == name]
    return match.iloc[0].to_dict() if not match.empty else {}


def _refuse_live(row: dict[str, Any], name: str) -> None:
    """Two drivers on one sweep would both write it: resume only a sweep nobody runs."""
    if row.get("status") == "running" and not bool(row.get("stale", True)):
        raise AblateError(f"sweep {name} is running now (host {row.get('host')}, pid "
                          f"{row.get('pid')}); wait for it, or stop that driver first")


def _device_memory(given: float | None, packed: bool, stored: dict,
                   gpu: float) -> float | None:
    """The card's memory in GB for the preflight: --device-memory, what a resumed sweep
    started with, or this machine's first CUDA device when trials use GPUs; None skips the
    preflight (CPU trials are not checked against a GPU they do not use)."""
    if given is not None:
        if given <= 0:
            raise AblateError(f"--device-memory must be a positive number of GB, not {given:g}")
        return given
    if stored.get("preflight"):
        return stored["preflight"]["device_gb"]
    if not gpu and not packed:
        return None
    # lazy: loads torch only when called
    from ablate.sweep.preflight import local_device_gb

    found = local_device_gb()
    if found is None and packed:
        raise AblateError("resources.gpu: auto packs trials by their memory estimates; give "
                          "--device-memory GB (one card's memory) on a machine without a GPU")
    return found


def _preflight(space, grid: dict | None, per_trial: dict, processes: int,  # noqa: ANN001
               device_gb: float, packed: bool) -> dict:
    """Estimate every distinct recipe; refuse the sweep if one cannot fit its share of the
    card. Returns what the sweep row stores: the card, each estimate by memory key, and
    under `gpu: auto` the GPU fraction each trial asks for."""
    # lazy: fake-tensor estimates load torch and the model zoo
    from ablate.sweep.preflight import (
        check_estimates,
        estimate_sweep,
        packed_gpu_share,
        per_trial_gb,
    )

    found = estimate_sweep(space, grid, processes)
    gpu = packed_gpu_share(found, device_gb) if packed else per_trial["gpu"]
    share = per_trial_gb(gpu, processes, device_gb) if gpu else device_gb
    check_estimates(found, share, device_gb)
    heaviest = max(found, key=lambda e: e.needs_gb)
    _say(f"memory preflight: {len(found)} recipe(s) fit {share:.1f} GB a trial "
         f"(heaviest {heaviest.needs_gb:.1f} GB: {heaviest.label})"
         + (f"; gpu: auto asks {gpu:.3g} GPU a trial" if packed else ""))
    return {"device_gb": device_gb, "gpu_share": gpu,
            "estimates_mb": {e.key: round(e.needs_gb * 1024, 1) for e in found}}


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

    names = {str(reference.data.train), *map(str, reference.data.tests)}
    return bool(names & set(benchmark_datasets()))


def _prepare_data(reference) -> None:  # noqa: ANN001
    """Build the embedded benchmark once here, so concurrent trials never race to build it."""
    if _uses_benchmark(reference):
        # lazy: loads cv2 and scipy only when called
        from ablate.data.synthetic import ensure_benchmark

        ensure_benchmark(progress=True)


def _asha_evaluations(space, cfg, grid: dict) -> int:  # noqa: ANN001
    """The evaluations ASHA's clock runs to, counted once on the reference recipe (0: no
    ASHA). Trials cap their rungs below it (`TrialContext.planned_evaluations`)."""
    if grid or not space.early_stopping.enabled:
        return 0
    # lazy: counting batches reads the manifest (and loads the data layer)
    from ablate.schedule import training_batches

    return planned_evaluations(cfg.train, training_batches(cfg)[0])


def _scheduler(space, evaluations: int, ledger):  # noqa: ANN001, ANN202
    """ASHA (or async Hyperband: `brackets`) on the first seed's source-val AUC, whatever
    the objectives are.

    Its clock is the evaluation index (`rung`); the last evaluation and the final
    report have rung 0, which ASHA ignores, so it never stops a fully trained trial.
    """
    stop = space.early_stopping
    if not stop.enabled:
        return None
    # lazy: that module imports this one
    from ablate.sweep.searcher import asha

    return asha(ledger, max_t=evaluations + 1,
                grace_period=max(min(int(stop.grace_period), evaluations), 1),
                reduction_factor=float(stop.reduction_factor), brackets=int(stop.brackets))


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


__all__ = ["SweepSummary", "reuse_table", "run_sweep"]
