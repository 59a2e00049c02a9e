"""QLoRA on CPU: bitsandbytes 4-bit (nf4, double quantization) and 8-bit base weights with LoRA, for SFT,
DPO and the reward model, configured through ``backbone.quantization`` + ``backbone.lora``.

After two optimizer steps every LoRA parameter has changed (B starts at zero, so A only moves on the
second step) and everything else is bit-identical: the packed 4-bit / int8 base weights and their
quantization constants (compared as raw bytes), norms, embeddings, the LM head.

The gradients through the quantized base equal a float model's holding the dequantized weights, also
after an eval-mode no-grad forward (DPO's reference pass): on CPUs with AVX512-BF16, bitsandbytes would
otherwise repack 4-bit weights for inference there (absmax rounded to bf16) and route later training
forwards through a kernel without autograd, silently dropping gradients through the base layers
(``zoo.backbone.load_backbone`` turns that path off).

bitsandbytes needs a saved model (``from_pretrained`` quantizes while loading), so the tiny test model is
written to a temporary directory first.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lightning_modules import DPO, SFT, RewardModel
from tests.factories import hh_sample, tiny_kwargs, trainer
from zoo.backbone import BackboneConfig, LoraSettings, load_backbone

bnb = pytest.importorskip("bitsandbytes")

LORA = {"r": 4, "alpha": 8, "target_modules": "all-linear"}


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    """The seeded tiny Llama and its byte tokenizer as an ordinary HF directory."""
    from zoo.tiny import tiny_model, tiny_tokenizer

    path = tmp_path_factory.mktemp("tiny-hf")
    tiny_model().save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    return path


def _raw(t: torch.Tensor) -> torch.Tensor:
    """A tensor's bytes (any dtype, packed 4-bit included): equal bytes <=> bit-identical."""
    return t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).clone()


def _scales(layer: torch.nn.Module) -> torch.Tensor:
    """An 8-bit layer's fp32 row scales (int8 weight x scale / 127 = the weight)."""
    return layer.weight.SCB if layer.weight.SCB is not None else layer.state.SCB


def _snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Raw bytes of every parameter and buffer, plus the 4-bit layers' quantization state
    (absmax and, with double quantization, its own absmax/code), which live outside parameters."""
    snap = {f"param:{n}": _raw(p) for n, p in module.named_parameters()}
    snap.update({f"buffer:{n}": _raw(b) for n, b in module.named_buffers()})
    for name, mod in module.named_modules():
        if isinstance(mod, bnb.nn.Linear8bitLt):  # row scales: on the weight until the first forward moves them
            snap[f"quant:{name}.SCB"] = _raw(_scales(mod))
        if not isinstance(mod, bnb.nn.Linear4bit):
            continue
        state = mod.weight.quant_state
        snap[f"quant:{name}.absmax"] = _raw(state.absmax)
        if state.state2 is not None:  # double quantization: absmax is itself quantized
            snap[f"quant:{name}.absmax2"] = _raw(state.state2.absmax)
            snap[f"quant:{name}.code2"] = _raw(state.state2.code)
    return snap


@pytest.mark.parametrize("quantization", ["4bit", "8bit"])
@pytest.mark.parametrize("module_cls", [SFT, DPO, RewardModel])
def test_qlora_steps_change_only_the_adapters(tmp_cwd, tiny_dir, module_cls, quantization):
    backbone = {"name_or_path": str(tiny_dir), "quantization": quantization, "lora": dict(LORA)}
    module = module_cls(**tiny_kwargs(backbone=backbone, optim={"lr": 1e-2}))
    module.configure_model()

    # the base linear layers really are bitsandbytes layers, each wrapped by a LoRA layer
    # (isinstance, not the class name: PEFT's LoRA wrappers are also called Linear4bit / Linear8bitLt)
    layer_cls = bnb.nn.Linear4bit if quantization == "4bit" else bnb.nn.Linear8bitLt
    quant_layers = [n for n, m in module.named_modules() if isinstance(m, layer_cls)]
    assert len(quant_layers) == 7 * 2, quant_layers  # q, k, v, o, gate, up, down x 2 decoder layers
    assert all(n.endswith(".base_layer") for n in quant_layers)
    if quantization == "4bit":
        weight = module.get_submodule(quant_layers[0]).weight
        assert isinstance(weight, bnb.nn.Params4bit) and weight.dtype == torch.uint8
        assert weight.quant_state.quant_type == "nf4"
    else:
        assert module.get_submodule(quant_layers[0]).weight.dtype == torch.int8

    trainable = {f"param:{n}" for n, p in module.named_parameters() if p.requires_grad}
    lora = {n for n in trainable if ".lora_" in n}
    extra = {n for n in trainable if "value_head" in n}  # the reward model's head trains too
    assert lora and trainable == lora | extra, sorted(trainable - lora - extra)
    before = _snapshot(module)

    # LoRA B starts at zero, so A gets no gradient on the first step: two steps move both
    trainer(tmp_cwd, max_steps=2).fit(module, datamodule=hh_sample(train=8))

    after = _snapshot(module)
    assert set(after) == set(before)
    unchanged = sorted(n for n in trainable if torch.equal(before[n], after[n]))
    assert not unchanged, f"trainable parameters that did not change: {unchanged}"
    moved = sorted(n for n in set(before) - trainable if not torch.equal(before[n], after[n]))
    assert not moved, f"frozen parameters or quantization state that changed: {moved}"


@pytest.mark.parametrize("checkpointing", [False, True], ids=["", "checkpointing"])
@pytest.mark.parametrize("quantization", ["4bit", "8bit"])
def test_qlora_gradients_equal_the_dequantized_float_model(tiny_dir, quantization, checkpointing):
    """LoRA gradients through the quantized base equal those of a float model holding the dequantized
    weights, also after an eval-mode no-grad forward (what DPO's reference pass does first): bnb's CPU
    inference path would repack 4-bit weights there and drop gradients through them afterwards."""
    lora = LoraSettings(r=4, alpha=8)
    qlora = load_backbone(BackboneConfig(name_or_path=str(tiny_dir), quantization=quantization, lora=lora,
                                         gradient_checkpointing=checkpointing))
    plain = load_backbone(BackboneConfig(name_or_path=str(tiny_dir), lora=lora))
    gen = torch.Generator().manual_seed(0)
    for (name, p), (_, p_plain) in zip(qlora.named_parameters(), plain.named_parameters()):
        if ".lora_" in name:  # non-zero B, so every adapter gets a gradient on the first backward
            with torch.no_grad():
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
                p_plain.copy_(p)
    float_layers = dict(plain.named_modules())
    for name, mod in qlora.named_modules():
        if isinstance(mod, bnb.nn.Linear4bit):
            weight = bnb.functional.dequantize_4bit(mod.weight.data, mod.weight.quant_state)
        elif isinstance(mod, bnb.nn.Linear8bitLt):
            weight = mod.weight.data.float() * _scales(mod)[:, None] / 127  # row-wise absmax int8
        else:
            continue
        with torch.no_grad():
            float_layers[name].weight.copy_(weight)

    ids = torch.randint(0, 256, (2, 24), generator=gen)
    qlora.eval()
    with torch.no_grad():
        qlora(input_ids=ids)
    grads = []
    for model in (qlora, plain):
        model.train()
        model(input_ids=ids).logits.float().pow(2).mean().backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.grad is not None})
    assert len(grads[0]) == len(grads[1]) == 2 * 7 * 2  # A and B of 7 linear layers x 2 decoder layers
    for (name, g), g_plain in zip(grads[0].items(), grads[1].values()):
        torch.testing.assert_close(g, g_plain, rtol=1e-4, atol=1e-7, msg=lambda m, n=name: f"{n}: {m}")
