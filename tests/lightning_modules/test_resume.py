"""3 steps + resume + 3 steps gives the same losses as 6 straight steps (fp32 CPU, 1e-6), across an
epoch boundary and with the resumed run continuing mid-epoch."""

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from lightning_modules import DPO, SFT
from tests.factories import LossRecorder, hh_sample, tiny_kwargs, trainer


def run(tmp_path, module_cls, steps, ckpt_path=None, **module_kwargs):
    L.seed_everything(0)
    rec = LossRecorder()
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, every_n_train_steps=1, save_top_k=-1)
    t = trainer(tmp_path, steps, callbacks=[rec, ckpt])
    # 16 train examples / batch 4 = 4 batches per epoch: 6 steps cross an epoch, step 3 is mid-epoch
    t.fit(module_cls(**tiny_kwargs(optim={"lr": 1e-3, "scheduler": "linear", "warmup_steps": 2}), **module_kwargs),
          datamodule=hh_sample(train=16), ckpt_path=ckpt_path)
    return rec.losses, t


@pytest.mark.parametrize("module_cls", [DPO, SFT])
def test_resume_continues_exactly(tmp_cwd, module_cls):
    straight, _ = run(tmp_cwd / "a", module_cls, 6)
    first, _ = run(tmp_cwd / "b", module_cls, 3)
    resumed, t = run(tmp_cwd / "b", module_cls, 6, ckpt_path=str(tmp_cwd / "b" / "ckpt" / "last.ckpt"))
    assert len(straight) == 6 and len(first) == 3 and len(resumed) == 3
    assert t.global_step == 6
    torch.testing.assert_close(torch.tensor(first + resumed), torch.tensor(straight), rtol=0, atol=1e-6)
    # the steps really differ from each other (a constant loss would pass trivially)
    assert len({round(x, 6) for x in straight}) > 3
