"""DPO (Rafailov et al., 2023), cDPO (label smoothing, Mitchell 2023) and IPO (Azar et al., 2023).

Loss: ``zoo.losses.dpo_loss``. One concatenated forward computes chosen and rejected log-probs
(completion tokens only, ``zoo.logprobs``).

The reference π_ref (``reference``) is always the *initial* weights (or ``reference_model``), never a
policy that has trained:
- ``cached`` (default): reference log-probs of every example of a split are computed once
  (``zoo.reference.ReferenceCache``) and kept in memory, on disk (keyed by the data's fingerprint and the
  reference) and in every checkpoint. No second model is held in memory and no reference forward runs per
  step. A split first needed after training started (``validate`` / ``test`` on a trained checkpoint, a new
  validation set after a resume) is computed with the adapter-disabled base under LoRA, or else with the
  initial weights reloaded from ``backbone.name_or_path`` (printed when it happens).
- ``live``: a reference forward each step: the adapter-disabled base when the backbone has LoRA,
  otherwise a frozen copy of the initial weights (or ``reference_model``).

Prefix sharing (``share_prompt``, default on): the collator packs ``prompt | chosen | rejected`` into one
row with a 4-D attention mask (``zoo.collate.packed_rows``), so the prompt goes through the trunk once per
pair instead of twice; the log-probs are those of the two separate sequences. It needs an attention
implementation that takes a custom 4-D mask (``sdpa``, the default, or ``eager``); with
``flash_attention_2`` (which takes no mask) the module falls back to two padded rows per pair.

IPO's loss uses length-averaged log-ratios (as TRL does); every loss type logs rewards on summed
log-probs, so reward metrics are comparable across loss types.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Iterable
from typing import Any, Literal

import torch

from lightning_modules.base import STAGE_PREFIX, CausalLMModule, as_dataclass
from zoo.backbone import BackboneConfig, load_backbone, uses_peft
from zoo.logprobs import batch_sequence_logprobs
from zoo.losses import DPOLossType, dpo_loss
from zoo.memory_plan import MethodFacts, ModelFacts, constructor_args
from zoo.metrics import pairwise_accuracy
from zoo.records import PreferencePair
from zoo.reference import ReferenceCache, cache_key, default_cache_dir


class DPO(CausalLMModule):
    """Direct preference optimisation on preference pairs.

    Args:
        beta: β, the KL strength.
        loss_type: ``sigmoid`` (DPO; cDPO with label_smoothing > 0) or ``ipo``.
        label_smoothing: ε of cDPO (probability that a label is flipped).
        reference: ``cached`` or ``live`` (see the module docstring).
        reference_model: a different reference (hub id / path); default: the initial policy.
        ref_cache_dir: where cached reference log-probs are also stored on disk, keyed by data and reference
            (``default``: ``$STEERZOO_REF_CACHE`` or ``~/.cache/steerzoo/ref_logps``; ``None``: memory and
            checkpoints only). A cache shared by runs, not a run output.
        share_prompt: run each pair's prompt once (prefix sharing; see the module docstring).
    """

    record_kind = "preference"

    def __init__(
        self,
        beta: float = 0.1,
        loss_type: DPOLossType = "sigmoid",
        label_smoothing: float = 0.0,
        reference: Literal["cached", "live"] = "cached",
        reference_model: str | None = None,
        ref_cache_dir: str | None = "default",
        share_prompt: bool = True,
        **kwargs: Any,
    ):
        if loss_type not in ("sigmoid", "ipo"):
            raise ValueError(f"model.loss_type must be 'sigmoid' or 'ipo', got {loss_type!r}")
        if reference not in ("cached", "live"):
            raise ValueError(f"model.reference must be 'cached' or 'live', got {reference!r}")
        self.beta, self.loss_type, self.label_smoothing = beta, loss_type, label_smoothing
        self.reference, self.reference_model, self.ref_cache_dir = reference, reference_model, ref_cache_dir
        self.share_prompt = share_prompt
        super().__init__(**kwargs)
        self.ref_cache = ReferenceCache(default_cache_dir() if ref_cache_dir == "default" else ref_cache_dir)
        self._ref_model: list[torch.nn.Module] = []  # a list, so Lightning neither registers nor saves it
        self._weights_changed = False  # True once the policy trained or loaded trained weights

    def method_hparams(self) -> dict[str, Any]:
        return dict(beta=self.beta, loss_type=self.loss_type, label_smoothing=self.label_smoothing,
                    reference=self.reference, reference_model=self.reference_model, ref_cache_dir=self.ref_cache_dir,
                    share_prompt=self.share_prompt)

    def collate_options(self) -> dict[str, Any]:
        return self.shared_prompt_collate(self.share_prompt)

    def check_shardable(self) -> None:
        super().check_shardable()
        if self.reference == "live" and self.reference_model is None and self.backbone_cfg.lora is None:
            raise ValueError(
                "DPO under FSDP: reference 'live' would need a sharded frozen copy of the policy; "
                "use reference: cached (the default) or a LoRA backbone (the adapter-disabled base is the reference)"
            )

    @staticmethod
    def example_fn(record: PreferencePair, **kwargs: Any) -> Iterable[dict[str, Any]]:
        yield {"prompt": list(record.prompt), "completions": [record.chosen, record.rejected]}

    # ---- reference --------------------------------------------------------------------------------
    def reference_module(self) -> torch.nn.Module | None:
        """The module that computes π_ref now; ``None`` means the policy with its adapters disabled (LoRA)."""
        if self.reference_model is None and uses_peft(self.model):
            return None
        if self._ref_model:
            return self._ref_model[0]
        if self.reference_model is not None:
            ref = load_backbone(BackboneConfig(name_or_path=self.reference_model, dtype=self.backbone_cfg.dtype))
        elif not self._weights_changed:
            if self.reference == "cached":
                return self.model  # before the first step the policy *is* the reference: no second model
            ref = copy.deepcopy(self.model)
        else:
            # the policy has trained: reload the initial weights, never use the policy as its own reference
            print(f"steerzoo: {type(self).__name__} reference = the initial weights, reloaded from "
                  f"{self.backbone_cfg.name_or_path!r}", flush=True)
            ref = load_backbone(dataclasses.replace(self.backbone_cfg, lora=None, prompt_tuning=None,
                                                    gradient_checkpointing=False))
        ref.requires_grad_(False).eval().to(self.device)
        self._ref_model.append(ref)
        return ref

    @torch.no_grad()
    def reference_logps(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Reference sequence log-probs [C*B] for a batch, computed now."""
        ref = self.reference_module()
        if ref is None:
            with self.model.disable_adapter():
                return batch_sequence_logprobs(self.model, batch, self.logprob_chunk_size)[0]
        return batch_sequence_logprobs(ref, batch, self.logprob_chunk_size)[0]

    def reference_identity(self) -> str:
        cfg = self.backbone_cfg
        return f"{self.reference_model or cfg.name_or_path}|{cfg.revision}|{cfg.dtype}|{cfg.chat_template}"

    def ensure_reference_cache(self, split: str) -> None:
        """Compute (or load) the reference log-probs of every example of ``split``, once, with the reference."""
        if self.reference != "cached":
            return
        dm = self.trainer.datamodule
        if dm is None or not hasattr(dm, "fingerprint"):
            raise ValueError(f"{type(self).__name__} reference: cached needs a steerzoo DataModule (it caches per "
                             "example); with other dataloaders use model.reference: live")
        if split not in dm.datasets:  # this run does not use the split
            return
        key, n = cache_key(dm.fingerprint(split), self.reference_identity()), dm.num_examples(split)
        if self.ref_cache.has(split, key, n):
            return
        was_training = self.model.training
        self.model.eval()
        try:
            with self.trainer.precision_plugin.forward_context():
                self.ref_cache.fill(
                    split, key, n, dm.loader(split, all_examples=True),  # every rank caches every example
                    lambda batch: self.reference_logps({k: v.to(self.device) for k, v in batch.items()}),
                    show_progress=self.trainer.is_global_zero, write=self.trainer.is_global_zero,
                )
        finally:
            self.model.train(was_training)

    def on_fit_start(self) -> None:
        for split in ("train", "validation"):
            self.ensure_reference_cache(split)

    def on_validation_start(self) -> None:
        self.ensure_reference_cache("validation")

    def on_test_start(self) -> None:
        self.ensure_reference_cache("test")

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        self._weights_changed = True

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["ref_logps"] = self.ref_cache.state_dict()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        self._weights_changed = True
        self.ref_cache.load_state_dict(checkpoint.get("ref_logps", {}))

    # ---- loss -------------------------------------------------------------------------------------
    def policy_logps(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Policy sequence log-probs [2B] (chosen block, rejected block) and completion lengths [2B]."""
        return batch_sequence_logprobs(self.model, batch, self.logprob_chunk_size)

    def log_pair_metrics(self, batch: dict[str, torch.Tensor], stage: str, r_c: torch.Tensor, r_r: torch.Tensor) -> None:
        """Extra per-batch metrics (CMPO logs them per attribute)."""

    def pair_losses(
        self, batch: dict[str, torch.Tensor], split: str, policy: tuple[torch.Tensor, torch.Tensor] | None = None,
        ref: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-pair (losses, r_c, r_r) (``zoo.losses.dpo_loss``); ``policy`` = (log-probs, lengths) and ``ref``
        (reference log-probs [2B]) when the caller already computed them."""
        logps, counts = policy if policy is not None else self.policy_logps(batch)
        b = batch["idx"].shape[0]
        if ref is not None:
            ref = ref.to(logps.dtype)
        elif self.reference == "cached":
            ref = self.ref_cache.lookup(split, batch["idx"]).to(logps.device)
            ref = torch.cat([ref[:, 0], ref[:, 1]])
        else:
            ref = self.reference_logps(batch).to(logps.dtype)
        lengths = (counts[:b], counts[b:]) if self.loss_type == "ipo" else None  # IPO averages per token
        return dpo_loss(logps[:b], logps[b:], ref[:b], ref[b:], self.beta, self.loss_type, self.label_smoothing,
                        lengths)

    def example_metrics(self, batch: dict[str, torch.Tensor], split: str = "validation") -> dict[str, torch.Tensor]:
        """Per held-out pair: reward accuracy (ties count ½: 0.5 for the untrained policy) and margin r_c − r_r."""
        _, r_c, r_r = self.pair_losses(batch, split)
        return {"reward_accuracy": pairwise_accuracy(r_c, r_r), "reward_margin": r_c - r_r}

    def dpo_step(
        self, batch: dict[str, torch.Tensor], split: str, policy: tuple[torch.Tensor, torch.Tensor] | None = None,
        ref: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The loss and its metrics; ``policy`` and ``ref`` as in ``pair_losses``."""
        b = batch["idx"].shape[0]
        losses, r_c, r_r = self.pair_losses(batch, split, policy, ref)
        loss = losses.mean()
        stage = STAGE_PREFIX[split]
        self.log_dict(
            {
                f"{stage}/loss": loss,
                f"{stage}/rewards_chosen": r_c.mean(),
                f"{stage}/rewards_rejected": r_r.mean(),
                f"{stage}/reward_accuracy": (r_c > r_r).float().mean(),
                f"{stage}/reward_margin": (r_c - r_r).mean(),
            },
            prog_bar=split == "train",
            batch_size=b,
            sync_dist=split != "train",
        )
        self.log_pair_metrics(batch, stage, r_c, r_r)
        return loss

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self.dpo_step(batch, "train")

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self.dpo_step(batch, "validation")

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self.dpo_step(batch, "test")

    # ---- memory plan (zoo.memory_plan) ------------------------------------------------------------
    @classmethod
    def memory_facts(cls, init_args: dict[str, Any], model: ModelFacts) -> MethodFacts:
        """Two rows per pair, chosen and rejected, in one forward. ``reference: cached`` (default) holds only
        log-probs; ``live`` runs the adapter-disabled policy under LoRA (no second copy), otherwise a frozen
        copy of the initial weights (a ``reference_model`` is counted at the policy's size). Prefix sharing
        packs a pair into one row of prompt + chosen + rejected instead of two padded to prompt + the longer
        reply: the plan's two rows are an upper bound."""
        args = constructor_args(cls, init_args)
        reference = "none"
        if args["reference"] == "live":
            adapter_off = model.lora_params > 0 and args["reference_model"] is None
            reference = "adapter_off" if adapter_off else "frozen_copy"
        attn = as_dataclass(BackboneConfig, args["backbone"]).attn_implementation
        shared = args["share_prompt"] and attn in (None, "sdpa", "eager")  # as collate_options decides
        notes = ("activations counted for two padded rows per pair: an upper bound under prefix sharing",)
        return dataclasses.replace(super().memory_facts(init_args, model), rows_per_example=2, reference=reference,
                                   notes=notes if shared else ())
