"""Control tokens θ_c = {θ_c^w, θ_c^l}: a "good" and a "bad" condition for controllable generation.

MEET (Xue et al., "Parameter-Efficient Tuning Helps Language Model Alignment", arXiv 2310.00819) and its
Chain-of-Hindsight baseline train M(y_w | x, θ_c^w, θ) and M(y_l | x, θ_c^l, θ) and sample from the
"good" condition. Three kinds of θ_c (``ControlSettings.kind``):

- ``prompt``: two soft prompts of length L, each initialised with the word "good" / "bad" repeated L
  times (Lester et al. 2021). We embed the word as it appears inside text, with a leading space
  (" good": one token in GPT-2/GPT-Neo and SmolLM2 BPE); a word that splits into several sub-tokens is
  initialised with the mean of their embeddings, so every one of the L positions holds the same vector.
- ``lora``: two PEFT LoRA adapters ("good", "bad") on the same base model; each row of a batch runs
  through its own adapter (the batch is split by control, because PEFT's per-row ``adapter_names=``
  routing refuses training mode).
- ``text``: hand-crafted prompts (CoH), e.g. "A good conversation is" / "A bad conversation is",
  tokenised with ``text_template`` and not trainable.

``placement`` puts a prompt or text control ``before`` the prompt x (after a BOS the tokenizer adds,
if any; Lester et al.'s prepended soft prompt) or ``between`` x and the response. Control positions
carry label -100, so log-probs stay completion-only (``zoo.logprobs``).

Soft prompts enter as input embeddings by *substitution*: placeholder ids are spliced in, and a forward
hook on the model's input-embedding layer overwrites their rows with the soft-prompt vectors. This is
``inputs_embeds`` without leaving the model's own forward, so FSDP2 still gathers the root parameters
(the embedding table lives there), PEFT and gradient checkpointing hooks still run, and generation runs on
ids through the shared rollout engine, the substitution entered around its prefill only (``soft_prompt_prefill``).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from zoo.collate import IGNORE_INDEX
from zoo.logprobs import sequence_logprobs
from zoo.rollout import PrefillHook, generate
from zoo.sampling import Samples, SamplingSettings, sample

GOOD, BAD = 0, 1
CONTROL_NAMES = ("good", "bad")  # index = control id; also the LoRA adapter names
ControlKind = Literal["prompt", "lora", "text"]
Placement = Literal["before", "between"]
HANDCRAFTED = {  # the paper's CoH prompts (§4.2)
    "conversation": ("A good conversation is", "A bad conversation is"),
    "summary": ("A good summary is", "A bad summary is"),
}


@dataclass
class ControlSettings:
    """What θ_c is. Defaults: the paper's prompt length 50 and LoRA rank 4; the rest is our choice."""

    kind: ControlKind = "prompt"
    placement: Placement = "before"  # prompt/text controls: before x, or between x and y (LoRA has no position)
    length: int = 50  # soft-prompt length L (1 = the "one special token" setting)
    init_words: list[str] = field(default_factory=lambda: ["good", "bad"])  # soft-prompt init, per control
    texts: list[str] = field(default_factory=lambda: list(HANDCRAFTED["conversation"]))  # kind text
    text_template: str = "{text}:"  # how a text control is written before tokenisation
    lora_r: int = 4
    lora_alpha: int = 8  # scaling alpha/r = 2
    lora_dropout: float = 0.0
    lora_target_modules: list[str] | str = "all-linear"  # every linear layer but the LM head

    def __post_init__(self) -> None:
        if self.kind not in ("prompt", "lora", "text"):
            raise ValueError(f"control.kind must be prompt, lora or text, got {self.kind!r}")
        if self.placement not in ("before", "between"):
            raise ValueError(f"control.placement must be before or between, got {self.placement!r}")
        if self.length < 1 or self.lora_r < 1:
            raise ValueError("control.length and control.lora_r must be >= 1")
        for name in ("init_words", "texts"):
            if len(getattr(self, name)) != len(CONTROL_NAMES):
                raise ValueError(f"control.{name} needs one entry per control {CONTROL_NAMES}")


def control_rows(batch_size: int, device: torch.device | None = None) -> torch.Tensor:
    """Control id per row of a ``[2B, T]`` preference batch: chosen block "good", rejected block "bad"."""
    return torch.cat([torch.full((batch_size,), GOOD), torch.full((batch_size,), BAD)]).to(device)


def meet_loss(
    logp_good: torch.Tensor, count_good: torch.Tensor, logp_bad: torch.Tensor, count_bad: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """MEET's conditional LM loss (Eq. 1, and Eq. 2 where only θ_c trains), token-mean over the batch:

        L = −Σ_i [ log M(y_w,i | x_i, θ_c^w, θ) + log M(y_l,i | x_i, θ_c^l, θ) ] / Σ_i (|y_w,i| + |y_l,i|)

    Inputs are summed completion-token log-probs and token counts per pair ([B] each). The paper writes
    a plain sum over the data; dividing by the batch's completion tokens keeps the step size independent
    of length and batch size. Returns (loss, per-token NLL of y_w under "good", of y_l under "bad")."""
    tokens = (count_good.sum() + count_bad.sum()).clamp(min=1)
    loss = -(logp_good.sum() + logp_bad.sum()) / tokens
    nll_good = -logp_good.detach().sum() / count_good.sum().clamp(min=1)
    nll_bad = -logp_bad.detach().sum() / count_bad.sum().clamp(min=1)
    return loss, nll_good, nll_bad


# ---- soft prompts -------------------------------------------------------------------------------------
def word_ids(tokenizer: PreTrainedTokenizerBase, word: str) -> list[int]:
    """Token ids of ``word`` as it appears inside text (leading space, no special tokens)."""
    ids = tokenizer(" " + word.strip(), add_special_tokens=False)["input_ids"]
    if not ids:
        raise ValueError(f"control.init_words: {word!r} tokenises to nothing")
    return ids


def repeated_word_embedding(embedding: torch.Tensor, ids: Sequence[int], length: int) -> torch.Tensor:
    """[length, H]: the mean embedding of ``ids`` (one word), repeated ``length`` times."""
    return embedding[list(ids)].detach().float().mean(0).expand(length, -1).clone()


class SoftPrompts(nn.Module):
    """θ_c as soft prompts: ``prompts[c]`` is control c's [L, H] prompt (c = 0 "good", 1 "bad").

    Call it (``soft_prompts(control_ids)``) rather than indexing ``prompts``: under FSDP2 the call is
    what gathers the sharded parameter."""

    def __init__(self, init: torch.Tensor):
        super().__init__()
        self.prompts = nn.Parameter(init.clone().float())

    @classmethod
    def from_words(
        cls, embedding: torch.Tensor, tokenizer: PreTrainedTokenizerBase, words: Sequence[str], length: int
    ) -> SoftPrompts:
        return cls(torch.stack([repeated_word_embedding(embedding, word_ids(tokenizer, w), length) for w in words]))

    @property
    def length(self) -> int:
        return self.prompts.shape[1]

    def forward(self, control_ids: torch.Tensor) -> torch.Tensor:
        return self.prompts[control_ids]  # [N, L, H]


@contextmanager
def substitute_embeddings(model: nn.Module, is_control: torch.Tensor, vectors: torch.Tensor) -> Iterator[None]:
    """While active, the input-embedding output at ``is_control`` [N, T] positions is replaced, row by
    row in order, by ``vectors`` [N, L, H] (each row has exactly L control positions).

    Only a call whose shape is [N·k, T] is touched (k > 1 when ``generate`` repeats rows for several
    samples), so the single-token decode steps of generation pass through."""
    layer = model.get_input_embeddings()
    n, width = is_control.shape

    def hook(module: nn.Module, args: tuple, out: torch.Tensor) -> torch.Tensor:
        if out.dim() != 3 or out.shape[1] != width or out.shape[0] % n:
            return out
        k = out.shape[0] // n
        mask, vec = is_control, vectors
        if k > 1:
            mask, vec = mask.repeat_interleave(k, 0), vec.repeat_interleave(k, 0)
        out = out.clone()
        out[mask] = vec.reshape(-1, vec.shape[-1]).to(out.dtype)
        return out

    handle = layer.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


# ---- where controls go --------------------------------------------------------------------------------
def text_control_ids(tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], template: str) -> list[list[int]]:
    """Token ids of each hand-crafted control, written with ``template`` (no special tokens)."""
    return [tokenizer(template.format(text=t), add_special_tokens=False)["input_ids"] for t in texts]


def insert_at(prompt_ids: Sequence[int], placement: Placement, bos_offset: int) -> int:
    """Index in a prompt's ids where its control goes."""
    return min(bos_offset, len(prompt_ids)) if placement == "before" else len(prompt_ids)


def splice(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    labels: torch.Tensor,
    controls: Sequence[Sequence[int]],
    placement: Placement,
    bos_offset: int,
    pad_id: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Insert ``controls[i]`` (token ids) into right-padded row i, before its prompt or between prompt
    and completion (the first labelled position). Returns (input_ids, attention_mask, labels, is_control),
    right-padded again; control positions have label -100."""
    rows = []
    for i in range(input_ids.shape[0]):
        n = int(attention_mask[i].sum())
        ids, lab = input_ids[i, :n], labels[i, :n]
        if placement == "before":
            k = min(bos_offset, n)
        else:
            labelled = (lab != IGNORE_INDEX).nonzero()
            k = int(labelled[0]) if len(labelled) else n
        ctrl = torch.tensor(list(controls[i]), dtype=ids.dtype, device=ids.device)
        rows.append((torch.cat([ids[:k], ctrl, ids[k:]]), torch.cat([lab[:k], torch.full_like(ctrl, IGNORE_INDEX),
                                                                     lab[k:]]), k, len(ctrl)))
    width = max(len(r[0]) for r in rows)
    out_ids = input_ids.new_full((len(rows), width), pad_id)
    out_labels = labels.new_full((len(rows), width), IGNORE_INDEX)
    out_mask = attention_mask.new_zeros((len(rows), width))
    is_control = torch.zeros((len(rows), width), dtype=torch.bool, device=input_ids.device)
    for i, (ids, lab, k, c) in enumerate(rows):
        out_ids[i, : len(ids)], out_labels[i, : len(ids)], out_mask[i, : len(ids)] = ids, lab, 1
        is_control[i, k : k + c] = True
    return out_ids, out_mask, out_labels, is_control


# ---- LoRA controls ------------------------------------------------------------------------------------
def add_control_adapters(model: nn.Module, s: ControlSettings) -> nn.Module:
    """The model wrapped by PEFT with one LoRA adapter per control ("good", "bad"), identically configured
    (PEFT's standard init: A random, B zero, so both start as the unchanged base model)."""
    from peft import LoraConfig, TaskType, get_peft_model

    config = dict(task_type=TaskType.CAUSAL_LM, r=s.lora_r, lora_alpha=s.lora_alpha, lora_dropout=s.lora_dropout,
                  target_modules=s.lora_target_modules)
    peft_model = get_peft_model(model, LoraConfig(**config), adapter_name=CONTROL_NAMES[0])
    for name in CONTROL_NAMES[1:]:
        peft_model.add_adapter(name, LoraConfig(**config))
    peft_model.set_adapter(CONTROL_NAMES[GOOD])
    return peft_model


def is_adapter_parameter(name: str) -> bool:
    return any(f".{c}." in name for c in CONTROL_NAMES) and "lora_" in name


@contextmanager
def adapter_active(model: nn.Module, name: str) -> Iterator[None]:
    """Route the forward through adapter ``name``. PEFT's ``set_adapter`` also rewrites requires_grad
    (active adapter trainable, the others frozen), which would undo the training phase: we restore it."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    previous = model.active_adapter

    def switch(to: str) -> None:
        model.set_adapter(to)
        for p, f in flags:
            p.requires_grad_(f)

    switch(name)
    try:
        yield
    finally:
        switch(previous)


# ---- log-probs and generation under a control ---------------------------------------------------------
@dataclass
class Control:
    """A configured θ_c bound to its tokenizer: what the LightningModule hands to the functions below.
    ``soft_prompts`` (kind prompt) is owned by the LightningModule, so it trains, saves and shards there."""

    settings: ControlSettings
    pad_id: int
    bos_offset: int = 0  # 1 when the tokenizer puts a BOS first: a "before" control goes after it
    text_ids: list[list[int]] | None = None
    soft_prompts: SoftPrompts | None = None


def controlled_logprobs(
    model: nn.Module,
    control: Control,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    labels: torch.Tensor,
    control_ids: torch.Tensor,
    chunk_size: int = 1024,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed completion log-probs [N], completion token counts [N]) with row i under control
    ``control_ids[i]``: log M(y_i | x_i, θ_c^{control_ids[i]}, θ)."""
    kind = control.settings.kind
    if kind == "lora":
        sums = torch.zeros(input_ids.shape[0], device=input_ids.device)
        counts = torch.zeros(input_ids.shape[0], dtype=torch.long, device=input_ids.device)
        for c in control_ids.unique().tolist():
            rows = (control_ids == c).nonzero().squeeze(1)
            width = int(attention_mask[rows].sum(1).max())  # drop columns that are padding in every row
            with adapter_active(model, CONTROL_NAMES[c]):
                s, n = sequence_logprobs(model, input_ids[rows, :width], attention_mask[rows, :width],
                                         labels[rows, :width], chunk_size)
            sums = sums.to(s.dtype).index_copy(0, rows, s)
            counts = counts.index_copy(0, rows, n)
        return sums, counts
    if kind == "text":
        controls = [control.text_ids[c] for c in control_ids.tolist()]
        ids, mask, lab, _ = splice(input_ids, attention_mask, labels, controls, control.settings.placement,
                                   control.bos_offset, control.pad_id)
        return sequence_logprobs(model, ids, mask, lab, chunk_size)
    soft = control.soft_prompts
    placeholders = [[control.pad_id] * soft.length] * input_ids.shape[0]
    ids, mask, lab, is_control = splice(input_ids, attention_mask, labels, placeholders, control.settings.placement,
                                        control.bos_offset, control.pad_id)
    with substitute_embeddings(model, is_control, soft(control_ids)):
        return sequence_logprobs(model, ids, mask, lab, chunk_size)


@torch.no_grad()
def generate_with_control(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    control: Control,
    prompt_ids: Sequence[Sequence[int]],
    settings: SamplingSettings,
    control_id: int | torch.Tensor = GOOD,
) -> Samples:
    """``zoo.sampling.sample`` under one control (inference uses θ_c^w), or — soft prompts only — under a mix
    of both: ``control_id`` a weight per control, the soft prompt Σ_c w_c θ_c / Σ_c w_c. ``Samples.prompts``
    are the prompts without the control."""
    if isinstance(control_id, torch.Tensor) and control.settings.kind != "prompt":
        raise ValueError(f"only soft-prompt controls mix; {control.settings.kind} controls take one control at a time")
    prompts = [tokenizer.decode(p) for p in prompt_ids]
    s = control.settings
    if s.kind == "lora":
        with adapter_active(model, CONTROL_NAMES[control_id]):
            return sample(model, tokenizer, prompts, settings, prompt_ids=prompt_ids)
    if s.kind == "text":
        ctrl = control.text_ids[control_id]
        rows = []
        for p in prompt_ids:
            k = insert_at(p, s.placement, control.bos_offset)
            rows.append(list(p[:k]) + ctrl + list(p[k:]))
        return sample(model, tokenizer, prompts, settings, prompt_ids=rows)
    length = control.soft_prompts.length
    rows, starts = [], []
    for p in prompt_ids:  # placeholder ids where the soft prompt goes; the prefill hook overwrites their embeddings
        k = insert_at(p, s.placement, control.bos_offset)
        rows.append(list(p[:k]) + [control.pad_id] * length + list(p[k:]))
        starts.append(k)
    hook = soft_prompt_prefill(model, control, control_id, starts)
    return Samples.from_rollout(prompts, generate(model, tokenizer, rows, settings, prefill_hook=hook))


def soft_prompt_prefill(model: nn.Module, control: Control, control_id: int | torch.Tensor, starts: Sequence[int]
                        ) -> PrefillHook:
    """A ``zoo.rollout`` prefill hook: in prompt i (left-padded), the soft prompt of ``control_id`` (or the
    weighted mix of both, for a weight tensor) replaces the embeddings of the L placeholder positions from
    ``starts[i]`` on."""
    soft = control.soft_prompts
    both = soft(torch.arange(len(CONTROL_NAMES), device=soft.prompts.device))  # [2, L, H]
    if isinstance(control_id, torch.Tensor):
        w = control_id.to(both.dtype).to(both.device)
        vector = (w[:, None, None] * both).sum(0) / w.sum()
    else:
        vector = both[control_id]

    def hook(prompt_index: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        first = attention_mask.shape[1] - attention_mask.sum(1)  # left padding: the prompt's first column
        is_control = torch.zeros_like(input_ids, dtype=torch.bool)
        for r, (i, col) in enumerate(zip(prompt_index.tolist(), first.tolist())):
            is_control[r, col + starts[i] : col + starts[i] + soft.length] = True
        vectors = vector.to(input_ids.device).expand(len(input_ids), -1, -1)
        return substitute_embeddings(model, is_control, vectors)

    return hook
