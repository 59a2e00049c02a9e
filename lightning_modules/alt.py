"""ALT, ALignment with Textual feedback (Abadal Lloret, Dhuliawala, Murugesan, Sachan 2024, "Towards Aligning
Language Models with Textual Feedback"), on the online loop, and its baselines Quark (Lu et al. 2022: quantile
tokens) and SteerLM-style linearised attributes (Dong et al. 2023) in the same loop.

Algorithm 1 as rounds (``lightning_modules.online``; one iteration = one round = ``epochs_per_round`` epochs):
1. sample ``samples_per_prompt`` replies for a seeded subset of ``prompts_per_round`` prompts from the current
   policy: round 0 unconditioned (the reference policy), later rounds conditioned on the exemplar feedback f̂
   (``exemplar``; ALT_LMU: a score-3 sentence from earlier rounds, ``zoo.feedback.ExemplarPool``);
2. a feedback provider annotates every sample (``zoo.feedback``; ``feedback.kind``): ``reward_quantiles``
   (ALT_RM, Quark: the configured scorers' objective → K quantiles → ``labels``, per prompt or over the pool),
   ``llm_categories`` (ALT_LMC: a judge picks one of ``labels`` after Fig. 19's prompt) or ``llm_critique``
   (ALT_LMU: Fig. 20's critique, its sentence the feedback and its score 0-3 the category). A judge reply that
   does not parse leaves its sample out, counted (``round/unreadable``); more than ``feedback.max_unreadable``
   of a round stops the run, quoting replies;
3. (x, y, f) join the pool (``zoo.records.FeedbackResponse``; ``pool``: ``accumulate`` every round, the toxicity
   code, or ``flush``, only the newest, the TL;DR / HH code's ``datapool_drop_factor: 1``);
4. train on the pool's records: per prompt up to ``per_category`` samples of each feedback, complete generations
   first (rejection sampling; ``None``: all), or ``records_per_round`` records drawn with replacement (the
   toxicity loop trains ``sample_interval`` steps of random batches from the pool between samplings: a round is
   ``sample_interval × batch_size`` records, one epoch).

Loss, Eq. 1 (``zoo.losses.conditional_sft_terms`` / ``conditional_sft_loss``), token mean over completion tokens:
    L = NLL(y | f, x) + β KL(p_0(·|x, y_<t) ‖ p_θ(·|f, x, y_<t)) − α H(p_θ(·|f, x, y_<t))
Only completion positions reach the LM head, chunk by chunk, recomputed in backward (``zoo.logprobs.token_terms``).
The reference p_0 sees the prompt *without* feedback: the same rows with no prefix spliced in, so completion
positions align one to one. β = 0 builds no reference at all; with LoRA it is the adapter-disabled base, else a
frozen copy of the initial weights taken before any checkpoint is restored.

Conditioning (``condition``; ``zoo.feedback.CONDITION_FORMATS``; default ``input`` for reward quantiles, else
``feedback_input``): the feedback is written as a prefix text
(``separator``: "Lowest Toxicity<|separator|>", a new token; ``input``: "Excellent. input: "; ``feedback_input``:
"feedback: … input: "; ``token``: each label a new token, Quark) tokenized on its own and spliced in before the
prompt's tokens (after a BOS the tokenizer adds; ``placement: between``: after the prompt). ``condition.texts``
rewrites feedback first: SteerLM's "harmful:0, helpful:2" for "Harmless and very helpful" (Appendix D).

Steering (``zoo.preference``): ``attributes`` are the feedback categories, best first (the labels; ALT_LMU
"score 3" … "score 0"). A preference with one non-zero weight conditions on that feedback (ALT_LMU: the most
frequent sentence of that score seen so far); a mixed preference is refused, since no feedback text mixes two.
Default: the exemplar.

Where the paper is silent (our choices; docs/methods/alt.md): ties in quantiles share one (``quantile_ranks``);
the prefix is token-level (the toxicity code's form; the TL;DR code tokenizes "Excellent. input: {prompt}" whole);
ALT_LMU exemplars are drawn per prompt with probability by frequency among earlier score-3 sentences, the
configured ``exemplar`` until there is one; the judge prompts are single user messages; held-out evaluation
conditions on the exemplar and reports per-iteration metrics (``evaluation``) in ``<log_dir>/alt/``.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import random
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import torch

from lightning_modules.base import STAGE_PREFIX, as_dataclass
from lightning_modules.online import OnlineModule
from zoo.backbone import BackboneConfig, base_model, load_backbone, trunk_and_head, uses_peft
from zoo.control import insert_at, splice
from zoo.feedback import (
    CONDITION_FORMATS,
    HH_CATEGORIES,
    QUANTILE_LABELS,
    SEPARATOR,
    Annotation,
    ConditionFormat,
    ExemplarPool,
    LLMCategories,
    LLMCritique,
    RewardQuantiles,
    balanced_selection,
    condition_text,
)
from zoo.logprobs import completion_hidden, token_terms
from zoo.losses import conditional_sft_loss, conditional_sft_terms
from zoo.memory_plan import MethodFacts, ModelFacts, constructor_args
from zoo.preference import Preference, PreferenceError
from zoo.records import Demonstration, FeedbackResponse, Record
from zoo.rollout import generate
from zoo.rounds import Round, checked_scores, objective, round_seed
from zoo.sampling import Samples, SamplingSettings
from zoo.scorers import score_all
from zoo.steering import bootstrap_interval
from zoo.text_metrics import conditional_nll, distinct_n, toxicity_summary

CRITIQUE_SCORE = "critique_score"  # the judge's Fig. 20 score, kept beside the scorers' in each record
LMU_EXEMPLAR = "Accurate, concise, and well-structured summary."  # Table 7, score 3: until the judge gives one


@dataclasses.dataclass
class FeedbackSettings:
    kind: Literal["reward_quantiles", "llm_categories", "llm_critique"] = "reward_quantiles"
    labels: list[str] | None = None  # best first; quantile labels (K = len) or the judge's categories
    scope: Literal["prompt", "pool"] = "prompt"  # reward quantiles over each prompt's samples or the whole pool
    judge: dict[str, Any] | None = None  # zoo.judge_client.OpenAIJudge arguments (model, base_url, cache_path…)
    max_unreadable: float = 0.25  # share of a round's judge replies that may fail to parse (skipped, counted)


@dataclasses.dataclass
class ConditionSettings:
    format: ConditionFormat | None = None  # None: "input" for reward quantiles (§3.2), else "feedback_input"
    placement: Literal["before", "between"] = "before"  # the prefix before the prompt, or between it and y
    texts: dict[str, str] | None = None  # feedback -> the text conditioned on (SteerLM's linearised attributes)


@dataclasses.dataclass
class EvalSettings:
    toxicity: str | None = None  # a scorer attribute in [0, 1]: avg. max. toxicity and toxicity prob.
    toxicity_threshold: float = 0.5
    distinct: bool = True  # dist-1/2/3 over each prompt's samples
    fluency_model: str | None = None  # a causal LM (hub id, directory, builtin:…): conditional perplexity
    judge_categories: bool = False  # the feedback judge's category shares of the held-out samples (HH)
    references: bool = False  # held-out demonstrations: ROUGE of the samples against their references
    plot: bool = True  # <log_dir>/alt/eval.png and eval.jsonl after each validation


class ALT(OnlineModule):
    """Conditional fine-tuning on textual feedback, in rounds (see the module docstring).

    Args:
        feedback: the provider (``FeedbackSettings``): kind, labels, quantile scope, judge.
        condition: how feedback enters the prompt (``ConditionSettings``): format, placement, texts.
        exemplar: the feedback sampled under from round 1 on and by default at inference (default: the best
            label; ALT_LMU: the fallback sentence until a score-3 one was seen).
        pool: ``accumulate`` (train on every round's samples) or ``flush`` (the newest round only).
        per_category: rejection sampling, samples kept per feedback category and prompt (``None``: all).
        prefer_complete: draw complete generations before truncated ones.
        records_per_round: that many records drawn with replacement from the selection (``None``: the selection).
        beta / alpha: Eq. 1's KL and entropy coefficients.
        evaluation: held-out metrics (``EvalSettings``).
        (see ``OnlineModule`` for scorers, objective, prompts_per_round, samples_per_prompt, round_sampling…)
    """

    record_kind = "feedback"
    rounds_source_kind = "prompt"

    def __init__(self, feedback: FeedbackSettings | None = None, condition: ConditionSettings | None = None,
                 exemplar: str | None = None, pool: Literal["accumulate", "flush"] = "flush",
                 per_category: int | None = 2, prefer_complete: bool = True, records_per_round: int | None = None,
                 beta: float = 0.0, alpha: float = 0.06, evaluation: EvalSettings | None = None, **kwargs: Any):
        self.feedback_cfg: FeedbackSettings = as_dataclass(FeedbackSettings, feedback)
        self.condition: ConditionSettings = as_dataclass(ConditionSettings, condition)
        self.evaluation: EvalSettings = as_dataclass(EvalSettings, evaluation)
        fb, cond = self.feedback_cfg, self.condition
        if cond.format is None:
            cond.format = "input" if fb.kind == "reward_quantiles" else "feedback_input"
        if fb.kind not in ("reward_quantiles", "llm_categories", "llm_critique"):
            raise ValueError(f"model.feedback.kind must be reward_quantiles, llm_categories or llm_critique, got {fb.kind!r}")
        if cond.format not in CONDITION_FORMATS or cond.placement not in ("before", "between"):
            raise ValueError(f"model.condition: format must be one of {sorted(CONDITION_FORMATS)} and placement "
                             f"before or between, got {cond.format!r}, {cond.placement!r}")
        if pool not in ("accumulate", "flush"):
            raise ValueError(f"model.pool must be accumulate or flush, got {pool!r}")
        if beta < 0 or alpha < 0 or not 0 <= fb.max_unreadable <= 1:
            raise ValueError("model.beta and model.alpha must be >= 0 and feedback.max_unreadable in [0, 1]")
        if (per_category is not None and per_category < 1) or (records_per_round is not None and records_per_round < 1):
            raise ValueError("model.per_category and model.records_per_round must be >= 1 (or null)")
        if fb.kind == "llm_critique":
            if fb.labels is not None:
                raise ValueError("model.feedback.labels: the critique's categories are its scores 3..0; drop labels")
            self.labels = list(LLMCritique.labels)
        else:
            default = QUANTILE_LABELS["summary"] if fb.kind == "reward_quantiles" else HH_CATEGORIES
            self.labels = list(fb.labels or default)
        if fb.kind != "reward_quantiles" and not fb.judge:
            raise ValueError(f"model.feedback.kind {fb.kind} needs feedback.judge (model, base_url…: an "
                             "OpenAI-compatible endpoint, zoo.judge_client.OpenAIJudge)")
        if self.evaluation.judge_categories and fb.kind == "reward_quantiles":
            raise ValueError("model.evaluation.judge_categories needs an LLM feedback kind (quantiles are relative)")
        self.exemplar = exemplar if exemplar is not None else (LMU_EXEMPLAR if fb.kind == "llm_critique"
                                                               else self.labels[0])
        if fb.kind != "llm_critique" and self.exemplar not in self.labels:
            raise ValueError(f"model.exemplar {self.exemplar!r} is not one of the feedback labels {self.labels}")
        self.attributes = list(self.labels)
        self.pool_policy, self.per_category, self.prefer_complete = pool, per_category, prefer_complete
        self.records_per_round, self.beta, self.alpha = records_per_round, beta, alpha
        super().__init__(**kwargs)
        new_tokens = [SEPARATOR] if cond.format == "separator" else self.labels if cond.format == "token" else []
        if new_tokens:
            self.tokenizer.add_tokens(new_tokens, special_tokens=True)
        tok = self.tokenizer
        self.bos_offset = int(self.tokenize_settings.prompt_format != "chat" and tok.bos_token_id is not None
                              and tok("x")["input_ids"][:1] == [tok.bos_token_id])
        self.exemplars = ExemplarPool()  # ALT_LMU: feedback sentences per score, from every round so far
        self.round_stats: dict[int, dict[str, float]] = {}
        self.eval_history: dict[int, dict[str, float]] = {}
        self.active_category = self.labels.index(self.exemplar) if self.exemplar in self.labels else 0
        self._reference: list[torch.nn.Module] = []  # a list: Lightning neither registers nor saves it
        self._judge = None
        self._fluency: list[torch.nn.Module] = []
        self._eval_rows: list[dict[str, Any]] = []

    def method_hparams(self) -> dict[str, Any]:
        return {**super().method_hparams(), "feedback": dataclasses.asdict(self.feedback_cfg),
                "condition": dataclasses.asdict(self.condition), "exemplar": self.exemplar, "pool": self.pool_policy,
                "per_category": self.per_category, "prefer_complete": self.prefer_complete,
                "records_per_round": self.records_per_round, "beta": self.beta, "alpha": self.alpha,
                "evaluation": dataclasses.asdict(self.evaluation)}

    # ---- data -------------------------------------------------------------------------------------
    @staticmethod
    def example_fn(record: Record, fmt: ConditionFormat = "feedback_input", texts: dict[str, str] | None = None,
                   **kwargs: Any) -> Iterable[dict[str, Any]]:
        if isinstance(record, FeedbackResponse):  # (x, y, f): y after the feedback's prefix and x
            yield {"prompt": list(record.prompt), "completions": [record.response],
                   "prefix": condition_text(record.feedback, fmt, texts)}
        elif isinstance(record, Demonstration):  # held-out with a reference (evaluation.references): it rides as y
            yield {"prompt": list(record.prompt), "completions": [record.response]}
        else:
            raise TypeError(f"ALT trains on feedback records, got a {record.kind} record")

    def example_kwargs(self, split: str) -> dict[str, Any]:
        return {"fmt": self.condition.format, "texts": self.condition.texts}

    def example_builder(self):
        builder = super().example_builder()
        if self.evaluation.references:
            builder = dataclasses.replace(builder, split_kinds={"validation": "demonstration", "test": "demonstration"})
        return builder

    # ---- model and reference ----------------------------------------------------------------------
    def build_extras(self) -> None:
        base = base_model(self.model)
        if base.get_input_embeddings().num_embeddings < len(self.tokenizer):  # separator / quantile tokens
            base.resize_token_embeddings(len(self.tokenizer))
        if self.beta > 0 and not uses_peft(self.model):  # the initial weights, before a checkpoint is restored
            self._reference.append(copy.deepcopy(self.model).requires_grad_(False).eval())

    def check_shardable(self) -> None:
        super().check_shardable()
        if self.beta > 0 and self.backbone_cfg.lora is None:
            raise ValueError("ALT under FSDP with beta > 0 would need a sharded frozen copy; use LoRA (the "
                             "adapter-disabled base is the reference) or beta: 0")

    def reference_hidden(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, Any]:
        """p_0's hidden states at the completion positions of the rows *without* feedback, their targets and
        the head that turns them into logits (the adapter-disabled base under LoRA, else the frozen copy)."""
        rows = (batch["input_ids"], batch["attention_mask"], batch["labels"])
        if uses_peft(self.model):
            model = self.model

            def head(h: torch.Tensor) -> torch.Tensor:
                with model.disable_adapter():
                    return trunk_and_head(model)[1](h)

            with torch.no_grad(), model.disable_adapter():
                hidden, targets, _ = completion_hidden(model, *rows)
            return hidden, targets, head
        ref = self._reference[0]
        if next(ref.parameters()).device != self.device:
            ref.to(self.device)
        with torch.no_grad():
            hidden, targets, _ = completion_hidden(ref, *rows)
        return hidden, targets, trunk_and_head(ref)[1]

    # ---- loss -------------------------------------------------------------------------------------
    def conditioned_rows(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The batch's rows with each example's feedback prefix spliced in (``condition.placement``)."""
        prefixes = [batch["prefix_ids"][i, :n].tolist() for i, n in enumerate(batch["prefix_lengths"].tolist())]
        ids, mask, labels, _ = splice(batch["input_ids"], batch["attention_mask"], batch["labels"], prefixes,
                                      self.condition.placement, self.bos_offset, self.tokenizer.pad_token_id)
        return ids, mask, labels

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        hidden, targets, _ = completion_hidden(self.model, *self.conditioned_rows(batch))
        ref_hidden = ref_head = None
        if self.beta > 0:
            ref_hidden, ref_targets, ref_head = self.reference_hidden(batch)
            if not torch.equal(ref_targets, targets):
                raise RuntimeError("ALT: the reference's completion tokens differ from the policy's")
        nll, kl, entropy = token_terms(hidden, trunk_and_head(self.model)[1], targets, conditional_sft_terms,
                                       self.logprob_chunk_size, ref_hidden, ref_head)
        loss = conditional_sft_loss(nll, kl, entropy, self.beta, self.alpha)
        b = batch["input_ids"].shape[0]
        self.log_dict({"train/loss": loss, "train/nll": nll.detach().mean(), "train/kl": kl.detach().mean(),
                       "train/entropy": entropy.detach().mean()}, prog_bar=True, batch_size=b)
        return loss

    # ---- conditioning and generation --------------------------------------------------------------
    def prefix_ids(self, feedback: str) -> list[int]:
        text = condition_text(feedback, self.condition.format, self.condition.texts)
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def conditioned_samples(self, prompt_ids: Sequence[Sequence[int]], feedbacks: Sequence[str | None],
                            settings: SamplingSettings, split_across_ranks: bool = False) -> Samples:
        """Samples for each prompt under its feedback (``None``: unconditioned); ``prompts`` without it."""
        rows = []
        for p, f in zip(prompt_ids, feedbacks):
            if f is None:
                rows.append(list(p))
                continue
            k = insert_at(p, self.condition.placement, self.bos_offset)
            rows.append(list(p[:k]) + self.prefix_ids(f) + list(p[k:]))
        rollout = generate(self.model, self.tokenizer, rows, settings, split_across_ranks=split_across_ranks)
        return Samples.from_rollout([self.tokenizer.decode(p) for p in prompt_ids], rollout)

    def feedback_text(self, category: int) -> str:
        """What conditioning on category ``category`` writes (ALT_LMU: its most frequent sentence so far)."""
        if self.feedback_cfg.kind != "llm_critique":
            return self.labels[category]
        if category in self.exemplars:
            return self.exemplars.most_frequent(category)
        if category == 0:
            return self.exemplar
        raise PreferenceError(f"ALT: no feedback with {self.labels[category]} was seen yet to condition on")

    def generate(self, prompt_ids: Sequence[Sequence[int]], settings: SamplingSettings | None = None) -> Samples:
        """Samples conditioned on the active feedback (default: the exemplar)."""
        feedback = self.feedback_text(self.active_category)
        return self.conditioned_samples(prompt_ids, [feedback] * len(prompt_ids), settings or self.sampling)

    def default_preference(self) -> Preference:
        return Preference.one_hot(self.attributes, self.attributes[self.active_category])

    @contextmanager
    def apply_preference(self, preference: Preference) -> Iterator[None]:
        """A preference with one non-zero weight conditions on that feedback."""
        nonzero = [i for i, w in enumerate(preference.weights) if w]
        if len(nonzero) != 1:
            raise PreferenceError(f"ALT conditions on one feedback at a time (no text mixes two): give one of "
                                  f"{self.attributes} a weight, got {preference.as_dict()}")
        previous, self.active_category = self.active_category, nonzero[0]
        try:
            yield
        finally:
            self.active_category = previous

    def prediction_info(self) -> dict[str, Any]:
        feedback = self.feedback_text(self.active_category)
        return {"feedback": feedback,
                "conditioning": condition_text(feedback, self.condition.format, self.condition.texts)}

    # ---- the round: sample, annotate, select ------------------------------------------------------
    def judge(self):
        """The feedback judge (``zoo.judge_client.OpenAIJudge``), built on first use; its replies are cached in
        ``feedback.judge.cache_path`` (default ``<default_root_dir>/feedback_judge.jsonl``)."""
        if self._judge is None:
            from zoo.judge_client import OpenAIJudge

            kwargs = dict(self.feedback_cfg.judge)
            if "cache_path" not in kwargs and self._trainer is not None:
                kwargs["cache_path"] = Path(self.trainer.default_root_dir) / "feedback_judge.jsonl"
            self._judge = OpenAIJudge(**kwargs)
        return self._judge

    def llm_provider(self) -> LLMCategories | LLMCritique:
        if self.feedback_cfg.kind == "llm_categories":
            return LLMCategories(self.judge(), self.labels)
        return LLMCritique(self.judge())

    def exemplars_for(self, r: int, count: int) -> list[str]:
        """The feedback each of round ``r``'s prompts is sampled under (ALT_LMU: drawn per prompt, seeded)."""
        if self.feedback_cfg.kind != "llm_critique" or 0 not in self.exemplars:
            return [self.exemplar] * count
        rng = random.Random(round_seed(self.round_seed, r) + 1)
        return [self.exemplars.draw(0, rng) for _ in range(count)]

    def rewards_of(self, samples: Sequence[FeedbackResponse]) -> list[float]:
        return objective({a: [s.scores[a] for s in samples] for a in self.objective_weights}, self.objective_weights)

    def quantile_feedback(self, samples: Sequence[FeedbackResponse]) -> list[Annotation]:
        """Reward quantiles of ``samples`` (per prompt, or over all of them)."""
        prompts = [json.dumps(s.prompt) for s in samples]
        return RewardQuantiles(self.labels, self.feedback_cfg.scope).annotate(self.rewards_of(samples), prompts)

    @torch.no_grad()
    def sample_round(self, r: int, records: Sequence[Record]) -> Round:
        where = f"ALT round {r}"
        prompt_ids = self.encode_prompts([rec.prompt for rec in records])
        settings = dataclasses.replace(self.round_sampling, seed=round_seed(self.round_seed, r))
        feedbacks = [None] * len(records) if r == 0 else self.exemplars_for(r, len(records))
        try:
            samples = self.conditioned_samples(prompt_ids, feedbacks, settings, split_across_ranks=True)
        except ValueError as e:  # a prompt over the length cap, bad settings: say which round
            raise ValueError(f"{where}: {e}") from None
        n = settings.n
        texts = [t if t.strip() else "(empty)" for t in samples.texts]
        prompts = [self.tokenizer.decode(p) for p in prompt_ids for _ in range(n)]
        scores = checked_scores(score_all(self.scorers, prompts, texts), len(texts), where)
        scales = {a: s.scales[a] for s in self.scorers for a in s.names}
        rows = [records[k // n] for k in range(len(texts))]
        base = [FeedbackResponse(prompt=rec.prompt, response=text, feedback="-", truncated=reason == "length",
                                 scores={a: v[k] for a, v in scores.items()}, scales=scales,
                                 source_id=f"round{r}:{rec.source_id or k // n}:{k % n}")
                for k, (rec, text, reason) in enumerate(zip(rows, texts, samples.finish_reasons))]
        annotations = self.annotate(r, base)
        unreadable = sum(a is None for a in annotations)
        self.round_stats[r] = {"unreadable": float(unreadable), "annotated": float(len(texts) - unreadable),
                               **{f"feedback/{self.labels[c]}": sum(a is not None and a.category == c
                                                                    for a in annotations) / len(texts)
                                  for c in range(len(self.labels))}}
        if unreadable:
            print(f"{where}: {unreadable} of {len(texts)} judge replies unreadable; those samples are left out",
                  flush=True)
        if self.feedback_cfg.kind == "llm_critique":
            self.exemplars.add(annotations)
        kept = [dataclasses.replace(s, feedback=a.feedback,
                                    scores=s.scores | ({CRITIQUE_SCORE: a.score} if a.score is not None and
                                                       self.feedback_cfg.kind == "llm_critique" else {}),
                                    scales=s.scales | ({CRITIQUE_SCORE: (0.0, 3.0)}
                                                       if self.feedback_cfg.kind == "llm_critique" else {}))
                for s, a in zip(base, annotations) if a is not None]
        if not kept:
            raise ValueError(f"{where}: no sample got a feedback")
        if self.pool_policy == "flush":
            for old in [i for i in self.pool.rounds if i < r]:
                self.pool.drop(old)  # training uses the newest round only; its JSONL stays on disk
        return Round(index=r, policy_step=self.global_step, n=n, samples=kept)

    def annotate(self, r: int, samples: Sequence[FeedbackResponse]) -> list[Annotation | None]:
        """Every sample's feedback (None: an unreadable judge reply), stopping the run when too many are."""
        if self.feedback_cfg.kind == "reward_quantiles":
            earlier = self.pool_samples(r) if self.pool_policy == "accumulate" else []
            return self.quantile_feedback([*earlier, *samples])[len(earlier):]
        provider = self.llm_provider()
        annotations = provider.annotate([s.prompt for s in samples], [s.response for s in samples])
        share = provider.unreadable / max(len(samples), 1)
        if share > self.feedback_cfg.max_unreadable:
            raise ValueError(f"ALT round {r}: {provider.unreadable} of {len(samples)} judge replies could not be "
                             f"read as feedback ({share:.0%} > feedback.max_unreadable "
                             f"{self.feedback_cfg.max_unreadable:.0%}), e.g. {provider.unreadable_examples}")
        return annotations

    def pool_samples(self, before: int | None = None) -> list[FeedbackResponse]:
        """The pool's samples, in round order (rounds < ``before`` when given)."""
        return [s for i, rnd in sorted(self.pool.rounds.items()) if before is None or i < before for s in rnd.samples]

    def categories_of(self, samples: Sequence[FeedbackResponse]) -> tuple[list[str], list[int]]:
        """(feedback, category) of each sample; reward quantiles are recomputed over the training population."""
        if self.feedback_cfg.kind == "reward_quantiles":
            annotations = self.quantile_feedback(samples)
            return [a.feedback for a in annotations], [a.category for a in annotations]
        if self.feedback_cfg.kind == "llm_critique":
            return [s.feedback for s in samples], [LLMCritique.labels.index(f"score {int(s.scores[CRITIQUE_SCORE])}")
                                                   for s in samples]
        return [s.feedback for s in samples], [self.labels.index(s.feedback) for s in samples]

    def round_records(self, rnd: Round, source: Sequence[Record], chosen: Sequence[int]) -> list[Record]:
        samples = self.pool_samples(rnd.index + 1) if self.pool_policy == "accumulate" else list(rnd.samples)
        feedback, categories = self.categories_of(samples)
        rng = random.Random(round_seed(self.round_seed, rnd.index) + 2)
        keep = list(range(len(samples)))
        if self.per_category is not None:
            by_prompt: dict[str, list[int]] = {}
            for k, s in enumerate(samples):
                by_prompt.setdefault(json.dumps(s.prompt), []).append(k)
            keep = sorted(rows[j] for rows in by_prompt.values()
                          for j in balanced_selection([categories[k] for k in rows], [samples[k].truncated for k in rows],
                                                      self.per_category, rng, self.prefer_complete))
        if self.records_per_round is not None:
            keep = rng.choices(keep, k=self.records_per_round)
        return [FeedbackResponse(prompt=samples[k].prompt, response=samples[k].response, feedback=feedback[k],
                                 truncated=samples[k].truncated, source_id=samples[k].source_id) for k in keep]

    def round_size(self) -> int:
        if self.records_per_round is not None:
            return self.records_per_round
        per_prompt = self.samples_per_prompt
        if self.per_category is not None:
            per_prompt = min(per_prompt, self.per_category * len(self.labels))
        return max((self.prompts_per_round or 1) * per_prompt, 1)

    def on_train_epoch_start(self) -> None:
        super().on_train_epoch_start()
        stats = self.round_stats.get(self.round_of(self.trainer.current_epoch))
        if stats:
            self.log_dict({f"round/{k}": v for k, v in stats.items()}, batch_size=1)

    # ---- held-out evaluation ----------------------------------------------------------------------
    def eval_prompts(self, batch: dict[str, Any]) -> tuple[list[list[int]], list[str] | None]:
        """Prompt ids, and the references where held-out demonstrations ride as the batch's completions."""
        if "prompt_ids" in batch:
            return batch["prompt_ids"], None
        prompts, refs = [], []
        for ids, labels in zip(batch["input_ids"], batch["labels"]):
            first = int((labels != -100).nonzero()[0])
            prompts.append(ids[:first].tolist())
            refs.append(self.tokenizer.decode(labels[labels != -100], skip_special_tokens=True).strip())
        return prompts, refs

    def eval_step(self, batch: dict[str, Any], split: str) -> None:
        prompt_ids, refs = self.eval_prompts(batch)
        samples = self.generate(prompt_ids, self.eval_sampling)
        n = samples.n
        where = f"ALT {split}"
        texts = [t if t.strip() else "(empty)" for t in samples.texts]
        expanded = [p for p in samples.prompts for _ in range(n)]
        scores = checked_scores(score_all(self.scorers, expanded, texts), len(texts), where)
        values = objective(scores, self.objective_weights)
        categories: list[int | None] = [None] * len(texts)
        if self.evaluation.judge_categories:
            provider = self.llm_provider()
            categories = [a.category if a is not None else None for a in
                          provider.annotate([[{"role": "user", "content": p}] for p in expanded], texts)]
        nll = counts = None
        if self.evaluation.fluency_model:
            nll, counts = conditional_nll(self.fluency_model(), self.tokenizer_for_fluency(), expanded, samples.texts)
        for i in range(len(prompt_ids)):
            rows = range(i * n, (i + 1) * n)
            row = {"objective": sum(values[k] for k in rows) / n,
                   "length_tokens": sum(len(samples.token_ids[k]) for k in rows) / n,
                   "truncated": sum(samples.truncated[k] for k in rows) / n,
                   **{a: sum(v[k] for k in rows) / n for a, v in scores.items()}}
            if self.evaluation.toxicity:
                row["_toxicity"] = [scores[self.evaluation.toxicity][k] for k in rows]
            if self.evaluation.distinct:
                row.update({f"dist-{m}": distinct_n([texts[k] for k in rows], m) for m in (1, 2, 3)})
            if nll is not None:
                row["_nll"], row["_tokens"] = sum(nll[k] for k in rows), sum(counts[k] for k in rows)
            if self.evaluation.judge_categories:
                row["_categories"] = [categories[k] for k in rows]
            if refs is not None:
                row["_rouge"] = (texts[i * n], refs[i])  # the first sample against the reference
            self._eval_rows.append(row)
        self._eval_batch += [row["objective"] for row in self._eval_rows[-len(prompt_ids):]]
        self.log(f"{STAGE_PREFIX[split]}/objective", sum(values) / len(values), batch_size=len(values),
                 sync_dist=True, prog_bar=True)

    def on_validation_epoch_start(self) -> None:
        super().on_validation_epoch_start()
        self._eval_rows = []

    def on_test_epoch_start(self) -> None:
        self._eval_rows = []

    def eval_metrics(self) -> dict[str, float]:
        """The held-out metrics of the rows gathered this epoch (this process's share)."""
        rows, ev = self._eval_rows, self.evaluation
        if not rows:
            return {}
        plain = [k for k in rows[0] if not k.startswith("_")]
        out = {k: sum(r[k] for r in rows) / len(rows) for k in plain}
        if ev.toxicity:
            out["avg_max_toxicity"], out["toxicity_prob"] = toxicity_summary([r["_toxicity"] for r in rows],
                                                                             ev.toxicity_threshold)
        if ev.fluency_model:
            out["perplexity"] = math.exp(sum(r["_nll"] for r in rows) / max(sum(r["_tokens"] for r in rows), 1))
        if ev.judge_categories:
            cats = [c for r in rows for c in r["_categories"]]
            for c, name in enumerate(self.labels):
                out[f"category/{name}"] = 100.0 * sum(x == c for x in cats) / len(cats)
            out["category/unreadable"] = 100.0 * sum(x is None for x in cats) / len(cats)
        if "_rouge" in rows[0]:
            from zoo.judge import rouge

            out.update(rouge([r["_rouge"][0] for r in rows], [r["_rouge"][1] for r in rows]))
        return out

    def on_validation_epoch_end(self) -> None:
        super().on_validation_epoch_end()
        self.finish_eval("validation")

    def on_test_epoch_end(self) -> None:
        self.finish_eval("test")

    def finish_eval(self, split: str) -> None:
        metrics = self.eval_metrics()
        if not metrics:
            return
        stage = STAGE_PREFIX[split]
        if not self.trainer.sanity_checking:
            self.log_dict({f"{stage}/{k}": v for k, v in metrics.items()}, sync_dist=True)
        lo, hi = bootstrap_interval([r["objective"] for r in self._eval_rows])
        fitting = self.trainer.state.fn == "fit" and split == "validation"
        iteration = (self.trainer.current_epoch + 1) / self.epochs_per_round if fitting and not \
            self.trainer.sanity_checking else 0.0
        entry = {"iteration": iteration, "step": int(self.global_step), "prompts": len(self._eval_rows),
                 "objective_low": lo, "objective_high": hi, **metrics}
        if fitting:
            self.eval_history[int(self.global_step)] = entry
            if self.evaluation.plot and self.trainer.is_global_zero:
                self.write_history(Path(self.trainer.log_dir or self.trainer.default_root_dir) / "alt")
        elif self.trainer.is_global_zero:
            print(f"ALT {split}: " + ", ".join(f"{k} {v:.4g}" for k, v in entry.items()), flush=True)

    def write_history(self, out: Path) -> None:
        """``eval.jsonl`` (one line per validation) and ``eval.png`` (each metric against the iteration)."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        out.mkdir(parents=True, exist_ok=True)
        entries = [self.eval_history[s] for s in sorted(self.eval_history)]
        (out / "eval.jsonl").write_text("".join(json.dumps(e) + "\n" for e in entries))
        names = [k for k in entries[-1] if k not in ("iteration", "step", "prompts", "objective_low", "objective_high")]
        cols = min(4, len(names))
        fig, axes = plt.subplots(-(-len(names) // cols), cols, figsize=(3.2 * cols, 2.6 * -(-len(names) // cols)),
                                 squeeze=False)
        x = [e["iteration"] for e in entries]
        for ax, name in zip(axes.flat, names):
            ax.plot(x, [e.get(name, float("nan")) for e in entries], "o-")
            if name == "objective":
                ax.fill_between(x, [e["objective_low"] for e in entries], [e["objective_high"] for e in entries],
                                alpha=0.25)
            ax.set_title(name, fontsize=9)
            ax.set_xlabel("iteration")
            ax.grid(alpha=0.3)
        for ax in list(axes.flat)[len(names):]:
            ax.axis("off")
        fig.suptitle(f"ALT held-out metrics under {self.feedback_text(self.active_category)!r}", fontsize=10)
        fig.tight_layout()
        fig.savefig(out / "eval.png", dpi=110)
        plt.close(fig)

    def fluency_model(self) -> torch.nn.Module:
        if not self._fluency:
            cfg = BackboneConfig(name_or_path=self.evaluation.fluency_model)
            self._fluency.append(load_backbone(cfg).requires_grad_(False).eval().to(self.device))
        return self._fluency[0]

    def tokenizer_for_fluency(self):
        from zoo.backbone import load_tokenizer

        if not hasattr(self, "_fluency_tokenizer"):
            self._fluency_tokenizer = load_tokenizer(BackboneConfig(name_or_path=self.evaluation.fluency_model))
        return self._fluency_tokenizer

    # ---- artifacts and checkpoints ----------------------------------------------------------------
    def save_pretrained(self, path: str | Path) -> Path:
        """The HF directory plus ``alt_feedback.json``: labels, format, exemplar, texts (and ALT_LMU's sentences
        per score), what conditioning at inference needs."""
        path = super().save_pretrained(path)
        info = {"labels": self.labels, "condition": dataclasses.asdict(self.condition), "exemplar": self.exemplar,
                "bos_offset": self.bos_offset, "exemplar_pool": self.exemplars.state_dict()}
        (path / "alt_feedback.json").write_text(json.dumps(info, indent=2, ensure_ascii=False))
        return path

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["alt"] = {"exemplars": self.exemplars.state_dict(),
                             "round_stats": {str(k): v for k, v in self.round_stats.items()},
                             "eval_history": {str(k): v for k, v in self.eval_history.items()}}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        state = checkpoint.get("alt", {})
        self.exemplars.load_state_dict(state.get("exemplars", {}))
        self.round_stats = {int(k): dict(v) for k, v in state.get("round_stats", {}).items()}
        self.eval_history = {int(k): dict(v) for k, v in state.get("eval_history", {}).items()}

    # ---- memory plan (zoo.memory_plan) ------------------------------------------------------------
    @classmethod
    def memory_facts(cls, init_args: dict[str, Any], model: ModelFacts) -> MethodFacts:
        """One row per (x, y, f), the feedback prefix in it (not counted: a few tokens). β > 0 runs p_0 on the
        rows without feedback: the adapter-disabled base under LoRA, else a frozen copy of the initial weights;
        β = 0 holds no reference. The per-token KL and entropy need the full vocabulary, one chunk at a time."""
        args = constructor_args(cls, init_args)
        reference = "none"
        if args["beta"] > 0:
            reference = "adapter_off" if model.lora_params > 0 else "frozen_copy"
        return dataclasses.replace(super().memory_facts(init_args, model), reference=reference)
