"""Method examples -> token ids -> padded tensors: the one data path every method shares.

A *method example* is a dict ``{"prompt": [messages], "completions": [str, ...], **extras}``: a method
decides what its completions are (a preference method: chosen and rejected; fine-tuning: the demonstration; control
prompts too), this module turns them into tensors the same way for all.

``tokenize_examples`` runs inside ``datasets.map`` (batched, cached by the datasets fingerprint), so a
second run never re-tokenizes. ``PadCollator`` only pads: each batch becomes ``[C * B, T]`` rows,
completion-major (all first completions, then all second ones...), so a pair's chosen and rejected go
through one concatenated forward. Labels are -100 everywhere but completion tokens.

With ``share_prompt`` the prompt runs once per example instead of once per completion (prefix sharing):
one row ``prompt | completion_0 | completion_1 | ...`` per example, positions of each completion restarting
after the prompt, and a 4-D mask in which every completion sees the prompt and its own earlier tokens only.
The log-probs are those of the separate rows (same positions, same visible context); the trunk processes
``P + ΣC`` tokens instead of ``C·(P + max C)``. See ``packed_rows``.

An example may carry a ``prefix`` string: text a method splices in before the prompt at the token level (a
control code, textual feedback). It is tokenized on its own (no special tokens) into ``prefix_ids``, counted
in the length budget, and never truncated; the collator hands it over as ``prefix_ids`` [B, L] (right-padded)
and ``prefix_lengths`` [B], beside the rows without it, so a method has both x → y and (prefix, x) → y.
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
    prompt: Sequence[dict], completions: Sequence[str], tok: PreTrainedTokenizerBase, s: TokenizeSettings,
    reserved: int = 0,
) -> tuple[list[int], list[list[int]], str]:
    """(prompt ids, completion ids, status) where status is 'ok', 'truncated' or 'dropped'; ``reserved``
    tokens of ``max_length`` belong to a prefix spliced in later."""
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
    limit = s.max_length - reserved
    if len(prompt_ids) + longest > limit:
        if s.length_policy == "drop" or limit < 2:
            return prompt_ids, comp_ids, "dropped"
        status = "truncated"
        room = limit - len(prompt_ids)
        if room < 1:  # keep the end of the prompt (the latest turn) and at least one completion token
            prompt_ids = prompt_ids[-(limit - 1) :]
            room = 1
        comp_ids = [c[:room] for c in comp_ids]
    return prompt_ids, comp_ids, status


def tokenize_examples(
    batch: dict[str, list[Any]], tokenizer: PreTrainedTokenizerBase, settings: TokenizeSettings, code: str = ""
):
    """``datasets.map(batched=True)`` function: adds ``prompt_ids``, ``completion_ids``, ``length_status`` (and
    ``prefix_ids`` where examples carry a ``prefix``). (``code`` only feeds the datasets cache fingerprint.)"""
    out: dict[str, list] = {"prompt_ids": [], "completion_ids": [], "length_status": []}
    prefixes = batch.get("prefix")
    if prefixes is not None:
        out["prefix_ids"] = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prefixes]
    for j, (prompt, completions) in enumerate(zip(batch["prompt"], batch["completions"])):
        reserved = len(out["prefix_ids"][j]) if prefixes is not None else 0
        p, c, status = _tokenize_one(prompt, completions, tokenizer, settings, reserved)
        out["prompt_ids"].append(p)
        out["completion_ids"].append(c)
        out["length_status"].append(status)
    return out


@dataclass
class PadCollator:
    """Pads tokenized examples into ``input_ids``, ``attention_mask``, ``labels`` of shape ``[C*B, T]``.

    Numeric extras (``idx``, scores, weights...) become tensors of shape ``[B, ...]``; ``prefix_ids`` become
    ``prefix_ids`` [B, L] (right-padded) and ``prefix_lengths`` [B].
    """

    pad_token_id: int
    pad_to_multiple_of: int | None = None
    share_prompt: bool = False  # one packed row per example (``packed_rows``) when it has >= 2 completions

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        n_comp = {len(e["completion_ids"]) for e in examples}
        if len(n_comp) != 1:
            raise ValueError(f"every example in a batch needs the same number of completions, got {sorted(n_comp)}")
        (c,) = n_comp
        if c == 0:  # prompts only (predict, sampling): ids stay lists, the sampler pads them on the left
            return {"prompt_ids": [e["prompt_ids"] for e in examples], **self._extras(examples)}
        if self.share_prompt and c >= 2:
            return {**packed_rows(examples, self.pad_token_id, self.pad_to_multiple_of), **self._extras(examples)}
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

    def _extras(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        extras = {}
        if "prefix_ids" in examples[0]:
            lengths = [len(e["prefix_ids"]) for e in examples]
            prefix = torch.full((len(examples), max(lengths)), self.pad_token_id, dtype=torch.long)
            for i, e in enumerate(examples):
                prefix[i, : lengths[i]] = torch.tensor(e["prefix_ids"], dtype=torch.long)
            extras["prefix_ids"], extras["prefix_lengths"] = prefix, torch.tensor(lengths)
        for key, value in examples[0].items():
            if key in ("prompt_ids", "completion_ids", "prompt", "completions", "length_status", "prefix", "prefix_ids"):
                continue
            if isinstance(value, (int, float, bool)) or (
                isinstance(value, list) and value and isinstance(value[0], (int, float))
            ):
                extras[key] = torch.tensor([e[key] for e in examples])
        return extras


def packed_rows(
    examples: list[dict[str, Any]], pad_token_id: int, pad_to_multiple_of: int | None = None
) -> dict[str, torch.Tensor]:
    """Prefix-shared tensors for B examples with C completions each.

    - ``input_ids`` [B, W]: ``prompt | completion_0 | ... | completion_{C-1} | pad``;
    - ``position_ids`` [B, W]: completion j's tokens sit at ``len(prompt) + t``, as in its own row;
    - ``attention_mask`` [B, 1, W, W] bool: a prompt token sees the earlier prompt, a completion token sees
      the prompt and the earlier tokens of its own completion; a pad token sees itself only (no empty
      softmax rows, so no NaN can reach a gradient);
    - ``pred_labels`` [C*B, W], completion-major like the unpacked layout: ``pred_labels[j*B + i, t]`` is the
      token that position t of row i predicts for completion j, else -100. Position t predicts the next
      token of its own sequence, so the first token of every completion is predicted by the last prompt
      position.
    """
    b, c = len(examples), len(examples[0]["completion_ids"])
    width = max(len(e["prompt_ids"]) + sum(len(y) for y in e["completion_ids"]) for e in examples)
    if pad_to_multiple_of:
        width = -(-width // pad_to_multiple_of) * pad_to_multiple_of
    input_ids = torch.full((b, width), pad_token_id, dtype=torch.long)
    position_ids = torch.zeros((b, width), dtype=torch.long)
    pred_labels = torch.full((c * b, width), IGNORE_INDEX, dtype=torch.long)
    allowed = torch.zeros((b, width, width), dtype=torch.bool)
    causal = torch.ones((width, width), dtype=torch.bool).tril()
    for i, e in enumerate(examples):
        p = len(e["prompt_ids"])
        input_ids[i, :p] = torch.tensor(e["prompt_ids"], dtype=torch.long)
        position_ids[i, :p] = torch.arange(p)
        allowed[i, :p, :p] = causal[:p, :p]
        start = p
        for j, y in enumerate(e["completion_ids"]):
            n, end = len(y), start + len(y)
            if n == 0:
                continue
            input_ids[i, start:end] = torch.tensor(y, dtype=torch.long)
            position_ids[i, start:end] = torch.arange(p, p + n)
            allowed[i, start:end, :p] = True
            allowed[i, start:end, start:end] = causal[:n, :n]
            # predicting positions: the last prompt token (for y[0]), then each completion token but the last
            if p > 0:
                pred_labels[j * b + i, p - 1] = y[0]
            pred_labels[j * b + i, start : end - 1] = torch.tensor(y[1:], dtype=torch.long)
            start = end
        pad = torch.arange(start, width)
        allowed[i, pad, pad] = True
        position_ids[i, start:] = torch.arange(width - start) + (position_ids[i, start - 1] + 1 if start else 0)
    return {
        "input_ids": input_ids,
        "position_ids": position_ids,
        "attention_mask": allowed[:, None],
        "pred_labels": pred_labels,
    }
