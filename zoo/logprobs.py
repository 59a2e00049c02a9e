"""Sequence log-probabilities at completion positions only.

The LM head is applied to the hidden states of completion positions alone, in chunks, and each chunk is
recomputed in backward instead of storing its ``[chunk, vocab]`` logits: no full-vocabulary
log-softmax over prompt or pad tokens, and peak memory independent of the vocabulary size times length.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from zoo.backbone import trunk_and_head
from zoo.collate import IGNORE_INDEX


def _token_logps(hidden: torch.Tensor, head: nn.Module, targets: torch.Tensor, *head_args: torch.Tensor) -> torch.Tensor:
    logits = head(hidden, *head_args).float()  # log-softmax in fp32 even under bf16 autocast
    return logits.gather(-1, targets[:, None]).squeeze(-1) - logits.logsumexp(-1)


def token_logprobs(
    hidden: torch.Tensor,
    head: nn.Module | Callable[..., torch.Tensor],
    targets: torch.Tensor,
    chunk_size: int = 1024,
    head_args: tuple[torch.Tensor, ...] = (),
) -> torch.Tensor:
    """log p(target | hidden) for rows of ``hidden`` [M, H] and ``targets`` [M], ``chunk_size`` rows at a
    time. ``head_args`` are per-row tensors [M, ...] passed to ``head`` beside the hidden states (per-example
    head weights of a plural model)."""
    if hidden.shape[0] == 0:
        return hidden.new_zeros(0, dtype=torch.float32)
    recompute = torch.is_grad_enabled() and hidden.requires_grad
    parts = []
    for i in range(0, hidden.shape[0], chunk_size):
        h, t = hidden[i : i + chunk_size], targets[i : i + chunk_size]
        args = tuple(a[i : i + chunk_size] for a in head_args)
        if recompute:
            parts.append(checkpoint(_token_logps, h, head, t, *args, use_reentrant=False))
        else:
            parts.append(_token_logps(h, head, t, *args))
    return torch.cat(parts)


def token_terms(
    hidden: torch.Tensor,
    head: nn.Module | Callable[..., torch.Tensor],
    targets: torch.Tensor,
    terms: Callable[..., tuple[torch.Tensor, ...]],
    chunk_size: int = 1024,
    ref_hidden: torch.Tensor | None = None,
    ref_head: nn.Module | Callable[..., torch.Tensor] | None = None,
) -> tuple[torch.Tensor, ...]:
    """Per-token quantities that need the whole vocabulary (a KL to a reference, an entropy), chunk by chunk:
    ``terms(logits [c, V], targets [c], ref_logits [c, V] or None)`` -> tensors [c], for rows of ``hidden``
    [M, H] (completion positions only) and, when given, the reference's hidden states ``ref_hidden`` [M, H] at
    the same positions through ``ref_head``. Only one chunk's logits exist at a time; in backward each chunk is
    recomputed rather than stored, the reference's logits too (they carry no gradient)."""
    if hidden.shape[0] == 0:
        empty = hidden.new_zeros(0, dtype=torch.float32)
        return terms(empty.new_zeros(0, 1), targets, None if ref_hidden is None else empty.new_zeros(0, 1))
    if ref_hidden is not None and ref_hidden.shape[0] != hidden.shape[0]:
        raise ValueError(f"token_terms: {hidden.shape[0]} policy positions but {ref_hidden.shape[0]} reference ones")
    recompute = torch.is_grad_enabled() and hidden.requires_grad

    def chunk_terms(h: torch.Tensor, t: torch.Tensor, rh: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
        ref_logits = None
        if rh is not None:
            with torch.no_grad():
                ref_logits = ref_head(rh)
        return terms(head(h), t, ref_logits)

    parts = []
    for i in range(0, hidden.shape[0], chunk_size):
        h, t = hidden[i : i + chunk_size], targets[i : i + chunk_size]
        rh = ref_hidden[i : i + chunk_size].detach() if ref_hidden is not None else None
        parts.append(checkpoint(chunk_terms, h, t, rh, use_reentrant=False) if recompute else chunk_terms(h, t, rh))
    return tuple(torch.cat(p) for p in zip(*parts))


def final_hidden(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    position_ids: torch.Tensor | None = None,
) -> torch.Tensor:
    """The trunk's final hidden states [N, T, H].

    ``attention_mask`` is the usual [N, T] padding mask, or a 4-D boolean [N, 1, T, T] "who sees whom" mask
    with explicit ``position_ids`` (prefix-shared rows, ``zoo.collate.packed_rows``); transformers passes
    a 4-D mask through unchanged, and SDPA takes it as is (eager attention gets it as an additive mask).

    The call goes through the root model (``logits_to_keep=1``: one logit row per sequence), not the trunk
    alone, so every wrapper's hooks run: FSDP2 gathers its root parameters (embeddings, final norm, a
    tied LM head) there, and PEFT routes adapters. A forward hook on the trunk captures its output.
    """
    trunk, _ = trunk_and_head(model)
    captured: list[torch.Tensor] = []

    def grab(module: nn.Module, args: tuple, output) -> None:
        captured.append(output.last_hidden_state if hasattr(output, "last_hidden_state") else output[0])

    if attention_mask.ndim == 4 and getattr(getattr(model, "config", None), "_attn_implementation", None) == "eager":
        attention_mask = torch.zeros(attention_mask.shape, device=attention_mask.device).masked_fill(
            ~attention_mask, torch.finfo(torch.float32).min
        )
    extra = {} if position_ids is None else {"position_ids": position_ids}
    handle = trunk.register_forward_hook(grab)
    try:
        model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, logits_to_keep=1, **extra)
    finally:
        handle.remove()
    return captured[-1]


def completion_hidden(
    model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Hidden states at positions that predict a label [M, H], their targets [M], and the row each
    belongs to [M]. Position t predicts token t+1."""
    hidden = final_hidden(model, input_ids, attention_mask)
    targets = labels[:, 1:]
    mask = targets != IGNORE_INDEX
    rows = torch.arange(labels.shape[0], device=labels.device)[:, None].expand_as(targets)[mask]
    return hidden[:, :-1][mask], targets[mask], rows


def batch_completion_hidden(
    model: nn.Module, batch: dict[str, torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """``completion_hidden`` for a collated batch in either layout: padded rows (``labels`` [N, T]) or
    prefix-shared rows (``pred_labels`` [N, W], ``position_ids``, 4-D mask; ``zoo.collate.packed_rows``).
    Returns (hidden [M, H], targets [M], sequence index [M] in completion-major order, N)."""
    if "pred_labels" not in batch:
        labels = batch["labels"]
        return (*completion_hidden(model, batch["input_ids"], batch["attention_mask"], labels), labels.shape[0])
    hidden = final_hidden(model, batch["input_ids"], batch["attention_mask"], batch["position_ids"])
    pred = batch["pred_labels"]
    seq, pos = (pred != IGNORE_INDEX).nonzero(as_tuple=True)  # row-major: each sequence's tokens in order
    return hidden[seq % hidden.shape[0], pos], pred[seq, pos], seq, pred.shape[0]


def batch_sequence_logprobs(
    model: nn.Module,
    batch: dict[str, torch.Tensor],
    chunk_size: int = 1024,
    head: nn.Module | Callable[..., torch.Tensor] | None = None,
    row_args: tuple[torch.Tensor, ...] = (),
) -> tuple[torch.Tensor, torch.Tensor]:
    """``sequence_logprobs`` for a collated batch in either layout (see ``batch_completion_hidden``)."""
    hidden, targets, rows, n = batch_completion_hidden(model, batch)
    return sum_by_row(hidden, targets, rows, n, head or trunk_and_head(model)[1], chunk_size, row_args)


def sequence_logprobs(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    labels: torch.Tensor,
    chunk_size: int = 1024,
    head: nn.Module | Callable[..., torch.Tensor] | None = None,
    row_args: tuple[torch.Tensor, ...] = (),
) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of completion-token log-probs per row [N], completion-token count per row [N]).

    ``head`` overrides the model's LM head (e.g. mixed plural heads); ``row_args`` are per-sequence tensors
    [N, ...] that reach ``head`` beside each position's hidden state. Default: the model's own head.
    """
    batch = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
    return batch_sequence_logprobs(model, batch, chunk_size, head, row_args)


def sum_by_row(
    hidden: torch.Tensor,
    targets: torch.Tensor,
    rows: torch.Tensor,
    n_rows: int,
    head: nn.Module | Callable[..., torch.Tensor],
    chunk_size: int = 1024,
    row_args: tuple[torch.Tensor, ...] = (),
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sequence sums of token log-probs from ``completion_hidden``'s outputs (so one trunk forward can
    serve several heads)."""
    logps = token_logprobs(hidden, head, targets, chunk_size, tuple(a[rows] for a in row_args))
    summed = torch.zeros(n_rows, dtype=logps.dtype, device=logps.device).index_add(0, rows, logps)
    counts = torch.zeros(n_rows, dtype=torch.long, device=rows.device).index_add(0, rows, torch.ones_like(rows))
    return summed, counts


def last_token_hidden(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Final hidden state at each row's last real token (right padding) [N, H]; reward heads read it."""
    hidden = final_hidden(model, input_ids, attention_mask)
    last = attention_mask.sum(-1) - 1
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]


def batch_last_hidden(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Final hidden state at each sequence's last token [N, H] for a collated batch in either layout: a padded
    row's last real token, or the last token of each completion of a prefix-shared row (``packed_rows``),
    in the padded layout's completion-major order. Reward heads read it."""
    if "pred_labels" not in batch:
        return last_token_hidden(model, batch["input_ids"], batch["attention_mask"])
    hidden = final_hidden(model, batch["input_ids"], batch["attention_mask"], batch["position_ids"])
    pred = batch["pred_labels"]
    seq, pos = (pred != IGNORE_INDEX).nonzero(as_tuple=True)
    # a completion's last token sits one after its last predicting position
    last = torch.full((pred.shape[0],), -1, dtype=pos.dtype, device=pos.device).scatter_reduce(0, seq, pos, "amax")
    if (last < 0).any():
        raise ValueError("batch_last_hidden: a packed row holds an empty completion")
    rows = torch.arange(pred.shape[0], device=pred.device) % hidden.shape[0]
    return hidden[rows, last + 1]


def full_logits_reference(model: nn.Module, input_ids, attention_mask, labels) -> tuple[torch.Tensor, torch.Tensor]:
    """The textbook computation (full logits, full log-softmax) — for tests to check the fast path against."""
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, :-1].float()
    targets = labels[:, 1:]
    mask = targets != IGNORE_INDEX
    logp = torch.gather(F.log_softmax(logits, -1), -1, targets.clamp(min=0)[..., None]).squeeze(-1)
    return (logp * mask).sum(-1), mask.sum(-1)
