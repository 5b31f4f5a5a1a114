"""The worker side of a sweep: one Tune trial trains and evaluates each seed of one recipe.

Workers compute and report; the driver's callback is the only writer of the
results database. Every report carries every metric Tune's strict metric check
and the searcher may ask for (NaN where not known yet), and a `kind`:

- `eval`: one validation of one seed, with the trial checkpoint of that step.
  Only the first seed's evaluations before the last carry a positive `rung`,
  the clock ASHA runs on; every other report has rung 0, which ASHA ignores.
- `seed`: one seed finished (or failed, or was reused): recorded at once, so a
  later failure or a killed driver never loses it.
- `final`: the trial's summary over its seeds (the objectives Optuna is told).

A trial does not raise for a bad recipe or a failing seed: the seed is
recorded `failed` with its one-line error and the trial goes on. So a Tune
error means the worker itself died (a lost node, the OOM killer), and Tune
retries the trial from its last checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import tempfile
import traceback
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ablate import storage
from ablate.core.errors import first_line
from ablate.core.names import SCORES
from ablate.core.selection import PROXY_SPLIT, VAL_CURVE, signal_curve, signal_split
from ablate.provenance import is_part
from ablate.recipe import compose, result_dict
from ablate.reuse_key import reuse_key
from ablate.schedule import training_batches
from ablate.space import parse_space
from ablate.space.budget import planned_evaluations
from ablate.tracking import write_metrics

log = logging.getLogger(__name__)

GRID_KEY = "recipe"  # a trial's config key naming one of an explicit grid's recipes
RETRY_KEY = "ablate_retry_of"  # Tune ids of the cut-off trials a resumed trial continues
KIND = "ablate_kind"
RUNG = "rung"  # ASHA's time attribute: the first seed's evaluation index, else 0
# ASHA's metric; only meaningful when rung > 0. It is the selection signal of the trial's
# rule (train.select, ablate/core/selection.py): the proxy's val AUC under `proxy`, else the
# source val AUC (under `last` too: the step kept is the last, scored on that same set)
RUNG_METRIC = "rung_val_auc"
RUNG_CURVE = "rung_curve"  # in eval reports: the curve RUNG_METRIC is a point of (val/auc, ...)
# every metric a trial reports; objectives must be among them. select_auc: the mean over
# seeds of what each kept checkpoint was chosen by (`selection_auc`)
REPORT_METRICS = ("val_auc", "select_auc", "test_auc_mean", "params_trainable",
                  "params_inference", "step_time_s", "wall_s", "peak_mem_mb", "train_gflops",
                  "latency_ms")
# a seed's cost fields, as trials report them and the results DB stores them
COST_FIELDS = ("params_trainable", "params_inference", "step_time_s", "peak_mem_mb", "wall_s",
               "train_steps", "train_gflops", "latency_ms")
DONE_STATUSES = ("finished", "nan", "reused", "failed")  # a seed row that needs no new run
STATE_FILE = "ablate_trial.json"  # in every trial checkpoint: whose state, and seeds done


@dataclass
class TrialContext:
    """Everything a trial needs, shipped to workers once (tune.with_parameters).

    Holds no path a worker must share with the driver: the space travels as
    text, run folders go to `runs_location` (a folder or storage URI).
    """

    space_text: str
    space_name: str
    seeds: list[int]
    runs_location: str
    reuse: dict[str, dict] = field(default_factory=dict)  # "identity:seed" -> stored result
    done: dict[str, dict] = field(default_factory=dict)  # in this sweep already: same shape
    checkpoints: dict[str, str] = field(default_factory=dict)  # "identity:seed" -> uri
    threads: int = 1
    n_boot: int = 1000
    workdir: str | None = None  # the driver's folder, when workers share its machine
    grid: dict[str, list[str]] = field(default_factory=dict)  # label -> extra overrides
    benchmark: bool = False  # build the embedded benchmark on this node first
    processes: int = 1  # > 1: each seed trains data-parallel on Ray Train workers
    cpus_per_process: float = 1  # what each of those workers asks Ray for
    gpus_per_process: float = 0
    # the evaluations ASHA's max_t was set from (the driver's count on the reference recipe):
    # a trial's rungs never reach it, whatever the trial counts itself (0: no ASHA clock)
    planned_evaluations: int = 0


def trial_overrides(space, config: dict[str, Any], grid: dict[str, list[str]],  # noqa: ANN001
                    seed: int) -> list[str]:
    """Hydra overrides of one trial: the space's, then an explicit grid recipe's, if any."""
    params = {k: v for k, v in config.items() if k not in (GRID_KEY, RETRY_KEY)}
    extra = grid[config[GRID_KEY]] if GRID_KEY in config else []
    return [*space.overrides(params, seed=seed), *extra]


def memory_key(overrides: list[str]) -> str:
    """What identifies a trial's memory estimate: its overrides without the seed or run name
    (speed settings change memory but not the recipe hash, so the hash cannot)."""
    kept = [o for o in overrides if not o.startswith(("seed=", "run.name="))]
    return hashlib.sha256("\n".join(kept).encode()).hexdigest()[:16]


def run_trial(config: dict[str, Any], context: TrialContext) -> None:
    """One Tune trial: each seed of one configuration, reported seed by seed."""
    import torch

    torch.set_num_threads(max(int(context.threads), 1))
    if context.workdir and Path(context.workdir).is_dir():
        os.chdir(context.workdir)  # single machine: relative recipe paths mean the driver's
    if context.benchmark:
        # lazy: loads cv2 and scipy only when called
        from ablate.data.synthetic import ensure_benchmark

        ensure_benchmark()  # race-safe: concurrent builders rename into place
    space = parse_space(context.space_text, Path(f"{context.space_name}.yaml"))
    trial = _Trial(config, context, space)
    try:
        results = [trial.run_seed(seed) for seed in context.seeds]
    finally:
        trial.close()
    trial.report("final", {**summarise(results),
                           "seed_results": json.dumps(results, default=_jsonable)})


class _Trial:
    def __init__(self, config: dict[str, Any], context: TrialContext, space) -> None:  # noqa: ANN001
        from ray import tune

        self.config, self.context, self.space = config, context, space
        self.name = tune.get_context().get_trial_name() or "trial"
        self.done: list[dict] = []
        self.rung_seed = context.seeds[0]  # the seed whose evaluations drive ASHA
        # a Tune retry (the worker died) starts again here: its last checkpoint says which
        # seeds it already finished and reported, and holds the cut-off seed's state
        self.retry_state, self.finished_before = _tune_checkpoint()

    def close(self) -> None:
        if self.retry_state is not None:
            shutil.rmtree(self.retry_state.parent, ignore_errors=True)

    def report(self, kind: str, values: dict[str, Any], checkpoint: Path | None = None) -> None:
        from ray import tune

        metrics = {**summarise(self.done), RUNG: 0, RUNG_METRIC: float("nan"), **values,
                   KIND: kind}
        if checkpoint is None:
            tune.report(metrics)
        else:
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(str(checkpoint)))

    def run_seed(self, seed: int) -> dict:
        """Train + evaluate one seed (or reuse it); report it; never raise for the recipe."""
        if seed in self.finished_before:  # reported before this retry: the driver has it
            self.done.append(self.finished_before[seed])
            return self.finished_before[seed]
        base: dict[str, Any] = {"seed": seed, "started": _now()}
        try:
            result = self._seed(seed, base)
        except Exception as err:  # noqa: BLE001 - a failing seed is a result, not a crash
            # lazy: loads torch only when called
            from ablate.train import TrainingDiverged

            status = "nan" if isinstance(err, TrainingDiverged) else "failed"
            result = {**base, "status": status,
                      "error": f"{type(err).__name__}: {first_line(err)}"[:500],
                      "traceback": traceback.format_exc()[-4000:], "ended": _now()}
        self.done.append(result)
        with tempfile.TemporaryDirectory(prefix="ablate-done-") as folder:
            _write_meta(Path(folder), done=self.done)  # a retry skips what is done
            self.report("seed", {"seed_result": json.dumps(result, default=_jsonable)},
                        checkpoint=Path(folder))
        return result

    def _seed(self, seed: int, base: dict[str, Any]) -> dict:
        ctx = self.context
        parallel = [f"train.processes={ctx.processes}"] if ctx.processes > 1 else []
        cfg = compose([*trial_overrides(self.space, self.config, ctx.grid, seed),
                       f"run.name={self.name}-seed{seed}", *parallel])
        # lazy: loads torch only when called
        from ablate.schedule import run_precision

        base.update(recipe=result_dict(cfg), **reuse_key(cfg, run_precision(cfg)))
        key = f"{base['identity']}:{seed}"
        if key in ctx.done and self._continues(ctx.done[key]):
            # written by this very trial before the sweep was cut off: read it back
            return {**base, **_stored(ctx.done[key]), "status": "done"}
        stored = ctx.reuse.get(key)  # empty under --force
        if stored:
            self._replay(base, stored.get("curves") or [],
                         _planned(cfg, self.context.planned_evaluations), signal_curve(cfg))
            reused = _stored(stored)
            if reused.get("train_gflops") is None:  # stored before costs were (schema < 6)
                reused["train_gflops"] = self._gflops(cfg)
            return {**base, **reused, "status": "reused",
                    "reused_from": stored["id"], "ended": _now()}
        return self._train(cfg, seed, base, key)

    def _continues(self, row: dict) -> bool:
        """Whether a seed this sweep wrote belongs to this trial: the trial continues the
        cut-off one that wrote it (a different trial of the same recipe reuses it instead)."""
        if self.context.grid:
            return True  # an explicit grid's recipes are distinct
        return str(row.get("tune_trial_id", "")).split(":")[0] in self.config.get(RETRY_KEY, [])

    def _replay(self, base: dict[str, Any], curves: list, planned: int,
                curve: str = VAL_CURVE) -> None:
        """A reused seed shows ASHA the same evaluations it showed when it was computed
        (all but the last: the final report carries that one, see `_rung`): the points of
        `curve`, its rule's signal."""
        seed = base["seed"]
        if seed != self.rung_seed:
            return
        evals = sorted((int(s), v) for s, name, v in curves if name == curve and v is not None)
        for rung, (step, auc) in enumerate(evals, start=1):
            if rung < planned:
                self.report("eval", {RUNG: rung, RUNG_METRIC: auc, RUNG_CURVE: curve,
                                     "seed": seed, "step": step, "identity": base["identity"],
                                     "recipe_hash": base["recipe_hash"]})

    def _train(self, cfg, seed: int, base: dict[str, Any], key: str) -> dict:  # noqa: ANN001
        # lazy: loads torch only when called
        from ablate.checkpoint import load_classifier
        from ablate.evaluate import evaluate_classifier
        from ablate.train import train

        ctx = self.context
        # run folders on a storage URI are trained locally, then uploaded
        remote = storage.is_uri(ctx.runs_location)
        local_runs = Path(tempfile.mkdtemp(prefix="ablate-run-")) if remote else None
        cfg.run.out_dir = str(local_runs) if remote else ctx.runs_location
        resume = self._resume_state(key, base["identity"], seed)
        resumed_step, evaluated = _resumed(resume)
        # ASHA's clock counts evaluations from step 0, also across a resume
        evaluations = iter(range(evaluated + 1, 1 << 30))
        planned = _planned(cfg, ctx.planned_evaluations)

        def on_checkpoint(step: int, signal: float, state_dir: Path) -> None:
            index = next(evaluations)
            rung = _rung(index, planned) if seed == self.rung_seed else 0
            _write_meta(state_dir, identity=base["identity"], seed=seed, step=step,
                        done=self.done)
            self.report("eval", {RUNG: rung, RUNG_METRIC: signal if rung else float("nan"),
                                 RUNG_CURVE: signal_curve(cfg),
                                 "seed": seed, "step": step, "identity": base["identity"],
                                 "recipe_hash": base["recipe_hash"]},
                        checkpoint=state_dir)

        try:
            if ctx.processes > 1:
                # lazy: that module imports this one
                from ablate.data_parallel import train_parallel

                run = train_parallel(cfg, ctx.processes,
                                     on_checkpoint=on_checkpoint, resume_from=resume,
                                     cpus_per_process=ctx.cpus_per_process,
                                     gpus_per_process=ctx.gpus_per_process, same_node=True)
            else:
                run = train(cfg, progress=False, on_checkpoint=on_checkpoint,
                            resume_from=resume)
            selection = run.selection or {}
            classifier, _ = load_classifier(run.folder)
            metrics = evaluate_classifier(
                classifier, cfg, list(cfg.data.tests), selection.get("threshold"),
                n_boot=ctx.n_boot, progress=False,
                scores_out=run.folder / SCORES,  # per-frame scores: paired comparisons need them
            )
            write_metrics(run.folder, metrics.to_dict("records"),
                          selection.get("step") or run.steps)
            latency = measured_latency(classifier, cfg, ctx.processes)
            run_dir = (storage.upload_folder(run.folder,
                                             storage.join(ctx.runs_location, run.folder.name))
                       if remote else str(run.folder.resolve()))
        finally:
            if local_runs is not None:
                shutil.rmtree(local_runs, ignore_errors=True)
            if resume is not None and resume != self.retry_state:
                shutil.rmtree(resume.parent, ignore_errors=True)
        return {
            **base, "status": "finished", "ended": _now(), "run_dir": run_dir,
            "wall_s": run.wall_s, "train_steps": run.steps, "step_time_s": run.step_time_s,
            "params_trainable": run.params_trainable, "params_inference": run.params_inference,
            "peak_mem_mb": run.peak_mem_mb, "val_auc": selection.get("val_auc"),
            "train_gflops": self._gflops(cfg), "latency_ms": latency,
            "metrics": [*selection_rows(cfg, selection), *metrics.to_dict("records")],
            "curves": run.curves, "resumed_from_step": resumed_step,
        }

    def _gflops(self, cfg) -> float | None:  # noqa: ANN001
        """FLOPs of one training step (GFLOPs), counted once per trial on fake tensors; None,
        with a warning, where the recipe cannot be built on them (a plugin's encoder)."""
        if not hasattr(self, "gflops"):
            # lazy: loads torch only when called
            from ablate.bench.cost import train_gflops

            try:
                self.gflops = train_gflops(cfg.copy())
            except Exception as err:  # noqa: BLE001 - a cost is not worth the trial
                log.warning("train_gflops not counted for %s: %s", self.name, err)
                self.gflops = None
        return self.gflops

    def _resume_state(self, key: str, identity: str, seed: int) -> Path | None:
        """The latest checkpoint of this seed: Tune's own (a retried trial) or the DB's
        (a resumed sweep); None to start at step 0."""
        if self.retry_state is not None and _matches(self.retry_state, identity, seed):
            return self.retry_state
        folder = Path(tempfile.mkdtemp(prefix="ablate-resume-")) / "state"
        uri = self.context.checkpoints.get(key)
        if uri and storage.exists(uri):
            storage.download_folder(uri, folder)
            if _matches(folder, identity, seed):
                return folder
        shutil.rmtree(folder.parent, ignore_errors=True)
        return None


def _planned(cfg, shared: int = 0) -> int:  # noqa: ANN001
    """The evaluations a trial numbers its rungs against: its own count, capped by the count
    the driver set ASHA's max_t from (`shared`). Once a trial's own count exceeds that (its
    manifest was built after the driver counted, or it has a smaller batch), a rung at or
    past max_t would make ASHA stop it; past the cap every rung is 0, which ASHA ignores."""
    own = planned_evaluations(cfg.train, training_batches(cfg)[0])
    return min(own, shared) if shared else own


def _rung(index: int, planned: int) -> int:
    """ASHA's clock for the `index`-th evaluation of the rung seed: the index, except for the
    last planned evaluation (0): the final report carries that one, and pruning a fully
    trained trial would throw its result away."""
    return index if index < planned else 0


def _write_meta(folder: Path, **meta: Any) -> None:
    (folder / STATE_FILE).write_text(json.dumps(meta, default=_jsonable))


def _read_meta(folder: Path) -> dict:
    path = folder / STATE_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def _tune_checkpoint() -> tuple[Path | None, dict[int, dict]]:
    """This trial's last Tune checkpoint, when Tune retries it: (its folder, or None;
    the seed results it had reported, by seed)."""
    from ray import tune

    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        return None, {}
    folder = Path(tempfile.mkdtemp(prefix="ablate-retry-")) / "state"
    checkpoint.to_directory(str(folder))
    done = {int(r["seed"]): {**r, "status": "done"} for r in _read_meta(folder).get("done", [])}
    return folder, done


def _matches(folder: Path, identity: str, seed: int) -> bool:
    info = _read_meta(folder)
    return info.get("identity") == identity and info.get("seed") == seed


def _resumed(state: Path | None) -> tuple[int | None, int]:
    """(step, evaluations so far) of a trial checkpoint; (None, 0) without one."""
    if state is None or "step" not in _read_meta(state):
        return None, 0
    step = int(_read_meta(state)["step"])
    curves = json.loads((state / "state.json").read_text()).get("curves", [])
    return step, sum(1 for c in curves if c[1] == VAL_CURVE)


def _stored(row: dict) -> dict:
    """The result fields of a stored seed (what reuse copies and summaries read)."""
    keep = ("run_dir", *COST_FIELDS, "val_auc", "metrics", "curves", "error", "code_version")
    return {k: row.get(k) for k in keep if k in row}


def measured_latency(classifier, cfg, processes: int = 1) -> float | None:  # noqa: ANN001
    """The classifier's latency at batch 1 (ms) on the recipe's training device; None, with
    a warning, where it cannot be measured there: a data-parallel trial holds no device of
    its own (its processes do), and a failed measurement is not worth a trained seed."""
    # lazy: loads torch only when called
    from ablate.bench.cost import latency_ms
    from ablate.device import pick_device

    if processes > 1:
        log.warning("latency_ms not measured: a data-parallel trial's device is its processes'")
        return None
    try:
        device = pick_device(str(cfg.train.device))
        return latency_ms(classifier.to(device), int(cfg.image_size), device)
    except Exception as err:  # noqa: BLE001 - a cost is not worth the trained seed
        log.warning("latency_ms not measured: %s", err)
        return None


def selection_rows(cfg: Any, selection: dict) -> list[dict]:
    """The metric rows of the kept step's selection: its source val AUC (with the training
    data's protocol, for the report), then the proxy's when one was scored."""
    # lazy: the data layer loads pandas
    from ablate.data.protocol import source_protocol

    val_row = {"dataset": str(cfg.data.train), "split": "val", "level": "frame",
               "metric": "auc", "value": selection.get("val_auc"), "ci_low": None,
               "ci_high": None, "n": selection.get("n_frames"), "protocol": source_protocol(cfg)}
    return [val_row, *proxy_row(selection)]


def proxy_row(selection: dict) -> list[dict]:
    """The metric row of the proxy's val AUC at the kept step (split `proxy`, which readers
    of source val and test rows pass over); none when no proxy was scored."""
    if selection.get("proxy_auc") is None:
        return []
    return [{"dataset": selection.get("proxy") or "proxy", "split": PROXY_SPLIT,
             "level": "frame", "metric": "auc", "value": selection["proxy_auc"],
             "ci_low": None, "ci_high": None, "n": selection.get("proxy_frames")}]


def selection_auc(seed_result: dict) -> float | None:
    """The AUC a seed's kept checkpoint was chosen by: its proxy row under
    train.select=proxy (read off its recipe), else its source val AUC (under `last`, the
    final step's). What ASHA saw, a `select_auc` objective and the confirmation rank by."""
    if signal_split(seed_result.get("recipe") or {}) != PROXY_SPLIT:
        return seed_result.get("val_auc")
    found = [m.get("value") for m in seed_result.get("metrics") or []
             if m.get("split") == PROXY_SPLIT and m.get("level") == "frame"
             and m.get("metric") == "auc"]
    return found[0] if found else None


def summarise(seed_results: list[dict]) -> dict[str, float]:
    """Objective values of one configuration: means over its seeds that produced numbers."""

    def values(key: str) -> list[float]:
        out = []
        for r in seed_results:
            v = r.get(key)
            if v is not None and not (isinstance(v, float) and math.isnan(v)):
                out.append(float(v))
        return out

    summary: dict[str, float] = {}
    for key in REPORT_METRICS:
        if key in ("test_auc_mean", "select_auc"):
            continue
        vals = values(key)
        summary[key] = sum(vals) / len(vals) if vals else float("nan")
    chosen = [float(v) for v in map(selection_auc, seed_results)
              if v is not None and not (isinstance(v, float) and math.isnan(v))]
    summary["select_auc"] = sum(chosen) / len(chosen) if chosen else float("nan")
    tests = [m["value"] for r in seed_results for m in r.get("metrics") or []
             if m.get("split") == "test" and m.get("level") == "frame"
             and m.get("metric") == "auc" and m.get("value") is not None
             and not is_part(m.get("dataset", ""))]
    summary["test_auc_mean"] = sum(tests) / len(tests) if tests else float("nan")
    return summary


def _now() -> str:
    return datetime.now(UTC).isoformat()


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    return str(value)
