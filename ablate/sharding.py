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

This module is the arithmetic of it; `ablate.data_parallel` starts the processes (Ray
Train's workers: gloo on CPUs, NCCL on GPUs).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Sampler

from ablate.core.errors import AblateError

log = logging.getLogger(__name__)



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
                  device: torch.device, latent_size: tuple[int, int],
                  t_range: tuple[float, float] = (0.0, 1.0)) -> Tensor:
        """This process's rows of the global batch's timesteps [local], drawn within the
        recipe's `t_range` (`train.t_min`, `train.t_max`; the default: the whole schedule)."""
        drawn = teacher.sample_timesteps(self.world * local, generator, device, latent_size,
                                         t_range)
        return drawn[self.rows(local)]


class ShardedBatches(Sampler[list]):
    """Global batches of the wrapped sampler's keys, cut to this process's slice: process r
    of N takes keys [r * b, (r + 1) * b) of each global batch of N * b."""

    def __init__(self, sampler: Sampler, global_batch: int, drop_last: bool,
                 shard: Shard) -> None:
        check_split(global_batch, shard.world)
        self.sampler, self.global_batch, self.drop_last = sampler, global_batch, drop_last
        self.shard, self.local = shard, global_batch // shard.world

    def __iter__(self) -> Iterator[list]:
        batch: list = []
        for key in self.sampler:
            batch.append(key)
            if len(batch) == self.global_batch:
                yield batch[self.shard.rows(self.local)]
                batch = []
        if batch and not self.drop_last:  # a training set smaller than one global batch
            raise AblateError(
                f"the training set has {len(batch)} frames, fewer than one global batch of "
                f"{self.global_batch}: the {self.shard.world} processes cannot split it "
                "evenly; lower train.batch_size or train.processes")

    def __len__(self) -> int:
        n = len(self.sampler)  # type: ignore[arg-type]
        return n // self.global_batch if self.drop_last else -(-n // self.global_batch)


def check_split(global_batch: int, world: int) -> None:
    """Every process takes an equal slice of each global batch, or the means part ways."""
    if global_batch % world:
        raise AblateError(f"train.batch_size {global_batch} does not split over {world} "
                          f"processes; make it a multiple of {world}")


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
    if device.type == "cuda":  # timm's conversion keeps BatchNormAct2d's activation; torch's drops it
        from timm.layers import convert_sync_batchnorm

        return convert_sync_batchnorm(module)
    log.warning("BatchNorm statistics are per process on a %s (SyncBatchNorm needs GPUs): "
                "results match a one-process run only approximately", device.type)
    return module
