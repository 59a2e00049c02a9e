"""Canonical records read back from JSON Lines files: steerzoo's own interchange format.

Each line is one record exactly as ``zoo.records.<Kind>.to_row()`` writes it, e.g. a ``scored`` line:

    {"prompt": [{"role": "user", "content": "…"}], "response": "…", "scores": {"helpfulness": 3.0, …},
     "scales": {"helpfulness": [0.0, 4.0], …}, "source_id": "…"}

It carries data that steerzoo produced itself — SteerLM's APM-labelled HelpSteer + OASST records, which the
thesis trains the ACM on (``scripts/apm_label.py`` writes them) — or a dataset a user converted by hand.
Every line is validated by the record's own constructor, so a bad line stops with the file, line and field.
Any file also serves ``prompt`` records (its prompts, deduplicated), for ``predict``.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, ClassVar

import datasets

from datamodules.base import HubOrFilesDataModule
from zoo.records import RECORD_TYPES, PromptRecord, Record, RecordError, write_records  # noqa: F401  (re-exported)


class RecordsFileDataModule(HubOrFilesDataModule):
    """Records of one ``kind`` from local JSONL files per split.

    Args:
        data_files: ``{split: [files]}`` (or one file: train); lines in ``zoo.records`` row form.
        kind: the record kind the files hold: ``scored``, ``preference``, ``demonstration`` or ``prompt``.
        dedup_prompts: drop repeated prompts when serving ``prompt`` records.
        (see ``RecordDataModule`` for the shared arguments)
    """

    record_kinds: ClassVar[tuple[str, ...]] = tuple(RECORD_TYPES)

    def __init__(self, data_files: dict[str, list[str] | str] | str, kind: str = "scored",
                 dedup_prompts: bool = True, **kwargs: Any):
        super().__init__(**kwargs)
        if kind not in RECORD_TYPES:
            raise ValueError(f"data.kind: unknown record kind {kind!r}; known: {sorted(RECORD_TYPES)}")
        self.data_files = self.local_files(data_files)
        self.kind, self.dedup_prompts = kind, dedup_prompts

    # no hub: every split is a local file (or a held-out part of train)
    def hub_splits(self) -> dict[str, str]:
        return {}

    def hub_name(self, hub_split: str) -> str:
        return hub_split

    def _load(self, split: str) -> datasets.Dataset:
        # each line is read as a string and parsed in to_records: records of one kind may still differ in
        # their keys (a scored record lists only its own attributes), which a typed JSON loader would refuse
        return datasets.load_dataset("text", data_files=self.data_files[split], split="train")

    def record_options(self) -> dict[str, Any]:
        return {"file_kind": self.kind}

    def records(self, split: str, kind: str) -> datasets.Dataset:
        recs = super().records(split, kind)
        return self.drop_repeats(split, recs) if kind == "prompt" and self.dedup_prompts else recs

    @staticmethod
    def to_records(row: dict[str, Any], kind: str, file_kind: str = "scored") -> list[Record]:
        try:
            fields = json.loads(row["text"])
        except json.JSONDecodeError as e:
            raise RecordError(f"not a JSON object ({e.msg} at column {e.colno})", field="line") from None
        if not isinstance(fields, dict):
            raise RecordError(f"expected a JSON object, got {type(fields).__name__}", field="line")
        cls = RECORD_TYPES[file_kind]
        required = [f.name for f in dataclasses.fields(cls) if f.name not in ("source_id", "attribute")]
        for name in required:
            if name not in fields:
                raise RecordError(f"missing (a {file_kind} record needs {required})", field=name)
        unknown = sorted(set(fields) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise RecordError(f"unknown keys {unknown} for a {file_kind} record", field=unknown[0])
        record = cls.from_row(fields)
        if kind == file_kind:
            return [record]
        if kind == "prompt":
            return [PromptRecord(prompt=record.prompt, source_id=record.source_id)]
        raise RecordError(f"the file holds {file_kind} records; the method needs {kind!r} records", field="kind")
