"""A DataLoader that resumes mid-epoch exactly where a run stopped.

The order of epoch e is a permutation seeded by (seed, e), the same in every run; each rank takes a
strided shard of it (we shard ourselves, so the CLI sets ``use_distributed_sampler: false``).
Lightning saves the loader's ``state_dict`` in each checkpoint and hands it back on resume; how many
batches of the epoch were already trained on comes from Lightning's own progress counter (its
prefetcher reads one batch ahead, so counting what the sampler yielded would be off by one), and the
first resumed epoch skips exactly those.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from torch.utils.data import DataLoader, Dataset, Sampler


class ResumableSampler(Sampler[int]):
    """Seeded per-epoch order, sharded by rank, that can skip the examples of already-trained batches."""

    def __init__(self, num_examples: int, shuffle: bool = True, seed: int = 0, rank: int = 0, world_size: int = 1):
        self.num_examples, self.shuffle, self.seed = num_examples, shuffle, seed
        self.rank, self.world_size = rank, world_size
        self.epoch = 0
        self.skip = 0  # examples to skip at the start of the next iteration (resume)

    def set_epoch(self, epoch: int) -> None:  # Lightning calls this at every epoch start
        self.epoch = epoch

    def __len__(self) -> int:
        return -(-self.num_examples // self.world_size)

    def __iter__(self) -> Iterator[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            order = torch.randperm(self.num_examples, generator=g).tolist()
        else:
            order = list(range(self.num_examples))
        total = len(self) * self.world_size
        order = (order * (total // max(len(order), 1) + 1))[:total]  # pad by wrapping, like DistributedSampler
        skip, self.skip = self.skip, 0
        yield from order[self.rank :: self.world_size][skip:]


class ResumableDataLoader(DataLoader):
    """DataLoader over a ``ResumableSampler`` that Lightning recognises as stateful."""

    def __init__(
        self,
        dataset: Dataset,
        sampler: ResumableSampler,
        batch_size: int,
        progress: Callable[[], int] | None = None,
        **kwargs,
    ):
        super().__init__(dataset, sampler=sampler, batch_size=batch_size, **kwargs)
        self._progress = progress  # -> batches of the current epoch already trained on

    def state_dict(self) -> dict[str, int]:
        s: ResumableSampler = self.sampler
        return {"epoch": s.epoch, "seed": s.seed, "num_examples": s.num_examples, "world_size": s.world_size,
                "batch_size": self.batch_size}

    def load_state_dict(self, state: dict[str, int]) -> None:
        s: ResumableSampler = self.sampler
        mine = self.state_dict()
        for key in ("seed", "num_examples", "world_size", "batch_size"):
            if state.get(key) != mine[key]:
                raise ValueError(
                    f"cannot resume the data order: the checkpoint's train loader had {key}={state.get(key)}, "
                    f"this run has {mine[key]} (the same data, seed, batch size and world size are needed)"
                )
        s.epoch = state["epoch"]
        done = self._progress() if self._progress is not None else 0
        s.skip = done * self.batch_size if done < len(self) else 0
