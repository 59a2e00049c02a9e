"""Batched sampling: n samples per prompt with a KV cache, for predict, ALT, DPA and PPO loops.

Built on ``transformers`` ``generate`` (KV cache, top-p, EOS stopping). Prompts are left-padded so
every row's continuation starts at the same column; the result keeps texts, token ids and whether each
sample was cut by ``max_new_tokens`` before it reached EOS. Inside ``listen_to_tokens(listener)`` every
decoding step is also handed to ``listener`` as it happens (the server streams replies with it).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

import torch
from torch import nn
from transformers import GenerationConfig, PreTrainedTokenizerBase
from transformers.generation.streamers import BaseStreamer

TokenListener = Callable[[int, list[int]], None]  # (first row of the generate call, each row's new token)
_listener: ContextVar[TokenListener | None] = ContextVar("steerzoo_token_listener", default=None)


@dataclass
class SamplingSettings:
    n: int = 1  # samples per prompt
    max_new_tokens: int = 128
    temperature: float = 1.0  # 0 = greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 = off
    batch_size: int = 16  # prompts per generate call
    seed: int | None = None


@dataclass
class Samples:
    """``n`` samples per prompt, prompt-major: sample j of prompt i is at ``i * n + j``."""

    prompts: list[str]
    texts: list[str]
    token_ids: list[list[int]]
    truncated: list[bool]
    n: int

    def for_prompt(self, i: int) -> list[str]:
        return self.texts[i * self.n : (i + 1) * self.n]


def generation_config(s: SamplingSettings, tokenizer: PreTrainedTokenizerBase) -> GenerationConfig:
    if s.temperature < 0 or not 0 < s.top_p <= 1 or s.n < 1 or s.max_new_tokens < 1:
        raise ValueError(f"bad sampling settings: {s}")
    greedy = s.temperature == 0
    if greedy and s.n > 1:
        raise ValueError("greedy decoding (temperature 0) gives one sample per prompt; set n: 1 or temperature > 0")
    return GenerationConfig(
        do_sample=not greedy,
        temperature=None if greedy else s.temperature,
        top_p=None if greedy else s.top_p,
        top_k=None if greedy or not s.top_k else s.top_k,
        max_new_tokens=s.max_new_tokens,
        num_return_sequences=s.n,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        use_cache=True,
    )


@contextmanager
def listen_to_tokens(listener: TokenListener) -> Iterator[None]:
    """Inside this context (in this thread), each decoding step of ``sample`` calls ``listener(first_row,
    tokens)``: ``tokens[r]`` is the new token of row ``first_row + r`` of the prompts passed to ``sample``
    (rows are prompt-major, ``n`` per prompt; a row past its EOS keeps receiving pad tokens)."""
    reset = _listener.set(listener)
    try:
        yield
    finally:
        _listener.reset(reset)


class StepStreamer(BaseStreamer):
    """A ``transformers`` streamer handing each decoding step to ``listener`` (the prompt it gets first is skipped)."""

    def __init__(self, listener: TokenListener, first_row: int):
        self.listener, self.first_row, self.prompt_seen = listener, first_row, False

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:
            self.prompt_seen = True
            return
        self.listener(self.first_row, value.reshape(-1).tolist())

    def end(self) -> None:
        pass


def step_streamer(first_row: int) -> StepStreamer | None:
    """The streamer for a ``generate`` call whose rows start at ``first_row``, when a listener is active."""
    listener = _listener.get()
    return StepStreamer(listener, first_row) if listener is not None else None


@torch.no_grad()
def sample(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str] | None,
    settings: SamplingSettings,
    prompt_ids: Sequence[Sequence[int]] | None = None,
) -> Samples:
    """Generate ``settings.n`` continuations for each rendered prompt text, or for pre-tokenized
    ``prompt_ids`` (then ``prompts`` may be None)."""
    cfg = generation_config(settings, tokenizer)
    if prompt_ids is None:
        prompt_ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    elif prompts is None:
        prompts = [tokenizer.decode(p) for p in prompt_ids]
    device = next(model.parameters()).device
    texts, ids_out, truncated = [], [], []
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(prompt_ids), settings.batch_size):
            chunk = prompt_ids[start : start + settings.batch_size]
            width = max(len(p) for p in chunk)
            input_ids = torch.full((len(chunk), width), tokenizer.pad_token_id, dtype=torch.long)
            attention = torch.zeros_like(input_ids)
            for i, p in enumerate(chunk):  # left padding: continuations all start at column `width`
                input_ids[i, width - len(p) :] = torch.tensor(p, dtype=torch.long)
                attention[i, width - len(p) :] = 1
            with torch.random.fork_rng(devices=[device] if device.type == "cuda" else [],
                                       enabled=settings.seed is not None):
                if settings.seed is not None:  # reproducible per chunk, and the caller's RNG stream is untouched
                    torch.manual_seed(settings.seed + start)
                out = model.generate(input_ids=input_ids.to(device), attention_mask=attention.to(device),
                                     generation_config=cfg, streamer=step_streamer(start * settings.n))
            for row in out[:, width:].tolist():
                eos = tokenizer.eos_token_id
                stop = row.index(eos) if eos in row else None
                kept = row[:stop] if stop is not None else [t for t in row if t != tokenizer.pad_token_id]
                ids_out.append(kept)
                truncated.append(stop is None)
                texts.append(tokenizer.decode(kept, skip_special_tokens=True))
    finally:
        model.train(was_training)
    return Samples(prompts=list(prompts), texts=texts, token_ids=ids_out, truncated=truncated, n=settings.n)
