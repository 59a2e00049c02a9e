"""Supervised fine-tuning: NLL of the completion tokens given the prompt (``zoo.losses.nll_loss``).

Prompt tokens never contribute (their labels are -100); the loss is the token mean over the batch.
Trains on demonstrations; HH-RLHF offers its chosen replies as demonstrations.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from lightning_modules.base import STAGE_PREFIX, CausalLMModule
from zoo.logprobs import sequence_logprobs
from zoo.losses import nll_loss
from zoo.records import Demonstration


class SFT(CausalLMModule):
    """Supervised fine-tuning on demonstrations."""

    record_kind = "demonstration"

    @staticmethod
    def example_fn(record: Demonstration, **kwargs: Any) -> Iterable[dict[str, Any]]:
        yield {"prompt": list(record.prompt), "completions": [record.response]}

    def sft_step(self, batch: dict[str, torch.Tensor], split: str) -> torch.Tensor:
        logps, counts = sequence_logprobs(
            self.model, batch["input_ids"], batch["attention_mask"], batch["labels"], self.logprob_chunk_size
        )
        loss = nll_loss(logps, counts)
        stage = STAGE_PREFIX[split]
        self.log(f"{stage}/loss", loss, prog_bar=split == "train", batch_size=logps.shape[0], sync_dist=split != "train")
        self.log(f"{stage}/tokens", counts.sum().float(), reduce_fx="sum", batch_size=logps.shape[0])
        return loss

    def example_metrics(self, batch: dict[str, torch.Tensor], split: str = "validation") -> dict[str, torch.Tensor]:
        """Per held-out demonstration: the completion's mean NLL per token (lower is better)."""
        logps, counts = sequence_logprobs(
            self.model, batch["input_ids"], batch["attention_mask"], batch["labels"], self.logprob_chunk_size
        )
        return {"nll_per_token": -logps / counts.clamp(min=1)}

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self.sft_step(batch, "train")

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self.sft_step(batch, "validation")

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self.sft_step(batch, "test")
