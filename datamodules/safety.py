"""PKU-Alignment safety data: BeaverTails (scored QA pairs) and PKU-SafeRLHF (pairs per attribute).

**BeaverTails** (``PKU-Alignment/BeaverTails``; splits ``30k_train`` / ``30k_test`` / ``330k_train`` /
``330k_test``, chosen with ``subset``; validation/test/predict map to the subset's test split). Row:
``prompt``, ``response``, ``category`` (14 harm categories -> bool), ``is_safe`` (bool; a pair is safe when
no category is flagged). Yields ``scored``: ``is_safe`` and each category as a 0/1 score on the declared
scale (0, 1), category names as on the hub (e.g. ``"controversial_topics,politics"``); and ``prompt``
(deduplicated: several responses share a prompt). ``is_safe`` keeps only safe (or unsafe) pairs.

**PKU-SafeRLHF** (``PKU-Alignment/PKU-SafeRLHF``; train / test, validation/test/predict -> test;
``data_dir`` picks a hub subset such as ``data/Alpaca-7B``). Hub row: ``prompt``, ``response_0``,
``response_1``, ``is_response_0_safe``, ``is_response_1_safe``, ``better_response_id`` (0/1: more helpful),
``safer_response_id`` (0/1); the current release adds per-response sources, harm categories and
``response_{i}_severity_level`` (0-3), of which only the severity level is read. Yields:

- ``preference``: one pair per attribute in ``attributes``: ``helpfulness`` (``better_response_id``
  chosen) and ``safety`` (``safer_response_id`` chosen), with ``PreferencePair.attribute`` set;
- ``scored``: each response with ``is_safe`` (0/1, scale (0, 1)) and, where present, ``severity_level``
  (scale (0, 3));
- ``prompt``.

``different_safety_only`` is the filter CMPO applies: keep only rows whose two responses have different
safety labels (other rows are counted as filtered).

A second, documented local schema is accepted for PKU-SafeRLHF, recognised by its columns: **safer-first
pairs** ``{prompt, response: [safer, less safe]}`` (the shipped sample), which holds only pairs whose two
responses differ in safety. It yields ``safety`` pairs and prompts only; it has no helpfulness label and no
per-response flags, so ``helpfulness`` pairs are skipped and ``scored`` records are refused.

Shipped samples (``data_files="sample"``): BeaverTails, 140 real ``30k_train`` rows (all unsafe, 10 per
category); PKU-SafeRLHF, the first 300 real safer-first test pairs (``form="safer_first"``) or four
hand-written rows in the hub schema (``form="hub"``). See ``datamodules/samples/PROVENANCE.md``.
Content warning: these datasets hold harmful text by design.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, Literal

import datasets

from datamodules.base import HubOrFilesDataModule, checked_files
from zoo.records import PreferencePair, PromptRecord, Record, RecordError, ScoredResponse

SAMPLES = Path(__file__).parent / "samples"
FLAG = (0.0, 1.0)

BEAVERTAILS_ID = "PKU-Alignment/BeaverTails"
HARM_CATEGORIES = (
    "animal_abuse",
    "child_abuse",
    "controversial_topics,politics",
    "discrimination,stereotype,injustice",
    "drug_abuse,weapons,banned_substance",
    "financial_crime,property_crime,theft",
    "hate_speech,offensive_language",
    "misinformation_regarding_ethics,laws_and_safety",
    "non_violent_unethical_behavior",
    "privacy_violation",
    "self_harm",
    "sexually_explicit,adult_content",
    "terrorism,organized_crime",
    "violence,aiding_and_abetting,incitement",
)
BEAVERTAILS_SAMPLE = {"train": [str(SAMPLES / "beavertails" / "30k_train.jsonl.gz")]}

SAFERLHF_ID = "PKU-Alignment/PKU-SafeRLHF"
SAFERLHF_SPLITS = {"train": "train", "validation": "test", "test": "test", "predict": "test"}
SAFERLHF_SAMPLES = {
    "safer_first": {"train": [str(SAMPLES / "pku-saferlhf" / "test.safer-first-pairs.first300.jsonl.gz")]},
    "hub": {"train": [str(SAMPLES / "pku-saferlhf" / "hub-schema.handwritten.jsonl")]},
}
PAIR_ATTRIBUTES = {"helpfulness": "better_response_id", "safety": "safer_response_id"}
SEVERITY = (0.0, 3.0)


def _text(value: Any, field: str) -> str:
    if value is None:
        raise RecordError("missing", field=field)
    if not isinstance(value, str):
        raise RecordError(f"expected a string, got {type(value).__name__}", field=field)
    if not value.strip():
        raise RecordError("is empty", field=field)
    return value.strip()


def _flag(value: Any, field: str) -> bool:
    if not isinstance(value, bool):
        raise RecordError(f"expected true or false, got {value!r}", field=field)
    return value


def _index(value: Any, field: str) -> int:
    if isinstance(value, bool) or value not in (0, 1):
        raise RecordError(f"expected 0 or 1 (a response index), got {value!r}", field=field)
    return int(value)


class _LocalOrHub(HubOrFilesDataModule):
    """The hub source shared by the two modules below: ``hub_id`` with an optional ``data_dir``."""

    hub_id: ClassVar[str]

    @property
    def label(self) -> str:
        return self.hub_id

    def load_hub(self, hub_split: str) -> datasets.Dataset:
        return datasets.load_dataset(self.hub_id, data_dir=self.data_dir, split=hub_split, revision=self.revision)

    def hub_name(self, hub_split: str) -> str:
        return f"{self.hub_id}/{hub_split}"


class BeaverTailsDataModule(_LocalOrHub):
    """BeaverTails QA pairs: ``scored`` (is_safe + 14 harm categories, 0/1) and ``prompt`` records.

    Args:
        subset: ``30k`` or ``330k`` (hub splits ``{subset}_train`` / ``{subset}_test``).
        data_files: local JSON/JSONL(.gz) files per split in the hub schema; ``"sample"``: the shipped rows.
        is_safe: keep only safe (true) or unsafe (false) pairs; default both.
        revision: hub revision.
        (see ``RecordDataModule`` for the shared arguments)
    """

    record_kinds: ClassVar[tuple[str, ...]] = ("scored", "prompt")
    hub_id: ClassVar[str] = BEAVERTAILS_ID

    def __init__(
        self,
        subset: Literal["30k", "330k"] = "30k",
        data_files: dict[str, list[str] | str] | str | None = None,
        is_safe: bool | None = None,
        revision: str | None = None,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        if subset not in ("30k", "330k"):
            raise ValueError(f"data.subset must be '30k' or '330k', got {subset!r}")
        if data_files == "sample":
            data_files = BEAVERTAILS_SAMPLE
        elif isinstance(data_files, str):
            data_files = {"train": [data_files]}
        self.data_files = checked_files(data_files)
        self.subset, self.is_safe, self.revision, self.data_dir = subset, is_safe, revision, None

    def hub_splits(self) -> dict[str, str]:
        test = f"{self.subset}_test"
        return {"train": f"{self.subset}_train", "validation": test, "test": test, "predict": test}

    def record_options(self) -> dict[str, Any]:
        return {"is_safe": self.is_safe}

    @staticmethod
    def to_records(row: dict[str, Any], kind: str, is_safe: bool | None = None) -> list[Record]:
        prompt = _text(row.get("prompt"), "prompt")
        safe = _flag(row.get("is_safe"), "is_safe")
        if is_safe is not None and safe != is_safe:
            return []
        if kind == "prompt":
            return [PromptRecord(prompt=prompt)]
        category = row.get("category")
        if not isinstance(category, Mapping):
            raise RecordError("expected a mapping harm category -> bool", field="category")
        unknown = sorted(set(category) - set(HARM_CATEGORIES))
        if unknown:
            raise RecordError(f"unknown harm categories {unknown}", field="category")
        scores = {"is_safe": float(safe)}
        for name in HARM_CATEGORIES:
            scores[name] = float(_flag(category.get(name), f"category.{name}"))
        return [
            ScoredResponse(
                prompt=prompt,
                response=_text(row.get("response"), "response"),
                scores=scores,
                scales={name: FLAG for name in scores},
            )
        ]

    def records(self, split: str, kind: str) -> datasets.Dataset:
        recs = super().records(split, kind)
        return self.drop_repeats(split, recs) if kind == "prompt" else recs


class PKUSafeRLHFDataModule(_LocalOrHub):
    """PKU-SafeRLHF: ``preference`` pairs per attribute (helpfulness, safety), ``scored``, ``prompt``.

    Args:
        data_files: local JSON/JSONL(.gz) files per split, hub or safer-first schema; ``"sample"``: the
            shipped sample of ``form``.
        form: which shipped sample ``data_files="sample"`` means: ``safer_first`` (real) or ``hub``
            (hand-written). Rows themselves are recognised by their columns.
        attributes: the pair attributes to yield, ``helpfulness`` and/or ``safety``.
        different_safety_only: keep only rows whose responses differ in safety (CMPO's filter).
        data_dir: hub subset (e.g. ``data/Alpaca-7B``); default: the whole release.
        revision: hub revision.
        (see ``RecordDataModule`` for the shared arguments)
    """

    record_kinds: ClassVar[tuple[str, ...]] = ("preference", "scored", "prompt")
    hub_id: ClassVar[str] = SAFERLHF_ID

    def __init__(
        self,
        data_files: dict[str, list[str] | str] | str | None = None,
        form: Literal["safer_first", "hub"] = "safer_first",
        attributes: list[str] | None = None,
        different_safety_only: bool = False,
        data_dir: str | None = None,
        revision: str | None = None,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        attributes = list(attributes) if attributes is not None else list(PAIR_ATTRIBUTES)
        if not attributes or set(attributes) - set(PAIR_ATTRIBUTES):
            raise ValueError(f"data.attributes: {attributes}; choose from {tuple(PAIR_ATTRIBUTES)}")
        if form not in SAFERLHF_SAMPLES:
            raise ValueError(f"data.form must be one of {tuple(SAFERLHF_SAMPLES)}, got {form!r}")
        if data_files == "sample":
            data_files = SAFERLHF_SAMPLES[form]
        elif isinstance(data_files, str):
            data_files = {"train": [data_files]}
        self.data_files = checked_files(data_files)
        self.attributes, self.different_safety_only = attributes, different_safety_only
        self.data_dir, self.revision = data_dir, revision

    def hub_splits(self) -> dict[str, str]:
        return SAFERLHF_SPLITS

    def record_options(self) -> dict[str, Any]:
        return {"attributes": self.attributes, "different_safety_only": self.different_safety_only}

    @staticmethod
    def to_records(
        row: dict[str, Any],
        kind: str,
        attributes: tuple[str, ...] | list[str] = tuple(PAIR_ATTRIBUTES),
        different_safety_only: bool = False,
    ) -> list[Record]:
        prompt = _text(row.get("prompt"), "prompt")
        if "response_0" not in row and "response" in row:
            return _safer_first_records(row, kind, prompt, attributes)
        responses = [_text(row.get(f"response_{i}"), f"response_{i}") for i in (0, 1)]
        safe = [_flag(row.get(f"is_response_{i}_safe"), f"is_response_{i}_safe") for i in (0, 1)]
        if different_safety_only and safe[0] == safe[1]:
            return []
        if kind == "prompt":
            return [PromptRecord(prompt=prompt)]
        if kind == "scored":
            out: list[Record] = []
            for i in (0, 1):
                scores, scales = {"is_safe": float(safe[i])}, {"is_safe": FLAG}
                severity = row.get(f"response_{i}_severity_level")
                if severity is not None:
                    if (
                        isinstance(severity, bool)
                        or not isinstance(severity, (int, float))
                        or not float(severity).is_integer()
                    ):
                        raise RecordError(
                            f"expected an integer 0-3, got {severity!r}", field=f"response_{i}_severity_level"
                        )
                    if not SEVERITY[0] <= severity <= SEVERITY[1]:
                        raise RecordError(
                            f"severity {severity} outside 0-3", field=f"response_{i}_severity_level"
                        )
                    scores["severity_level"], scales["severity_level"] = severity, SEVERITY
                out.append(ScoredResponse(prompt=prompt, response=responses[i], scores=scores, scales=scales))
            return out
        if responses[0] == responses[1]:
            raise RecordError("the two responses are identical", field="response_1")
        pairs: list[Record] = []
        for attribute in attributes:
            best = _index(row.get(PAIR_ATTRIBUTES[attribute]), PAIR_ATTRIBUTES[attribute])
            pairs.append(
                PreferencePair(
                    prompt=prompt, chosen=responses[best], rejected=responses[1 - best], attribute=attribute
                )
            )
        return pairs

    def records(self, split: str, kind: str) -> datasets.Dataset:
        recs = super().records(split, kind)
        return self.drop_repeats(split, recs) if kind == "prompt" else recs


def _safer_first_records(
    row: dict[str, Any], kind: str, prompt: str, attributes: tuple[str, ...] | list[str]
) -> list[Record]:
    """The safer-first local schema: ``response: [safer, less safe]`` (already differing in safety)."""
    if kind == "scored":
        raise RecordError(
            "safer-first pairs carry no per-response safety labels; use the hub schema", field="response"
        )
    if kind == "prompt":
        return [PromptRecord(prompt=prompt)]
    pair = row.get("response")
    if not isinstance(pair, list) or len(pair) != 2:
        raise RecordError("expected a list [safer, less safe]", field="response")
    safer, less_safe = _text(pair[0], "response[0]"), _text(pair[1], "response[1]")
    if safer == less_safe:
        raise RecordError("the two responses are identical", field="response[1]")
    if "safety" not in attributes:
        return []
    return [PreferencePair(prompt=prompt, chosen=safer, rejected=less_safe, attribute="safety")]
