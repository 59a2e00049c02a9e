"""SteerLM, the CMPO thesis's third baseline (Manyika 2024, §5.3.1, Table A.1): an attribute prediction
model (APM) and an attribute-conditioned SFT model (ACM), after SteerLM (Dong et al., 2023) as used for
HelpSteer (Wang et al., 2023), with the thesis's two changes: the APM classifies each attribute into 5
Likert classes with cross-entropy (not regression), and the ACM trains on HelpSteer + OASST.

Likert classes. A score s on its declared scale [lo, hi] is class c = round((s − lo) / (hi − lo) · (C − 1)),
C = 5: HelpSteer's 0-4 ratings stay as they are; OASST's [0, 1] labels become round(4v), NeMo-Aligner's
conversion (Python's round, so an exact half goes to the even class: 0.625 -> 2, 0.875 -> 4).

Template (Table A.1; the thesis text lost its newlines, ours follow NeMo-Aligner: marker, newline, text,
newline). A conversation [system?, user, assistant, ..., user] renders as

    <extra_id_0>System\\n{system}\\n<extra_id_0>User\\n{user}\\n...<extra_id_1>Assistant\\n

and the response follows (then EOS). The ACM puts one more line right after that last assistant marker,
``{label_prefix}{ratings}\\n``, with ratings in NeMo's linearised form ``helpfulness:4,verbosity:0``;
the response follows it. Presets (``template``): ``thesis`` (the markers printed in Table A.1, no label
prefix) or ``nemo`` (``<extra_id_1>User``, label prefix ``<extra_id_2>``, as NeMo-Aligner's SteerLM data).

Where the thesis is silent (our choices):
- system prompt: NeMo-Aligner's SteerLM one (below); a record's own system turn replaces it; ``None``
  drops the system block;
- ``marker_tokens``: ``text`` (default; the markers are ordinary text, Llama-2 has none of them) or
  ``special`` (added to the tokenizer as special tokens; the embeddings grow, new rows initialised by
  transformers' mean resizing; with LoRA they stay frozen at that initialisation);
- earlier assistant turns of a multi-turn prompt carry no ratings (records rate only the final reply);
- APM: reads the trunk's last-token hidden state after prompt + response + EOS (as the reward model
  does); a record's missing attributes are ignored (target −100); loss = mean cross-entropy over the
  labelled (record, attribute) entries of the batch; labels are the argmax class;
- ACM: the ratings line lists the record's own labelled attributes in the configured order (NeMo leaves
  missing labels out too); a record with none of them yields no example; the loss is the NLL of the
  response tokens only (not the ratings, not the prompt);
- ACM inference: ``steer: {X: 1}`` sets X to C − 1 = 4 and every other attribute to 0, as the thesis
  evaluates; any weights in [0, 1] give classes round(w · (C − 1)) (missing attributes 0);
- the thesis trains the ACM on APM-labelled data: ``SteerLMAttributeModel.label_records`` makes those
  labels; the configs train on the datasets' own labels (relabelling is a separate, offline step).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F

from lightning_modules.base import STAGE_PREFIX, CausalLMModule, as_dataclass
from lightning_modules.sft import SFT
from zoo.backbone import base_model, resolve_path
from zoo.collate import IGNORE_INDEX, PadCollator, TokenizeSettings, tokenize_examples
from zoo.heads import AttributeClassHead, load_saved_head, save_head
from zoo.logprobs import last_token_hidden
from zoo.memory_plan import MethodFacts, ModelFacts, constructor_args
from zoo.preference import Preference
from zoo.records import ScoredResponse

LIKERT_CLASSES = 5
NEMO_SYSTEM_PROMPT = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
MARKERS = ("<extra_id_0>", "<extra_id_1>", "<extra_id_2>")
HEAD_FILE, HEAD_META = "attribute_head.safetensors", "attribute_head.json"
TemplateName = Literal["thesis", "nemo"]


@dataclass(frozen=True)
class Template:
    system: str
    user: str
    assistant: str
    label_prefix: str


TEMPLATES = {
    "thesis": Template("<extra_id_0>System", "<extra_id_0>User", "<extra_id_1>Assistant", ""),
    "nemo": Template("<extra_id_0>System", "<extra_id_1>User", "<extra_id_1>Assistant", "<extra_id_2>"),
}


def likert_class(score: float, scale: Sequence[float], num_classes: int = LIKERT_CLASSES) -> int:
    """c = round((s − lo) / (hi − lo) · (C − 1)) (see the module docstring)."""
    lo, hi = scale
    return int(round((score - lo) / (hi - lo) * (num_classes - 1)))


def record_classes(record: ScoredResponse, attributes: Sequence[str], num_classes: int = LIKERT_CLASSES) -> dict[str, int]:
    """The record's labelled attributes among ``attributes``, as Likert classes."""
    return {a: likert_class(record.scores[a], record.scales[a], num_classes) for a in attributes if a in record.scores}


def ratings_string(ratings: Mapping[str, int], attributes: Sequence[str]) -> str:
    """NeMo's linearised ratings in the configured order, e.g. ``helpfulness:4,verbosity:0``."""
    return ",".join(f"{a}:{int(ratings[a])}" for a in attributes if a in ratings)


def render(
    messages: Sequence[Mapping[str, str]],
    template: TemplateName = "thesis",
    system_prompt: str | None = NEMO_SYSTEM_PROMPT,
    ratings: str | None = None,
) -> str:
    """Table A.1's prompt text up to where the response starts; ``ratings`` adds the ACM's line."""
    t = TEMPLATES[template]
    messages = list(messages)
    if messages and messages[0]["role"] == "system":
        system_prompt = messages.pop(0)["content"]
    parts = [f"{t.system}\n{system_prompt}\n"] if system_prompt is not None else []
    parts += [f"{t.user if m['role'] == 'user' else t.assistant}\n{m['content']}\n" for m in messages]
    parts.append(f"{t.assistant}\n")
    if ratings is not None:
        parts.append(f"{t.label_prefix}{ratings}\n")
    return "".join(parts)


def as_plain_prompt(text: str) -> list[dict[str, str]]:
    """One turn holding the rendered text: ``prompt_format: plain`` tokenizes it exactly as it is."""
    return [{"role": "user", "content": text}]


def attribute_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """APM loss: L = −Σ_(i,j) m_ij log softmax(z_ij)[c_ij] / Σ m_ij, for logits z [N, k, C] and classes
    c [N, k], m_ij = 1 where c_ij ≠ −100 (attribute j of record i is labelled). 0 with nothing labelled."""
    flat, target = logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1)
    if not (target != IGNORE_INDEX).any():
        return flat.sum() * 0.0  # keeps the graph (DDP needs every parameter used)
    return F.cross_entropy(flat, target, ignore_index=IGNORE_INDEX)


def _plain_settings(tokenize: TokenizeSettings | dict | None) -> TokenizeSettings:
    """SteerLM renders its own template, so prompts must be tokenized as plain text."""
    settings = as_dataclass(TokenizeSettings, tokenize)
    if tokenize is None or (isinstance(tokenize, dict) and "prompt_format" not in tokenize):
        settings.prompt_format = "plain"
    if settings.prompt_format != "plain":
        raise ValueError("SteerLM renders Table A.1's template itself: set model.init_args.tokenize.prompt_format: "
                         f"plain (got {settings.prompt_format!r})")
    return settings


class _SteerLM(CausalLMModule):
    """What the APM and the ACM share: attributes, template, Likert classes, optional marker tokens."""

    record_kind = "scored"

    def __init__(
        self,
        attributes: list[str] | None = None,
        template: TemplateName = "thesis",
        system_prompt: str | None = NEMO_SYSTEM_PROMPT,
        marker_tokens: Literal["text", "special"] = "text",
        num_classes: int = LIKERT_CLASSES,
        **kwargs: Any,
    ):
        if not attributes or len(set(attributes)) != len(attributes):
            raise ValueError(f"model.attributes: SteerLM needs unique attribute names, got {attributes}")
        if template not in TEMPLATES:
            raise ValueError(f"model.template must be one of {tuple(TEMPLATES)}, got {template!r}")
        if marker_tokens not in ("text", "special"):
            raise ValueError(f"model.marker_tokens must be 'text' or 'special', got {marker_tokens!r}")
        self.attributes, self.template, self.system_prompt = list(attributes), template, system_prompt
        self.marker_tokens, self.num_classes = marker_tokens, num_classes
        kwargs["tokenize"] = _plain_settings(kwargs.get("tokenize"))
        super().__init__(**kwargs)
        if marker_tokens == "special":
            self.tokenizer.add_tokens(list(MARKERS), special_tokens=True)

    def method_hparams(self) -> dict[str, Any]:
        return {"attributes": self.attributes, "template": self.template, "system_prompt": self.system_prompt,
                "marker_tokens": self.marker_tokens, "num_classes": self.num_classes}

    def example_kwargs(self, split: str) -> dict[str, Any]:
        return {"attributes": self.attributes, "template": self.template, "system_prompt": self.system_prompt,
                "num_classes": self.num_classes}

    def build_extras(self) -> None:
        base = base_model(self.model)
        if base.get_input_embeddings().num_embeddings < len(self.tokenizer):  # marker tokens were added
            base.resize_token_embeddings(len(self.tokenizer))

    # ---- memory plan (zoo.memory_plan) ------------------------------------------------------------
    @classmethod
    def memory_facts(cls, init_args: dict[str, Any], model: ModelFacts) -> MethodFacts:
        """One row per scored response. The ACM is SFT on it (the ratings line is prompt text); the APM
        overrides the head. ``marker_tokens: special`` grows the vocabulary by at most three rows: left out."""
        facts = super().memory_facts(init_args, model)
        if constructor_args(cls, init_args)["marker_tokens"] == "special":
            facts = replace(facts, notes=(*facts.notes, "marker_tokens special: up to 3 vocabulary rows more, not counted"))
        return facts


class SteerLMAttributeModel(_SteerLM):
    """APM: one C-way classifier per attribute on the last-token hidden state, cross-entropy on scored
    responses; ``predict_attributes`` / ``label_records`` label data with the argmax class.

    Args:
        attributes: the attributes, one classifier each (order = head order).
        template / system_prompt / marker_tokens: see the module docstring.
        num_classes: C (5 Likert classes in the thesis).
        head_dropout: dropout on the hidden state before the head.
    """

    def __init__(self, attributes: list[str] | None = None, head_dropout: float = 0.0, **kwargs: Any):
        self.head_dropout = head_dropout
        super().__init__(attributes=attributes, **kwargs)
        self.head: AttributeClassHead | None = None

    def method_hparams(self) -> dict[str, Any]:
        return {**super().method_hparams(), "head_dropout": self.head_dropout}

    @staticmethod
    def example_fn(record: ScoredResponse, attributes: Sequence[str] = (), template: TemplateName = "thesis",
                   system_prompt: str | None = NEMO_SYSTEM_PROMPT, num_classes: int = LIKERT_CLASSES,
                   **kwargs: Any) -> Iterable[dict[str, Any]]:
        classes = record_classes(record, attributes, num_classes)
        if classes:
            yield {"prompt": as_plain_prompt(render(record.prompt, template, system_prompt)),
                   "completions": [record.response],
                   "attribute_classes": [classes.get(a, IGNORE_INDEX) for a in attributes]}

    def build_extras(self) -> None:
        super().build_extras()
        base = base_model(self.model)
        self.head = AttributeClassHead(base.config.hidden_size, self.attributes, self.num_classes, self.head_dropout)
        # a saved APM directory as the backbone: reload its trained head
        load_saved_head(self.head, resolve_path(self.backbone_cfg.name_or_path), HEAD_FILE, HEAD_META,
                        {"names": self.attributes, "num_classes": self.num_classes})
        head, embed = base.get_output_embeddings(), base.get_input_embeddings()
        if head.weight is not embed.weight:  # the LM head is unused: keep it out of the optimizer
            head.requires_grad_(False)

    def class_logits(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """[N, k, C] class logits of every row of a batch."""
        return self.head(last_token_hidden(self.model, batch["input_ids"], batch["attention_mask"]))

    def apm_step(self, batch: dict[str, torch.Tensor], split: str) -> torch.Tensor:
        logits, targets = self.class_logits(batch), batch["attribute_classes"]
        loss = attribute_cross_entropy(logits, targets)
        labelled, correct = targets != IGNORE_INDEX, logits.argmax(-1) == targets
        stage, n = STAGE_PREFIX[split], targets.shape[0]
        sync = split != "train"
        self.log(f"{stage}/loss", loss, prog_bar=split == "train", batch_size=n, sync_dist=sync)
        self.log(f"{stage}/accuracy", correct[labelled].float().mean(), batch_size=int(labelled.sum()), sync_dist=sync)
        for j, name in enumerate(self.attributes):
            m = labelled[:, j]
            if m.any():
                self.log(f"{stage}/accuracy/{name}", correct[:, j][m].float().mean(), batch_size=int(m.sum()),
                         sync_dist=sync)
        return loss

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self.apm_step(batch, "train")

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self.apm_step(batch, "validation")

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self.apm_step(batch, "test")

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> list[dict[str, Any]]:
        raise NotImplementedError("the APM does not generate; label data with predict_attributes / label_records")

    @torch.no_grad()
    def predict_attributes(self, prompts: Sequence[str | Sequence[Mapping[str, str]]], responses: Sequence[str],
                           batch_size: int = 8) -> list[dict[str, int]]:
        """Argmax class per attribute for each (prompt, response); a prompt is a string or a message list.
        Over-long inputs are truncated (never dropped), so every pair gets labels."""
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        settings = replace(self.tokenize_settings, length_policy="truncate")
        collate = PadCollator(self.tokenizer.pad_token_id)
        was_training, out = self.training, []
        self.eval()
        try:
            for start in range(0, len(prompts), batch_size):
                chunk = [[{"role": "user", "content": p}] if isinstance(p, str) else list(p)
                         for p in prompts[start : start + batch_size]]
                texts = {"prompt": [as_plain_prompt(render(m, self.template, self.system_prompt)) for m in chunk],
                         "completions": [[r] for r in responses[start : start + batch_size]]}
                tok = tokenize_examples(texts, self.tokenizer, settings)
                batch = collate([{"prompt_ids": p, "completion_ids": c} for p, c in
                                 zip(tok["prompt_ids"], tok["completion_ids"])])
                classes = self.class_logits({k: v.to(self.device) for k, v in batch.items()}).argmax(-1).tolist()
                out += [dict(zip(self.attributes, row)) for row in classes]
        finally:
            self.train(was_training)
        return out

    def label_records(self, records: Sequence[ScoredResponse], batch_size: int = 8) -> list[ScoredResponse]:
        """The records with every attribute replaced by the APM's class on (0, C − 1): the thesis's
        APM-labelled HelpSteer + OASST data for the ACM."""
        labels = self.predict_attributes([r.prompt for r in records], [r.response for r in records], batch_size)
        scale = (0.0, float(self.num_classes - 1))
        return [ScoredResponse(prompt=r.prompt, response=r.response, scores=dict(lab),
                               scales={a: scale for a in lab}, source_id=r.source_id)
                for r, lab in zip(records, labels)]

    def save_pretrained(self, path: str | Path) -> Path:
        """Trunk (HF directory or PEFT adapter) + ``attribute_head.safetensors`` + ``attribute_head.json``."""
        path = super().save_pretrained(path)
        save_head(self.head, path, HEAD_FILE, HEAD_META, {"names": self.attributes, "num_classes": self.num_classes})
        return path

    # ---- memory plan (zoo.memory_plan) ------------------------------------------------------------
    @classmethod
    def memory_facts(cls, init_args: dict[str, Any], model: ModelFacts) -> MethodFacts:
        """The last-token hidden state feeds k C-way classifiers (k·C·(H + 1) fp32 parameters, trainable):
        no chunked LM head, and an untied LM head stays frozen."""
        args = constructor_args(cls, init_args)
        head = len(args["attributes"] or ()) * args["num_classes"] * (model.hidden_size + 1)
        return replace(super().memory_facts(init_args, model), lm_head=False, frozen_lm_head=True, own_params=head,
                       own_trainable_params=head)


class SteerLMConditionedSFT(_SteerLM, SFT):
    """ACM: SFT on responses given the prompt and their linearised ratings (``zoo.losses.nll_loss`` over
    response tokens); at inference the ratings line is the user's choice.

    Steering (``zoo.preference``): ``steer`` weights in [0, 1] per attribute become Likert classes
    round(w · (C − 1)) in the ratings line (missing attributes 0): ``{"helpfulness": 1}`` is the thesis's
    "helpfulness:4, every other attribute 0" (§5.4). ``predict`` needs a ``steer``.

    Args:
        attributes: the attributes, in the order the ratings line lists them.
        template / system_prompt / marker_tokens / num_classes: see the module docstring.
    """

    def __init__(self, attributes: list[str] | None = None, **kwargs: Any):
        super().__init__(attributes=attributes, **kwargs)
        self.active_ratings: str | None = None  # the ratings line ``generate`` conditions on (``steer``)

    @staticmethod
    def example_fn(record: ScoredResponse, attributes: Sequence[str] = (), template: TemplateName = "thesis",
                   system_prompt: str | None = NEMO_SYSTEM_PROMPT, num_classes: int = LIKERT_CLASSES,
                   **kwargs: Any) -> Iterable[dict[str, Any]]:
        classes = record_classes(record, attributes, num_classes)
        if classes:
            line = ratings_string(classes, attributes)
            yield {"prompt": as_plain_prompt(render(record.prompt, template, system_prompt, line)),
                   "completions": [record.response], "condition": line}

    @staticmethod
    def prompt_example_fn(record: Any, template: TemplateName = "thesis",
                          system_prompt: str | None = NEMO_SYSTEM_PROMPT, **kwargs: Any) -> Iterable[dict[str, Any]]:
        """Predict prompts end where the ratings line goes; ``generate`` appends the steered line."""
        yield {"prompt": as_plain_prompt(render(record.prompt, template, system_prompt)), "completions": []}

    # ---- steering ---------------------------------------------------------------------------------
    def preference_rules(self) -> dict[str, Any]:
        return {"allow_zero": True, "max_weight": 1.0}

    def ratings_for(self, preference: Preference) -> str:
        """The ratings line for ``preference``: weight w -> class round(w · (C − 1))."""
        top = self.num_classes - 1
        return ratings_string({a: int(round(w * top)) for a, w in preference.as_dict().items()}, self.attributes)

    @contextmanager
    def apply_preference(self, preference: Preference) -> Iterator[None]:
        previous, self.active_ratings = self.active_ratings, self.ratings_for(preference)
        try:
            yield
        finally:
            self.active_ratings = previous

    def on_predict_start(self) -> None:
        if self.steer_preference is None:
            raise ValueError(f"SteerLM ACM predict needs a steer (weights in [0, 1] per attribute, e.g. "
                             f"--steer '{{\"{self.attributes[0]}\": 1}}'); attributes: {self.attributes}")

    def generate(self, prompt_ids: Sequence[Sequence[int]], settings=None):
        """Samples for prompts rendered up to the ratings line, conditioned on the active ratings. The line is
        appended as text and the prompt re-tokenized whole, as in training (token boundaries stay the same)."""
        if self.active_ratings is None:
            raise ValueError(f"SteerLM ACM generates under a steer; attributes: {self.attributes}")
        line = f"{TEMPLATES[self.template].label_prefix}{self.active_ratings}\n"
        texts = [self.tokenizer.decode(list(p), skip_special_tokens=False) + line for p in prompt_ids]
        ids = [self.tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
        samples = super().generate(ids, settings)
        samples.prompts = [self.tokenizer.decode(list(p)) for p in prompt_ids]
        return samples

    def prompt_text(self, messages: Sequence[Mapping[str, str]] | str, ratings: str | None = None) -> str:
        """The text the ACM continues for ``messages`` under ``ratings`` (default: the active steer's)."""
        messages = [{"role": "user", "content": messages}] if isinstance(messages, str) else messages
        return render(messages, self.template, self.system_prompt,
                      self.active_ratings if ratings is None else ratings)

    def prediction_info(self) -> dict[str, Any]:
        return {"conditioning": self.active_ratings}
