"""Users' artifacts: predictions as JSONL, and the trained model as an HF ``save_pretrained`` directory."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import BasePredictionWriter


class JsonlPredictionWriter(BasePredictionWriter):
    """Writes every prediction row (a dict) of ``predict`` to ``output_path``, one JSON object per line.

    Rows are written in dataset order after the epoch; each process writes its own file when sharded.
    """

    def __init__(self, output_path: str = "outputs/predictions.jsonl"):
        super().__init__(write_interval="epoch")
        self.output_path = Path(output_path)

    def write_on_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, predictions: Any,
                           batch_indices: Any) -> None:
        path = self.output_path
        if trainer.world_size > 1:
            path = path.with_name(f"{path.stem}.rank{trainer.global_rank}{path.suffix}")
        path.parent.mkdir(parents=True, exist_ok=True)
        rows = [row for batch in predictions for row in batch]
        rows.sort(key=lambda r: (r.get("idx", 0), r.get("sample", 0)))
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "w") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        tmp.replace(path)
        print(f"wrote {len(rows)} predictions to {path}")


class SavePretrained(L.Callback):
    """At the end of ``fit``, writes ``pl_module.save_pretrained(dirpath)`` (default: ``<log_dir>/hf``)."""

    def __init__(self, dirpath: str | None = None):
        self.dirpath = dirpath

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero or not hasattr(pl_module, "save_pretrained"):
            return
        path = Path(self.dirpath or Path(trainer.log_dir or "outputs") / "hf")
        pl_module.save_pretrained(path)
        print(f"saved the trained model to {path}")


def load_checkpoint_state(path: str | Path) -> dict[str, Any]:
    """A checkpoint as one dict: a file (``weights_only=True``) or a sharded (distributed) checkpoint
    directory written by ``ModelParallelStrategy``, consolidated in memory."""

    path = Path(path)
    if path.is_dir():
        from lightning.fabric.utilities.load import _load_distributed_checkpoint

        return _load_distributed_checkpoint(path)  # the Trainer's sharded format already has 'state_dict'
    from callbacks.checkpoint_io import AtomicCheckpointIO

    return AtomicCheckpointIO().load_checkpoint(path)


def export_pretrained(module: L.LightningModule, ckpt_path: str | Path, out_dir: str | Path) -> Path:
    """Load a (possibly sharded) checkpoint into an unsharded ``module`` and write its ``save_pretrained``
    directory: plain transformers (or PEFT adapter files) load it without steerzoo."""
    module.configure_model()
    state = load_checkpoint_state(ckpt_path)
    missing, unexpected = module.load_state_dict(state["state_dict"], strict=False)
    if missing or unexpected:
        raise ValueError(f"{ckpt_path} does not fit {type(module).__name__}: missing {missing[:3]}, "
                         f"unexpected {unexpected[:3]}")
    return module.save_pretrained(out_dir)
