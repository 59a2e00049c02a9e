"""After one optimizer step every trainable parameter has changed and every frozen one is
bit-identical (full fine-tuning and LoRA; SFT, DPO and the reward model). LoRA runs two steps: its B
matrices start at zero (the standard init), which leaves A without gradient on the first step."""

import pytest
import torch

from lightning_modules import DPO, SFT, RewardModel
from tests.factories import hh_sample, tiny_kwargs, trainer

LORA = {"name_or_path": "builtin:tiny", "lora": {"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]}}


@pytest.mark.parametrize("module_cls", [SFT, DPO, RewardModel])
@pytest.mark.parametrize("backbone", [None, LORA], ids=["full", "lora"])
def test_one_step_changes_exactly_the_trainable_parameters(tmp_cwd, module_cls, backbone):
    kwargs = tiny_kwargs(optim={"lr": 1e-2})
    if backbone is not None:
        kwargs["backbone"] = backbone
    module = module_cls(**kwargs)
    module.configure_model()
    before = {n: p.detach().clone() for n, p in module.named_parameters()}
    trainable = {n for n, p in module.named_parameters() if p.requires_grad}
    assert trainable and (backbone is None or len(trainable) < len(before))
    # LoRA's B starts at zero, so A has no gradient on the very first step: LoRA gets a second step
    steps = 1 if backbone is None else 2
    trainer(tmp_cwd, max_steps=steps).fit(module, datamodule=hh_sample(train=8))
    after = dict(module.named_parameters())
    unchanged = [n for n in trainable if torch.equal(before[n], after[n])]
    assert not unchanged, f"trainable parameters that did not change: {unchanged}"
    moved = [n for n in set(before) - trainable if not torch.equal(before[n], after[n])]
    assert not moved, f"frozen parameters that changed: {moved}"
