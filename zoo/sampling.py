"""``sample``: n samples per prompt for predict, sweeps and tests, as texts — a thin view over the rollout
engine (``zoo.rollout``), which does the generating (settings, engines, log-probs, seeds: see there)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from zoo.rollout import Rollout, SamplingSettings, Timing, generate

__all__ = ["SamplingSettings", "Samples", "sample"]


@dataclass
class Samples:
    """``n`` samples per prompt, prompt-major: sample j of prompt i is at ``i * n + j``.

    ``token_ids`` stop before the EOS that ended a sample (as they always have); ``logprobs[k][t]`` is the
    log-prob of ``token_ids[k][t]``. The EOS and its log-prob, which PPO needs, are in ``zoo.rollout.Completion``.
    ``truncated`` means the sample hit ``max_new_tokens`` or ``max_total_length`` (finish reason ``length``)."""

    prompts: list[str]
    texts: list[str]
    token_ids: list[list[int]]
    truncated: list[bool]
    n: int
    logprobs: list[list[float]] = field(default_factory=list)
    finish_reasons: list[str] = field(default_factory=list)
    timing: Timing = field(default_factory=Timing)

    def for_prompt(self, i: int) -> list[str]:
        return self.texts[i * self.n : (i + 1) * self.n]

    @classmethod
    def from_rollout(cls, prompts: Sequence[str], rollout: Rollout) -> Samples:
        token_ids, logprobs = [], []
        for c in rollout.completions:
            keep = len(c.token_ids) - (c.finish_reason == "eos")
            token_ids.append(c.token_ids[:keep])
            logprobs.append(c.logprobs[:keep])
        reasons = [c.finish_reason for c in rollout.completions]
        return cls(prompts=list(prompts), texts=[c.text for c in rollout.completions], token_ids=token_ids,
                   truncated=[r == "length" for r in reasons], n=rollout.n, logprobs=logprobs,
                   finish_reasons=reasons, timing=rollout.timing)


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
    if prompt_ids is None:
        prompt_ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    elif prompts is None:
        prompts = [tokenizer.decode(p) for p in prompt_ids]
    return Samples.from_rollout(prompts, generate(model, tokenizer, prompt_ids, settings))
