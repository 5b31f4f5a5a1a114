"""One run on several processes (`train.processes=N`): data parallelism that computes what one
process computes on the same global batch.

Every process holds the whole detector (same seed, same initial weights) and trains on its
slice of each global batch (`ShardedBatches`); after `backward` the gradients are averaged
across processes (what DDP's all-reduce does), so every process takes the same optimiser
step. The random draws of a guided step (posterior samples, noise, timesteps) are made for
the whole global batch on every process, from the same generator state, and each keeps its
rows: a process's samples get the noise they would get in a one-process run. What differs is
float summation order, and BatchNorm: on a GPU it is synchronised (SyncBatchNorm, statistics
over the global batch); on a CPU it cannot be, so its statistics are per process.

Process 0 alone evaluates on the source's validation split, selects the checkpoint and
writes the run folder: selection and metrics are computed once per run, not per process.

The processes are Ray Train's workers (`TorchTrainer`: gloo on CPUs, NCCL on GPUs), so a run
spans the GPUs of one machine or of a Ray cluster alike.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Sampler

from ablate.errors import AblateError

log = logging.getLogger(__name__)

RESULT = "run_result.json"  # process 0's RunResult, in the checkpoint it reports


@dataclass(frozen=True)
class Shard:
    """This process's place among `world` data-parallel processes."""

    rank: int
    world: int

    def rows(self, local: int) -> slice:
        """The rows of a global batch of `world * local` this process trains on."""
        return slice(self.rank * local, (self.rank + 1) * local)

    def randn(self, shape: tuple[int, ...], generator: torch.Generator | None,
              device: torch.device, dtype: torch.dtype, groups: int = 1) -> Tensor:
        """This process's rows of one global draw. `shape[0]` = groups x local rows, laid out
        group after group (e.g. sources then targets), as the one-process draw is."""
        from diffusers.utils.torch_utils import randn_tensor

        local = shape[0] // groups
        full = randn_tensor((groups * self.world * local, *shape[1:]), generator=generator,
                            device=device, dtype=dtype)  # [groups * world * local, ...]
        full = full.unflatten(0, (groups, self.world * local))
        return full[:, self.rows(local)].flatten(0, 1)  # [groups * local, ...]

    def timesteps(self, teacher: Any, local: int, generator: torch.Generator | None,
                  device: torch.device, latent_size: tuple[int, int]) -> Tensor:
        """This process's rows of the global batch's timesteps [local]."""
        drawn = teacher.sample_timesteps(self.world * local, generator, device, latent_size)
        return drawn[self.rows(local)]


class ShardedBatches(Sampler[list]):
    """Global batches of the wrapped sampler's keys, cut to this process's slice: process r
    of N takes keys [r * b, (r + 1) * b) of each global batch of N * b."""

    def __init__(self, sampler: Sampler, global_batch: int, drop_last: bool,
                 shard: Shard) -> None:
        if global_batch % shard.world:
            raise AblateError(f"train.batch_size {global_batch} does not split over "
                              f"train.processes={shard.world}; make it a multiple of it")
        self.sampler, self.global_batch, self.drop_last = sampler, global_batch, drop_last
        self.shard, self.local = shard, global_batch // shard.world

    def __iter__(self) -> Iterator[list]:
        batch: list = []
        for key in self.sampler:
            batch.append(key)
            if len(batch) == self.global_batch:
                yield batch[self.shard.rows(self.local)]
                batch = []
        if batch and not self.drop_last:
            # a short last batch: split as evenly as it goes (it is not used for training)
            yield batch[self.shard.rank::self.shard.world]

    def __len__(self) -> int:
        n = len(self.sampler)  # type: ignore[arg-type]
        return n // self.global_batch if self.drop_last else -(-n // self.global_batch)


def current_shard() -> Shard | None:
    """This process's shard when a process group of more than one is running, else None."""
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_initialized() or dist.get_world_size() < 2:
        return None
    return Shard(dist.get_rank(), dist.get_world_size())


def average_gradients(params: list[torch.nn.Parameter], world: int) -> None:
    """Each gradient becomes its mean over the processes: one all-reduce of all of them
    flattened together (DDP's buckets, in one)."""
    import torch.distributed as dist

    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= world
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()


def average_terms(terms: dict[str, float], world: int,
                  device: torch.device | str = "cpu") -> dict[str, float]:
    """Loss terms as means over the global batch (each process's are means over its slice);
    on the training device, as NCCL reduces GPU tensors only."""
    import torch.distributed as dist

    values = torch.tensor(list(terms.values()), dtype=torch.float64, device=device)
    dist.all_reduce(values)
    return dict(zip(terms, (values / world).tolist(), strict=True))


def same_start(module: torch.nn.Module) -> None:
    """Process 0's trainable weights everywhere (they match already when every process
    seeded alike; this makes it so whatever built them)."""
    import torch.distributed as dist

    for param in module.parameters():
        if param.requires_grad:
            dist.broadcast(param.data, src=0)


def sync_batch_norm(module: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """BatchNorm over the global batch where torch can (GPUs); said once where it cannot."""
    has_bn = any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in module.modules())
    if not has_bn:
        return module
    if device.type == "cuda":
        return torch.nn.SyncBatchNorm.convert_sync_batchnorm(module)
    log.warning("BatchNorm statistics are per process on a %s (SyncBatchNorm needs GPUs): "
                "results match a one-process run only approximately", device.type)
    return module


# --- the launcher: Ray Train's TorchTrainer ---------------------------------------------------


def train_parallel(cfg: Any, processes: int, progress: bool = True,
                   on_checkpoint: Callable[[int, float, Path], None] | None = None,
                   resume_from: str | Path | None = None,
                   cpus_per_process: float = 1, gpus_per_process: float | None = None,
                   same_node: bool = False) -> Any:
    """Train `cfg` on `processes` Ray Train workers; returns process 0's RunResult.

    As `ablate.train.train`: `on_checkpoint(step, val_auc, state_dir)` is called here, in
    this process, after each of process 0's validations (a sweep trial reports it to Tune),
    and `resume_from` (a saved state folder) continues a run: it travels to the workers
    through Ray's object store, so they need not share this machine's disk. `same_node`
    keeps the workers on this process's machine (a sweep trial reads the run folder that
    process 0 writes; one trial spans the GPUs of one machine). `gpus_per_process` None:
    one each when `train.device` is (or `auto` finds) cuda here, else none.
    """
    import tempfile
    import threading

    import ray
    from omegaconf import OmegaConf
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer
    from ray.util.queue import Queue

    from ablate.device import pick_device

    if gpus_per_process is None:
        gpus_per_process = 1.0 if pick_device(cfg.train.device).type == "cuda" else 0.0
    gpu = gpus_per_process > 0
    if not ray.is_initialized():
        address = os.environ.get("RAY_ADDRESS")
        if address:  # the cluster RAY_ADDRESS names: its GPUs, on any of its machines
            ray.init(address=address, log_to_driver=progress)
        else:  # a Ray of our own (never one another program left running), a CPU per process
            ray.init(address="local", num_cpus=max(processes, os.cpu_count() or 1),
                     include_dashboard=False, log_to_driver=progress)
    # no CPU of its own: inside a Tune trial it would have to fit the trial's own bundle
    evaluations: Queue | None = (Queue(actor_options={"num_cpus": 0})
                                 if on_checkpoint is not None else None)
    config = {"cfg": OmegaConf.to_container(cfg, resolve=True), "report_evals": evaluations
              is not None, "resume": _pack(Path(resume_from)) if resume_from else None}
    per_worker = {"CPU": cpus_per_process, **({"GPU": gpus_per_process} if gpu else {})}
    if same_node:  # Ray gives every node a resource named after its address
        per_worker[f"node:{ray.util.get_node_ip_address()}"] = 0.001
    with tempfile.TemporaryDirectory(prefix="ablate-ddp-") as storage:
        trainer = TorchTrainer(
            _worker, train_loop_config=config,
            scaling_config=ScalingConfig(num_workers=processes, use_gpu=gpu,
                                         resources_per_worker=per_worker),
            torch_config=TorchConfig(backend="nccl" if gpu else "gloo"),
            run_config=RunConfig(storage_path=storage, name="ablate-train",
                                 callbacks=None if evaluations is None else [_forwarder(evaluations)]),
        )
        outcome: dict[str, Any] = {}

        def fit() -> None:
            try:
                outcome["result"] = trainer.fit()
            except Exception as err:  # noqa: BLE001 - Ray wraps the worker's error
                outcome["error"] = err
            finally:
                if evaluations is not None:
                    evaluations.put(None)  # no more evaluations

        runner = threading.Thread(target=fit, name="ablate-ddp", daemon=True)
        runner.start()
        # this thread calls on_checkpoint: a Tune trial reports from its own thread
        while evaluations is not None and (item := evaluations.get()) is not None:
            metrics, path = item
            with tempfile.TemporaryDirectory(prefix="ablate-ddp-state-") as copy:
                state = ray.train.Checkpoint(path).to_directory(str(Path(copy) / "state"))
                on_checkpoint(int(metrics["step"]), float(metrics["val_auc"]), Path(state))
        runner.join()
        if "error" in outcome:
            from ablate.errors import first_line

            raise AblateError(f"data-parallel training failed: {first_line(outcome['error'])}")
        return _run_result(outcome["result"].checkpoint)  # before the storage folder goes


def _forwarder(queue: Any) -> Any:
    """A Ray Train callback (it runs beside the workers, in Ray Train's controller) that hands
    each validation's metrics and checkpoint path to the launching process through `queue`."""
    from ray.train import UserCallback

    class Forward(UserCallback):
        def after_report(self, run_context: Any, metrics: list[dict], checkpoint: Any) -> None:
            if checkpoint is not None and "val_auc" in metrics[0]:
                queue.put((dict(metrics[0]), checkpoint.path))

    return Forward()


def _worker(config: dict) -> None:
    """One Ray Train worker: the usual `train`, on this worker's shard. Process 0 reports its
    validations (with the training state) and, last, its RunResult as checkpoints (Ray Train
    keeps no metrics without one); the others report alongside, as Ray Train requires."""
    import json
    import tempfile

    import ray.train
    from omegaconf import OmegaConf

    from ablate.train import train

    cfg = OmegaConf.create(config["cfg"])
    shard = current_shard()
    lead = shard is None or shard.rank == 0
    hooks: dict[str, Any] = {}
    if config.get("report_evals"):
        if lead:
            def report_eval(step: int, val_auc: float, folder: Path) -> None:
                ray.train.report({"step": step, "val_auc": val_auc},
                                 checkpoint=ray.train.Checkpoint.from_directory(str(folder)))

            hooks["on_checkpoint"] = report_eval
        else:
            hooks["on_follow"] = lambda step: ray.train.report({"step": step})
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

    from ablate.train import RunResult

    if checkpoint is None:
        raise AblateError("data-parallel training ended without process 0's result; "
                          "see the Ray worker logs above")
    with tempfile.TemporaryDirectory(prefix="ablate-ddp-result-") as folder:
        values = json.loads((Path(checkpoint.to_directory(folder)) / RESULT).read_text())
    values["folder"] = Path(values["folder"])
    values["curves"] = [tuple(c) for c in values["curves"]]
    return RunResult(**values)
