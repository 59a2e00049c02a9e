"""Checkpoints written atomically and read safely.

Saving writes ``<name>.tmp`` beside the target, flushes it to disk and renames it over the target, so
an interrupted save leaves the previous checkpoint intact. Loading uses ``weights_only=True`` and turns
a truncated or foreign file into one clear error naming it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
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
