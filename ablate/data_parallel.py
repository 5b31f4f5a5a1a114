"""`train.processes=N`: start the N processes of one data-parallel run as Ray Train
workers (`TorchTrainer`: gloo on CPUs, NCCL on GPUs), one GPU each where there are GPUs.

Each worker runs the usual `ablate.train.train` on its shard (`ablate.sharding` holds
the arithmetic); process 0's validations and its RunResult come back to the launching
process, which is the `ablate train` command or a sweep's Tune trial.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ablate.core.errors import AblateError, first_line
from ablate.device import pick_device
from ablate.sharding import check_split, current_shard
from ablate.sweep.cluster import connect_ray

RESULT = "run_result.json"  # process 0's RunResult, in the checkpoint it reports


def train_parallel(cfg: Any, processes: int,
                   on_checkpoint: Callable[[int, float, Path], None] | None = None,
                   resume_from: str | Path | None = None,
                   cpus_per_process: float = 1, gpus_per_process: float | None = None,
                   same_node: bool = False, progress: bool = False) -> Any:
    """Train `cfg` on `processes` Ray Train workers; returns process 0's RunResult.

    As `ablate.train.train`: `on_checkpoint(step, val_auc, state_dir)` is called here, in
    this process, after each of process 0's validations (a sweep trial reports it to Tune),
    and `resume_from` (a saved state folder) continues a run: it travels to the workers
    through Ray's object store, so they need not share this machine's disk. `same_node`
    keeps the workers on this process's machine (a sweep trial reads the run folder that
    process 0 writes; one trial spans the GPUs of one machine). `gpus_per_process` None:
    one each when `train.device` is (or `auto` finds) cuda here, else none. `progress`: a
    bar here, fed by process 0's steps.
    """
    import tempfile
    import threading

    import ray
    from omegaconf import OmegaConf
    from ray.train import CheckpointConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer
    from ray.util.queue import Queue
    from tqdm.auto import tqdm

    check_split(int(cfg.train.batch_size), processes)  # before any process starts
    if gpus_per_process is None:
        gpus_per_process = 1.0 if pick_device(cfg.train.device).type == "cuda" else 0.0
    gpu = gpus_per_process > 0
    if gpu and str(cfg.train.device) == "cpu":
        raise AblateError("train.device=cpu, but this run's processes were given GPUs; "
                          "set train.device=cuda (or auto), or run without GPUs")
    if not ray.is_initialized():  # the cluster $RAY_ADDRESS names, else a Ray of our own
        connect_ray(None, num_cpus=max(processes, os.cpu_count() or 1))
    # no CPU of their own: inside a Tune trial they would have to fit the trial's own bundle
    # ("eval", metrics, state path) from Ray Train's controller, ("step", step, steps, loss
    # terms) from process 0, None last
    events: Queue | None = (Queue(actor_options={"num_cpus": 0})
                            if on_checkpoint is not None or progress else None)
    stop = Queue(actor_options={"num_cpus": 0})  # non-empty: the launcher gave up on the run
    config = {"cfg": OmegaConf.to_container(cfg, resolve=True),
              "report_evals": on_checkpoint is not None,
              "steps": events if progress else None,
              "resume": _pack(Path(resume_from)) if resume_from else None,
              "cwd": os.getcwd()}  # relative recipe paths mean the launcher's
    per_worker = {"CPU": cpus_per_process, **({"GPU": gpus_per_process} if gpu else {})}
    if same_node:  # Ray gives every node a resource named after its address
        _check_node_fits(processes, per_worker)
        per_worker[f"node:{ray.util.get_node_ip_address()}"] = 0.001
    with tempfile.TemporaryDirectory(prefix="ablate-ddp-") as storage:
        trainer = TorchTrainer(
            _worker, train_loop_config=config,
            scaling_config=ScalingConfig(num_workers=processes, use_gpu=gpu,
                                         resources_per_worker=per_worker),
            torch_config=TorchConfig(backend="nccl" if gpu else "gloo"),
            run_config=RunConfig(
                storage_path=storage, name="ablate-train",
                # each state is copied out as it arrives: two on disk at most
                checkpoint_config=CheckpointConfig(num_to_keep=2),
                callbacks=[_forwarder(events if on_checkpoint is not None else None, stop)]),
        )
        outcome: dict[str, Any] = {}

        def fit() -> None:
            try:
                outcome["result"] = trainer.fit()
            except Exception as err:  # noqa: BLE001 - Ray wraps the worker's error
                outcome["error"] = err
            finally:
                if events is not None:
                    events.put(None)  # no more events

        runner = threading.Thread(target=fit, name="ablate-ddp", daemon=True)
        runner.start()
        bar = tqdm(desc=f"train ({processes} processes)", unit="step", disable=not progress)
        try:  # this thread calls on_checkpoint: a Tune trial reports from its own thread
            while events is not None and (item := events.get()) is not None:
                if item[0] == "step":
                    _, step, steps, terms = item
                    if bar.total is None:  # the first message; a resumed run starts past 0
                        bar.reset(total=steps)
                        bar.initial = bar.n = step - 1
                    bar.set_postfix({k: f"{v:.3f}" for k, v in terms.items()}, refresh=False)
                    bar.update(step - bar.n)
                    continue
                _, metrics, path = item
                with tempfile.TemporaryDirectory(prefix="ablate-ddp-state-") as copy:
                    state = ray.train.Checkpoint(path).to_directory(str(Path(copy) / "state"))
                    on_checkpoint(int(metrics["step"]), float(metrics["val_auc"]), Path(state))
        except BaseException:  # e.g. Tune stopping the trial: the workers stop at their next report
            stop.put(True)
            if on_checkpoint is not None:  # (a Ctrl-C at `ablate train` ends them with Ray)
                runner.join(timeout=600)
            raise
        finally:
            bar.close()
        runner.join()
        if "error" in outcome:
            raise AblateError(f"data-parallel training failed: {_worker_error(outcome['error'])}")
        return _run_result(outcome["result"].checkpoint)  # before the storage folder goes


def _forwarder(queue: Any, stop: Any) -> Any:
    """A Ray Train callback (it runs beside the workers, in Ray Train's controller) that hands
    each validation's metrics and checkpoint path to the launching process through `queue`
    (None: not wanted), and ends the run at its next report once `stop` is not empty."""
    from ray.train import UserCallback

    class Forward(UserCallback):
        def after_report(self, run_context: Any, metrics: list[dict], checkpoint: Any) -> None:
            if not stop.empty():
                raise RuntimeError("ablate: the launching process stopped this run")
            if queue is not None and checkpoint is not None and "val_auc" in metrics[0]:
                queue.put(("eval", dict(metrics[0]), checkpoint.path))

    return Forward()


def _worker_error(err: BaseException) -> str:
    """The first line of what went wrong in a worker (Ray's own wrapper says only that
    workers failed), e.g. a recipe's one-line AblateError."""
    failures = getattr(err, "worker_failures", None) or {}
    for failure in failures.values():
        cause = failure
        while getattr(cause, "cause", None) is not None:
            cause = cause.cause
        return first_line(cause)
    return first_line(err)


def _check_node_fits(processes: int, per_worker: dict[str, float]) -> None:
    """One line, not a trial that waits forever, when this machine cannot hold the workers
    (a trial placed on a node without the GPUs its processes need)."""
    import ray

    here = ray.util.get_node_ip_address()
    node = next((n for n in ray.nodes() if n.get("Alive") and n.get("NodeManagerAddress") == here),
                None)
    if node is None:
        return
    have = node.get("Resources", {})
    for kind in ("CPU", "GPU"):
        need = per_worker.get(kind, 0) * processes
        if need > have.get(kind, 0) + 1e-9:
            raise AblateError(f"this trial's {processes} processes need {need:g} {kind} on one "
                              f"machine, but its machine ({here}) has {have.get(kind, 0):g}; "
                              "give the space fewer resources per trial, or run it where a "
                              "machine is that large")


def _worker(config: dict) -> None:
    """One Ray Train worker: the usual `train`, on this worker's shard. Process 0 reports its
    validations (with the training state) and, last, its RunResult as checkpoints (Ray Train
    keeps no metrics without one); the others report alongside, as Ray Train requires."""
    import json
    import tempfile

    import ray.train
    import ray.train.torch
    import torch
    from omegaconf import OmegaConf

    # lazy: loads diffusers and safetensors only when called
    from ablate.train import train

    if config.get("cwd") and os.path.isdir(config["cwd"]):
        os.chdir(config["cwd"])  # Ray starts its workers in a folder of its own
    cfg = OmegaConf.create(config["cfg"])
    shard = current_shard()
    lead = shard is None or shard.rank == 0
    if torch.cuda.is_available() and ray.train.torch.get_device().type == "cuda":
        # "cuda" is this worker's own GPU (Ray shows a node's workers all of its GPUs)
        torch.cuda.set_device(ray.train.torch.get_device())
    hooks: dict[str, Any] = {}
    if config.get("report_evals"):
        if lead:
            def report_eval(step: int, val_auc: float, folder: Path) -> None:
                ray.train.report({"step": step, "val_auc": val_auc},
                                 checkpoint=ray.train.Checkpoint.from_directory(str(folder)))

            hooks["on_checkpoint"] = report_eval
        else:
            hooks["on_follow"] = lambda step: ray.train.report({"step": step})
    if lead and config.get("steps") is not None:
        hooks["on_step"] = _step_reporter(config["steps"])
    with tempfile.TemporaryDirectory(prefix="ablate-ddp-resume-") as resume:
        if config.get("resume"):
            hooks["resume_from"] = _unpack(config["resume"], Path(resume) / "state")
        result = train(cfg, progress=False, shard=shard, **hooks)
    with tempfile.TemporaryDirectory(prefix="ablate-ddp-result-") as folder:
        checkpoint = None
        if lead:
            run = {**result.__dict__, "folder": str(result.folder)}
            (Path(folder) / RESULT).write_text(json.dumps(run))
            checkpoint = ray.train.Checkpoint.from_directory(folder)
        ray.train.report({"steps": result.steps}, checkpoint=checkpoint)


def _step_reporter(queue: Any, every_s: float = 0.5) -> Callable[[int, int, dict], None]:
    """`on_step` for process 0: its step count to the launcher's bar, at most one message per
    `every_s` seconds (each is a call to the queue's actor) and always the last step."""
    import time

    last = [0.0]

    def report(step: int, steps: int, terms: dict[str, float]) -> None:
        now = time.monotonic()
        if now - last[0] >= every_s or step == steps:
            last[0] = now
            queue.put(("step", step, steps, dict(terms)))

    return report


def _pack(folder: Path) -> dict[str, bytes]:
    """A (flat) state folder as {file name: bytes}."""
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


def _unpack(files: dict[str, bytes], folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return folder


def _run_result(checkpoint: Any) -> Any:
    """Process 0's RunResult from the checkpoint it reported."""
    import json
    import tempfile

    # lazy: loads diffusers and safetensors only when called
    from ablate.train import RunResult

    if checkpoint is None:
        raise AblateError("data-parallel training ended without process 0's result; "
                          "see the Ray worker logs above")
    with tempfile.TemporaryDirectory(prefix="ablate-ddp-result-") as folder:
        values = json.loads((Path(checkpoint.to_directory(folder)) / RESULT).read_text())
    values["folder"] = Path(values["folder"])
    values["curves"] = [tuple(c) for c in values["curves"]]
    return RunResult(**values)
