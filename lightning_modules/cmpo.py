"""CMPO — Conditional Multiobjective Preference Optimization (J. Manyika, MIT MEng thesis, 2024).

A plural model: k LM heads on one trunk, mixed on logits by a user weight vector Λ (Eq. 3.1,
``zoo.plural.PluralHead``), trained with cDPO (Eq. 2.10/3.3: label-smoothed DPO, β = 0.5, ε = 0.1;
``zoo.losses.dpo_loss``) on conditioned pairs built from per-attribute scores (Eq. 3.2,
``lightning_modules.cmpo_pairs``). The policy log-prob of a pair is taken under the mixed logits of its
own Λ; the reference is the single-head base model (cached reference log-probs by default, or the
adapter-disabled base with LoRA). At inference the user picks Λ by attribute name (``steer``), the
heads are fused once (Σ λ_j W_j) and decoding costs one head.

Where the thesis is silent (each a config switch, see docs/methods/cmpo.md):
- head init (``head_init``): ``copy`` of the base head (default) or ``lowrank`` deltas W + B_j A_j. Untrained,
  both give the base logits times Σλ, so the untrained model equals the reference exactly only when Σλ = 1: for
  Eq. 3.2 and one-hot weights, not for A.1 (Σλ can be 0: all logits 0) or A.2 (Σλ ≠ 1: a temperature). We keep
  Eq. 3.1 unnormalised, as printed; fit says how many training samples have Σλ ≠ 1;
- what trains (``train_heads``, ``train_trunk``; LoRA via ``backbone.lora``; the thesis: LoRA on attention);
  ``train_trunk: false`` freezes the whole trunk and trains the heads alone (the embedded demo);
- weighting rule (``weighting``): Eq. 3.2 power set (default), one-hot, A.1 negative, A.2 rating ratio;
- which pairs (``tradeoffs_only``): all (default) or only those that trade attributes off (``cmpo_pairs``);
- prompt tokens are masked and log-probs summed (standard DPO); losses averaged over the batch;
- "higher score wins" for every attribute, toxicity included (the thesis steers *towards* attributes).
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

import torch

from lightning_modules.base import prompt_samples
from lightning_modules.cmpo_pairs import WEIGHTINGS, Weighting, prompt_pairs
from lightning_modules.dpo import DPO
from zoo.backbone import base_model, resolve_path
from zoo.heads import load_saved_head, save_head
from zoo.logprobs import batch_completion_hidden, sum_by_row
from zoo.memory_plan import MethodFacts, ModelFacts, constructor_args
from zoo.metrics import ResumableMean, pairwise_accuracy
from zoo.plural import HeadInit, PluralHead
from zoo.preference import Preference
from zoo.records import Record
from zoo.rollout import generate
from zoo.sampling import Samples, SamplingSettings

HEADS_FILE, META_FILE = "plural_heads.safetensors", "cmpo.json"


class CMPO(DPO):
    """Plural-head model steered by per-attribute weights.

    Args:
        attributes: the k objectives, one head each (order = head order).
        data_kind: ``scored`` (per-attribute scores; Eq. 3.2 from ratings) or ``preference``
            (attribute-labelled pairs, e.g. PKU-SafeRLHF).
        weighting: ``power_set`` | ``one_hot`` | ``negative`` | ``rating_ratio``.
        ratio_offset: δ of the rating-ratio rule (avoids division by zero).
        head_init: ``copy`` | ``lowrank``; head_rank: r of the low-rank heads.
        train_heads: train the k heads (else only the trunk's LoRA/full weights train).
        train_trunk: train the trunk (its LoRA adapters, or all of it without LoRA); ``false``: heads only.
        tradeoffs_only: keep only response pairs that trade attributes off (``cmpo_pairs``).
        min_margin: per attribute, the score difference at or below which two responses tie (``cmpo_pairs``),
            e.g. ``{"sentiment": 0.2}``; default: every strict difference is a preference (the thesis).
        steer: inference weights by attribute name (``zoo.preference``), e.g. ``{"helpfulness": 0.7,
            "verbosity": 0.3}`` (missing attributes get 0); default: uniform. Predict mixes the heads with it.
        allow_negative_weights: accept negative steering weights (proxy-tuning-like offsets).
        beta, label_smoothing: cDPO's β and ε (thesis: 0.5 and 0.1). Other arguments: see ``DPO``.
    """

    group_by_prompt = True  # conditioned pairs need all responses of a prompt together

    def __init__(
        self,
        attributes: list[str] | None = None,
        data_kind: Literal["scored", "preference"] = "scored",
        weighting: Weighting = "power_set",
        ratio_offset: float = 0.25,
        head_init: HeadInit = "copy",
        head_rank: int = 8,
        train_heads: bool = True,
        train_trunk: bool = True,
        tradeoffs_only: bool = False,
        min_margin: dict[str, float] | None = None,
        allow_negative_weights: bool = False,
        beta: float = 0.5,
        label_smoothing: float = 0.1,
        **kwargs: Any,
    ):
        if not attributes:
            raise ValueError("model.attributes: CMPO needs at least one attribute (one head each)")
        if weighting not in WEIGHTINGS:
            raise ValueError(f"model.weighting must be one of {WEIGHTINGS}, got {weighting!r}")
        self.attributes, self.data_kind, self.weighting = list(attributes), data_kind, weighting
        self.ratio_offset, self.head_init, self.head_rank = ratio_offset, head_init, head_rank
        self.train_heads, self.allow_negative_weights = train_heads, allow_negative_weights
        self.train_trunk, self.tradeoffs_only = train_trunk, tradeoffs_only
        self.min_margin = {str(a): float(m) for a, m in (min_margin or {}).items()}
        unknown = sorted(set(self.min_margin) - set(self.attributes))
        if unknown or any(m < 0 for m in self.min_margin.values()):
            raise ValueError(f"model.min_margin {min_margin!r}: keys must be among model.attributes {self.attributes}"
                             f"{f' (unknown: {unknown})' if unknown else ''} and margins >= 0")
        if not train_heads and not train_trunk:
            raise ValueError("model.train_heads and model.train_trunk are both false: nothing would train")
        self.record_kind = data_kind
        super().__init__(beta=beta, label_smoothing=label_smoothing, **kwargs)
        self.heads: PluralHead | None = None
        self.train_metrics = torch.nn.ModuleDict({
            f"{metric}_{name}": ResumableMean() for name in self.attributes for metric in ("reward_accuracy", "reward_margin")
        })

    def method_hparams(self) -> dict[str, Any]:
        return {**super().method_hparams(), "attributes": self.attributes, "data_kind": self.data_kind,
                "weighting": self.weighting, "ratio_offset": self.ratio_offset, "head_init": self.head_init,
                "head_rank": self.head_rank, "train_heads": self.train_heads, "train_trunk": self.train_trunk,
                "tradeoffs_only": self.tradeoffs_only, "min_margin": self.min_margin,
                "allow_negative_weights": self.allow_negative_weights}

    # ---- data: conditioned pairs ------------------------------------------------------------------
    @staticmethod
    def example_fn(records: Sequence[Record], attributes: Sequence[str] = (), weighting: Weighting = "power_set",
                   ratio_offset: float = 0.25, tradeoffs_only: bool = False,
                   min_margin: dict[str, float] | None = None) -> Iterable[dict[str, Any]]:
        for p in prompt_pairs(records, attributes, weighting, ratio_offset, tradeoffs_only, min_margin):
            yield {"prompt": list(records[0].prompt), "completions": [p.chosen, p.rejected],
                   "weights": list(p.weights), "condition": "+".join(p.condition)}

    def example_kwargs(self, split: str) -> dict[str, Any]:
        return {"attributes": self.attributes, "weighting": self.weighting, "ratio_offset": self.ratio_offset,
                "tradeoffs_only": self.tradeoffs_only, "min_margin": self.min_margin}

    def on_fit_start(self) -> None:
        dm = self.trainer.datamodule
        for split in ("train", "validation"):
            if dm is not None and split in dm.datasets:
                counts = Counter(dm.datasets[split]["condition"])
                print(f"CMPO {split}: {len(dm.datasets[split])} conditioned samples ({self.weighting}): "
                      + ", ".join(f"{c}={n}" for c, n in sorted(counts.items())))
                off = sum(abs(sum(w) - 1) > 1e-6 for w in dm.datasets[split]["weights"])
                if off:
                    print(f"CMPO {split}: {off} samples have weights that do not sum to 1 ({self.weighting}): on them "
                          "the untrained model is not the reference (Eq. 3.1 mixes the logits unnormalised)")
        super().on_fit_start()

    # ---- model ------------------------------------------------------------------------------------
    def build_extras(self) -> None:
        base = base_model(self.model)
        self.heads = PluralHead(base.get_output_embeddings(), self.attributes, self.head_init, self.head_rank)
        # a saved CMPO directory as the backbone: reload its trained heads
        load_saved_head(self.heads, resolve_path(self.backbone_cfg.name_or_path), HEADS_FILE, META_FILE,
                        {"attributes": self.attributes, "head_init": self.head_init, "head_rank": self.head_rank})
        self.heads.requires_grad_(self.train_heads)
        if not self.train_trunk:  # heads only: the trunk (LoRA adapters included) stays the reference's
            self.model.requires_grad_(False)
        # the single base head is the reference; the policy reads the plural heads only
        head, embed = base.get_output_embeddings(), base.get_input_embeddings()
        if head.weight is not embed.weight:
            head.requires_grad_(False)

    def policy_logps(self, batch: dict[str, torch.Tensor], hidden_parts: tuple | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """log π_{θ;A}(y | x, Λ) under each example's mixed heads (Eq. 3.1), for the pair's two rows
        (``hidden_parts``: ``batch_completion_hidden``'s output, if the trunk already ran on this batch)."""
        lam = batch["weights"].float()
        hidden, targets, rows, n = hidden_parts or batch_completion_hidden(self.model, batch)
        return sum_by_row(hidden, targets, rows, n, self.heads, self.logprob_chunk_size, (torch.cat([lam, lam]),))

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        # an epoch's first batch starts its means afresh: a checkpoint written at the previous epoch's end (before
        # Lightning resets logged metrics) still holds that epoch's sums, and a run resumed from it would mix them in
        if batch_idx == 0:
            for running in self.train_metrics.values():
                running.reset()

    def log_pair_metrics(self, batch: dict[str, torch.Tensor], stage: str, r_c: torch.Tensor, r_r: torch.Tensor) -> None:
        """Reward accuracy and margin per attribute, over the pairs whose condition includes it, aggregated per
        epoch, weighted by those pairs (a batch may hold none of an attribute's pairs: a per-step log would repeat
        the previous step's value). Training keeps the running means in ``train_metrics``, whose state is saved
        in checkpoints, so a run resumed mid-epoch reports the same epoch means as an uninterrupted one."""
        on = batch["weights"] > 0
        for j, name in enumerate(self.attributes):
            m = on[:, j]
            values = {"reward_accuracy": (r_c[m] > r_r[m]).float().mean(), "reward_margin": (r_c[m] - r_r[m]).mean()}
            for metric, value in values.items():
                key = f"{stage}/{metric}/{name}"
                if stage == "train":  # logged every step, so a resumed epoch reports the restored running mean
                    running = self.train_metrics[f"{metric}_{name}"]
                    if m.any():
                        running.update(value, int(m.sum()))
                    self.log(key, running, on_step=False, on_epoch=True)
                elif m.any():
                    self.log(key, value, batch_size=int(m.sum()), sync_dist=True)

    # ---- heads only: the reference shares the trunk's forward -------------------------------------------
    def shares_reference_trunk(self) -> bool:
        """``train_trunk: false`` with ``reference: live``: the trunk never changes, so π_ref is the base head on the
        same hidden states, exactly: one trunk forward gives policy and reference (no cache pass, no 2nd model)."""
        return not self.train_trunk and self.reference == "live" and self.reference_model is None

    @torch.no_grad()
    def base_head_logps(self, parts: tuple) -> torch.Tensor:
        hidden, targets, rows, n = parts
        return sum_by_row(hidden.detach(), targets, rows, n, base_model(self.model).get_output_embeddings(),
                          self.logprob_chunk_size)[0]

    def pair_losses(self, batch: dict[str, torch.Tensor], split: str, policy: tuple | None = None,
                    ref: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if policy is None and ref is None and self.shares_reference_trunk():
            parts = batch_completion_hidden(self.model, batch)
            policy, ref = self.policy_logps(batch, parts), self.base_head_logps(parts)
        return super().pair_losses(batch, split, policy, ref)

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        parts = batch_completion_hidden(self.model, batch)  # one trunk forward: the loss and every head's accuracy
        ref = self.base_head_logps(parts) if self.shares_reference_trunk() else None
        loss = self.dpo_step(batch, "validation", policy=self.policy_logps(batch, parts), ref=ref)
        self.log_preference_accuracy(batch, "val", parts)
        return loss

    def example_metrics(self, batch: dict[str, torch.Tensor], split: str = "validation") -> dict[str, torch.Tensor]:
        """Per held-out pair and attribute a (NaN unless the pair's condition includes a): reward accuracy (ties
        count ½) and margin under the pair's own Λ."""
        _, r_c, r_r = self.pair_losses(batch, split)
        acc, nan = pairwise_accuracy(r_c, r_r), torch.full_like(r_c, float("nan"))
        out = {}
        for j, name in enumerate(self.attributes):
            on = batch["weights"][:, j].to(r_c.device) > 0
            out[f"reward_accuracy/{name}"] = torch.where(on, acc, nan)
            out[f"reward_margin/{name}"] = torch.where(on, r_c - r_r, nan)
        return out

    @torch.no_grad()
    def log_preference_accuracy(self, batch: dict[str, torch.Tensor], stage: str, hidden_parts: tuple | None = None) -> None:
        """Eq. 5.1 per attribute a: 1[π_θ(y_c|x, e_a) > π_θ(y_r|x, e_a)] with the one-hot Λ = e_a, over
        pairs conditioned on a. One trunk forward serves all k heads."""
        hidden, targets, rows, n = hidden_parts or batch_completion_hidden(self.model, batch)
        b = batch["weights"].shape[0]
        for j, name in enumerate(self.attributes):
            m = batch["weights"][:, j] > 0
            if not m.any():
                continue
            lam = torch.zeros(n, self.heads.k, device=hidden.device)
            lam[:, j] = 1
            logps, _ = sum_by_row(hidden, targets, rows, n, self.heads, self.logprob_chunk_size, (lam,))
            acc = (logps[:b][m] > logps[b:][m]).float().mean()
            self.log(f"{stage}/preference_accuracy/{name}", acc, batch_size=int(m.sum()), sync_dist=True)

    # ---- steering at inference (zoo.preference) --------------------------------------------------
    def preference_rules(self) -> dict[str, Any]:
        return {"allow_negative": self.allow_negative_weights}

    def default_preference(self) -> Preference:
        return Preference.uniform(self.attributes)

    def apply_preference(self, preference: Preference) -> FusedHead:
        """Inside the context the model's LM head is the fused Σ λ_j W_j (generation, predict)."""
        return FusedHead(self, preference.vector())

    mixes_preferences = True

    def generate_steered(self, prompt_ids: Sequence[Sequence[int]], preferences: Sequence[Any],
                         settings: SamplingSettings | None = None) -> list[Samples]:
        """Prompts under different Λ in ONE batch: the rollout engine applies the plural heads row by row
        (``PluralHead(hidden, Λ_row)``). A batch with a single Λ fuses the heads once instead (one head's cost,
        the same numbers as ``predict``)."""
        settings = settings or self.sampling
        prefs = [self.preference(p) if p is not None else self.default_preference() for p in preferences]
        if len(set(prefs)) <= 1 or settings.engine != "lean":
            return super().generate_steered(prompt_ids, prefs, settings)
        lam = torch.stack([p.vector() for p in prefs]).to(self.heads.weight.device if self.head_init == "copy"
                                                          else self.heads.A.device)
        rollout = generate(self.model, self.tokenizer, prompt_ids, settings, head=self.heads, head_args=(lam,))
        samples = Samples.from_rollout([self.tokenizer.decode(p) for p in prompt_ids], rollout)
        return [prompt_samples(samples, i) for i in range(len(prompt_ids))]

    def save_pretrained(self, path: str | Path) -> Path:
        """Trunk (HF directory or PEFT adapter) + ``plural_heads.safetensors`` + ``cmpo.json`` (attributes)."""
        path = super().save_pretrained(path)
        save_head(self.heads, path, HEADS_FILE, META_FILE,
                  {"attributes": self.attributes, "head_init": self.head_init, "head_rank": self.head_rank})
        return path

    # ---- memory plan (zoo.memory_plan) ------------------------------------------------------------
    @classmethod
    def memory_facts(cls, init_args: dict[str, Any], model: ModelFacts) -> MethodFacts:
        """DPO's facts (two prefix-shared rows per conditioned pair, the reference: cached by default, the
        adapter-disabled single-head base under LoRA with ``live``) plus k = len(attributes) plural heads
        (``zoo.plural``), fp32, trainable unless ``train_heads: false``. ``head_init: copy``: k full V×H
        copies of the base head; ``lowrank``: k·r·(V + H) parameters on top of the base head the model keeps.
        The mixed log-probs stack the heads into one weight per chunk (a [k·H, V] copy, or the k·r-row B
        stack): with ``copy`` the LM-head chunk term grows with k. The base head is the reference's, not
        the policy's: an untied one stays frozen; a tied one trains with the embeddings unless LoRA is on."""
        args = constructor_args(cls, init_args)
        k, vocab, hidden = len(args["attributes"] or ()), model.vocab_size, model.hidden_size
        if not k:
            raise ValueError("model.attributes: CMPO needs at least one attribute (one head each)")
        if args["head_init"] not in ("copy", "lowrank"):
            raise ValueError(f"model.head_init must be copy or lowrank, got {args['head_init']!r}")
        heads = k * vocab * hidden if args["head_init"] == "copy" else k * args["head_rank"] * (vocab + hidden)
        trains = bool(args["train_heads"])
        return dataclasses.replace(
            super().memory_facts(init_args, model), own_params=heads, own_trainable_params=heads if trains else 0,
            head_weight_params=heads, head_weight_trains=trains, frozen_lm_head=True,
        )


class FusedHead:
    """Swaps the model's output embedding for one linear layer holding W_Λ, and restores it on exit."""

    def __init__(self, module: CMPO, lam: torch.Tensor):
        self.module, self.lam = module, lam

    def __enter__(self) -> FusedHead:
        base = base_model(self.module.model)
        self.original = base.get_output_embeddings()
        weight = self.module.heads.mixed_weight(self.lam.to(self.original.weight.device)).detach()
        fused = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=False, device=weight.device,
                                dtype=self.original.weight.dtype)
        fused.weight.data.copy_(weight)
        base.set_output_embeddings(fused)
        return self

    def __exit__(self, *exc: object) -> None:
        base_model(self.module.model).set_output_embeddings(self.original)
