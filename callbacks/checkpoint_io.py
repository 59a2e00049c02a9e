"""Checkpoints written atomically and read safely.

Saving writes ``<name>.tmp`` beside the target, flushes it to disk and renames it over the target, so
an interrupted save leaves the previous checkpoint intact. Loading uses ``weights_only=True`` and turns
a truncated or foreign file into one clear error naming it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO


class AtomicCheckpointIO(TorchCheckpointIO):
    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as f:
            torch.save(checkpoint, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    def load_checkpoint(self, path: str | Path, map_location: Any = None, weights_only: bool | None = None) -> dict:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint not found: {path}")
        try:
            checkpoint = torch.load(path, map_location=map_location or "cpu", weights_only=True)
        except Exception as e:  # torch raises several kinds for truncated / non-checkpoint files
            raise ValueError(f"cannot read checkpoint {path}: it is corrupt, truncated or not a torch checkpoint "
                             f"({type(e).__name__}: {str(e).splitlines()[0][:200]})") from None
        if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
            raise ValueError(f"{path} is not a Lightning checkpoint (no 'state_dict')")
        checkpoint["steerzoo_path"] = str(path)
        return checkpoint


class RunCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` whose ``dirpath`` defaults to ``<trainer.default_root_dir>/checkpoints``: a fixed
    place per run (``--ckpt_path last`` finds it in a new process) that follows ``default_root_dir``.

    Configs write ``best`` with ``save_weights_only: true`` (weights and steerzoo's state, no optimizer: what
    ``validate`` / ``test`` / ``predict`` need) and ``last`` with everything a resume needs."""

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self.dirpath is None:
            self.dirpath = str(Path(trainer.default_root_dir) / "checkpoints")
        super().setup(trainer, pl_module, stage)


class LastCheckpoint(RunCheckpoint):
    """``RunCheckpoint`` for ``last.ckpt`` that also saves when ``fit`` ends.

    Lightning's own callback refreshes ``last.ckpt`` only on its schedule (every N steps or epochs), so a
    run of 24 steps saved every 10 would leave step 20 behind: ``predict --ckpt_path last.ckpt`` would use
    stale weights and a resume would redo four steps. This one writes the final state too.
    """

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Lightning skips the epoch-end save when the epoch's last batch was just saved (same global step). That
        # batch's checkpoint precedes the epoch's validation and its end: resumed from it, Lightning restarts the
        # finished epoch with no batch left and carries its batch count into the next epoch, which then stops
        # early when it holds more batches (an online method's growing pool). The epoch-end state replaces it.
        self._saved_last_now = False
        super().on_train_epoch_end(trainer, pl_module)
        if (self.save_last and not self._saved_last_now and self._should_save_on_train_epoch_end(trainer)
                and not trainer.fast_dev_run and not trainer.sanity_checking):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def _save_last_checkpoint(self, trainer: pl.Trainer, monitor_candidates: dict[str, Any]) -> None:
        super()._save_last_checkpoint(trainer, monitor_candidates)
        self._saved_last_now = True

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_end(trainer, pl_module)
        if self.save_last and not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
