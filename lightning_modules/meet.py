"""MEET: alignMEnt with parameter-Efficient Tuning (Xue, Wang, Ji; arXiv 2310.00819, "Parameter-Efficient
Tuning Helps Language Model Alignment"), and its Chain-of-Hindsight baseline (CoH, Liu et al. 2023).

Each preference pair (x, y_w, y_l) becomes two conditional LM examples, (x, θ_c^w) → y_w and (x, θ_c^l) → y_l,
where θ_c = {θ_c^w, θ_c^l} are "good" and "bad" control tokens (``zoo.control``: soft prompts, LoRA adapters,
or hand-crafted text). Loss (``zoo.control.meet_loss``, completion tokens only):

    Eq. 2 (step 1, PET):  L_PET(θ_c)  = −Σ [log M(y_l | x, θ_c^l, θ) + log M(y_w | x, θ_c^w, θ)],  θ frozen
    Eq. 1 (step 2):       L_1(θ, θ_c) = the same sum, LM θ and control θ_c trained jointly

Phases (``phases``; the ``callbacks.phase_switch.PhaseSwitch`` callback, added automatically, switches
at the start of epoch ``first_epochs``): step 1 trains θ_c only at ``control_lr`` (paper: 1e-3, 5 epochs);
step 2 trains θ and θ_c (paper: 2e-5, 5 epochs). Ablations (Table 5) are settings: first-step-only
(``second_epochs: 0``), second-step-only (``first_epochs: 0``), one special token (``control.length: 1``).
CoH is ``control.kind: text`` with ``first_epochs: 0`` (fixed prompts, LM fine-tuned with Eq. 1).
Inference always uses θ_c^w (greedy, 128 new tokens in the paper configs); predictions name the control.

Where the paper is silent, we chose (see docs/methods/meet.md):
- control placement: ``before`` the prompt (after a tokenizer-added BOS) by default, ``between`` selectable;
  the max length (512, over-long examples dropped) counts text tokens, not soft-prompt positions;
- soft-prompt init: the embedding of " good"/" bad" (leading space; mean over sub-tokens) repeated L times;
- LoRA: alpha 8 (scale 2 at rank 4), dropout 0, every linear layer but the LM head, two adapters on one base;
- step 2's control-token learning rate: ``second_control_lr``, default the LM's (``optim.lr``, 2e-5);
- step 2 starts a fresh optimizer (as a separate run would) and each phase has its own LR schedule;
- loss: the token mean of Eq. 1 over the batch (the equation writes a sum);
- "batch size 64" read as 64 conditional sequences = 32 pairs (paper configs).
"""

from __future__ import annotations

import dataclasses
import json
import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from callbacks.phase_switch import PhaseSwitch
from lightning_modules.base import STAGE_PREFIX, CausalLMModule, as_dataclass, plain_values, split_decay
from zoo.backbone import BackboneConfig, LoraSettings
from zoo.control import (
    CONTROL_NAMES,
    GOOD,
    Control,
    ControlSettings,
    SoftPrompts,
    add_control_adapters,
    control_rows,
    controlled_logprobs,
    generate_with_control,
    is_adapter_parameter,
    meet_loss,
    text_control_ids,
)
from zoo.memory_plan import MethodFacts, ModelFacts, constructor_args
from zoo.preference import Preference, PreferenceError
from zoo.records import PreferencePair


@dataclasses.dataclass
class PhaseSettings:
    """MEET's two steps. Total epochs = first_epochs + second_epochs (set trainer.max_epochs to match)."""

    first_epochs: int = 5  # step 1 (Eq. 2): control tokens only, LM frozen
    second_epochs: int = 5  # step 2 (Eq. 1): LM and control tokens jointly
    control_lr: float = 1e-3  # step 1 learning rate (the paper's PET rate)
    second_control_lr: float | None = None  # control tokens in step 2; None = the LM's rate (optim.lr)

    def __post_init__(self) -> None:
        if self.first_epochs < 0 or self.second_epochs < 0 or self.first_epochs + self.second_epochs == 0:
            raise ValueError("phases: first_epochs and second_epochs must be >= 0 and not both 0")


class MEET(CausalLMModule):
    """MEET / CoH on preference pairs.

    Args:
        control: θ_c (``zoo.control.ControlSettings``): kind prompt | lora | text, placement, L, LoRA rank...
        phases: the two steps (``PhaseSettings``); the LM learning rate is ``optim.lr``.
        attributes: the steering names of the two controls, (θ_c^w, θ_c^l): what the chosen and the rejected
            replies exemplify (default ``[good, bad]``; e.g. ``[verbosity, brevity]`` for length-labelled pairs).
            ``steer: {good: 1}`` (the default, the paper's inference) samples under θ_c^w.
        (see ``CausalLMModule`` for backbone, tokenize, optim, sampling, steer)
    """

    record_kind = "preference"

    def __init__(self, control: ControlSettings | None = None, phases: PhaseSettings | None = None,
                 attributes: list[str] | None = None, **kwargs: Any):
        self.attributes = list(attributes) if attributes is not None else list(CONTROL_NAMES)
        if len(self.attributes) != len(CONTROL_NAMES) or len(set(self.attributes)) != len(self.attributes):
            raise ValueError(f"model.attributes: MEET needs two distinct names, for (good, bad) controls; "
                             f"got {attributes}")
        self.control_cfg: ControlSettings = as_dataclass(ControlSettings, control)
        self.phases: PhaseSettings = as_dataclass(PhaseSettings, phases)
        if self.control_cfg.kind == "text" and self.phases.first_epochs:
            raise ValueError("control.kind text (hand-crafted prompts) has nothing to train in step 1; "
                             "set phases.first_epochs: 0 (CoH)")
        super().__init__(**kwargs)
        if self.backbone_cfg.lora is not None or self.backbone_cfg.prompt_tuning is not None:
            raise ValueError("MEET: configure its LoRA / soft prompts under model.control, not backbone.lora / "
                             "backbone.prompt_tuning (the LM itself is fine-tuned in full in step 2)")
        self.phase = self.phase_for_epoch(0)
        self.optimizer_phase: int | None = None
        self.soft_prompts: SoftPrompts | None = None
        tok = self.tokenizer
        adds_bos = (self.tokenize_settings.prompt_format != "chat" and tok.bos_token_id is not None
                    and tok("x")["input_ids"][:1] == [tok.bos_token_id])
        text_ids = None
        if self.control_cfg.kind == "text":
            text_ids = text_control_ids(tok, self.control_cfg.texts, self.control_cfg.text_template)
        self.control = Control(self.control_cfg, pad_id=tok.pad_token_id, bos_offset=int(adds_bos), text_ids=text_ids)
        self.active_control = GOOD  # the control ``generate`` samples under (``steer``)

    def method_hparams(self) -> dict[str, Any]:
        return {"control": plain_values(self.control_cfg), "phases": plain_values(self.phases), "attributes": self.attributes}

    @staticmethod
    def example_fn(record: PreferencePair, **kwargs: Any) -> Iterable[dict[str, Any]]:
        # the collator stacks completions block-wise: rows 0..B-1 chosen ("good"), B..2B-1 rejected ("bad")
        yield {"prompt": list(record.prompt), "completions": [record.chosen, record.rejected]}

    # ---- model and phases -------------------------------------------------------------------------
    def build_extras(self) -> None:
        kind = self.control_cfg.kind
        if kind == "lora":
            self.model = add_control_adapters(self.model, self.control_cfg)
        elif kind == "prompt":
            emb = self.model.get_input_embeddings().weight
            self.soft_prompts = SoftPrompts.from_words(emb, self.tokenizer, self.control_cfg.init_words,
                                                       self.control_cfg.length)
            self.control.soft_prompts = self.soft_prompts
        # everything stays trainable until configure_optimizers sets the phase: DDP registers gradient hooks
        # only on parameters that require grad when it wraps the model, and step 2 needs all of them
        self.requires_grad_(True)

    def configure_callbacks(self):
        has_switch = self._trainer is not None and any(isinstance(c, PhaseSwitch) for c in self._trainer.callbacks)
        return [] if has_switch else [PhaseSwitch()]

    def phase_for_epoch(self, epoch: int) -> int:
        first, second = self.phases.first_epochs, self.phases.second_epochs
        return 1 if second == 0 or epoch < first else 2

    def control_parameters(self) -> list[torch.nn.Parameter]:
        if self.soft_prompts is not None:
            return list(self.soft_prompts.parameters())
        return [p for n, p in self.model.named_parameters() if is_adapter_parameter(n)]

    def lm_parameters(self) -> list[tuple[str, torch.nn.Parameter]]:
        return [(n, p) for n, p in self.model.named_parameters() if not is_adapter_parameter(n)]

    def set_phase(self, phase: int) -> None:
        """Step 1: only θ_c trainable. Step 2: θ and θ_c."""
        self.phase = phase
        for p in self.control_parameters():
            p.requires_grad_(True)
        for _, p in self.lm_parameters():
            p.requires_grad_(phase == 2)

    def trainable_summary(self) -> str:
        n_ctrl = sum(p.numel() for p in self.control_parameters() if p.requires_grad)
        n_lm = sum(p.numel() for _, p in self.lm_parameters() if p.requires_grad)
        return f"trainable: control {n_ctrl:,}, LM {n_lm:,}"

    def configure_optimizers(self):
        """The same param-group layout in both phases (control, LM with decay, LM without), so a checkpoint's
        optimizer state fits whichever phase is restored; the frozen LM groups have lr 0 in step 1."""
        self.set_phase(self.phase)
        ph, lm_lr = self.phases, self.optim.lr
        control_lr = ph.control_lr if self.phase == 1 else (ph.second_control_lr if ph.second_control_lr is not None
                                                             else lm_lr)
        decay, no_decay = split_decay(self.lm_parameters())
        lm_lr = lm_lr if self.phase == 2 else 0.0
        groups = [
            {"params": self.control_parameters(), "lr": control_lr, "weight_decay": 0.0, "name": "control"},
            {"params": decay, "lr": lm_lr, "weight_decay": self.optim.weight_decay, "name": "lm"},
            {"params": no_decay, "lr": lm_lr, "weight_decay": 0.0, "name": "lm_no_decay"},
        ]
        self.optimizer_phase = self.phase
        return self.optimizer_and_schedule(groups, self.phase_steps())

    def phase_steps(self) -> int:
        """Optimizer steps in the current phase (the length of its LR schedule)."""
        return self.schedule_steps(self.phases.first_epochs if self.phase == 1 else self.phases.second_epochs)

    def on_fit_start(self) -> None:
        total = self.phases.first_epochs + self.phases.second_epochs
        if self.trainer.max_epochs not in (None, -1, total) and self.trainer.max_steps == -1:
            warnings.warn(f"MEET: trainer.max_epochs={self.trainer.max_epochs} but the phases add up to {total} "
                          f"epochs (phases.first_epochs={self.phases.first_epochs}, "
                          f"second_epochs={self.phases.second_epochs})", stacklevel=1)

    # ---- loss -------------------------------------------------------------------------------------
    def meet_step(self, batch: dict[str, torch.Tensor], split: str) -> torch.Tensor:
        b = batch["idx"].shape[0]
        controls = control_rows(b, batch["input_ids"].device)
        logps, counts = controlled_logprobs(self.model, self.control, batch["input_ids"], batch["attention_mask"],
                                            batch["labels"], controls, self.logprob_chunk_size)
        loss, nll_good, nll_bad = meet_loss(logps[:b], counts[:b], logps[b:], counts[b:])
        stage = STAGE_PREFIX[split]
        metrics = {f"{stage}/loss": loss, f"{stage}/nll_chosen_good": nll_good, f"{stage}/nll_rejected_bad": nll_bad}
        if split == "train":
            metrics["train/phase"] = float(self.phase)
        self.log_dict(metrics, prog_bar=split == "train", batch_size=b, sync_dist=split != "train")
        return loss

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self.meet_step(batch, "train")

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self.meet_step(batch, "validation")

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self.meet_step(batch, "test")

    # ---- inference and steering (zoo.preference) -------------------------------------------------
    def default_preference(self) -> Preference:
        return Preference.one_hot(self.attributes, self.attributes[GOOD])  # the paper samples under θ_c^w

    @contextmanager
    def apply_preference(self, preference: Preference) -> Iterator[None]:
        """A one-hot preference selects its control for ``generate``; with soft-prompt controls any weights mix
        the two prompts (Σ_c w_c θ_c / Σ_c w_c, an interpolation between θ_c^w and θ_c^l). LoRA and text
        controls take one control at a time."""
        nonzero = [i for i, w in enumerate(preference.weights) if w]
        if len(nonzero) == 1:
            active = nonzero[0]
        elif self.control_cfg.kind == "prompt":
            active = preference.vector()
        else:
            raise PreferenceError(f"MEET ({self.control_cfg.kind} controls) samples under one control at a time: "
                                  f"give one of {self.attributes} a weight, got {preference.as_dict()}")
        previous, self.active_control = self.active_control, active
        try:
            yield
        finally:
            self.active_control = previous

    def generate(self, prompt_ids: list[list[int]], settings=None):
        """Samples under the active control (default θ_c^w, the only one the paper uses at inference)."""
        return generate_with_control(self.model, self.tokenizer, self.control, prompt_ids, settings or self.sampling,
                                     self.active_control)

    def prediction_info(self) -> dict[str, Any]:
        mixed = isinstance(self.active_control, torch.Tensor)
        info = {"control": "mix" if mixed else CONTROL_NAMES[self.active_control], "control_kind": self.control_cfg.kind}
        if self.control_cfg.kind != "lora":
            info["control_placement"] = self.control_cfg.placement
        if self.control_cfg.kind == "text":
            info["control_text"] = self.control_cfg.texts[self.active_control]
        return info

    # ---- artifacts and checkpoints ----------------------------------------------------------------
    def save_pretrained(self, path: str | Path) -> Path:
        """An HF directory of the (fine-tuned) LM and tokenizer, plus ``meet_control.json`` and the control
        tokens: ``meet_soft_prompts.safetensors`` (soft prompts) or PEFT adapter directories ``good/`` and
        ``bad/`` (LoRA; load the LM from ``path``, then ``PeftModel.from_pretrained(lm, path / "good")``)."""
        if self.control_cfg.kind != "lora":
            path = super().save_pretrained(path)
        else:
            path = Path(path)
            path.mkdir(parents=True, exist_ok=True)
            # step 2 fine-tunes the LM itself, so the adapters alone are not the model: write the LM's own
            # weights under their plain names (PEFT's injected layers keep them as `<name>.base_layer.*`)
            lm = self.model.get_base_model()
            weights = {k.replace(".base_layer.", "."): v for k, v in lm.state_dict().items() if "lora_" not in k}
            lm.save_pretrained(path, state_dict=weights)
            self.tokenizer.save_pretrained(path)
            self.model.save_pretrained(path)  # one sub-directory per adapter
        if self.soft_prompts is not None:
            from safetensors.torch import save_file

            prompts = self.soft_prompts.prompts.detach().cpu()
            save_file({name: prompts[i].contiguous() for i, name in enumerate(CONTROL_NAMES)},
                      str(path / "meet_soft_prompts.safetensors"))
        (path / "meet_control.json").write_text(json.dumps({"control": plain_values(self.control_cfg),
                                                            "inference_control": CONTROL_NAMES[GOOD]}, indent=2))
        return path

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["meet"] = {"phase": int(self.phase)}  # the phase the saved optimizer state belongs to

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        self.phase = int(checkpoint.get("meet", {}).get("phase", self.phase))

    # ---- memory plan (zoo.memory_plan) ------------------------------------------------------------
    @classmethod
    def memory_facts(cls, init_args: dict[str, Any], model: ModelFacts) -> MethodFacts:
        """Two rows per pair: the chosen reply under "good", the rejected under "bad". The larger phase is
        planned: step 2 trains the whole LM and the controls (a fresh AdamW state for all of it); step 1
        (planned only with ``second_epochs: 0``) trains the controls alone on a frozen LM, which still
        back-propagates through every layer. Controls: ``prompt``, 2·L·H fp32 parameters and L =
        ``control.length`` more positions in every row; ``lora``, two adapters of ``control.lora_*`` on one
        base (each half of the batch runs through its own: the same tokens as two rows per pair, both
        graphs alive until backward); ``text``, no parameters and its tokens in every row, counted as the
        longer control's UTF-8 bytes: an upper bound for byte-level BPE, since the plan loads no tokenizer."""
        args = constructor_args(cls, init_args)
        if as_dataclass(BackboneConfig, args["backbone"]).lora is not None:
            raise ValueError("MEET: configure its LoRA under model.control, not backbone.lora")
        control = as_dataclass(ControlSettings, args["control"])
        phases = as_dataclass(PhaseSettings, args["phases"])
        step = 2 if phases.second_epochs else 1
        facts = dataclasses.replace(
            super().memory_facts(init_args, model), rows_per_example=2, trains_base=step == 2,
            notes=(f"step {step} planned: " + ("the LM and the controls train" if step == 2 else
                                               "only the controls train, the LM is frozen"),),
        )
        if control.kind == "prompt":
            prompts = len(CONTROL_NAMES) * control.length * model.hidden_size
            return dataclasses.replace(facts, extra_tokens=control.length, own_params=prompts,
                                       own_trainable_params=prompts)
        if control.kind == "lora":
            adapters = LoraSettings(r=control.lora_r, alpha=control.lora_alpha, dropout=control.lora_dropout,
                                    target_modules=control.lora_target_modules)
            return dataclasses.replace(facts, adapters=adapters, adapter_copies=len(CONTROL_NAMES))
        text = max(len(control.text_template.format(text=t).encode()) for t in control.texts)
        return dataclasses.replace(facts, extra_tokens=text)
