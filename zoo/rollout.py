"""The rollout engine: the one generation path that predict, ALT, DPA, Personalized Soups, best-of-n and a
server sample from the current policy through.

``generate(model, tokenizer, prompt_ids, settings)`` turns P prompts (token ids) into P × n completions,
prompt-major (sample j of prompt i at ``i * n + j``), each with its token ids, text, the log-prob of every
sampled token, a finish reason and, for the call, the time spent in prefill and decode. Three engines:

- ``lean`` (default): our own decode loop over the model's forward. Prompts are sorted by length and decoded
  at most ``batch_size`` prompts at a time (fewer where padding would cost more memory traffic than another
  pass over the weights, ``decode_batches``); each prompt is prefilled ONCE, in length buckets with little
  padding, and its KV cache repeated for its n samples; rows that finish leave the batch; a step computes logits for the last position only and samples with a few
  tensor ops (no logits-processor machinery). K/V live in preallocated buffers (``RowCacheLayer``): a step
  writes one column instead of concatenating the whole cache, which halved the step at 128-256 rows on CPU.
  ``torch.compile`` is not used: the loop's shapes change every step (one more column, fewer rows).
- ``hf``: plain ``model.generate`` (``num_return_sequences=n``), the reference path and fallback.
- ``zoo.rollout_vllm.VLLMEngine``: vLLM, colocated, for GPU users (optional extra ``[vllm]``; untested in this
  repository).

What ``Completion.logprobs`` are. Entry t is log p_T(y_t | x, y_<t) = log_softmax(logits / T)[y_t]: the
model's own distribution at the sampling temperature T *before* top-k/top-p truncation (T = 1 for greedy),
computed in fp32. That is the distribution PPO's ratio needs and what a teacher-forced recomputation with
``zoo.logprobs`` at temperature T gives; it is not the truncated distribution the token was drawn from.

Token ids and text. ``token_ids`` are every sampled token, the EOS that ended a sample included (PPO scores the
stop decision too); ``text`` is their decoding without special tokens. A stop string ends a sample at the token
that completes it (finish ``stop``): the tokens stay as sampled, the text is cut before the stop string.

Seeds and batch invariance (lean engine). Sample j of prompt i draws one uniform per step from its own
generator, seeded from (``seed``, prompt index, j) (``sample_seed``), and takes the first token whose cumulative
probability exceeds it (inverse-CDF sampling). So its draws do not depend on which other prompts share the
batch, on ``batch_size``, on the process that runs it, or on when other rows finish; the global RNG is never
touched (without a seed, one draw from it picks the base seed; on each rank its own). What is *not* bitwise
batch-invariant: the logits themselves. A row's matmuls and masked attention run with different batch sizes
and padding widths in different groupings, so log-probs agree to float rounding (~1e-6 in fp32), and a token
can differ where a rounding-level change crosses a sampling boundary or a greedy near-tie — rare, but
possible. The ``hf`` engine seeds the global generator per chunk (as before) and is reproducible only for the
same batches.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.distributed as dist
from torch import nn
from transformers import DynamicCache, GenerationConfig, PreTrainedTokenizerBase
from transformers.cache_utils import Cache, DynamicLayer

from zoo.backbone import base_model, trunk_and_head, uses_peft

FinishReason = Literal["eos", "length", "stop"]
Engine = Literal["lean", "hf"]
Head = Callable[..., torch.Tensor]  # head(hidden [M, H], *row_args) -> logits [M, V]
PrefillHook = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], AbstractContextManager]
TokenListener = Callable[[int, int, int], None]  # (prompt position in the call, sample index, new token id)
_listener: ContextVar[TokenListener | None] = ContextVar("steerzoo_token_listener", default=None)


@contextmanager
def listen_to_tokens(listener: TokenListener) -> Iterator[None]:
    """Inside this context the lean engine hands every sampled token to ``listener`` as it is decoded (a server
    streams replies with it); the ``hf`` engine does not (its text arrives whole)."""
    token = _listener.set(listener)
    try:
        yield
    finally:
        _listener.reset(token)


@dataclass
class SamplingSettings:
    n: int = 1  # samples per prompt
    max_new_tokens: int = 128
    temperature: float = 1.0  # 0 = greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 = off
    batch_size: int = 16  # prompts per decode batch, at most (each with its n samples; split by length)
    seed: int | None = None
    stop: list[str] | None = None  # stop strings: the text is cut before the first one
    max_total_length: int | None = None  # cap on prompt + completion tokens
    engine: Engine = "lean"  # hf: plain model.generate, the reference path


@dataclass
class Completion:
    prompt_index: int
    sample_index: int
    token_ids: list[int]  # every sampled token, a final EOS included
    text: str
    logprobs: list[float]  # log_softmax(logits / T) of each sampled token, before top-k/top-p
    finish_reason: FinishReason


@dataclass
class Timing:
    prefill_s: float = 0.0
    decode_s: float = 0.0
    generated_tokens: int = 0

    @property
    def tokens_per_s(self) -> float:
        return self.generated_tokens / max(self.prefill_s + self.decode_s, 1e-9)


@dataclass
class Rollout:
    """``n`` completions per prompt, prompt-major: sample j of prompt i is at ``i * n + j``."""

    completions: list[Completion]
    n: int
    timing: Timing = field(default_factory=Timing)

    def for_prompt(self, i: int) -> list[Completion]:
        return self.completions[i * self.n : (i + 1) * self.n]


def sample_seed(seed: int, prompt_index: int, sample_index: int) -> int:
    """The seed of one sample's generator: a stable hash of (seed, prompt, sample), the same on every
    process and Python version (``hash()`` of a tuple is not promised to be)."""
    digest = hashlib.blake2b(f"{seed}/{prompt_index}/{sample_index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


# ---- validation ----------------------------------------------------------------------------------------
def check_settings(s: SamplingSettings) -> None:
    if s.n < 1:
        raise ValueError(f"sampling.n must be >= 1 (samples per prompt), got {s.n}")
    if s.temperature < 0:
        raise ValueError(f"sampling.temperature must be >= 0 (0 = greedy), got {s.temperature}")
    if not 0 < s.top_p <= 1:
        raise ValueError(f"sampling.top_p must be in (0, 1], got {s.top_p}")
    if s.top_k < 0:
        raise ValueError(f"sampling.top_k must be >= 0 (0 = off), got {s.top_k}")
    if s.temperature == 0 and s.n > 1:
        raise ValueError(f"greedy decoding (temperature 0) gives one sample per prompt, but sampling.n is {s.n}; "
                         "set n: 1 or temperature > 0")
    if s.max_new_tokens < 1 or s.batch_size < 1:
        raise ValueError(f"sampling.max_new_tokens and batch_size must be >= 1, got {s.max_new_tokens}, {s.batch_size}")
    if s.stop is not None and (isinstance(s.stop, str) or not all(isinstance(x, str) and x for x in s.stop)):
        raise ValueError(f"sampling.stop must be a list of non-empty strings, got {s.stop!r}")
    if s.engine not in ("lean", "hf"):
        raise ValueError(f"sampling.engine must be lean or hf (VLLMEngine is a separate object), got {s.engine!r}")


def token_budgets(prompt_ids: Sequence[Sequence[int]], s: SamplingSettings) -> list[int]:
    """New tokens each prompt may get: ``max_new_tokens``, or less where ``max_total_length`` caps it.
    Checks every prompt before anything is generated."""
    if len(prompt_ids) == 0:
        raise ValueError("no prompts to generate for (prompt_ids is empty)")
    budgets = []
    for i, p in enumerate(prompt_ids):
        if len(p) == 0:
            raise ValueError(f"prompt {i} is empty (0 tokens); a prompt needs at least one token")
        if s.max_total_length is not None and len(p) > s.max_total_length:
            raise ValueError(f"prompt {i} has {len(p)} tokens, more than sampling.max_total_length "
                             f"{s.max_total_length}")
        cap = s.max_new_tokens if s.max_total_length is None else s.max_total_length - len(p)
        budgets.append(min(s.max_new_tokens, cap))
    return budgets


# ---- entry point ---------------------------------------------------------------------------------------
@torch.no_grad()
def generate(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompt_ids: Sequence[Sequence[int]],
    settings: SamplingSettings,
    *,
    head: Head | None = None,
    head_args: Sequence[torch.Tensor] = (),
    prefill_hook: PrefillHook | None = None,
    prompt_index: Sequence[int] | None = None,
    split_across_ranks: bool = False,
) -> Rollout:
    """``settings.n`` completions for each prompt in ``prompt_ids``.

    Args:
        head: replaces the model's LM head (lean engine): ``head(hidden [M, H], *row_args) -> logits [M, V]``,
            e.g. ``zoo.plural.PluralHead`` with per-request Λ.
        head_args: per-prompt tensors [P, ...]; each prompt's row reaches ``head`` with each of its samples.
        prefill_hook: ``prefill_hook(prompt_index [b], input_ids [b, T], attention_mask [b, T])`` returns a
            context manager entered around the prefill forward only (rows left-padded). MEET's soft prompts
            substitute embedding rows in it. The ``hf`` engine enters it around the whole ``generate`` call.
        prompt_index: each prompt's index for seeding and for ``prefill_hook`` (default 0..P-1).
        split_across_ranks: with torch.distributed initialised, every rank passes the SAME prompts, generates
            its share and returns the whole result in prompt order. Off by default: under DDP predict or
            training each rank holds different prompts and must generate them itself.
    """
    check_settings(settings)
    budgets = token_budgets(prompt_ids, settings)
    index = list(range(len(prompt_ids))) if prompt_index is None else [int(i) for i in prompt_index]
    if len(index) != len(prompt_ids):
        raise ValueError(f"prompt_index has {len(index)} entries for {len(prompt_ids)} prompts")
    for k, a in enumerate(head_args):
        if a.shape[0] != len(prompt_ids):
            raise ValueError(f"head_args[{k}] has {a.shape[0]} rows; it needs one per prompt ({len(prompt_ids)})")
    if settings.engine == "hf" and head is not None:
        raise ValueError("a custom head needs the lean engine (sampling.engine: lean)")
    if split_across_ranks and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return _split_across_ranks(model, tokenizer, prompt_ids, settings, head, head_args, prefill_hook, index,
                                   budgets)
    completions, timing = _local(model, tokenizer, prompt_ids, settings, head, head_args, prefill_hook, index,
                                 budgets)
    return Rollout(completions=completions, n=settings.n, timing=timing)


def _local(model, tokenizer, prompt_ids, settings, head, head_args, prefill_hook, index, budgets
           ) -> tuple[list[Completion], Timing]:
    """This process's completions from the chosen engine, the model in eval mode (restored after)."""
    run = _lean if settings.engine == "lean" else _hf
    was_training = model.training
    model.eval()
    try:
        return run(model, tokenizer, prompt_ids, settings, head, head_args, prefill_hook, index, budgets)
    finally:
        model.train(was_training)


def _split_across_ranks(model, tokenizer, prompt_ids, settings, head, head_args, prefill_hook, index,
                        budgets) -> Rollout:
    """Rank r takes every world-th prompt in length order (balanced work), then all ranks exchange results.
    Seeds follow the global prompt index, so the gathered result is the one-process result."""
    world, rank = dist.get_world_size(), dist.get_rank()
    by_length = sorted(range(len(prompt_ids)), key=lambda k: len(prompt_ids[k]))
    mine = sorted(by_length[rank::world])
    local: tuple[list[Completion], Timing] = ([], Timing())
    if mine:
        local = _local(model, tokenizer, [prompt_ids[k] for k in mine], settings, head,
                       [a[torch.tensor(mine, device=a.device)] for a in head_args], prefill_hook,
                       [index[k] for k in mine], [budgets[k] for k in mine])
    gathered: list = [None] * world
    dist.all_gather_object(gathered, (mine, *local))
    n = settings.n
    completions: list[Completion | None] = [None] * (len(prompt_ids) * n)
    for positions, comps, _ in gathered:
        for r, k in enumerate(positions):
            completions[k * n : (k + 1) * n] = comps[r * n : (r + 1) * n]
    timings = [t for _, _, t in gathered]
    timing = Timing(prefill_s=max(t.prefill_s for t in timings), decode_s=max(t.decode_s for t in timings),
                    generated_tokens=sum(t.generated_tokens for t in timings))
    return Rollout(completions=completions, n=n, timing=timing)


def left_pad(prompts: Sequence[Sequence[int]], tokenizer: PreTrainedTokenizerBase, device: torch.device
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask) [b, T]: left padding, so every row's next token goes to column T."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    width = max(len(p) for p in prompts)
    input_ids = torch.full((len(prompts), width), pad, dtype=torch.long)
    mask = torch.zeros(len(prompts), width, dtype=torch.long)
    for r, p in enumerate(prompts):
        input_ids[r, width - len(p) :] = torch.tensor(list(p), dtype=torch.long)
        mask[r, width - len(p) :] = 1
    return input_ids.to(device), mask.to(device)


# ---- lean engine: the KV cache -------------------------------------------------------------------------
class RowCacheLayer(DynamicLayer):
    """One layer's K/V in preallocated [rows, heads, capacity, dim] buffers.

    ``DynamicLayer`` concatenates on every step, copying the layer's whole cache for each new token (measured
    on SmolLM2, 2 CPU cores: a 256-row step at 300 positions took 2.9 s with it, 1.7 s with this); here a step
    writes one column and hands attention a view. Dropping finished rows (``batch_select_indices``) copies only
    the rows that move into freed slots, and the buffers keep their size (no new peak)."""

    def __init__(self, rows: int, capacity: int):
        super().__init__()
        self.max_rows, self.capacity, self.length, self.rows = rows, capacity, 0, rows

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        h, dk, dv = key_states.shape[1], key_states.shape[-1], value_states.shape[-1]
        self.device = key_states.device
        # not zeroed: a column is written before attention reads it, or zeroed by `place` as padding (zeroing
        # a 256-row buffer first cost seconds of page faults and a pass over gigabytes)
        self.k_buf = key_states.new_empty(self.max_rows, h, self.capacity, dk)
        self.v_buf = value_states.new_empty(self.max_rows, h, self.capacity, dv)
        self.is_initialized = True

    def place(self, row: int, end: int, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Write a prefilled block [k, heads, w, dim] into rows [row, row + k), columns [end - w, end): left
        padding to the batch's width ``end``. The padding columns are zeroed: masked, but a masked NaN would
        still poison the attention sum."""
        if not self.is_initialized:
            self.lazy_initialization(keys, values)
        k, w = keys.shape[0], keys.shape[-2]
        self.k_buf[row : row + k, :, : end - w] = 0
        self.v_buf[row : row + k, :, : end - w] = 0
        self.k_buf[row : row + k, :, end - w : end] = keys
        self.v_buf[row : row + k, :, end - w : end] = values
        self.length = end
        self._views()

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        end = self.length + key_states.shape[-2]
        if end > self.capacity:
            raise RuntimeError(f"RowCacheLayer: {end} positions exceed its capacity {self.capacity}")
        self.k_buf[: self.rows, :, self.length : end] = key_states
        self.v_buf[: self.rows, :, self.length : end] = value_states
        self.length = end
        self._views()
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self.length

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        moved = (indices != torch.arange(len(indices), device=indices.device)).nonzero().squeeze(1)
        if len(moved):  # the right-hand side is gathered before any row is written
            self.k_buf[moved] = self.k_buf[indices[moved]]
            self.v_buf[moved] = self.v_buf[indices[moved]]
        self.rows = len(indices)
        self._views()

    def _views(self) -> None:
        self.keys = self.k_buf[: self.rows, :, : self.length]
        self.values = self.v_buf[: self.rows, :, : self.length]


def row_cache_layers(model: nn.Module, rows: int, capacity: int) -> list[RowCacheLayer] | None:
    """Row-cache layers for a plain full-attention decoder; None for anything else (sliding-window or
    linear-attention layers), where transformers' own ``DynamicCache`` is used: correct, only slower."""
    layers = DynamicCache(config=model.config).layers
    if layers and all(type(layer) is DynamicLayer for layer in layers):
        return [RowCacheLayer(rows, capacity) for _ in layers]
    return None


def step_traffic(model: nn.Module) -> tuple[int, int] | None:
    """(bytes of weights, bytes of K/V per cached token): what a decode step reads from memory; None where
    the config does not say."""
    config = model.config.get_text_config()
    layers, kv_heads = getattr(config, "num_hidden_layers", None), getattr(config, "num_key_value_heads", None)
    heads, hidden = getattr(config, "num_attention_heads", None), getattr(config, "hidden_size", None)
    head_dim = getattr(config, "head_dim", None) or (hidden // heads if hidden and heads else None)
    if not layers or not kv_heads or not head_dim:
        return None
    param = next(model.parameters())
    device = param.device.type  # K/V come out in the autocast dtype where autocast is on
    size = torch.get_autocast_dtype(device).itemsize if torch.is_autocast_enabled(device) else param.element_size()
    return sum(p.numel() * p.element_size() for p in model.parameters()), 2 * layers * kv_heads * head_dim * size


def decode_batches(lengths: Sequence[int], n: int, new_tokens: int, weight_bytes: int, kv_bytes: int
                   ) -> list[range]:
    """Split prompts sorted by length into decode batches that minimise the memory a decode step reads.

    A CPU decode step is bound by memory traffic: each batch reads the weights once, and every row reads its
    K/V over the batch's padded width. One batch of HH prompts from 36 to 590 tokens at n = 8 reads ~13x
    more K/V than the weights; splitting it by length costs a few extra weight passes and saves most of that.
    Exact dynamic programme over contiguous runs (P^2 terms, P = prompts per batch)."""
    best, cut = [0.0] + [float("inf")] * len(lengths), [0] * (len(lengths) + 1)
    for j in range(1, len(lengths) + 1):
        for i in range(j):
            cost = best[i] + weight_bytes + n * (j - i) * (lengths[j - 1] + new_tokens / 2) * kv_bytes
            if cost < best[j]:
                best[j], cut[j] = cost, i
    parts, j = [], len(lengths)
    while j:
        parts.append(range(cut[j], j))
        j = cut[j]
    return parts[::-1]


def prefill_buckets(lengths: Sequence[int], max_padding: float = 0.25) -> list[range]:
    """Split prompts sorted by length into runs whose left padding stays under ``max_padding`` of their
    real tokens: each prompt is prefilled once, with little padding (HH prompts of one batch range from 36
    to 590 tokens: padded to the longest, 4x the real tokens)."""
    buckets, start, real = [], 0, 0
    for k, length in enumerate(lengths):
        if k > start and (k + 1 - start) * length > (1 + max_padding) * (real + length):
            buckets.append(range(start, k))
            start, real = k, 0
        real += length
    return buckets + [range(start, len(lengths))]


# ---- lean engine: forward and sampling -----------------------------------------------------------------
class _Forward:
    """The model's forward for the last position only: logits through the model's own head (so wrappers,
    logit scaling and a swapped head all apply), or the trunk's last hidden state through ``head``."""

    def __init__(self, model: nn.Module, head: Head | None):
        self.model, self.head = model, head
        if head is not None:
            self.trunk = trunk_and_head(model)[0]

    def __call__(self, input_ids, attention_mask, position_ids, cache, row_args) -> torch.Tensor:
        if self.head is None:
            out = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                             cache=cache, use_cache=True, logits_to_keep=1)
            return out.logits[:, -1].float()
        captured = []
        handle = self.trunk.register_forward_hook(lambda m, a, out: captured.append(out[0][:, -1]))
        try:  # an empty logits_to_keep: the model's own LM head runs on zero positions
            self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, cache=cache,
                       use_cache=True, logits_to_keep=torch.empty(0, dtype=torch.long, device=input_ids.device))
        finally:
            handle.remove()
        return self.head(captured[-1], *row_args).float()


def next_tokens(logits: torch.Tensor, s: SamplingSettings, uniforms: torch.Tensor | None
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """(tokens [M], their log_softmax(logits / T) [M]) from fp32 ``logits`` [M, V].

    Sampling keeps the tokens that survive top-k, then the smallest most-probable set whose mass reaches
    ``top_p`` of what is left (transformers' order and tie rule), and picks by inverse CDF with ``uniforms``."""
    if s.temperature == 0:
        tokens = logits.argmax(-1)
        return tokens, logits.gather(-1, tokens[:, None]).squeeze(1) - logits.logsumexp(-1)
    logp = torch.log_softmax(logits / s.temperature, -1)
    probs = logp.exp()
    if s.top_k and s.top_k < probs.shape[-1]:
        kth = probs.topk(s.top_k, -1).values[:, -1:]
        probs = probs.masked_fill(probs < kth, 0.0)
    order = None
    if s.top_p < 1:
        probs, order = probs.sort(-1, descending=True)
        mass_before = probs.cumsum(-1) - probs
        probs = probs.masked_fill(mass_before >= s.top_p * probs.sum(-1, keepdim=True), 0.0)
    cdf = probs.cumsum(-1)
    picked = torch.searchsorted(cdf, (uniforms.to(cdf) * cdf[:, -1])[:, None], right=True)
    picked = picked.clamp(max=probs.shape[-1] - 1)
    tokens = (picked if order is None else order.gather(-1, picked)).squeeze(1)
    return tokens, logp.gather(-1, tokens[:, None]).squeeze(1)


@dataclass
class _Row:
    """One sample being decoded."""

    prompt: int  # position in this call's prompt list
    sample: int
    position: int  # position id of the next token fed
    budget: int
    generator: torch.Generator | None
    tokens: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    finish: FinishReason | None = None
    text: str | None = None  # set where a stop string cut it


def _check_stop(row: _Row, tokenizer: PreTrainedTokenizerBase, stop: Sequence[str]) -> None:
    text = tokenizer.decode(row.tokens, skip_special_tokens=True)
    hits = [i for i in (text.find(x) for x in stop) if i >= 0]
    if hits:
        row.finish, row.text = "stop", text[: min(hits)]


def _lean(model, tokenizer, prompt_ids, s: SamplingSettings, head, head_args, prefill_hook, index, budgets
          ) -> tuple[list[Completion], Timing]:
    if uses_peft(model) and model.peft_config[model.active_adapter].is_prompt_learning:
        raise ValueError("PEFT prompt tuning adds its virtual tokens inside PeftModel.generate; the lean engine "
                         "does not: set sampling.engine: hf")
    base = s.seed if s.seed is not None else int(torch.randint(2**62, (1,)).item())
    forward, timing = _Forward(model, head), Timing()
    rows: list[_Row | None] = [None] * (len(prompt_ids) * s.n)
    todo = sorted((k for k in range(len(prompt_ids)) if budgets[k] > 0), key=lambda k: len(prompt_ids[k]))
    for k in set(range(len(prompt_ids))) - set(todo):  # a prompt already at the cap: nothing to generate
        for j in range(s.n):
            rows[k * s.n + j] = _Row(k, j, 0, 0, None, finish="length")
    traffic = step_traffic(model)
    for start in range(0, len(todo), s.batch_size):
        batch = todo[start : start + s.batch_size]
        parts = [range(len(batch))] if traffic is None else decode_batches(
            [len(prompt_ids[k]) for k in batch], s.n, s.max_new_tokens, *traffic)
        for part in parts:
            group = batch[part.start : part.stop]
            for row in _decode_group(model, forward, tokenizer, prompt_ids, s, group, budgets, index, base,
                                     head_args, prefill_hook, timing):
                rows[row.prompt * s.n + row.sample] = row
    completions = []
    for row in rows:
        text = row.text if row.text is not None else tokenizer.decode(row.tokens, skip_special_tokens=True)
        completions.append(Completion(index[row.prompt], row.sample, row.tokens, text, row.logprobs, row.finish))
        timing.generated_tokens += len(row.tokens)
    return completions, timing


def _decode_group(model, forward, tokenizer, prompt_ids, s, group, budgets, index, base, head_args, prefill_hook,
                  timing) -> list[_Row]:
    """Prefill ``group``'s prompts once, repeat their caches for the n samples, decode until every row ends."""
    device = next(model.parameters()).device
    lengths = [len(prompt_ids[k]) for k in group]
    width, n = max(lengths), s.n
    capacity = width + max(budgets[k] for k in group)
    prompt_args = [a[torch.tensor(group, device=a.device)] for a in head_args]
    t0 = time.perf_counter()
    cache, logits, attention = _prefill(model, forward, tokenizer, [prompt_ids[k] for k in group],
                                        [index[k] for k in group], prompt_args, n, capacity, prefill_hook)
    row_args = [a.repeat_interleave(n, 0) for a in prompt_args]
    t1 = time.perf_counter()
    timing.prefill_s += t1 - t0

    greedy = s.temperature == 0
    live = [_Row(k, j, lengths[r], budgets[k],
                 None if greedy else torch.Generator().manual_seed(sample_seed(base, index[k], j)))
            for r, k in enumerate(group) for j in range(n)]
    done: list[_Row] = []
    eos = tokenizer.eos_token_id
    listen = _listener.get()
    for step in range(capacity - width):
        uniforms = None if greedy else torch.cat([torch.rand(1, generator=row.generator) for row in live])
        tokens, logps = next_tokens(logits, s, uniforms)
        for row, t, lp in zip(live, tokens.tolist(), logps.tolist()):
            row.tokens.append(t)
            row.logprobs.append(lp)
            if listen is not None:
                listen(row.prompt, row.sample, t)
            if t == eos:
                row.finish = "eos"
            elif s.stop:
                _check_stop(row, tokenizer, s.stop)
            if row.finish is None and len(row.tokens) == row.budget:
                row.finish = "length"
        alive = [row.finish is None for row in live]
        done += [row for row in live if row.finish is not None]
        if not any(alive):
            break
        if not all(alive):  # finished rows leave: live rows from the tail move into the freed slots
            keep = _compaction(alive)
            keep_t = torch.tensor(keep, device=device)
            cache.batch_select_indices(keep_t)
            attention[: len(keep)] = attention[keep_t]
            tokens = tokens[keep_t]
            row_args = [a[keep_t.to(a.device)] for a in row_args]
            live = [live[i] for i in keep]
        attention[: len(live), width + step] = 1
        positions = torch.tensor([[row.position + step] for row in live], device=device)
        logits = forward(tokens[:, None], attention[: len(live), : width + step + 1], positions, cache, row_args)
    timing.decode_s += time.perf_counter() - t1
    return done


def _prefill(model, forward, tokenizer, prompts, index, prompt_args, n, capacity, prefill_hook
             ) -> tuple[Cache, torch.Tensor, torch.Tensor]:
    """Run each prompt (sorted by length) through the model once, in ``prefill_buckets``, and lay its K/V out
    n times, left-padded to the group's width. Returns (cache, next-token logits [b·n, V], attention mask
    [b·n, capacity] with the prompt columns filled)."""
    device = next(model.parameters()).device
    width = max(len(p) for p in prompts)
    layers = row_cache_layers(model, len(prompts) * n, capacity)
    buckets = prefill_buckets([len(p) for p in prompts]) if layers else [range(len(prompts))]
    attention = torch.zeros(len(prompts) * n, capacity, dtype=torch.long, device=device)
    logits = []
    for bucket in buckets:
        input_ids, mask = left_pad([prompts[r] for r in bucket], tokenizer, device)
        prefilled = DynamicCache(config=model.config)
        rows = torch.tensor(list(bucket))
        hook = prefill_hook(torch.tensor([index[r] for r in bucket]), input_ids, mask) if prefill_hook else nullcontext()
        with hook:
            logits.append(forward(input_ids, mask, (mask.cumsum(-1) - 1).clamp(min=0), prefilled,
                                  [a[rows.to(a.device)] for a in prompt_args]).repeat_interleave(n, 0))
        first, w = bucket.start * n, input_ids.shape[1]
        attention[first : first + len(bucket) * n, width - w : width] = mask.repeat_interleave(n, 0)
        if layers is None:  # one bucket: the whole group
            prefilled.batch_repeat_interleave(n)
            return prefilled, logits[0], attention
        for layer, src in zip(layers, prefilled.layers):
            layer.place(first, width, src.keys.repeat_interleave(n, 0), src.values.repeat_interleave(n, 0))
    return Cache(layers=layers), torch.cat(logits), attention


def _compaction(alive: list[bool]) -> list[int]:
    """Slot order after dropping dead rows: live rows keep their slots, and live rows beyond the new size fill
    the dead slots below it, so only those rows are copied."""
    size = sum(alive)
    keep = list(range(size))
    holes = [i for i in range(size) if not alive[i]]
    movers = [i for i in range(size, len(alive)) if alive[i]]
    for hole, mover in zip(holes, movers):
        keep[hole] = mover
    return keep


# ---- hf engine: plain model.generate -------------------------------------------------------------------
def generation_config(s: SamplingSettings, tokenizer: PreTrainedTokenizerBase, max_new_tokens: int
                      ) -> GenerationConfig:
    greedy = s.temperature == 0
    return GenerationConfig(
        do_sample=not greedy,
        temperature=None if greedy else s.temperature,
        top_p=None if greedy else s.top_p,
        top_k=None if greedy or not s.top_k else s.top_k,
        max_new_tokens=max_new_tokens,
        num_return_sequences=s.n,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        use_cache=True,
        return_dict_in_generate=True,
        output_logits=True,  # raw logits per step, for log_softmax(logits / T)
    )


def _first_stop(tokens: list[int], tokenizer: PreTrainedTokenizerBase, stop: Sequence[str]
                ) -> tuple[int, str] | None:
    """(tokens kept, text cut before the stop string) at the first token that completes a stop string."""
    for k in range(1, len(tokens) + 1):
        text = tokenizer.decode(tokens[:k], skip_special_tokens=True)
        hits = [i for i in (text.find(x) for x in stop) if i >= 0]
        if hits:
            return k, text[: min(hits)]
    return None


def _hf(model, tokenizer, prompt_ids, s: SamplingSettings, head, head_args, prefill_hook, index, budgets
        ) -> tuple[list[Completion], Timing]:
    """``model.generate`` on left-padded chunks of ``batch_size`` prompts; budgets, stop strings and log-probs
    are applied to its output afterwards."""
    device = next(model.parameters()).device
    completions, timing = [], Timing()
    for start in range(0, len(prompt_ids), s.batch_size):
        chunk = list(range(start, min(start + s.batch_size, len(prompt_ids))))
        input_ids, attention = left_pad([prompt_ids[k] for k in chunk], tokenizer, device)
        cfg = generation_config(s, tokenizer, max(max(budgets[k] for k in chunk), 1))
        hook = prefill_hook(torch.tensor([index[k] for k in chunk]), input_ids, attention) if prefill_hook else nullcontext()
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else [], enabled=s.seed is not None):
            if s.seed is not None:  # reproducible per chunk, and the caller's RNG stream is untouched
                torch.manual_seed(s.seed + start)
            with hook:
                sequences, logps = _timed_generate(model, input_ids, attention, cfg, timing)
        for row, (ids, lps) in enumerate(zip(sequences.tolist(), logps.tolist())):
            k, j = chunk[row // s.n], row % s.n
            completions.append(_hf_completion(ids, lps, budgets[k], index[k], j, tokenizer, s))
    timing.generated_tokens = sum(len(c.token_ids) for c in completions)
    return completions, timing


def _timed_generate(model, input_ids, attention, cfg: GenerationConfig, timing: Timing
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """(new tokens [rows, steps], their log_softmax(logits / T) [rows, steps]); the prefill is timed up to the
    return of the first forward."""
    forwards: list[float] = []
    handle = base_model(model).register_forward_hook(lambda *a: forwards.append(time.perf_counter()))
    t0 = time.perf_counter()
    try:
        out = model.generate(input_ids=input_ids, attention_mask=attention, generation_config=cfg)
    finally:
        handle.remove()
    prefilled = forwards[0] if forwards else t0
    timing.prefill_s += prefilled - t0
    timing.decode_s += time.perf_counter() - prefilled
    sequences = out.sequences[:, input_ids.shape[1] :]
    temperature = cfg.temperature if cfg.do_sample else 1.0
    logps = [torch.log_softmax(step.float() / temperature, -1).gather(-1, sequences[:, t, None])[:, 0]
             for t, step in enumerate(out.logits)]
    return sequences, torch.stack(logps, 1)


def _hf_completion(ids: list[int], logps: list[float], budget: int, prompt_index: int, sample_index: int,
                   tokenizer: PreTrainedTokenizerBase, s: SamplingSettings) -> Completion:
    eos = tokenizer.eos_token_id
    end = ids.index(eos) + 1 if eos in ids else len(ids)
    ids, reason, text = ids[: min(end, budget)], "eos" if end <= budget and eos in ids else "length", None
    if s.stop:
        hit = _first_stop([t for t in ids if t != eos], tokenizer, s.stop)
        if hit is not None:
            ids, reason, text = ids[: hit[0]], "stop", hit[1]
    if text is None:
        text = tokenizer.decode(ids, skip_special_tokens=True)
    return Completion(prompt_index, sample_index, ids, text, logps[: len(ids)], reason)
