"""3 steps + resume + 3 steps gives the same losses as 6 straight steps (fp32 CPU, 1e-6) for every method,
across an epoch boundary (and MEET's phase switch) with the resumed run continuing mid-epoch. The CLI version,
killed mid-epoch and at an epoch boundary and comparing every logged value, is ``tests/test_resume_cli.py``."""

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from tests.factories import METHODS, LossRecorder, hh_sample, tiny_kwargs, trainer


class StopAt(L.Callback):
    """Simulates an interrupted run: the same config (max_steps=6, so the same LR schedule) stops early."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step >= self.step:
            trainer.should_stop = True


def run(tmp_path, name, stop_at=None, ckpt_path=None):
    cls, extra, data = METHODS[name]
    L.seed_everything(0)
    rec = LossRecorder()
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, every_n_train_steps=1, save_top_k=-1)
    t = trainer(tmp_path, 6, callbacks=[rec, ckpt] + ([StopAt(stop_at)] if stop_at else []))
    module = cls(**{**tiny_kwargs(optim={"lr": 1e-3, "scheduler": "linear", "warmup_steps": 2}), **extra})
    # 16 train examples / batch 4 = 4 batches per epoch: 6 steps cross an epoch, step 3 is mid-epoch
    t.fit(module, datamodule=hh_sample(train=16, **data), ckpt_path=ckpt_path)
    return rec.losses, t


@pytest.mark.parametrize("name", list(METHODS))
def test_resume_continues_exactly(tmp_cwd, name):
    straight, _ = run(tmp_cwd / "a", name)
    first, _ = run(tmp_cwd / "b", name, stop_at=3)
    resumed, t = run(tmp_cwd / "b", name, ckpt_path=str(tmp_cwd / "b" / "ckpt" / "last.ckpt"))
    assert len(straight) == 6 and len(first) == 3 and len(resumed) == 3
    assert t.global_step == 6
    torch.testing.assert_close(torch.tensor(first + resumed), torch.tensor(straight), rtol=0, atol=1e-6)
    # the steps really differ from each other (a constant loss would pass trivially)
    assert len({round(x, 6) for x in straight}) > 3
