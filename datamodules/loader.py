"""A data order that resumes mid-epoch exactly where a run stopped.

The order of epoch e is a permutation seeded by (seed, e), the same in every run; each rank takes a
strided shard of it (we shard ourselves, so the CLI sets ``use_distributed_sampler: false``).

Where a run stopped is part of the *DataModule's* checkpoint state (``RecordDataModule.state_dict``:
epoch, batches already trained on, and what the order depends on), not of the loader's. Lightning restores
a DataModule's state whenever it restores a checkpoint, however early the train loader was built (a
scheduler that asks ``trainer.estimated_stepping_batches`` builds it before the restore, and Lightning then
never hands a *loader* its saved state: a resumed run silently replayed the epoch from its first batch).
The DataModule hands the position to the sampler (``resume``), which applies it to the first iteration of
that epoch.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader, Sampler


class ResumableSampler(Sampler[int]):
    """Seeded per-epoch order, sharded by rank, that can skip the examples of already-trained batches."""

    def __init__(self, num_examples: int, shuffle: bool = True, seed: int = 0, rank: int = 0, world_size: int = 1):
        self.num_examples, self.shuffle, self.seed = num_examples, shuffle, seed
        self.rank, self.world_size = rank, world_size
        self.epoch = 0
        self._resume: tuple[int, int] | None = None  # (epoch, examples of this rank to skip) for the next iteration

    def set_epoch(self, epoch: int) -> None:  # Lightning calls this at every epoch start
        self.epoch = epoch

    def resume(self, epoch: int, skip: int) -> None:
        """The next iteration, if it is of ``epoch``, starts ``skip`` examples into this rank's order."""
        self._resume = (epoch, skip)

    def __len__(self) -> int:
        return -(-self.num_examples // self.world_size)

    def order(self, epoch: int) -> list[int]:
        """This rank's example indices for ``epoch``, from the start."""
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            order = torch.randperm(self.num_examples, generator=g).tolist()
        else:
            order = list(range(self.num_examples))
        total = len(self) * self.world_size
        order = (order * (total // max(len(order), 1) + 1))[:total]  # pad by wrapping, like DistributedSampler
        return order[self.rank :: self.world_size]

    def __iter__(self) -> Iterator[int]:
        resume, self._resume = self._resume, None
        skip = resume[1] if resume is not None and resume[0] == self.epoch else 0
        yield from self.order(self.epoch)[skip:]


class ResumableDataLoader(DataLoader):
    """A DataLoader over a ``ResumableSampler``. Its position is restored through the DataModule's state (see
    the module docstring); the empty ``state_dict`` / ``load_state_dict`` only tell Lightning that the loader
    resumes mid-epoch (otherwise it warns that it does not)."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass
