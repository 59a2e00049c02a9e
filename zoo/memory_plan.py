"""Memory plan: will this training config fit? Per-device bytes, estimated before anything is loaded.

``model_facts`` builds the causal LM on the meta device (no weights are read or allocated) and counts what
the estimate needs; each method declares how it uses that model as a ``MethodFacts`` (its
``memory_facts`` classmethod, from a config's ``init_args`` alone: no module is built); ``plan`` is a pure
function of the two and the run settings; ``format_plan`` prints the table with a verdict.
``scripts/memory_plan.py`` reads the YAML configs. This module names no method: what a method holds and
why is in its own ``memory_facts`` docstring.

Per device, at the training peak::

    total = weights + reference + gradients + optimizer states + comm buffers + runtime
            + max(weight copies + activations + LM-head chunk,  optimizer-step temporaries)

- **weights**: parameters × dtype bytes (``backbone.dtype``; 2 under ``bf16-true``). QLoRA: decoder linear
  weights at 0.5 byte (nf4) + 1/64 byte (uint8 absmax per 64-block) + 4/16384 byte (fp32 absmax per 256
  blocks, double quantization); 8-bit at 1 byte + 4 bytes per output row; everything else in fp32
  (``prepare_model_for_kbit_training`` upcasts it).
- **reference**: a live reference without LoRA holds a frozen copy of the weights; with LoRA the reference
  is the adapter-disabled policy, and a cached one keeps only log-probs (8 bytes per example).
- **the method's own parameters** (heads, soft prompts): created in fp32 (2 bytes under ``bf16-true``),
  counted in the weights, and in gradients and optimizer state when they train. Adapters a method adds
  itself (one LoRA per control) are counted like ``backbone.lora``, once per copy.
- **gradients**: trainable parameters × their dtype bytes (LoRA adapters are fp32: PEFT upcasts them).
- **optimizer states**: AdamW keeps exp_avg and exp_avg_sq, 2 × trainable × dtype bytes.
- **optimizer-step temporaries**: foreach AdamW materialises sqrt(exp_avg_sq) for all parameters at once
  (1 × trainable × bytes); activations are freed by then, hence the max().
- **weight copies**: under ``bf16-mixed`` with fp32 weights, every matmul weight (decoder linears and the
  LM head; embeddings are looked up, not cast) has a bf16 copy alive from its forward use to its backward:
  autocast's cast cache for trainable weights, saved-for-backward casts for frozen ones. None when the
  weights already are bf16 or quantized (bitsandbytes saves the packed weight and dequantizes again).
- **activations** (what autograd saves), per decoder layer and token, for a Llama-style block
  (RMSNorm → q/k/v → RoPE → SDPA → o → RMSNorm → gate/up → SiLU·up → down)::

      A = 2·(4 + w)·h        two RMSNorms: the fp32 upcast input and the normalised input
        + n_in·h             inputs saved by the projections: 2·w (one shared input per half-block) when
                             the stream is already in compute dtype; 5·a under autocast from fp32, since
                             q, k, v, gate and up each save their own cast copy
        + 4·a·H·d            q, k, v (k/v repeated to all H heads for SDPA) and the attention output
        + 4·H + a·s          SDPA's fp32 logsumexp and this layer's copy of the padding-mask row
        + 4·a·i              gate, SiLU(gate), up, SiLU(gate)·up   (2·a·i for an ungated MLP)
        + 8                  two fp32 rsqrt(variance)

  with w = bytes of the residual stream (the weights' dtype; FSDP: its ``param_dtype``) and a = bytes of
  matmul outputs (2 under bf16 autocast or with bf16 weights, 4 in ``32-true``). This is Korthikanti et al.
  (2022, "Reducing Activation Recomputation in Large Transformer Models") — s·b·h·(34 + 5·a_h·s/h) per GPT
  layer with fp16 activations and dropout — redone for Llama blocks: SDPA / flash attention keeps the
  logsumexp instead of the s×s scores, softmax and dropout mask, so the quadratic term shrinks to the mask
  row (``eager`` attention adds (4 + a)·H·s back). The counts were checked against the tensors autograd
  saves for SmolLM2's decoder layer in 32-true, bf16-mixed and bf16-true (to a few bytes per token).
  With LoRA the base is frozen, which changes what is saved: frozen norms keep only their fp32 input
  (2·4·h), frozen projections save no input, each adapted projection's A saves its input (a fresh a-dtype
  copy under autocast: a·h for q/k/v/gate/up, a·H·d for o, a·i for down) and its output (a·r), and the
  MLP keeps 3·a·i (``layer_activation_bytes``). A frozen base without adapters (only input-side parameters
  train, e.g. soft prompts) is that case with no adapter terms. Adapters on a base that trains too add,
  to the full-fine-tuning count, each A's input copy under autocast (none when it shares the projection's
  input) and its output a·r. Positions a method adds to every row (soft prompts, text controls) lengthen
  every row; only completion positions reach the LM head. Gradient checkpointing keeps w·h per token per
  layer plus one layer's full A while it is recomputed. Outside the layers: the final norm (4 + w)·h and
  the completion hidden states w·h per token.
- **LM-head chunk**: steerzoo applies the head only to completion positions, ``logprob_chunk_size`` rows
  at a time, recomputed in backward (``zoo.logprobs``): c = min(chunk, rows·(s − 1)) rows of logits are
  alive at once, ≈ (12 + a)·c·V bytes (the a-dtype logits, their fp32 copy, logsumexp's exp buffer; in
  backward the fp32 logits, the softmax and gather gradients and their a-dtype cast), plus the single
  ``logits_to_keep=1`` row per sequence, rows·V·(a + 4). A method that reads the last hidden state
  (a value or classification head) has no chunked head. A head that stacks P parameters of its own into
  one weight per chunk (several LM heads mixed in one matmul over k·H) also holds, per chunk, that
  stacked copy and its a-dtype cast, (e + a)·P with e its dtype bytes, beside the logits; when it trains,
  the backward's weight-gradient phase holds ≈ 3·e·P (the gradient in a and fp32 and its accumulation)
  + 4·c·V, and the term is the larger of the two phases. Both were read off a count of the tensor storage
  alive after each op on small shapes, and agree with it within 10% where the stacked heads weigh.
- **strategy**: DDP replicates everything and adds gradient buckets (another copy of the trainable
  gradients: ``gradient_as_bucket_view`` is off by default). FSDP (``fully_shard``) divides weights,
  gradients and optimizer states by the world size, then adds the gathered parameters in ``param_dtype``:
  the root (embeddings, final norm, LM head; steerzoo keeps it gathered) and two decoder layers (current and
  prefetched; all of them with ``reshard_after_forward: false``) plus one layer's unsharded fp32 gradient,
  and the method's trainable parameters (sharded as modules of their own, gathered when used).
  ``cpu_offload`` moves the shards to host memory (reported, not counted). Activations are per device:
  the batch size in the configs is per process.
- **runtime**: CUDA context, cuBLAS workspaces and NCCL buffers, ~1 GiB per GPU; 0 on CPU, where the
  "device" is the process and the plan counts memory above the process's baseline (Python, libraries,
  tokenizer, data).

The sum is an upper bound in two ways worth knowing: sequences are taken at full ``max_length`` with every
position a completion token (real batches are padded to their longest row, and prompts do not reach the
LM head), and gradients are counted alongside the activations (on GPU the caching allocator reuses freed
activation blocks for them; on CPU glibc keeps freed heap pages resident, so RSS really does hold both).
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn

from zoo.backbone import decoder_layers

GiB = 2**30
MiB = 2**20
Precision = Literal["32-true", "bf16-mixed", "bf16-true"]
Strategy = Literal["single", "ddp", "fsdp"]
Device = Literal["cuda", "cpu"]
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
PRECISION_ALIASES = {
    "32": "32-true", "32-true": "32-true", "64-true": "32-true",
    "bf16-mixed": "bf16-mixed", "16-mixed": "bf16-mixed", "bf16": "bf16-true", "bf16-true": "bf16-true",
    "16-true": "bf16-true", "16": "bf16-mixed",
}  # fp16 variants cost what their bf16 counterparts cost
CUDA_RUNTIME_BYTES = 1 * GiB
# projections whose input is already a matmul output (attention output, SiLU(gate)·up): autocast does not
# copy it again; every other projection reads the normalised fp32 residual stream
_READS_MATMUL_OUTPUT = ("o_proj", "down_proj", "dense", "out_proj", "c_proj", "fc2", "dense_4h_to_h", "wo", "w2")


@dataclass(frozen=True)
class ModelFacts:
    """What the plan needs to know about a decoder-only causal LM (from ``model_facts``)."""

    name: str
    params: int  # unique parameters of the base model (a tied LM head counted once)
    layer_params: int  # parameters of one decoder layer
    num_layers: int
    hidden_size: int
    intermediate_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    tied_embeddings: bool
    matmul_weight_params: int  # weights of nn.Linear layers, LM head included: what autocast casts
    quantizable_params: int  # decoder linear weights: what bitsandbytes quantizes
    quantizable_rows: int  # their output features (8-bit keeps one fp32 scale per row)
    stream_projections: int  # projections per layer that read the normalised residual stream (Llama: 5)
    gated_mlp: bool
    lora_params: int = 0
    lora_rank: int = 0
    lora_per_layer: int = 0  # adapted projections per decoder layer
    lora_stream_per_layer: int = 0  # ...of which read the normalised residual stream (q, k, v, gate, up)
    lora_stream_groups: int = 0  # half-blocks (attention, MLP) with at least one such adapted projection
    lora_attn_out_features: int = 0  # input features of an adapted attention-output projection (H·d)
    lora_mlp_out_features: int = 0  # input features of an adapted MLP-output projection (i)
    lora_outside_layers: int = 0  # adapter parameters outside the decoder layers (rare)


@dataclass(frozen=True)
class MethodFacts:
    """How a training method uses the model: what a method's ``memory_facts`` classmethod returns.

    ``rows_per_example``: sequences per example in one forward (a chosen and a rejected reply: 2).
    ``extra_tokens``: positions the method adds to every row (soft prompts, text controls). ``lm_head``:
    completion log-probs through the chunked LM head (False: a head reads the last hidden state instead).
    ``head_weight_params``: parameters the chunked head stacks into one weight per chunk (0: the model's own
    head); ``head_weight_trains``: whether that stacked weight gets a gradient. ``reference``:
    ``frozen_copy`` (a second set of base weights), ``adapter_off`` (the same weights, adapters disabled),
    ``none`` (cached log-probs, or no reference). ``trains_base``: whether the base weights train (None:
    unless LoRA adapters are on). ``frozen_lm_head``: an untied LM head stays frozen (the method reads the
    hidden state through heads of its own). ``adapters`` (``r``, ``alpha``, ``dropout``,
    ``target_modules``): LoRA adapters the method adds itself, ``adapter_copies`` of them (the model facts
    must carry one of them: ``model_facts(meta_model(config, adapters))``). ``own_params`` /
    ``own_trainable_params``: parameters of the method's own beside the model (heads, soft prompts).
    ``notes``: what the reader should know about this method's numbers.
    """

    name: str
    rows_per_example: int = 1
    extra_tokens: int = 0
    lm_head: bool = True
    head_weight_params: int = 0
    head_weight_trains: bool = False
    reference: Literal["none", "frozen_copy", "adapter_off"] = "none"
    trains_base: bool | None = None
    frozen_lm_head: bool = False
    adapters: Any | None = None
    adapter_copies: int = 1
    own_params: int = 0
    own_trainable_params: int = 0
    notes: tuple[str, ...] = ()


def constructor_args(cls: type, init_args: dict[str, Any] | None) -> dict[str, Any]:
    """A config's ``init_args`` over the defaults of every ``__init__`` in ``cls``'s MRO (a subclass's
    default wins): what the module would be built with, read without building it."""
    args: dict[str, Any] = {}
    for klass in reversed(cls.__mro__):
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        for name, param in inspect.signature(init).parameters.items():
            if param.default is not inspect.Parameter.empty:
                args[name] = param.default
    return {**args, **(init_args or {})}


@dataclass
class MemoryPlan:
    """Estimated bytes per device (one process) at the training peak, by component (see the module doc)."""

    model: str
    method: str
    params: int  # every parameter held: the model, its adapters and the method's own
    trainable_params: int
    batch_size: int
    rows: int
    seq_len: int
    precision: str
    strategy: str
    world_size: int
    device: str
    weights: int
    reference: int
    gradients: int
    optimizer_states: int
    comm_buffers: int
    runtime: int
    weight_copies: int
    activations: int
    lm_head: int
    optimizer_step: int
    host_offload: int = 0  # FSDP cpu_offload: sharded state in host memory (not in the total)
    own_params: int = 0  # the method's own parameters (heads, soft prompts), included in ``params``
    extra_tokens: int = 0  # positions the method adds to every row, beyond ``seq_len``
    notes: list[str] = field(default_factory=list)

    @property
    def static(self) -> int:
        """Memory held through the whole step."""
        return self.weights + self.reference + self.gradients + self.optimizer_states + self.comm_buffers + self.runtime

    @property
    def total(self) -> int:
        """The peak: static memory plus the larger of the forward/backward and optimizer-step phases."""
        return self.static + max(self.weight_copies + self.activations + self.lm_head, self.optimizer_step)

    def fits(self, device_gib: float) -> bool:
        """Whether the peak fits in ``device_gib`` GiB per device (e.g. 40 or 80 for an A100)."""
        return self.total <= device_gib * GiB


def _bytes(n: float) -> str:
    return f"{n / GiB:.2f} GiB" if n >= GiB else f"{n / MiB:.1f} MiB"


def _count(n: int) -> str:
    return f"{n / 1e9:.2f} B" if n >= 1e9 else f"{n / 1e6:.2f} M" if n >= 1e6 else f"{n:,}"


def format_plan(p: MemoryPlan, device_gib: float | None = None) -> str:
    """The plan as a table (one row per component), with a verdict when ``device_gib`` is given."""
    per = " per device" if p.world_size > 1 else ""
    tokens = f"{p.seq_len}+{p.extra_tokens}" if p.extra_tokens else f"{p.seq_len}"
    head = (
        f"memory plan: {p.method} on {p.model}, batch {p.batch_size} ({p.rows} rows) x {tokens} tokens{per}, "
        f"{p.precision}, {p.strategy} x{p.world_size}, {p.device}"
    )
    step_phase = p.weight_copies + p.activations + p.lm_head
    rows: list[tuple[str, str]] = [("parameters", _count(p.params))]
    if p.own_params:
        rows.append(("  of which the method's own", _count(p.own_params)))
    rows += [
        ("trainable parameters", f"{_count(p.trainable_params)} ({100 * p.trainable_params / max(p.params, 1):.2f}%)"),
        ("weights", _bytes(p.weights)),
        ("frozen reference copy", _bytes(p.reference)),
        ("gradients", _bytes(p.gradients)),
        ("optimizer state (AdamW)", _bytes(p.optimizer_states)),
        ("DDP gradient buckets", _bytes(p.comm_buffers)),
        ("runtime (CUDA context, NCCL)", _bytes(p.runtime)),
        ("weight copies (autocast / FSDP gathered)", _bytes(p.weight_copies)),
        ("activations", _bytes(p.activations)),
        ("LM-head chunk", _bytes(p.lm_head)),
        ("optimizer step temporaries", _bytes(p.optimizer_step) + ("  (peak phase)" if p.optimizer_step > step_phase else "")),
    ]
    if p.host_offload:
        rows.append(("host memory (FSDP cpu_offload)", _bytes(p.host_offload)))
    rows.append(("total (peak)", _bytes(p.total)))
    width = max(len(r[0]) for r in rows)
    lines = [head, "-" * len(head)] + [f"{k:<{width}}  {v:>22}" for k, v in rows]
    if device_gib is not None:
        used = 100 * p.total / (device_gib * GiB)
        verdict = "fits" if p.fits(device_gib) else "does NOT fit"
        lines.append(f"verdict: {verdict} in {device_gib:g} GiB per device ({used:.0f}% of it)")
    lines += [f"note: {n}" for n in p.notes]
    return "\n".join(lines)


# ---- model facts from a config, on the meta device -------------------------------------------------------
def load_model_config(name_or_path: str, revision: str | None = None, trust_remote_code: bool = False):
    """The transformers config of a backbone, from local files only (builtins, a directory, the HF cache)."""
    from transformers import AutoConfig

    from zoo.backbone import BUILTIN_TINY, resolve_path

    if name_or_path == BUILTIN_TINY:
        from zoo.tiny import SPECIAL_TOKENS, tiny_config

        return tiny_config(256 + len(SPECIAL_TOKENS))
    path = resolve_path(name_or_path)
    try:
        return AutoConfig.from_pretrained(
            path, revision=revision, trust_remote_code=trust_remote_code, local_files_only=True
        )
    except OSError as err:
        raise FileNotFoundError(
            f"memory plan: no config.json for {name_or_path!r} in a local directory or the local HF cache "
            f"(the plan never downloads). Fetch it once with `hf download {name_or_path} config.json`."
        ) from err


def meta_model(config, lora: Any | None = None) -> nn.Module:
    """``AutoModelForCausalLM.from_config`` on the meta device (no memory), LoRA-wrapped if asked.
    ``lora``: anything with ``r``, ``alpha``, ``dropout``, ``target_modules`` (``zoo.backbone.LoraSettings``)."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    if lora is not None:
        from peft import LoraConfig, TaskType, get_peft_model

        lora_cfg = LoraConfig(task_type=TaskType.CAUSAL_LM, r=lora.r, lora_alpha=lora.alpha,
                              lora_dropout=lora.dropout, target_modules=lora.target_modules)
        model = get_peft_model(model, lora_cfg)
    return model


def _unique(params: Iterable[nn.Parameter]) -> list[nn.Parameter]:
    seen: dict[int, nn.Parameter] = {}
    for p in params:
        seen.setdefault(id(p), p)
    return list(seen.values())


def model_facts(model: nn.Module, name: str = "") -> ModelFacts:
    """Counts from a (meta or real, possibly PEFT-wrapped) Llama-style causal LM."""
    from zoo.backbone import base_model

    base = base_model(model)
    cfg = base.config
    layers = decoder_layers(base)
    lora = [p for n, p in model.named_parameters() if ".lora_" in n]
    base_params = [p for n, p in base.named_parameters() if ".lora_" not in n]
    head, embed = base.get_output_embeddings(), base.get_input_embeddings()

    def plain_linears(module: nn.Module) -> list[tuple[str, nn.Linear]]:
        # PEFT wraps a linear as <name>.base_layer; count the wrapped layer once, by its own name
        out = []
        for n, m in module.named_modules():
            if isinstance(m, nn.Linear) and ".lora_" not in n and not n.endswith(("lora_A", "lora_B")):
                out.append((n.removesuffix(".base_layer"), m))
        return out

    layer_linears = plain_linears(layers[0])
    all_linears = _unique(m.weight for _, m in plain_linears(base))
    short = [n.rsplit(".", 1)[-1] for n, _ in layer_linears]
    adapted = [(n, m) for n, m in layers[0].named_modules() if hasattr(m, "lora_A") and len(m.lora_A)]
    adapted_stream = [n for n, _ in adapted if not n.endswith(_READS_MATMUL_OUTPUT)]
    inner = [(n, m) for n, m in adapted if n.endswith(_READS_MATMUL_OUTPUT)]
    intermediate = getattr(cfg, "intermediate_size", None) or 4 * cfg.hidden_size
    lora_in_layers = sum(p.numel() for layer in layers for n, p in layer.named_parameters() if ".lora_" in n)
    heads = cfg.num_attention_heads
    return ModelFacts(
        name=name or getattr(cfg, "name_or_path", "") or type(base).__name__,
        params=sum(p.numel() for p in _unique(base_params)),
        layer_params=sum(p.numel() for n, p in layers[0].named_parameters() if ".lora_" not in n),
        num_layers=len(layers),
        hidden_size=cfg.hidden_size,
        intermediate_size=intermediate,
        num_heads=heads,
        num_kv_heads=getattr(cfg, "num_key_value_heads", None) or heads,
        head_dim=getattr(cfg, "head_dim", None) or cfg.hidden_size // heads,
        vocab_size=cfg.vocab_size,
        tied_embeddings=head is not None and head.weight is embed.weight,
        matmul_weight_params=sum(w.numel() for w in all_linears),
        quantizable_params=len(layers) * sum(m.weight.numel() for _, m in layer_linears),
        quantizable_rows=len(layers) * sum(m.out_features for _, m in layer_linears),
        stream_projections=sum(not n.endswith(_READS_MATMUL_OUTPUT) for n in short),
        gated_mlp=any("gate" in n for n in short),
        lora_params=sum(p.numel() for p in lora),
        lora_rank=max((p.shape[0] for n, p in model.named_parameters() if ".lora_A" in n), default=0),
        lora_per_layer=len(adapted),
        lora_stream_per_layer=len(adapted_stream),
        lora_stream_groups=len({n.rsplit(".", 1)[0] for n in adapted_stream}),
        lora_attn_out_features=sum(m.in_features for n, m in inner if m.in_features != intermediate),
        lora_mlp_out_features=sum(m.in_features for n, m in inner if m.in_features == intermediate),
        lora_outside_layers=sum(p.numel() for p in lora) - lora_in_layers,
    )


def config_facts(
    config, method: type, init_args: dict[str, Any] | None = None, lora: Any | None = None, name: str = ""
) -> tuple[ModelFacts, MethodFacts]:
    """The facts ``plan`` reads for a backbone ``config`` trained by ``method`` (a class with a
    ``memory_facts`` classmethod, never built) with ``init_args``: the model on the meta device with
    ``lora``, the method's facts of it, then the model again with the adapters the method adds itself."""
    model = model_facts(meta_model(config, lora), name)
    facts = method.memory_facts(init_args or {}, model)
    if facts.adapters is not None:
        if lora is not None:
            raise ValueError(f"memory plan: {facts.name} adds LoRA adapters of its own: leave backbone.lora unset")
        model = model_facts(meta_model(config, facts.adapters), name)
    return model, facts


# ---- the plan ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FsdpSettings:
    """The FSDP2 options that change memory (mirrors ``lightning_modules.base.ShardingSettings``)."""

    param_dtype: Literal["float32", "bfloat16"] = "bfloat16"
    reduce_dtype: Literal["float32", "bfloat16"] = "float32"
    activation_checkpointing: bool = False
    cpu_offload: bool = False
    reshard_after_forward: bool = True


def layer_activation_bytes(
    m: ModelFacts,
    seq_len: int,
    w: int,
    a: int,
    attn_implementation: str | None = "sdpa",
    lora: bool = False,
    adapter_bytes: int = 4,
    base_trains: bool | None = None,
) -> int:
    """Bytes autograd keeps per token for one decoder layer (the formula in the module docstring).

    ``base_trains`` (default: not ``lora``) says whether the base weights train. A frozen base (with
    ``lora`` adapters, or none at all when only the input side trains): a frozen norm keeps only its fp32
    input (4·h); a frozen projection saves no input (no weight gradient to compute); each adapted
    projection's A saves its input, a fresh a-dtype copy under autocast (PEFT casts the input to the fp32
    adapter dtype, autocast casts it back), else the shared input (one w·h per half-block for q/k/v and
    gate/up; o's input is a view of the attention output, already counted); A's output a·r is saved for
    B. The SiLU·up product is then kept only by an adapted down projection (counted with its input).
    Adapters on a base that trains: the full count plus each A's own input copy under autocast (none
    when it shares the projection's saved input) and its output.
    """
    h, i, heads, d = m.hidden_size, m.intermediate_size, m.num_heads, m.head_dim
    base_trains = not lora if base_trains is None else base_trains
    attn = 4 * a * heads * d + 4 * heads + a * seq_len
    if attn_implementation == "eager":  # the fp32 softmax of the scores and its cast, s per head
        attn += (4 + a) * heads * seq_len
    recast = a != adapter_bytes  # every adapted projection saves its own copy of its input
    recast_inputs = m.lora_stream_per_layer * a * h + a * (m.lora_attn_out_features + m.lora_mlp_out_features)
    adapter_outputs = m.lora_per_layer * a * m.lora_rank
    if base_trains:
        norms = 2 * (4 + w) * h
        proj_inputs = 2 * w * h if w == a else m.stream_projections * a * h  # autocast recasts per projection
        mlp = (4 if m.gated_mlp else 2) * a * i
        adapters = ((recast_inputs if recast else 0) + adapter_outputs) if lora else 0
        return norms + proj_inputs + attn + mlp + adapters + 8
    if not lora:
        adapters = 0
    elif recast:
        adapters = recast_inputs + adapter_outputs
    else:
        adapters = m.lora_stream_groups * w * h + a * m.lora_mlp_out_features + adapter_outputs
    mlp = (3 if m.gated_mlp else 1) * a * i
    return 2 * 4 * h + adapters + attn + mlp + 8


def plan(
    model: ModelFacts,
    method: MethodFacts,
    batch_size: int,
    seq_len: int,
    *,
    precision: str = "bf16-mixed",
    strategy: Strategy = "single",
    world_size: int = 1,
    weight_dtype: str = "float32",
    quantization: Literal["4bit", "8bit"] | None = None,
    lora: bool | None = None,
    gradient_checkpointing: bool = False,
    logprob_chunk_size: int = 1024,
    attn_implementation: str | None = "sdpa",
    device: Device = "cuda",
    fsdp: FsdpSettings | None = None,
) -> MemoryPlan:
    """Per-device training memory (see the module docstring for every term).

    ``batch_size`` is examples per process per step; ``seq_len`` the padded length (``tokenize.max_length``;
    the method's ``extra_tokens`` come on top); ``lora`` defaults to whether ``model`` carries adapters.
    """
    precision = PRECISION_ALIASES.get(str(precision), str(precision))
    if precision not in ("32-true", "bf16-mixed", "bf16-true"):
        raise ValueError(f"memory plan: unsupported precision {precision!r} (32-true, bf16-mixed, bf16-true)")
    if strategy not in ("single", "ddp", "fsdp"):
        raise ValueError(f"memory plan: unknown strategy {strategy!r} (single, ddp, fsdp)")
    if strategy == "single" and world_size != 1:
        raise ValueError("memory plan: strategy 'single' runs one process; use ddp or fsdp for world_size > 1")
    lora = model.lora_params > 0 if lora is None else lora
    if lora and model.lora_params == 0:
        raise ValueError("memory plan: lora=True but the model facts carry no adapters (model_facts of a PEFT model)")
    base_trains = not lora if method.trains_base is None else method.trains_base
    if quantization is not None and (base_trains or not lora):
        raise ValueError("memory plan: quantized base weights do not train: quantization needs LoRA with a frozen "
                         "base (QLoRA); without LoRA it trains nothing")
    if strategy == "fsdp" and quantization is not None:
        raise ValueError("memory plan: FSDP with bitsandbytes-quantized weights is not supported (use ddp)")
    notes: list[str] = []
    fsdp = fsdp or FsdpSettings()
    sharded = strategy == "fsdp"
    shards = world_size if sharded else 1

    # dtypes: w = weight/residual-stream bytes, a = matmul-output bytes; adapters and the method's own
    # parameters are fp32 (PEFT upcasts adapters; heads and prompts are created in fp32) unless bf16-true
    w_param = 2 if precision == "bf16-true" else DTYPE_BYTES[weight_dtype]
    e = 2 if precision == "bf16-true" else 4
    w = w_param
    if sharded:
        w = min(w, DTYPE_BYTES[fsdp.param_dtype])  # gathered parameters compute in param_dtype
    if quantization is not None:
        w = 4 if precision != "bf16-true" else 2  # prepare_model_for_kbit_training: norms, embeddings fp32
    a = 4 if (precision == "32-true" and w == 4) else 2

    # parameters, weights
    h, vocab, n_layers = model.hidden_size, model.vocab_size, model.num_layers
    adapters = (model.lora_params if lora else 0) * method.adapter_copies
    base_trainable = model.params if base_trains else 0
    if base_trains and method.frozen_lm_head and not model.tied_embeddings:
        base_trainable -= vocab * h  # an untied LM head the method never reads
    trainable = base_trainable + adapters + method.own_trainable_params
    if quantization is not None:
        per_param = 0.5 + 1 / 64 + 4 / (64 * 256) if quantization == "4bit" else 1.0
        qbytes = model.quantizable_params * per_param + (4 * model.quantizable_rows if quantization == "8bit" else 0)
        weights = int(qbytes) + (model.params - model.quantizable_params) * w
    else:
        weights = model.params * w_param
    own_frozen = (method.own_params - method.own_trainable_params) * e  # not sharded: FSDP shards what trains
    weights += adapters * e + method.own_trainable_params * e
    if method.reference == "frozen_copy":
        if sharded:
            raise ValueError("memory plan: a frozen reference copy (live reference without LoRA) is not supported "
                             "under FSDP")
        reference = model.params * w_param
    else:
        reference = 0
    trainable_bytes = base_trainable * w_param + (adapters + method.own_trainable_params) * e
    gradients = trainable_bytes
    optimizer_states = 2 * trainable_bytes
    optimizer_step = trainable_bytes  # foreach AdamW: sqrt(exp_avg_sq) for every parameter at once
    host = 0
    if sharded:
        weights, gradients, optimizer_states, optimizer_step = (
            -(-x // shards) for x in (weights, gradients, optimizer_states, optimizer_step)
        )
        if fsdp.cpu_offload:
            host = weights + gradients + optimizer_states + optimizer_step
            weights = gradients = optimizer_states = optimizer_step = 0
            notes.append("FSDP cpu_offload: sharded weights, gradients and optimizer state live in host memory")
    weights += own_frozen
    comm = gradients if strategy == "ddp" else 0
    runtime = CUDA_RUNTIME_BYTES if device == "cuda" else 0

    # weight copies: autocast's low-precision weights, or FSDP's gathered parameters
    if sharded:
        p_bytes = DTYPE_BYTES[fsdp.param_dtype]
        root = model.params - n_layers * model.layer_params
        live_layers = n_layers if not fsdp.reshard_after_forward else min(2, n_layers)
        copies = (root + live_layers * model.layer_params + method.own_trainable_params) * p_bytes
        copies += model.layer_params * 4  # one layer's unsharded gradient
    elif precision == "bf16-mixed" and w_param == 4:
        if quantization is not None:  # the LM head's cast, and at most a layer's worth dequantized at once
            copies = vocab * h * a + model.layer_params * 4
        else:
            copies = model.matmul_weight_params * a
    else:
        copies = 0

    # activations: every row is the text plus the method's extra positions
    rows = method.rows_per_example * batch_size
    row_len = seq_len + method.extra_tokens
    tokens = rows * row_len
    per_layer = layer_activation_bytes(model, row_len, w, a, attn_implementation, lora=lora, adapter_bytes=e,
                                       base_trains=base_trains)
    checkpointing = gradient_checkpointing or (sharded and fsdp.activation_checkpointing)
    if checkpointing:
        layers_bytes = tokens * (n_layers * w * h + per_layer)
        notes.append("gradient checkpointing: each layer keeps its input; one layer is recomputed at a time")
    else:
        layers_bytes = tokens * n_layers * per_layer
    activations = layers_bytes + tokens * ((4 + w) * h + w * h)  # final norm, completion hidden states
    last_row_logits = rows * vocab * (a + 4)  # logits_to_keep=1: one row per sequence
    lm_head = last_row_logits
    if method.lm_head:  # only completion positions reach the head: the text's, not the method's extra ones
        chunk = min(logprob_chunk_size, rows * (seq_len - 1))
        logits_phase = (12 + a) * chunk * vocab
        stacked = method.head_weight_params
        if stacked:
            logits_phase += (e + a) * stacked  # the stacked copy and its a-dtype cast
            if method.head_weight_trains:
                logits_phase = max(logits_phase, 3 * e * stacked + 4 * chunk * vocab)  # its gradient
        lm_head += logits_phase
    if method.reference == "frozen_copy":
        notes.append("reference: live without LoRA holds a frozen copy of the weights")
    notes += method.notes
    if device == "cpu":
        notes.append("CPU: memory above the process baseline (libraries, tokenizer, data); no CUDA runtime")
    return MemoryPlan(
        model=model.name, method=method.name, params=model.params + adapters + method.own_params,
        trainable_params=trainable, batch_size=batch_size, rows=rows, seq_len=seq_len, precision=precision,
        strategy=strategy, world_size=world_size, device=device, weights=weights, reference=reference,
        gradients=gradients, optimizer_states=optimizer_states, comm_buffers=comm, runtime=runtime,
        weight_copies=copies, activations=activations, lm_head=lm_head, optimizer_step=optimizer_step,
        host_offload=host, own_params=method.own_params, extra_tokens=method.extra_tokens, notes=notes,
    )


def as_dict(p: MemoryPlan) -> dict[str, Any]:
    """The plan's fields plus its total (e.g. for JSON output)."""
    return {**dataclasses.asdict(p), "total": p.total}
