"""Method examples -> token ids -> padded tensors: the one data path every method shares.

A *method example* is a dict ``{"prompt": [messages], "completions": [str, ...], **extras}``: a method
decides what its completions are (DPO: chosen and rejected; SFT: the demonstration; MEET: control
prompts too), this module turns them into tensors the same way for all.

``tokenize_examples`` runs inside ``datasets.map`` (batched, cached by the datasets fingerprint), so a
second run never re-tokenizes. ``PadCollator`` only pads: each batch becomes ``[C * B, T]`` rows,
completion-major (all first completions, then all second ones...), so DPO's chosen and rejected go
through one concatenated forward. Labels are -100 everywhere but completion tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from transformers import PreTrainedTokenizerBase

IGNORE_INDEX = -100
PromptFormat = Literal["chat", "hh", "plain"]
LengthPolicy = Literal["drop", "truncate"]


def render_prompt(messages: Sequence[dict], tokenizer: PreTrainedTokenizerBase, fmt: PromptFormat) -> str:
    """The text the model sees before its completion.

    - ``chat``: the tokenizer's chat template with the generation prompt (instruct models);
    - ``hh``: Anthropic's transcript form, ``\\n\\nHuman: …\\n\\nAssistant: …\\n\\nAssistant:``;
    - ``plain``: the turns' contents joined by blank lines (summaries, continuations).
    """
    if fmt == "chat":
        if tokenizer.chat_template is None:
            raise ValueError(f"prompt_format 'chat' needs a chat template; {tokenizer.name_or_path} has none (use 'hh')")
        return tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)
    if fmt == "hh":
        names = {"user": "Human", "assistant": "Assistant", "system": "System"}
        return "".join(f"\n\n{names[m['role']]}: {m['content']}" for m in messages) + "\n\nAssistant:"
    if fmt == "plain":
        return "\n\n".join(m["content"] for m in messages)
    raise ValueError(f"unknown prompt_format {fmt!r} (expected chat, hh or plain)")


def completion_text(text: str, fmt: PromptFormat, tokenizer: PreTrainedTokenizerBase) -> str:
    """A completion as it follows its prompt: HH puts a space after 'Assistant:'; chat ends the turn."""
    if fmt == "hh":
        return " " + text
    if fmt == "chat":
        return text + (tokenizer.eos_token or "")
    return text


@dataclass
class TokenizeSettings:
    prompt_format: PromptFormat = "chat"
    max_length: int = 512  # prompt + completion, in tokens
    max_prompt_length: int | None = None  # prompts are cut from the left to this first, if set
    length_policy: LengthPolicy = "drop"  # drop an over-long example, or truncate it (both counted and logged)
    add_eos: bool = True  # end plain/hh completions with eos, so the model learns to stop


def _tokenize_one(
    prompt: Sequence[dict], completions: Sequence[str], tok: PreTrainedTokenizerBase, s: TokenizeSettings
) -> tuple[list[int], list[list[int]], str]:
    """(prompt ids, completion ids, status) where status is 'ok', 'truncated' or 'dropped'."""
    # a chat template writes its own BOS if the model wants one; other formats let the tokenizer add it
    add_special = s.prompt_format != "chat"
    prompt_ids = tok(render_prompt(prompt, tok, s.prompt_format), add_special_tokens=add_special)["input_ids"]
    comp_ids = []
    for c in completions:
        ids = tok(completion_text(c, s.prompt_format, tok), add_special_tokens=False)["input_ids"]
        if s.add_eos and s.prompt_format != "chat" and tok.eos_token_id is not None:
            ids = ids + [tok.eos_token_id]
        comp_ids.append(ids)
    status = "ok"
    if s.max_prompt_length is not None and len(prompt_ids) > s.max_prompt_length:
        if s.length_policy == "drop":
            return prompt_ids, comp_ids, "dropped"
        prompt_ids, status = prompt_ids[-s.max_prompt_length :], "truncated"
    longest = max((len(c) for c in comp_ids), default=0)
    if len(prompt_ids) + longest > s.max_length:
        if s.length_policy == "drop":
            return prompt_ids, comp_ids, "dropped"
        status = "truncated"
        room = s.max_length - len(prompt_ids)
        if room < 1:  # keep the end of the prompt (the latest turn) and at least one completion token
            prompt_ids = prompt_ids[-(s.max_length - 1) :]
            room = 1
        comp_ids = [c[:room] for c in comp_ids]
    return prompt_ids, comp_ids, status


def tokenize_examples(
    batch: dict[str, list[Any]], tokenizer: PreTrainedTokenizerBase, settings: TokenizeSettings, code: str = ""
):
    """``datasets.map(batched=True)`` function: adds ``prompt_ids``, ``completion_ids``, ``length_status``.
    (``code`` only feeds the datasets cache fingerprint.)"""
    out: dict[str, list] = {"prompt_ids": [], "completion_ids": [], "length_status": []}
    for prompt, completions in zip(batch["prompt"], batch["completions"]):
        p, c, status = _tokenize_one(prompt, completions, tokenizer, settings)
        out["prompt_ids"].append(p)
        out["completion_ids"].append(c)
        out["length_status"].append(status)
    return out


@dataclass
class PadCollator:
    """Pads tokenized examples into ``input_ids``, ``attention_mask``, ``labels`` of shape ``[C*B, T]``.

    Numeric extras (``idx``, scores, weights...) become tensors of shape ``[B, ...]``.
    """

    pad_token_id: int
    pad_to_multiple_of: int | None = None

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        n_comp = {len(e["completion_ids"]) for e in examples}
        if len(n_comp) != 1:
            raise ValueError(f"every example in a batch needs the same number of completions, got {sorted(n_comp)}")
        (c,) = n_comp
        if c == 0:  # prompts only (predict, sampling): ids stay lists, the sampler pads them on the left
            return {"prompt_ids": [e["prompt_ids"] for e in examples], **self._extras(examples)}
        rows = [(e["prompt_ids"], e["completion_ids"][j]) for j in range(c) for e in examples]
        width = max(len(p) + len(y) for p, y in rows)
        if self.pad_to_multiple_of:
            width = -(-width // self.pad_to_multiple_of) * self.pad_to_multiple_of
        input_ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, (p, y) in enumerate(rows):
            n = len(p) + len(y)
            input_ids[i, :n] = torch.tensor(p + y)
            labels[i, len(p) : n] = torch.tensor(y)
            attention_mask[i, :n] = 1
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels, **self._extras(examples)}

    @staticmethod
    def _extras(examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        extras = {}
        for key, value in examples[0].items():
            if key in ("prompt_ids", "completion_ids", "prompt", "completions", "length_status"):
                continue
            if isinstance(value, (int, float, bool)) or (
                isinstance(value, list) and value and isinstance(value[0], (int, float))
            ):
                extras[key] = torch.tensor([e[key] for e in examples])
        return extras
