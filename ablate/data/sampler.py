"""A training loader whose every epoch is a function of (seed, epoch) alone.

A resumed run must see exactly the batches an uninterrupted run sees after the
resume point, without loading the ones it skips. torch's `RandomSampler` chains
its shuffles through one generator (epoch e's order depends on every earlier
draw), so here each epoch draws its permutation, and the base seed of its
DataLoader workers, from a generator seeded by (seed, epoch): `seek(batches)`
then moves to any batch of any epoch by slicing that epoch's index list.

Each index comes with its own augmentation seed, a function of (seed, epoch, index): a
frame is augmented the same way whichever process loads it, so a loader with workers
yields exactly the batches a loader without them yields (and a resumed run, too).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import TYPE_CHECKING

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ablate.sharding import ShardedBatches

if TYPE_CHECKING:
    from ablate.sharding import Shard


def epoch_seed(seed: int, epoch: int, stream: str) -> int:
    """A well-mixed 63-bit seed for one epoch's `stream` ("order" or "workers")."""
    digest = hashlib.sha256(f"{seed}:{epoch}:{stream}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def item_seed(seed: int, epoch: int, index: int) -> int:
    """The augmentation seed of frame `index` in `epoch`: 8 mixed bytes, no torch state."""
    digest = hashlib.blake2b(f"{seed}:{epoch}:{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


class EpochSampler(Sampler[tuple[int, int]]):
    """(index, item seed) keys of epoch `epoch` (a fresh permutation per epoch when
    shuffling), from position `start` on; both are set by `ResumableLoader` before each
    pass. `ManifestDataset` takes such a key and seeds the item's augmentation with it."""

    def __init__(self, n: int, seed: int, shuffle: bool = True) -> None:
        self.n, self.seed, self.shuffle = n, seed, shuffle
        self.epoch = 0
        self.start = 0

    def order(self, epoch: int) -> list[int]:
        """All n indices of `epoch`, in the order that epoch visits them."""
        if not self.shuffle:
            return list(range(self.n))
        generator = torch.Generator().manual_seed(epoch_seed(self.seed, epoch, "order"))
        return torch.randperm(self.n, generator=generator).tolist()  # [n]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch = self.epoch
        return ((i, item_seed(self.seed, epoch, i)) for i in self.order(epoch)[self.start:])

    def __len__(self) -> int:
        return self.n  # a whole epoch: len(loader) stays the batches per epoch after a seek


class ResumableLoader(DataLoader):
    """A DataLoader over `EpochSampler`: each `iter()` is the next epoch, and `seek`
    positions the next pass at any batch of any epoch (a resumed run).

    Workers (`num_workers` > 0) get a base seed drawn from (seed, epoch), so an epoch
    restarted at its first batch sees the same worker RNG streams as before (the items'
    augmentations do not depend on them: each key carries its own seed).
    """

    def __init__(self, dataset: Dataset, batch_size: int, shuffle: bool, seed: int = 0,
                 drop_last: bool = False, num_workers: int = 0,
                 shard: Shard | None = None, **kwargs) -> None:  # noqa: ANN003
        sampler = EpochSampler(len(dataset), seed, shuffle)  # type: ignore[arg-type]
        if num_workers:
            kwargs.setdefault("worker_init_fn", one_thread)
        if shard is None:
            kwargs.update(batch_size=batch_size, sampler=sampler, drop_last=drop_last)
        else:  # this process's slice of each global batch of `batch_size`

            kwargs["batch_sampler"] = ShardedBatches(sampler, batch_size, drop_last, shard)
        super().__init__(dataset, num_workers=num_workers, generator=torch.Generator(),
                         **kwargs)
        # DataLoader keeps its own `sampler` attribute (a default one under a batch_sampler)
        self.seed, self.global_batch, self.epochs = seed, batch_size, sampler
        self.next_epoch, self.next_batch = 0, 0

    def seek(self, batches_done: int) -> None:
        """The next pass starts after `batches_done` batches counted from epoch 0's first.

        Nothing is loaded for the skipped batches: the sampler's index list is sliced.
        """
        per_epoch = max(len(self), 1)
        self.next_epoch, self.next_batch = divmod(batches_done, per_epoch)

    def __iter__(self):  # noqa: ANN204
        epoch, batch = self.next_epoch, self.next_batch
        self.epochs.epoch, self.epochs.start = epoch, batch * self.global_batch
        # the workers' base seed is drawn from this generator when the iterator is made
        self.generator.manual_seed(epoch_seed(self.seed, epoch, "workers"))
        self.next_epoch, self.next_batch = epoch + 1, 0
        return super().__iter__()


def one_thread(worker_id: int) -> None:
    """A loader worker augments one frame at a time: torch's thread pool in each of them
    would only fight the training process for cores."""
    torch.set_num_threads(1)
