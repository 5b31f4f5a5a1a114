"""A training loader whose every epoch is a function of (seed, epoch) alone.

A resumed run must see exactly the batches an uninterrupted run sees after the
resume point, without loading the ones it skips. torch's `RandomSampler` chains
its shuffles through one generator (epoch e's order depends on every earlier
draw), so here each epoch draws its permutation, and the base seed of its
DataLoader workers, from a generator seeded by (seed, epoch): `seek(batches)`
then moves to any batch of any epoch by slicing that epoch's index list.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader, Dataset, Sampler


def epoch_seed(seed: int, epoch: int, stream: str) -> int:
    """A well-mixed 63-bit seed for one epoch's `stream` ("order" or "workers")."""
    digest = hashlib.sha256(f"{seed}:{epoch}:{stream}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


class EpochSampler(Sampler[int]):
    """Indices of epoch `epoch` (a fresh permutation per epoch when shuffling), from
    position `start` on; both are set by `ResumableLoader` before each pass."""

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

    def __iter__(self) -> Iterator[int]:
        return iter(self.order(self.epoch)[self.start:])

    def __len__(self) -> int:
        return self.n  # a whole epoch: len(loader) stays the batches per epoch after a seek


class ResumableLoader(DataLoader):
    """A DataLoader over `EpochSampler`: each `iter()` is the next epoch, and `seek`
    positions the next pass at any batch of any epoch (a resumed run).

    Workers (`num_workers` > 0) get a base seed drawn from (seed, epoch), so an epoch
    restarted at its first batch sees the same worker RNG streams as before.
    """

    def __init__(self, dataset: Dataset, batch_size: int, shuffle: bool, seed: int = 0,
                 drop_last: bool = False, num_workers: int = 0, **kwargs) -> None:  # noqa: ANN003
        sampler = EpochSampler(len(dataset), seed, shuffle)  # type: ignore[arg-type]
        super().__init__(dataset, batch_size=batch_size, sampler=sampler, drop_last=drop_last,
                         num_workers=num_workers, generator=torch.Generator(), **kwargs)
        self.seed = seed
        self.next_epoch, self.next_batch = 0, 0

    def seek(self, batches_done: int) -> None:
        """The next pass starts after `batches_done` batches counted from epoch 0's first.

        Nothing is loaded for the skipped batches: the sampler's index list is sliced.
        """
        per_epoch = max(len(self), 1)
        self.next_epoch, self.next_batch = divmod(batches_done, per_epoch)

    def __iter__(self):  # noqa: ANN204
        epoch, batch = self.next_epoch, self.next_batch
        self.sampler.epoch, self.sampler.start = epoch, batch * self.batch_size
        # the workers' base seed is drawn from this generator when the iterator is made
        self.generator.manual_seed(epoch_seed(self.seed, epoch, "workers"))
        self.next_epoch, self.next_batch = epoch + 1, 0
        return super().__iter__()
