"""A DataLoader that resumes mid-epoch exactly where a run stopped.

The order of epoch e is a permutation seeded by (seed, e), so it is the same in every run; each rank
takes a strided shard of it (we shard ourselves, so set ``use_distributed_sampler: false``; the CLI
does). Lightning saves the loader's ``state_dict`` in each checkpoint and hands it back on resume; the
number of batches already consumed comes from Lightning's own progress counter (the prefetcher reads
one batch ahead, so the sampler's own count would be off by one), and the first resumed epoch skips
exactly those batches.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from torch.utils.data import DataLoader, Dataset, Sampler


class ResumableBatchSampler(Sampler[list[int]]):
    def __init__(
        self,
        num_examples: int,
        batch_size: int,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
        rank: int = 0,
        world_size: int = 1,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.num_examples, self.batch_size, self.shuffle, self.seed = num_examples, batch_size, shuffle, seed
        self.drop_last, self.rank, self.world_size = drop_last, rank, world_size
        self.epoch = 0
        self.skip = 0  # batches to skip at the start of the next iteration (resume)

    def set_epoch(self, epoch: int) -> None:  # Lightning calls this at each epoch start
        self.epoch = epoch

    def _order(self) -> list[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            order = torch.randperm(self.num_examples, generator=g).tolist()
        else:
            order = list(range(self.num_examples))
        # every rank gets the same number of examples (wrap around, like DistributedSampler)
        per_rank = -(-self.num_examples // self.world_size)
        order = (order * (1 + per_rank * self.world_size // max(len(order), 1)))[: per_rank * self.world_size]
        return order[self.rank :: self.world_size]

    def _batches(self) -> list[list[int]]:
        order = self._order()
        batches = [order[i : i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        if self.drop_last and batches and len(batches[-1]) < self.batch_size:
            batches.pop()
        return batches

    def __len__(self) -> int:
        return len(self._batches())

    def __iter__(self) -> Iterator[list[int]]:
        skip, self.skip = self.skip, 0
        yield from self._batches()[skip:]


class ResumableDataLoader(DataLoader):
    """DataLoader over a ``ResumableBatchSampler`` that Lightning recognises as stateful."""

    def __init__(self, dataset: Dataset, batch_sampler: ResumableBatchSampler, progress: Callable[[], int] | None = None,
                 **kwargs):
        super().__init__(dataset, batch_sampler=batch_sampler, **kwargs)
        self._progress = progress  # -> batches of the current epoch the trainer has completed

    def state_dict(self) -> dict[str, int]:
        s: ResumableBatchSampler = self.batch_sampler
        return {"epoch": s.epoch, "seed": s.seed, "num_examples": s.num_examples, "world_size": s.world_size}

    def load_state_dict(self, state: dict[str, int]) -> None:
        s: ResumableBatchSampler = self.batch_sampler
        for key in ("seed", "num_examples", "world_size"):
            if state.get(key) != getattr(s, key):
                raise ValueError(
                    f"cannot resume the data order: the checkpoint's loader had {key}={state.get(key)}, "
                    f"this run has {getattr(s, key)} (same data, seed and world size are needed to continue exactly)"
                )
        s.epoch = state["epoch"]
        done = self._progress() if self._progress is not None else 0
        s.skip = done if done < len(s) else 0
