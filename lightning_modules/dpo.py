"""DPO (Rafailov et al., 2023), cDPO (label smoothing, Mitchell 2023) and IPO (Azar et al., 2023).

Loss: ``zoo.losses.dpo_loss``. One concatenated forward computes chosen and rejected log-probs
(completion tokens only, ``zoo.logprobs``).

The reference π_ref (``reference``):
- ``cached`` (default): reference log-probs are computed once, before the first step, with the
  initial policy (or ``reference_model`` if given), and kept in memory, on disk (keyed by the dataset
  fingerprint and the reference) and in every checkpoint, so a resumed run never recomputes them with
  trained weights. No second model is held in memory and no reference forward runs per step.
- ``live``: a reference forward each step: the adapter-disabled base when the backbone has LoRA,
  otherwise a frozen copy (or ``reference_model``).

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
import hashlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

import torch
from tqdm.auto import tqdm

from lightning_modules.base import STAGE_PREFIX, CausalLMModule
from zoo.backbone import BackboneConfig, load_backbone, uses_peft
from zoo.logprobs import batch_sequence_logprobs
from zoo.losses import DPOLossType, dpo_loss
from zoo.records import PreferencePair


class DPO(CausalLMModule):
    """Direct preference optimisation on preference pairs.

    Args:
        beta: β, the KL strength.
        loss_type: ``sigmoid`` (DPO; cDPO with label_smoothing > 0) or ``ipo``.
        label_smoothing: ε of cDPO (probability that a label is flipped).
        reference: ``cached`` or ``live`` (see the module docstring).
        reference_model: a different reference (hub id / path); default: the initial policy.
        ref_cache_dir: where cached reference log-probs are stored (``None``: memory and checkpoints only).
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
        ref_cache_dir: str | None = "outputs/ref_cache",
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
        self.ref_logps: dict[str, torch.Tensor] = {}  # split -> [N, 2] (chosen, rejected) sums
        self.ref_keys: dict[str, str] = {}
        self._ref_model: list[torch.nn.Module] = []  # a list, so Lightning neither registers nor saves it

    def method_hparams(self) -> dict[str, Any]:
        return dict(beta=self.beta, loss_type=self.loss_type, label_smoothing=self.label_smoothing,
                    reference=self.reference, reference_model=self.reference_model, ref_cache_dir=self.ref_cache_dir,
                    share_prompt=self.share_prompt)

    def collate_options(self) -> dict[str, Any]:
        # flash-attention kernels take no custom mask: they get the plain padded layout
        masks_ok = self.backbone_cfg.attn_implementation in (None, "sdpa", "eager")
        return {"share_prompt": self.share_prompt and masks_ok}

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
    def _live_reference(self) -> torch.nn.Module | None:
        """Frozen copy / separate reference for ``live`` mode; None means 'policy with adapters off'."""
        if self.reference_model is None and uses_peft(self.model):
            return None
        if not self._ref_model:
            if self.reference_model is not None:
                ref = load_backbone(BackboneConfig(name_or_path=self.reference_model, dtype=self.backbone_cfg.dtype))
            else:
                ref = copy.deepcopy(self.model)
            ref.requires_grad_(False).eval().to(self.device)
            self._ref_model.append(ref)
        return self._ref_model[0]

    @torch.no_grad()
    def reference_logps(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Reference sequence log-probs [2B] for a batch, computed now."""
        ref = self._live_reference() if self.reference == "live" else self._cache_reference()
        if ref is None:
            with self.model.disable_adapter():
                return batch_sequence_logprobs(self.model, batch, self.logprob_chunk_size)[0]
        return batch_sequence_logprobs(ref, batch, self.logprob_chunk_size)[0]

    def _cache_reference(self) -> torch.nn.Module:
        if self.reference_model is None:
            return self.model  # before the first step the policy *is* the reference
        return self._live_reference()

    def _cache_key(self, split: str) -> str:
        ds = self.trainer.datamodule.datasets[split]
        ident = f"{ds._fingerprint}|{self.reference_model or self.backbone_cfg.name_or_path}|{self.backbone_cfg.dtype}"
        return hashlib.sha1(ident.encode()).hexdigest()[:16]

    def ensure_reference_cache(self, split: str) -> None:
        """Compute (or load from disk) the reference log-probs of every example of ``split``, once."""
        if self.reference != "cached" or self.trainer.datamodule is None:
            return
        dm = self.trainer.datamodule
        if split not in dm.datasets:
            return
        key, n = self._cache_key(split), len(dm.datasets[split])
        if split in self.ref_logps:
            if self.ref_keys.get(split) != key or self.ref_logps[split].shape[0] != n:
                raise ValueError(
                    f"the checkpoint's cached reference log-probs for '{split}' were computed on other data "
                    f"({self.ref_logps[split].shape[0]} examples, key {self.ref_keys.get(split)}); this run has {n} "
                    f"(key {key}). Resume with the same data, or start a new run."
                )
            return
        path = Path(self.ref_cache_dir) / f"ref-{key}.pt" if self.ref_cache_dir else None
        if path is not None and path.exists():
            cached = torch.load(path, weights_only=True)
            if cached.shape[0] == n:
                self.ref_logps[split], self.ref_keys[split] = cached, key
                return
        if self.global_step > 0 and self.reference_model is None:
            raise RuntimeError(f"reference log-probs for '{split}' are missing after training started")
        loader = dm._loader(split, dm.eval_batch_size, shuffle=False)
        loader.sampler.rank, loader.sampler.world_size = 0, 1  # every rank caches every example
        out = torch.zeros(n, 2)
        was_training = self.model.training
        self.model.eval()
        with self.trainer.precision_plugin.forward_context():
            for batch in tqdm(loader, desc=f"reference log-probs ({split})", disable=not self.trainer.is_global_zero):
                batch = {k: v.to(self.device) for k, v in batch.items()}
                logps = self.reference_logps(batch).float().cpu()
                b = batch["idx"].shape[0]
                out[batch["idx"].cpu(), 0], out[batch["idx"].cpu(), 1] = logps[:b], logps[b:]
        self.model.train(was_training)
        self.ref_logps[split], self.ref_keys[split] = out, key
        if path is not None and self.trainer.is_global_zero:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            torch.save(out, tmp)
            tmp.replace(path)  # atomic: a crash never leaves a half-written cache

    def on_fit_start(self) -> None:
        for split in ("train", "validation"):
            self.ensure_reference_cache(split)

    def on_validation_start(self) -> None:
        self.ensure_reference_cache("validation")

    def on_test_start(self) -> None:
        self.ensure_reference_cache("test")

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["ref_logps"] = {s: (self.ref_keys[s], t) for s, t in self.ref_logps.items()}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        for split, (key, logps) in checkpoint.get("ref_logps", {}).items():
            self.ref_logps[split], self.ref_keys[split] = logps, key

    # ---- loss -------------------------------------------------------------------------------------
    def policy_logps(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Policy sequence log-probs [2B] (chosen block, rejected block) and completion lengths [2B]."""
        return batch_sequence_logprobs(self.model, batch, self.logprob_chunk_size)

    def log_pair_metrics(self, batch: dict[str, torch.Tensor], stage: str, r_c: torch.Tensor, r_r: torch.Tensor) -> None:
        """Extra per-batch metrics (CMPO logs them per attribute)."""

    def dpo_step(
        self, batch: dict[str, torch.Tensor], split: str, policy: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> torch.Tensor:
        """The loss and its metrics; ``policy`` = (log-probs, lengths) when the caller already computed them."""
        logps, counts = policy if policy is not None else self.policy_logps(batch)
        b = batch["idx"].shape[0]
        if self.reference == "cached":
            ref = self.ref_logps[split][batch["idx"].cpu()].to(logps.device)
            ref = torch.cat([ref[:, 0], ref[:, 1]])
        else:
            ref = self.reference_logps(batch).to(logps.dtype)
        lengths = (counts[:b], counts[b:]) if self.loss_type == "ipo" else None  # IPO averages per token
        losses, r_c, r_r = dpo_loss(
            logps[:b], logps[b:], ref[:b], ref[b:], self.beta, self.loss_type, self.label_smoothing, lengths
        )
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
