"""Users' artifacts: predictions as JSONL, and the trained model as an HF ``save_pretrained`` directory."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import BasePredictionWriter


class JsonlPredictionWriter(BasePredictionWriter):
    """Writes every prediction row (a dict) of ``predict`` to a JSON Lines file, one object per line, and a
    ``<name>.meta.json`` beside it naming the checkpoint, the model, its steering and sampling settings.

    Nothing is overwritten: by default each run writes a new ``<default_root_dir>/predictions/predict-<time>.jsonl``;
    a named ``output_path`` that exists is refused unless ``overwrite`` (CLI ``--overwrite``). Rows are written
    in dataset order after the epoch; each process writes its own file when sharded.
    """

    def __init__(self, output_path: str | None = None, overwrite: bool = False):
        super().__init__(write_interval="epoch")
        self.output_path = Path(output_path) if output_path is not None else None
        self.overwrite = overwrite
        self.written: Path | None = None

    def resolve_path(self, trainer: L.Trainer) -> Path:
        if self.output_path is not None:
            path = self.output_path
        else:
            stamp = time.strftime("%Y%m%d-%H%M%S")
            path = Path(trainer.default_root_dir) / "predictions" / f"predict-{stamp}.jsonl"
            k = 1
            while path.exists():  # two runs in the same second
                k += 1
                path = path.with_name(f"predict-{stamp}-{k}.jsonl")
        if trainer.world_size > 1:
            path = path.with_name(f"{path.stem}.rank{trainer.global_rank}{path.suffix}")
        if path.exists() and not self.overwrite:
            raise FileExistsError(f"{path} exists: predict never replaces an earlier run's predictions; choose "
                                  "another output_path or pass --overwrite")
        return path

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "predict":
            self.written = self.resolve_path(trainer)  # refuse before generating anything

    def write_on_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, predictions: Any,
                           batch_indices: Any) -> None:
        path = self.written or self.resolve_path(trainer)
        path.parent.mkdir(parents=True, exist_ok=True)
        rows = [row for batch in predictions for row in batch]
        rows.sort(key=lambda r: (r.get("idx", 0), r.get("sample", 0)))
        atomic_write(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
        hp = dict(getattr(pl_module, "hparams", {}))
        meta = {
            "predictions": path.name,
            "rows": len(rows),
            "ckpt_path": str(trainer.ckpt_path) if trainer.ckpt_path else None,
            "model": hp.get("_class_path", type(pl_module).__name__),
            "backbone": hp.get("backbone", {}).get("name_or_path"),
            "steer": rows[0].get("steer") if rows else None,
            "sampling": hp.get("sampling"),
            "command": sys.argv,
            "written": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
        atomic_write(path.with_name(path.stem + ".meta.json"), json.dumps(meta, indent=2, default=str) + "\n")
        print(f"wrote {len(rows)} predictions to {path}")


def atomic_write(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename: never a half-written file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


class SavePretrained(L.Callback):
    """At the end of ``fit``, writes ``pl_module.save_pretrained(dirpath)`` (default: ``<log_dir>/hf``; a relative
    ``dirpath`` lies under ``trainer.default_root_dir``, e.g. ``hf`` -> ``runs/reward_model/hf``)."""

    def __init__(self, dirpath: str | None = None):
        self.dirpath = dirpath
        self.written: Path | None = None

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # trainer.log_dir broadcasts from rank 0: every rank must ask, before the others return
        if self.dirpath is None:
            path = Path(trainer.log_dir or trainer.default_root_dir) / "hf"
        else:
            path = Path(trainer.default_root_dir) / self.dirpath  # an absolute dirpath stays as it is
        if not trainer.is_global_zero or not hasattr(pl_module, "save_pretrained"):
            return
        pl_module.save_pretrained(path)
        self.written = path
        print(f"saved the trained model to {path}")

    def written_paths(self) -> list[tuple[str, Path]]:
        """What this run wrote, for ``callbacks.summary.RunSummary``."""
        return [("hf/ (save_pretrained)", self.written)] if self.written else []


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
