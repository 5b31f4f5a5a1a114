"""`ablate sweep`: recipes from a search space as Ray Tune trials chosen by Optuna.

Each trial is a full guided training plus evaluation on every test set of the
space. Workers only compute and report; the driver's `ResultsCallback` is the
only writer of the results database. The Optuna study lives in the same
database, so `optuna-dashboard <db url>` opens it.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ablate.errors import AblateError
from ablate.tracking import tune_callbacks, write_metrics
from ablate.version import code_version

RAY_DIR = Path("results/ray")
RUNS_DIR = Path("results/runs")
SPACES_DIR = Path("results/spaces")
SCORES = "scores.csv"
GRID_KEY = "recipe"  # a trial's config key naming one of an explicit grid's recipes
FINAL = "ablate_final"  # our last report of a trial (Tune adds its own "done" key)


@dataclass
class TrialContext:
    """Everything a trial needs, shipped to workers once (tune.with_parameters)."""

    space_path: str
    seeds: list[int]
    runs_dir: str
    report_seed: int
    reuse: dict[str, dict] = field(default_factory=dict)  # "hash:seed" -> its stored result
    force: bool = False
    threads: int = 1
    n_boot: int = 1000
    workdir: str = "."  # the driver's folder: relative recipe paths resolve as they do there
    grid: dict[str, list[str]] = field(default_factory=dict)  # label -> extra overrides


def trial_overrides(space, config: dict[str, Any], grid: dict[str, list[str]],  # noqa: ANN001
                    seed: int) -> list[str]:
    """Hydra overrides of one trial: the space's, then an explicit grid recipe's, if any."""
    params = {k: v for k, v in config.items() if k != GRID_KEY}
    extra = grid[config[GRID_KEY]] if GRID_KEY in config else []
    return [*space.overrides(params, seed=seed), *extra]


# ------------------------------------------------------------------ worker side


def run_trial(config: dict[str, Any], context: TrialContext) -> None:
    """One Tune trial: train + evaluate each seed of one configuration, report to the driver."""
    import torch
    from ray import tune

    from ablate.evaluate import evaluate_classifier
    from ablate.recipe import compose, recipe_hash, result_dict
    from ablate.space import load_space
    from ablate.train import TrainingDiverged, train

    torch.set_num_threads(max(int(context.threads), 1))
    if Path(context.workdir).is_dir():  # a cluster node without the folder keeps its own
        os.chdir(context.workdir)
    space = load_space(context.space_path)
    trial_name = tune.get_context().get_trial_name() or "trial"
    seed_results: list[dict] = []
    for seed in context.seeds:
        cfg = compose([*trial_overrides(space, config, context.grid, seed),
                       f"run.out_dir={context.runs_dir}", f"run.name={trial_name}-seed{seed}"])
        identity = recipe_hash(cfg)
        stored = context.reuse.get(f"{identity}:{seed}")
        base = {"seed": seed, "recipe_hash": identity, "recipe": result_dict(cfg),
                "started": _now()}
        if stored and not context.force:
            result = {k: v for k, v in stored.items() if k not in ("id", "sweep")}
            seed_results.append({**base, **result, "status": "reused",
                                 "reused_from": stored["id"], "ended": _now()})
            if seed == context.report_seed and stored.get("val_auc") is not None:
                tune.report({"val_auc": stored["val_auc"], "step": 0, "seed": seed})
            continue

        def report(step: int, val_auc: float, _seed: int = seed,
                   _last: int | None = cfg.train.steps) -> None:
            # the early-stopping signal: first seed only, and not the last evaluation
            # (the final report carries it; pruning a fully trained trial saves nothing).
            # Epoch-based recipes (train.steps null) report every evaluation.
            if _seed == context.report_seed and (_last is None or step < _last):
                tune.report({"val_auc": val_auc, "step": step, "seed": _seed})

        try:
            run = train(cfg, progress=False, on_eval=report)
        except TrainingDiverged as err:
            seed_results.append({**base, "status": "nan", "error": str(err), "ended": _now()})
            continue
        selection = run.selection or {}
        metrics = evaluate_classifier(
            _load_selected(run.folder), cfg, list(cfg.data.tests), selection.get("threshold"),
            n_boot=context.n_boot, progress=False,
            scores_out=run.folder / SCORES,  # per-frame scores: paired comparisons need them
        )
        val_row = {"dataset": cfg.data.train, "split": "val", "level": "frame", "metric": "auc",
                   "value": selection.get("val_auc"), "ci_low": None, "ci_high": None,
                   "n": selection.get("n_frames")}
        write_metrics(run.folder, metrics.to_dict("records"), selection.get("step") or run.steps)
        seed_results.append({
            **base, "status": "finished", "ended": _now(), "run_dir": str(run.folder),
            "wall_s": run.wall_s, "train_steps": run.steps, "step_time_s": run.step_time_s,
            "params_trainable": run.params_trainable, "params_inference": run.params_inference,
            "peak_mem_mb": run.peak_mem_mb, "val_auc": selection.get("val_auc"),
            "metrics": [val_row, *metrics.to_dict("records")], "curves": run.curves,
        })
    tune.report({**summarise(seed_results), FINAL: True,
                 "seed_results": json.dumps(seed_results, default=_jsonable)})


def _load_selected(folder: Path):  # noqa: ANN202
    from ablate.checkpoint import load_classifier

    classifier, _ = load_classifier(folder)
    return classifier


def summarise(seed_results: list[dict]) -> dict[str, float]:
    """Objective values of one configuration: means over its seeds that produced numbers."""
    import math

    def values(key: str) -> list[float]:
        out = []
        for r in seed_results:
            v = r.get(key)
            if v is not None and not (isinstance(v, float) and math.isnan(v)):
                out.append(float(v))
        return out

    summary: dict[str, float] = {}
    for key in ("val_auc", "params_trainable", "params_inference", "step_time_s", "wall_s",
                "peak_mem_mb"):
        vals = values(key)
        summary[key] = sum(vals) / len(vals) if vals else float("nan")
    tests = [m["value"] for r in seed_results
             for m in r.get("metrics") or []
             if m.get("split") == "test" and m.get("level") == "frame" and m.get("metric") == "auc"]
    summary["test_auc_mean"] = sum(tests) / len(tests) if tests else float("nan")
    return summary


def _now() -> str:
    return datetime.now(UTC).isoformat()


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    return str(value)


# ------------------------------------------------------------------ driver side


def _trial_callback_class():  # noqa: ANN202
    """Defined lazily so importing ablate.sweep does not import Ray."""
    from ray.tune import Callback

    class ResultsCallback(Callback):
        """The only writer of the results DB: one transaction per finished trial.

        Idempotent per Tune trial id, so a resumed sweep never duplicates rows.
        Also prints the live view: one line per trial event.
        """

        def __init__(self, db_url: str, sweep_id: int, total: int, space_path: str,
                     grid: dict[str, list[str]]) -> None:
            self.db_url, self.sweep_id, self.total = db_url, sweep_id, total
            self.space_path, self.grid = space_path, grid
            self.done: set[str] = set()
            self._db = None
            self._curves: dict[str, list[tuple[int, str, float]]] = {}
            self.best: float | None = None

        def __getstate__(self) -> dict:  # Tune pickles callbacks with its experiment state
            state = self.__dict__.copy()
            state["_db"] = None
            return state

        @property
        def db(self):  # noqa: ANN202
            if self._db is None:
                from ablate.results import ResultsDB

                self._db = ResultsDB(self.db_url)
            return self._db

        def on_trial_start(self, iteration, trials, trial, **info) -> None:  # noqa: ANN001
            _say(f"[{len(self.done)}/{self.total} done] start {trial.trial_id} {_params(trial.config)}")

        def on_trial_result(self, iteration, trials, trial, result, **info) -> None:  # noqa: ANN001
            if result.get(FINAL):
                return
            auc = result.get("val_auc")
            self._curves.setdefault(trial.trial_id, []).append(
                (int(result.get("step", 0)), "val/auc", float(auc)))
            self.best = auc if self.best is None else max(self.best, auc)
            _say(f"    {trial.trial_id} step {result.get('step')} val_auc {auc:.3f} "
                 f"(best so far {self.best:.3f})")

        def on_trial_complete(self, iteration, trials, trial, **info) -> None:  # noqa: ANN001
            self.done.add(trial.trial_id)
            result = trial.last_result or {}
            if result.get(FINAL):
                self._record_seeds(trial, json.loads(result["seed_results"]))
                status = ", ".join(sorted({r["status"] for r in json.loads(result["seed_results"])}))
                _say(f"[{len(self.done)}/{self.total}] {status} {trial.trial_id} "
                     f"val_auc {result.get('val_auc', float('nan')):.3f} "
                     f"test_auc_mean {result.get('test_auc_mean', float('nan')):.3f}")
            else:  # stopped by the scheduler before its final report
                self._record_simple(trial, "pruned", None)
                _say(f"[{len(self.done)}/{self.total}] pruned {trial.trial_id}")

        def on_trial_error(self, iteration, trials, trial, **info) -> None:  # noqa: ANN001
            self.done.add(trial.trial_id)
            self._record_simple(trial, "failed", _error_text(trial))
            _say(f"[{len(self.done)}/{self.total}] FAILED {trial.trial_id}: {_error_text(trial)} "
                 f"(traceback: {getattr(trial, 'error_file', None) or 'none'})")

        def _record_seeds(self, trial, seed_results: list[dict]) -> None:  # noqa: ANN001
            for r in seed_results:
                # a reused seed spent no compute here: its run costs stay with the original row
                cost = {} if r["status"] == "reused" else r
                self.db.record_trial(
                    self.sweep_id, f"{trial.trial_id}:{r['seed']}",
                    recipe_hash=r["recipe_hash"], recipe=r["recipe"], seed=r["seed"],
                    status=r["status"], started=_parse(r["started"]), ended=_parse(r["ended"]),
                    error=r.get("error"), wall_s=cost.get("wall_s"),
                    train_steps=cost.get("train_steps"), peak_mem_mb=cost.get("peak_mem_mb"),
                    step_time_s=cost.get("step_time_s"),
                    params_trainable=r.get("params_trainable"),
                    params_inference=r.get("params_inference"), run_dir=r.get("run_dir"),
                    reused_from=r.get("reused_from"), metrics=r.get("metrics") or [],
                    curves=[tuple(c) for c in r.get("curves") or []],
                )

        def _record_simple(self, trial, status: str, error: str | None) -> None:  # noqa: ANN001
            """A trial without results (pruned or failed), under its first seed's recipe."""
            identity, recipe = self._identity(trial.config)
            self.db.record_trial(
                self.sweep_id, f"{trial.trial_id}:0", recipe_hash=identity, recipe=recipe,
                seed=0, status=status, started=None, ended=datetime.now(UTC), error=error,
                curves=self._curves.get(trial.trial_id, []),
            )

        def _identity(self, config: dict) -> tuple[str, dict]:
            from ablate.recipe import compose, recipe_hash, result_dict
            from ablate.space import load_space

            try:
                space = load_space(self.space_path)
                cfg = compose(trial_overrides(space, config, self.grid, seed=0))
                return recipe_hash(cfg), result_dict(cfg)
            except AblateError:  # the recipe itself is what failed: keep the choices
                return "", dict(config)

    return ResultsCallback


def _params(config: dict) -> str:
    return " ".join(f"{k}={v}" for k, v in config.items())


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


@dataclass
class SweepSummary:
    name: str
    sweep_id: int
    db_url: str
    wall_s: float
    table: Any  # pandas.DataFrame


def connect_ray(address: str | None) -> None:
    """Join the cluster at `address` (or $RAY_ADDRESS), else start a local Ray."""
    import ray

    address = address or os.environ.get("RAY_ADDRESS") or None
    os.environ.setdefault("RAY_CHDIR_TO_TRIAL_DIR", "0")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # our own live lines replace Tune's tables
    env = {"env_vars": {"RAY_CHDIR_TO_TRIAL_DIR": "0", **_plugin_env()}}
    if address:
        _probe_ray(address)
    try:
        if address:
            ray.init(address=address, runtime_env=env, log_to_driver=False,
                     ignore_reinit_error=True)
        else:
            ray.init(num_cpus=os.cpu_count(), include_dashboard=False,
                     runtime_env=env, log_to_driver=False, ignore_reinit_error=True)
    except (ConnectionError, RuntimeError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise AblateError(
            f"cannot reach a Ray cluster at {address}: {first}; start one with "
            "`ray start --head` or drop --address to run locally"
        ) from None


def _probe_ray(address: str, timeout_s: float = 5.0) -> None:
    """Fail in seconds on an unreachable address (ray.init would retry for minutes)."""
    import socket

    if address == "auto":
        return  # ray finds the local cluster itself, and fails fast when there is none
    host_port = address.removeprefix("ray://").rsplit("/", 1)[0]
    host, _, port = host_port.rpartition(":")
    if not host or not port.isdigit():
        raise AblateError(f"Ray address {address!r} is not HOST:PORT or ray://HOST:PORT "
                          "(the head node's GCS port, 6379 by default, or client port 10001)")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout_s):
            pass
    except OSError as err:
        raise AblateError(
            f"cannot reach a Ray cluster at {address} ({err.strerror or err}); start one with "
            "`ray start --head` or drop --address to run locally"
        ) from None


def _plugin_env() -> dict[str, str]:
    """Plugins and extra config/space folders of this process, for every worker: each
    node must be able to import the plugin (installed there, or the .py file on a path
    it sees), as it must be able to import ablate itself."""
    from ablate.locations import CONFIG_DIR_ENV, CONFIG_PATH_ENV, SPACES_DIR_ENV, SPACES_PATH_ENV
    from ablate.plugins import ENV

    names = (ENV, CONFIG_PATH_ENV, SPACES_PATH_ENV, CONFIG_DIR_ENV, SPACES_DIR_ENV)
    return {k: os.environ[k] for k in names if os.environ.get(k)}


def _reuse_table(db) -> dict[str, dict]:  # noqa: ANN001
    """Finished trials already in the DB, keyed "recipe_hash:seed", for workers to reuse.

    Only what a reused result needs travels to the workers: its id, metrics,
    curves, sizes and source-val AUC (the scheduler's and Optuna's signal).
    """
    table: dict[str, dict] = {}
    trials = db.trials()
    if trials.empty:
        return table
    for row in trials[trials["status"] == "finished"].itertuples():
        key = f"{row.recipe_hash}:{row.seed}"
        if key in table:
            continue
        stored = db.finished_trial(row.recipe_hash, int(row.seed))
        if not stored:
            continue
        val = [m["value"] for m in stored["metrics"]
               if m["split"] == "val" and m["metric"] == "auc" and m["value"] is not None]
        table[key] = {
            "id": int(stored["id"]), "sweep": stored["sweep"], "run_dir": stored["run_dir"],
            "params_trainable": stored["params_trainable"],
            "params_inference": stored["params_inference"],
            "step_time_s": stored["step_time_s"], "peak_mem_mb": stored["peak_mem_mb"],
            "wall_s": stored["wall_s"], "train_steps": stored["train_steps"],
            "val_auc": val[0] if val else None,
            "metrics": stored["metrics"], "curves": [list(c) for c in stored["curves"]],
        }
    return table


def run_sweep(
    space_name: str, trials: int | None = None, concurrency: int | None = None,
    db_url: str | None = None, address: str | None = None, name: str | None = None,
    resume: bool = False, force: bool = False, cpus: float | None = None,
    gpus: float | None = None, n_boot: int = 1000, grid: dict[str, list[str]] | None = None,
    settings: dict[str, Any] | None = None, mlflow: str | None = None, wandb: str | None = None,
) -> SweepSummary:
    """Validate, connect, run every trial, and return the summary (see module doc).

    Order matters for "a bad space costs seconds": the space is parsed and
    dry-run built, the database opened and the sweep name checked before Ray
    starts, and nothing is written to the database before all of that passed.
    """
    import ray

    from ablate.recipe import compose
    from ablate.results import ResultsDB
    from ablate.space import derive_space, load_space, validate_space

    start = time.perf_counter()
    space = load_space(space_name)
    for note in validate_space(space):  # seconds; raises one error listing every problem
        _say(f"note: {note}")
    db = ResultsDB(db_url)
    name = _sweep_name(db, space.name, name, resume)
    derived = SPACES_DIR / name
    if settings:  # --set: the space with more fixed settings, validated like any space
        space = load_space(derive_space(space, settings, derived))
        for note in validate_space(space):
            _say(f"note: {note}")
    elif resume and (derived / f"{space.name}.yaml").is_file():
        space = load_space(derived / f"{space.name}.yaml")
    experiment = (RAY_DIR / name).resolve()
    if resume and not (experiment / "tuner.pkl").is_file():
        raise AblateError(f"sweep {name} has no Ray state under {experiment} to resume from; "
                          "resume on the machine that started it, or start a new sweep")
    n_trials = len(grid) if grid else trials or space.trials
    per_trial = {"cpu": cpus if cpus is not None else space.resources.cpu,
                 "gpu": gpus if gpus is not None else space.resources.gpu}
    reference = compose(space.overrides())
    if resume and (mlflow or wandb):
        raise AblateError("--mlflow / --wandb are fixed when a sweep starts (Ray keeps them in "
                          "its saved state); resume without them: the sweep logs where it began")
    loggers = tune_callbacks(mlflow, wandb, name)  # a missing package fails here, not in Ray
    _prepare_data(reference, space)
    connect_ray(address)
    sweep_id = None
    try:
        sweep_id = db.start_sweep(
            name, space.name, {"space_file": str(space.source_path), "trials": n_trials,
                               "resources": per_trial, "seeds": space.seeds, "force": force,
                               "objectives": [o.__dict__ for o in space.objectives],
                               "sampler": "grid (explicit recipes)" if grid else space.sampler.name,
                               "overrides": settings or {}},
            code_version(), resume=resume,
        )
        tuner, limit = _tuner(space, db, name, sweep_id, n_trials, per_trial, concurrency,
                              force, n_boot, resume, reference, experiment, grid or {}, loggers)
        _say(f"sweep {name}: {n_trials} trials of space {space.name} x {space.seeds} seed(s), "
             f"up to {limit} at once, {per_trial} per trial; results in {db.url}")
        with _sigterm_as_interrupt(), _quiet_tune():
            grid = tuner.fit()
        finished = grid.num_terminated + grid.num_errors
        status = "finished" if finished >= n_trials else "interrupted"
        db.set_sweep_status(sweep_id, status)
        if status == "interrupted":
            raise AblateError(f"sweep {name} interrupted after {finished} of {n_trials} trials; "
                              f"continue it with: ablate sweep --space {space_name} --name {name} "
                              "--resume")
    except KeyboardInterrupt:
        if sweep_id is not None:
            db.set_sweep_status(sweep_id, "interrupted")
        raise AblateError(f"sweep {name} interrupted; continue it with: ablate sweep --space "
                          f"{space_name} --name {name} --resume") from None
    finally:
        if ray.is_initialized():
            ray.shutdown()
    return SweepSummary(name, sweep_id, db.url, time.perf_counter() - start,
                        summary_table(db, name))


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


def _prepare_data(reference, space) -> None:  # noqa: ANN001
    """Build the embedded benchmark once here, so concurrent trials never race to build it."""
    from ablate.data.loader import benchmark_datasets

    names = {str(reference.data.train), *map(str, reference.data.tests)}
    if names & set(benchmark_datasets()):
        from ablate.data.synthetic import ensure_benchmark

        ensure_benchmark(progress=True)


def _tuner(space, db, name, sweep_id, n_trials, per_trial, concurrency, force, n_boot,  # noqa: ANN001, ANN202, PLR0913
           resume, reference, experiment, grid, loggers=()):
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    available = ray.cluster_resources().get("CPU", 1)
    limit = concurrency or space.max_concurrent or max(int(available // max(per_trial["cpu"], 1)), 1)
    context = TrialContext(
        space_path=str(space.source_path), seeds=list(range(space.seeds)),
        runs_dir=str((RUNS_DIR / name).resolve()), report_seed=0,
        reuse={} if force else _reuse_table(db), force=force,
        threads=max(int(per_trial["cpu"]), 1), n_boot=n_boot, workdir=str(Path.cwd()),
        grid=grid,
    )
    trainable = tune.with_resources(tune.with_parameters(run_trial, context=context), per_trial)
    if resume:
        return tune.Tuner.restore(str(experiment), trainable=trainable, resume_unfinished=True,
                                  resume_errored=False), limit
    callback = _trial_callback_class()(db.optuna_storage_url, sweep_id, n_trials,
                                           str(space.source_path), grid)
    tuner = tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            # an explicit grid (compare-teachers) runs every recipe once, in order
            search_alg=None if grid else _searcher(space, OptunaSearch, db, name),
            scheduler=None if grid else _scheduler(space, reference, ASHAScheduler),
            num_samples=1 if grid else n_trials, max_concurrent_trials=limit,
            # keep worker processes between trials: each new one re-imports torch and
            # diffusers (seconds per trial, outside trial compute)
            reuse_actors=True,
        ),
        param_space={GRID_KEY: tune.grid_search(list(grid))} if grid else None,
        run_config=tune.RunConfig(
            name=name, storage_path=str(RAY_DIR.resolve()), callbacks=[callback, *loggers],
            failure_config=tune.FailureConfig(max_failures=0), verbose=0,
        ),
    )
    return tuner, limit


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
    """`kill PID` stops the sweep like Ctrl-C: Tune saves its state, the DB stays consistent."""
    previous = signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, lambda *_: os.kill(os.getpid(), signal.SIGINT))
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _searcher(space, OptunaSearch, db, name: str):  # noqa: ANN001, ANN202, N803
    import optuna

    metrics = [o.metric for o in space.objectives]
    modes = [o.mode for o in space.objectives]
    storage = optuna.storages.RDBStorage(db.optuna_storage_url)
    return OptunaSearch(
        space=space.define_by_run,
        metric=metrics if len(metrics) > 1 else metrics[0],
        mode=modes if len(modes) > 1 else modes[0],
        sampler=space.make_sampler(), study_name=name, storage=storage,
    )


def _scheduler(space, cfg, ASHAScheduler):  # noqa: ANN001, ANN202, N803
    """ASHA on the source-val AUC, whatever the objectives are.

    Time is Tune's training_iteration: one per evaluation of the first seed, then
    one final report with every seed's results. max_t is one past the last
    evaluation, so ASHA never stops a trial at its final report.
    """
    stop = space.early_stopping
    if not stop.enabled:
        return None
    from ablate.space import planned_evaluations

    evaluations = planned_evaluations(cfg.train)
    return ASHAScheduler(
        metric="val_auc", mode="max", max_t=evaluations + 1,
        grace_period=max(min(int(stop.grace_period), evaluations), 1),
        reduction_factor=float(stop.reduction_factor),
    )


def summary_table(db, name: str):  # noqa: ANN001, ANN201
    """One row per trial: status, its choices, val AUC and mean test AUC."""
    import pandas as pd

    trials = db.trials(name)
    if trials.empty:
        return trials
    metrics = db.metrics(name)
    rows = []
    for t in trials.itertuples():
        recipe = json.loads(t.recipe_json) if isinstance(t.recipe_json, str) else {}
        mine = metrics[metrics["trial_id"] == t.id] if not metrics.empty else metrics
        val = mine[(mine["split"] == "val") & (mine["metric"] == "auc")]["value"]
        test = mine[(mine["split"] == "test") & (mine["metric"] == "auc") &
                    (mine["level"] == "frame")]["value"]
        rows.append({
            "trial": t.tune_trial_id, "status": t.status, "seed": t.seed,
            **{slot: (recipe.get(slot) or {}).get("name") for slot in
               ("backbone", "filter", "weight", "guide", "teacher") if isinstance(recipe.get(slot), dict)},
            "val_auc": round(float(val.iloc[0]), 3) if len(val) else None,
            "test_auc_mean": round(float(test.mean()), 3) if len(test) else None,
        })
    return pd.DataFrame(rows)
