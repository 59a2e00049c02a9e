"""PKU-Alignment BeaverTails (``PKU-Alignment/BeaverTails``): QA pairs with harm-category flags -> scored responses.

Hub splits ``30k_train`` / ``30k_test`` / ``330k_train`` / ``330k_test``, chosen with ``subset``;
validation/test/predict map to the subset's test split. Row: ``prompt``, ``response``, ``category`` (14 harm
categories -> bool), ``is_safe`` (bool; a pair is safe when no category is flagged).

Record kinds: ``scored``: ``is_safe`` and each category as a 0/1 score on the declared scale (0, 1), category
names as on the hub (e.g. ``"controversial_topics,politics"``); and ``prompt`` (deduplicated: several
responses share a prompt). ``is_safe`` keeps only safe (or unsafe) pairs (the others count as filtered).

Shipped sample (``data_files="sample"``): 140 real ``30k_train`` rows (all unsafe, 10 per category). See
``datamodules/samples/PROVENANCE.md``. Content warning: the dataset holds harmful text by design.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, Literal

import datasets

from datamodules.base import HubOrFilesDataModule, boolean, required_text
from zoo.records import PromptRecord, Record, RecordError, ScoredResponse

HUB_ID = "PKU-Alignment/BeaverTails"
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
FLAG = (0.0, 1.0)


class BeaverTailsDataModule(HubOrFilesDataModule):
    """BeaverTails QA pairs: ``scored`` (is_safe + 14 harm categories, 0/1) and ``prompt`` records.

    Args:
        subset: ``30k`` or ``330k`` (hub splits ``{subset}_train`` / ``{subset}_test``).
        data_files: local JSON/JSONL(.gz) files per split in the hub schema; ``"sample"``: the shipped rows.
        is_safe: keep only safe (true) or unsafe (false) pairs; default both.
        revision: hub revision.
        (see ``RecordDataModule`` for the shared arguments)
    """

    record_kinds: ClassVar[tuple[str, ...]] = ("scored", "prompt")
    label = HUB_ID
    sample_files: ClassVar[dict[str, Any]] = {"train": ["beavertails/30k_train.jsonl.gz"]}

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
        self.data_files = self.local_files(data_files)
        self.subset, self.is_safe, self.revision = subset, is_safe, revision

    # --- raw rows ---------------------------------------------------------------------------------
    def hub_splits(self) -> dict[str, str]:
        test = f"{self.subset}_test"
        return {"train": f"{self.subset}_train", "validation": test, "test": test, "predict": test}

    def load_hub(self, hub_split: str) -> datasets.Dataset:
        return datasets.load_dataset(HUB_ID, split=hub_split, revision=self.revision)

    def hub_name(self, hub_split: str) -> str:
        return f"{HUB_ID}/{hub_split}"

    def record_options(self) -> dict[str, Any]:
        return {"is_safe": self.is_safe}

    # --- rows -> records -------------------------------------------------------------------------
    @staticmethod
    def to_records(row: dict[str, Any], kind: str, is_safe: bool | None = None) -> list[Record]:
        prompt = required_text(row.get("prompt"), "prompt")
        safe = boolean(row.get("is_safe"), "is_safe")
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
            scores[name] = float(boolean(category.get(name), f"category.{name}"))
        return [
            ScoredResponse(
                prompt=prompt,
                response=required_text(row.get("response"), "response"),
                scores=scores,
                scales={name: FLAG for name in scores},
            )
        ]

    def records(self, split: str, kind: str) -> datasets.Dataset:
        recs = super().records(split, kind)
        return self.drop_repeats(split, recs) if kind == "prompt" else recs
