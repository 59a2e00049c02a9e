"""After one optimizer step every trainable parameter has changed and every frozen one is bit-identical, for
every method (full fine-tuning and LoRA). LoRA runs two steps: its B matrices start at zero (the standard
init), which leaves A without gradient on the first step; so do CMPO's low-rank heads (B_j = 0 at start)."""

import pytest
import torch

from tests.factories import LORA, METHODS, hh_sample, tiny_kwargs, trainer

# MEET configures its LoRA controls itself (model.control) and refuses backbone.lora
CASES = [pytest.param(name, bb, id=f"{name}-{bid}") for name in METHODS for bb, bid in ((None, "full"), (LORA, "lora"))
         if not (name.startswith("MEET") and bb is not None)]


@pytest.mark.parametrize("name,backbone", CASES)
def test_one_step_changes_exactly_the_trainable_parameters(tmp_cwd, name, backbone):
    cls, extra, data = METHODS[name]
    if cls.__name__ == "MEET":  # its step 2 (LM and controls); step 1 freezing the LM is tested in test_meet
        extra = {**extra, "phases": {"first_epochs": 0, "second_epochs": 1}}
    kwargs = {**tiny_kwargs(optim={"lr": 1e-2}), **extra}
    if backbone is not None:
        kwargs["backbone"] = backbone
    module = cls(**kwargs)
    module.configure_model()
    before = {n: p.detach().clone() for n, p in module.named_parameters()}
    trainable = {n for n, p in module.named_parameters() if p.requires_grad}
    assert trainable and (backbone is None or len(trainable) < len(before))
    # zero-initialised B matrices (LoRA, low-rank heads) leave A without gradient on the very first step
    steps = 1 if backbone is None and "lowrank" not in name else 2
    trainer(tmp_cwd, max_steps=steps).fit(module, datamodule=hh_sample(train=8, **data))
    after = dict(module.named_parameters())
    unchanged = [n for n in trainable if torch.equal(before[n], after[n])]
    assert not unchanged, f"trainable parameters that did not change: {unchanged}"
    moved = [n for n in set(before) - trainable if not torch.equal(before[n], after[n])]
    assert not moved, f"frozen parameters that changed: {moved}"
