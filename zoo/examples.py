"""The method -> data contract: an ``ExampleBuilder`` is everything the data side needs from a method.

Data flows one way. A DataModule turns raw rows into canonical records (``zoo.records``); a method says
which record kind it trains on and how one record (or all records of one prompt) becomes its examples
``{"prompt": [messages], "completions": [str, ...], **extras}``; ``zoo.collate`` turns examples into
tensors. The method hands this object to the DataModule explicitly
(``datamodule.attach(module.example_builder())``; ``train.py`` does it for every run), so the DataModule
never looks up the method and the method never looks inside the DataModule.
"""

from __future__ import annotations

import hashlib
import inspect
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transformers import PreTrainedTokenizerBase

from zoo.collate import PadCollator, TokenizeSettings
from zoo.records import Record

SPLITS = ("train", "validation", "test", "predict")
ExampleFn = Callable[..., Iterable[dict[str, Any]]]
RoundSource = Callable[[int, list[Record]], list[Record]]  # (epoch, the data's source records) -> training records


def prompt_examples(record: Record, **kwargs: Any) -> Iterable[dict[str, Any]]:
    """Prompt records -> prompt-only examples (``predict``, sampling); methods with a control override it."""
    yield {"prompt": list(record.prompt), "completions": []}


def code_digest(*objs: Any) -> str:
    """Digest of the source files defining ``objs``: part of every cached map's fingerprint, so editing a
    converter or a helper it calls invalidates the datasets cache (datasets hashes the function alone)."""
    h = hashlib.sha1()
    for obj in objs:
        h.update(Path(inspect.getfile(obj)).read_bytes())
    return h.hexdigest()[:12]


@dataclass(frozen=True)
class ExampleBuilder:
    """What a method asks of the data.

    Args:
        method: the method's name (progress bars and error messages).
        record_kind: the canonical record it trains on (``zoo.records.RECORD_TYPES`` key).
        example_fn: record -> examples; with ``group_by_prompt``, all records of one prompt -> examples.
        tokenizer / tokenize: how examples become ids (``zoo.collate.tokenize_examples``).
        prompt_example_fn: prompt record -> prompt-only example (``predict``).
        split_kwargs: keyword arguments of ``example_fn`` / ``prompt_example_fn`` per split.
        group_by_prompt: a method that pairs up all responses of a prompt needs them together.
        collate: ``zoo.collate.PadCollator`` options (prefix sharing).
        code: digest of the method's example code, so editing it invalidates cached examples.
        split_kinds: record kinds per split where they differ from ``record_kind`` (``predict`` is always
            ``prompt``); an online method evaluates on prompts (``{"validation": "prompt"}``).
        rounds: online methods (``lightning_modules.online``): the train split is not read but *made*, once per
            epoch: the DataModule hands its source records (``rounds_source_kind``, e.g. prompts, or
            demonstrations whose prompts are sampled and whose replies are replayed) and the epoch, and gets
            that round's training records back (sampled, scored and selected by the method).
    """

    method: str
    record_kind: str
    example_fn: ExampleFn
    tokenizer: PreTrainedTokenizerBase
    tokenize: TokenizeSettings
    prompt_example_fn: ExampleFn = prompt_examples
    split_kwargs: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    group_by_prompt: bool = False
    collate: Mapping[str, Any] = field(default_factory=dict)
    code: str = ""
    split_kinds: Mapping[str, str] = field(default_factory=dict)
    rounds: RoundSource | None = None
    rounds_source_kind: str = "prompt"

    def kind_for(self, split: str) -> str:
        return "prompt" if split == "predict" else self.split_kinds.get(split, self.record_kind)

    def fn_for(self, split: str) -> ExampleFn:
        return self.prompt_example_fn if self.kind_for(split) == "prompt" else self.example_fn

    def kwargs_for(self, split: str) -> dict[str, Any]:
        return dict(self.split_kwargs.get(split, {}))

    def grouped(self, split: str) -> bool:
        return self.group_by_prompt and split != "predict"

    def collator(self) -> PadCollator:
        return PadCollator(self.tokenizer.pad_token_id, **self.collate)
