"""last.ckpt holds the final state of a fit, not only the last multiple of its saving interval."""

import torch

from callbacks.checkpoint_io import LastCheckpoint
from lightning_modules import SFT
from tests.factories import hh_sample, tiny_kwargs, trainer


def test_last_checkpoint_is_written_when_fit_ends(tmp_cwd):
    ckpt = LastCheckpoint(dirpath=tmp_cwd / "ckpt", save_top_k=0, save_last=True, every_n_train_steps=3)
    t = trainer(tmp_cwd, 5, callbacks=[ckpt])
    t.fit(SFT(**tiny_kwargs()), datamodule=hh_sample(train=16))
    state = torch.load(tmp_cwd / "ckpt" / "last.ckpt", weights_only=True)
    assert t.global_step == 5 and state["global_step"] == 5  # Lightning's ModelCheckpoint would stop at 3
    # the saved weights are the final ones
    final = {k: v for k, v in t.lightning_module.state_dict().items()}
    for k, v in state["state_dict"].items():
        assert torch.equal(v, final[k]), k
