"""Offline attribute scorers: scores for text no human labelled.

A reward model labels an online method's samples, rewards become feedback words, the steering sweeps
score generations per attribute, and the embedded demo data (real HH text) gets multi-attribute labels
from these. Every scorer has a name per output and a declared scale, so its scores become
``ScoredResponse`` records directly.

- ``LengthScorer``: verbosity as words (or characters) per response.
- ``SentimentScorer``: VADER's compound polarity in [-1, 1], mean over sentences (``vaderSentiment``, a lexicon;
  offline).
- ``ClassifierScorer``: any HF sequence-classification model (hub id or directory), one label's
  probability (e.g. a toxicity classifier).
- ``RewardModelScorer``: a steerzoo reward-model directory (``save_pretrained`` trunk + value head).
- ``CallableScorer``: the hook for an LLM judge or anything else: a function of (prompt, response).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

import torch


class Scorer(Protocol):
    names: list[str]  # one per output attribute
    scales: dict[str, tuple[float, float]]  # declared (low, high) per attribute

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> dict[str, list[float]]: ...


class LengthScorer:
    """Verbosity: number of words (``unit='words'``) or characters, clipped to ``max_length``."""

    def __init__(self, name: str = "verbosity", unit: str = "words", max_length: int = 1000):
        if unit not in ("words", "chars"):
            raise ValueError(f"LengthScorer unit must be 'words' or 'chars', got {unit!r}")
        self.names, self.unit, self.max_length = [name], unit, max_length
        self.scales = {name: (0.0, float(max_length))}

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> dict[str, list[float]]:
        size = (lambda r: len(r.split())) if self.unit == "words" else len  # noqa: E731
        return {self.names[0]: [float(min(size(r), self.max_length)) for r in responses]}


class SentimentScorer:
    """VADER compound sentiment in [-1, 1] (Hutto & Gilbert, 2014): positive text scores high.

    ``per_sentence`` (default): the mean compound score of the text's sentences, as VADER's authors recommend
    for paragraphs ("VADER works best when analysis is done at the sentence level", their demo). One compound
    score of a whole paragraph sums every sentence's valence before squashing it, so it drifts towards ±1 as
    text gets longer: it would measure length as much as tone. ``per_sentence=False`` scores the text whole."""

    def __init__(self, name: str = "sentiment", per_sentence: bool = True):
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

        self.names, self.scales = [name], {name: (-1.0, 1.0)}
        self.per_sentence = per_sentence
        self._analyzer = SentimentIntensityAnalyzer()

    def compound(self, text: str) -> float:
        if not self.per_sentence:
            return float(self._analyzer.polarity_scores(text)["compound"])
        sentences = [s for s in SENTENCE_END.split(text) if s.strip()] or [text]
        return sum(self._analyzer.polarity_scores(s)["compound"] for s in sentences) / len(sentences)

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> dict[str, list[float]]:
        return {self.names[0]: [float(self.compound(r)) for r in responses]}


SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n+")  # a sentence ends at . ! ? before a space, or at a line break


class ClassifierScorer:
    """Probability of ``label`` under an HF sequence-classification model, on the response alone or
    on prompt + response (``with_prompt``)."""

    def __init__(self, name_or_path: str, label: str | int, name: str | None = None, with_prompt: bool = False,
                 batch_size: int = 16, device: str = "cpu"):
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(name_or_path)
        self.model = AutoModelForSequenceClassification.from_pretrained(name_or_path).eval().to(device)
        labels = self.model.config.label2id or {}
        if isinstance(label, str):
            if label not in labels:
                raise ValueError(f"{name_or_path} has no label {label!r}; it has {sorted(labels)}")
            label = labels[label]
        self.label, self.with_prompt, self.batch_size, self.device = int(label), with_prompt, batch_size, device
        self.names = [name or str(self.model.config.id2label.get(self.label, self.label))]
        self.scales = {self.names[0]: (0.0, 1.0)}

    @torch.no_grad()
    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> dict[str, list[float]]:
        out: list[float] = []
        for i in range(0, len(responses), self.batch_size):
            texts = list(responses[i : i + self.batch_size])
            pairs = list(prompts[i : i + self.batch_size]) if self.with_prompt else None
            enc = self.tokenizer(pairs or texts, texts if pairs else None, padding=True, truncation=True,
                                 return_tensors="pt").to(self.device)
            out += self.model(**enc).logits.float().softmax(-1)[:, self.label].tolist()
        return {self.names[0]: out}


class RewardModelScorer:
    """A steerzoo reward model saved with ``save_pretrained`` (trunk + ``value_head.safetensors``),
    scoring chat-formatted (prompt, response) pairs; its scale is unbounded (declared ±``bound``)."""

    def __init__(self, path: str, bound: float = 1e4, batch_size: int = 8, device: str = "cpu"):
        from safetensors.torch import load_file
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from zoo.heads import ValueHead

        path_ = Path(path)
        self.tokenizer = AutoTokenizer.from_pretrained(path_)
        self.model = AutoModelForCausalLM.from_pretrained(path_).eval().to(device)
        meta = json.loads((path_ / "value_head.json").read_text())
        names = meta["names"]
        self.head = ValueHead(self.model.config.hidden_size, names, bias=meta.get("bias", True))
        self.head.load_state_dict(load_file(str(path_ / "value_head.safetensors")))
        self.head.eval().to(device)
        self.names, self.scales = names, {n: (-bound, bound) for n in names}
        self.batch_size, self.device = batch_size, device

    @torch.no_grad()
    def score(self, prompts: Sequence[str | Sequence[dict]], responses: Sequence[str]) -> dict[str, list[float]]:
        """Rewards of (prompt, response) pairs; a prompt is a user turn or a whole conversation (messages), rendered
        with the chat template as the reward model saw its training pairs."""
        from zoo.logprobs import last_token_hidden

        def conversation(p):
            return [{"role": "user", "content": p}] if isinstance(p, str) else list(p)

        out: dict[str, list[float]] = {n: [] for n in self.names}
        for i in range(0, len(responses), self.batch_size):
            texts = [
                self.tokenizer.apply_chat_template(conversation(p), tokenize=False, add_generation_prompt=True)
                + r + (self.tokenizer.eos_token or "")
                for p, r in zip(prompts[i : i + self.batch_size], responses[i : i + self.batch_size])
            ]
            self.tokenizer.padding_side = "right"
            enc = self.tokenizer(texts, padding=True, add_special_tokens=False, return_tensors="pt").to(self.device)
            r = self.head(last_token_hidden(self.model, enc["input_ids"], enc["attention_mask"]))
            for j, n in enumerate(self.names):
                out[n] += r[:, j].tolist()
        return out


class CallableScorer:
    """Wraps ``fn(prompt, response) -> float`` (an LLM judge, a regex, an API) as a scorer."""

    def __init__(self, fn: Callable[[str, str], float], name: str, scale: tuple[float, float]):
        self.fn, self.names, self.scales = fn, [name], {name: (float(scale[0]), float(scale[1]))}

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> dict[str, list[float]]:
        return {self.names[0]: [float(self.fn(p, r)) for p, r in zip(prompts, responses)]}


BUILTIN_SCORERS: dict[str, Callable[[], Scorer]] = {
    "verbosity": LengthScorer,
    "sentiment": SentimentScorer,
}


def build_scorers(names: Sequence[str]) -> list[Scorer]:
    """Scorers from config strings: a built-in name (``verbosity``, ``sentiment``), ``reward_model:<dir>`` (a
    steerzoo reward model's ``save_pretrained`` directory) or ``classifier:<hub id or dir>:<label>`` (one label's
    probability under an HF sequence classifier, e.g. a toxicity model)."""
    out: list[Scorer] = []
    for spec in names:
        kind, _, rest = spec.partition(":")
        if spec in BUILTIN_SCORERS:
            out.append(BUILTIN_SCORERS[spec]())
        elif kind == "reward_model" and rest:
            out.append(RewardModelScorer(rest))
        elif kind == "classifier" and rest.count(":") >= 1:
            model, _, label = rest.rpartition(":")
            out.append(ClassifierScorer(model, label))
        else:
            raise ValueError(f"unknown offline scorer {spec!r}; built in: {sorted(BUILTIN_SCORERS)}, or "
                             "reward_model:<dir>, classifier:<model>:<label>")
    return out


def score_all(scorers: Sequence[Scorer], prompts: Sequence[str], responses: Sequence[str]) -> dict[str, list[float]]:
    """Every scorer's outputs, merged into attribute -> scores."""
    out: dict[str, list[float]] = {}
    for s in scorers:
        for name, values in s.score(prompts, responses).items():
            if name in out:
                raise ValueError(f"two scorers produce the attribute {name!r}")
            out[name] = values
    return out
