"""FSDP2 for steerzoo: Lightning's ``ModelParallelStrategy`` with atomic sharded checkpoints.

Sharding itself happens in each module's ``configure_model`` (``lightning_modules.base``); this class
only makes a sharded save atomic: every rank writes its shard into ``<name>.tmp``, then rank 0 swaps
the finished directory in, so an interrupted save never leaves a half-written ``last.ckpt``.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from lightning.pytorch.strategies import ModelParallelStrategy


class ShardedStrategy(ModelParallelStrategy):
    def save_checkpoint(self, checkpoint: dict[str, Any], filepath: str | Path, storage_options: Any = None) -> None:
        if not self._save_distributed_checkpoint:
            return super().save_checkpoint(checkpoint, filepath, storage_options)
        path = Path(filepath)
        tmp, old = path.with_name(path.name + ".tmp"), path.with_name(path.name + ".old")
        if self.is_global_zero and tmp.exists():
            shutil.rmtree(tmp)  # left by an interrupted save
        self.barrier("steerzoo_save_start")
        super().save_checkpoint(checkpoint, tmp, storage_options)
        self.barrier("steerzoo_save_written")
        if self.is_global_zero:
            if path.exists():
                path.rename(old)  # a crash here leaves both .old and .tmp complete: nothing is lost
            tmp.rename(path)
            shutil.rmtree(old, ignore_errors=True)
        self.barrier("steerzoo_save_done")
