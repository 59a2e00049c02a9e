"""Bradley-Terry reward model: a ``ValueHead`` on the trunk's last-token hidden state, trained with
``zoo.losses.bradley_terry_loss`` on preference pairs. As in DPO, the collator packs ``prompt | chosen |
rejected`` into one row with a 4-D mask (``share_prompt``, default on), so the prompt runs through the trunk
once per pair; the head reads each reply's last token (``zoo.logprobs.batch_last_hidden``).

The head has named outputs; with one output it is the classic scalar RM, and a k-output regression
reward model (DPA) reuses the same head. ``save_pretrained`` writes the trunk as an HF directory (or
PEFT adapter) plus ``value_head.safetensors`` and ``value_head.json`` (output names).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from lightning_modules.base import STAGE_PREFIX, CausalLMModule
from zoo.backbone import base_model
from zoo.heads import ValueHead, save_head
from zoo.logprobs import batch_last_hidden
from zoo.losses import bradley_terry_loss
from zoo.memory_plan import MethodFacts, ModelFacts
from zoo.metrics import pairwise_accuracy
from zoo.records import PreferencePair


class RewardModel(CausalLMModule):
    """Pairwise (Bradley-Terry) reward model.

    Args:
        head_dropout: dropout on the hidden state before the head.
        center_rewards_coefficient: weight of an optional (r_c + r_r)² penalty that keeps rewards centred
            (0 = off, as in the original formulation).
        share_prompt: run each pair's prompt once (prefix sharing, as DPO).
    """

    record_kind = "preference"

    def __init__(self, head_dropout: float = 0.0, center_rewards_coefficient: float = 0.0, share_prompt: bool = True,
                 **kwargs: Any):
        self.head_dropout, self.center_rewards_coefficient = head_dropout, center_rewards_coefficient
        self.share_prompt = share_prompt
        super().__init__(**kwargs)
        self.value_head: ValueHead | None = None

    def method_hparams(self) -> dict[str, Any]:
        return dict(head_dropout=self.head_dropout, center_rewards_coefficient=self.center_rewards_coefficient,
                    share_prompt=self.share_prompt)

    def collate_options(self) -> dict[str, Any]:
        return self.shared_prompt_collate(self.share_prompt)

    @staticmethod
    def example_fn(record: PreferencePair, **kwargs: Any) -> Iterable[dict[str, Any]]:
        yield {"prompt": list(record.prompt), "completions": [record.chosen, record.rejected]}

    def build_extras(self) -> None:
        base = base_model(self.model)
        self.value_head = ValueHead(base.config.hidden_size, ["reward"], self.head_dropout, bias=False)
        head, embed = base.get_output_embeddings(), base.get_input_embeddings()
        if head.weight is not embed.weight:  # an untied LM head is unused here: keep it out of the optimizer
            head.requires_grad_(False)

    def rewards(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """[C*B, k] rewards of every reply of a batch (completion-major: chosen block, rejected block)."""
        return self.value_head(batch_last_hidden(self.model, batch))

    def rm_step(self, batch: dict[str, torch.Tensor], split: str) -> torch.Tensor:
        r = self.rewards(batch)[:, 0]
        b = batch["idx"].shape[0]
        r_c, r_r = r[:b], r[b:]
        loss = bradley_terry_loss(r_c, r_r).mean()
        if self.center_rewards_coefficient:
            loss = loss + self.center_rewards_coefficient * ((r_c + r_r) ** 2).mean()
        stage = STAGE_PREFIX[split]
        self.log_dict(
            {
                f"{stage}/loss": loss,
                f"{stage}/accuracy": (r_c > r_r).float().mean(),
                f"{stage}/margin": (r_c - r_r).mean(),
                f"{stage}/rewards_chosen": r_c.mean(),
                f"{stage}/rewards_rejected": r_r.mean(),
            },
            prog_bar=split == "train",
            batch_size=b,
            sync_dist=split != "train",
        )
        return loss

    def example_metrics(self, batch: dict[str, torch.Tensor], split: str = "validation") -> dict[str, torch.Tensor]:
        """Per held-out pair: accuracy (r_c > r_r; ties count ½) and margin r_c − r_r."""
        r = self.rewards(batch)[:, 0]
        b = batch["idx"].shape[0]
        return {"accuracy": pairwise_accuracy(r[:b], r[b:]), "margin": r[:b] - r[b:]}

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self.rm_step(batch, "train")

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self.rm_step(batch, "validation")

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self.rm_step(batch, "test")

    def usage(self, written: dict[str, Path]) -> str | None:
        """How the run summary says to use a trained reward model (it scores replies; it is not for predict)."""
        hf = written.get("hf/ (save_pretrained)")
        if hf is None:
            return None
        return (f"python -c \"from zoo.scorers import RewardModelScorer; "
                f"print(RewardModelScorer('{hf}').score(['How do I boil an egg?'], ['Simmer it for 8 minutes.']))\""
                f"  (configs/meet.yaml's judge reads {hf})")

    def save_pretrained(self, path: str | Path) -> Path:
        path = super().save_pretrained(path)
        save_head(self.value_head, path, "value_head.safetensors", "value_head.json",
                  {"names": self.value_head.names, "bias": self.value_head.linear.bias is not None})
        return path

    # ---- memory plan (zoo.memory_plan) ------------------------------------------------------------
    @classmethod
    def memory_facts(cls, init_args: dict[str, Any], model: ModelFacts) -> MethodFacts:
        """Two rows per pair (chosen and rejected), read at the last token by a bias-free ``ValueHead``
        (H fp32 parameters, trainable): no chunked LM head, and an untied LM head stays frozen."""
        return dataclasses.replace(super().memory_facts(init_args, model), rows_per_example=2, lm_head=False,
                                   frozen_lm_head=True, own_params=model.hidden_size,
                                   own_trainable_params=model.hidden_size)
