"""A DPO run on builtin:tiny whose per-step *global* loss (mean over all processes) is written to a JSON
file; run it with 1 or 2 CPU processes under any strategy. Lightning's launcher re-runs this script
for the other ranks.

    python tests/multiproc/dpo_trace.py OUT_DIR --strategy fsdp --devices 2 --batch 4 [--stop_at 3]
        [--resume] [--steps 6]
"""

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import lightning as L  # noqa: E402
import torch  # noqa: E402
from lightning.pytorch.callbacks import ModelCheckpoint  # noqa: E402
from lightning.pytorch.strategies import DDPStrategy  # noqa: E402

from callbacks.checkpoint_io import AtomicCheckpointIO  # noqa: E402
from callbacks.strategies import ShardedStrategy  # noqa: E402
from lightning_modules import DPO  # noqa: E402
from tests.factories import hh_sample, tiny_kwargs  # noqa: E402


class GlobalLossTrace(L.Callback):
    def __init__(self, path: Path, stop_at: int | None):
        self.path, self.stop_at = path, stop_at

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        loss = trainer.strategy.reduce(outputs["loss"].detach(), reduce_op="mean")
        if trainer.is_global_zero:
            trace = json.loads(self.path.read_text()) if self.path.exists() else []
            trace.append([trainer.global_step, float(loss)])
            self.path.write_text(json.dumps(trace))
        if self.stop_at is not None and trainer.global_step >= self.stop_at:
            trainer.should_stop = True


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out", type=Path)
    ap.add_argument("--strategy", choices=["single", "ddp", "fsdp"], default="single")
    ap.add_argument("--devices", type=int, default=1)
    ap.add_argument("--batch", type=int, default=8, help="per-process batch")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--stop_at", type=int)
    ap.add_argument("--resume", action="store_true")
    a = ap.parse_args()
    torch.set_num_threads(1)
    L.seed_everything(0)
    a.out.mkdir(parents=True, exist_ok=True)
    ckpt_dir = a.out / "ckpt"
    strategy = {
        "single": "auto",
        "ddp": DDPStrategy(process_group_backend="gloo", checkpoint_io=AtomicCheckpointIO()),
        "fsdp": ShardedStrategy(data_parallel_size=a.devices, tensor_parallel_size=1),
    }[a.strategy]
    trainer = L.Trainer(
        accelerator="cpu", devices=a.devices, strategy=strategy, max_steps=a.steps, precision="32-true",
        logger=False, enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
        use_distributed_sampler=False, default_root_dir=str(a.out), deterministic=True,
        plugins=[AtomicCheckpointIO()] if a.strategy == "single" else None,
        callbacks=[GlobalLossTrace(a.out / "trace.json", a.stop_at),
                   ModelCheckpoint(dirpath=ckpt_dir, save_last=True, every_n_train_steps=1, save_top_k=0)],
    )
    module = DPO(**tiny_kwargs(optim={"lr": 1e-3}, sharding={"param_dtype": "float32"}), ref_cache_dir=None)
    ckpt = str(ckpt_dir / "last.ckpt") if a.resume else None
    data = hh_sample(train=32, batch_size=a.batch).attach(module.example_builder())
    trainer.fit(module, datamodule=data, ckpt_path=ckpt)
    # the trained module's logits on a fixed input (every rank runs the forward: FSDP gathers collectively)
    probe = torch.arange(40).reshape(2, 20) % 250
    with torch.no_grad():
        logits = module.model(input_ids=probe, attention_mask=torch.ones_like(probe)).logits
    if trainer.is_global_zero:
        torch.save(logits.full_tensor() if hasattr(logits, "full_tensor") else logits, a.out / "final_logits.pt")


if __name__ == "__main__":
    main()
