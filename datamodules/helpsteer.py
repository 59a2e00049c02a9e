"""NVIDIA HelpSteer (``nvidia/HelpSteer``) and HelpSteer2 (``nvidia/HelpSteer2``): scored responses.

Hub rows: ``prompt``, ``response``, and five integer ratings on 0-4: ``helpfulness``, ``correctness``,
``coherence``, ``complexity``, ``verbosity``. Splits: HelpSteer train 35,331 / validation 1,789;
HelpSteer2 train 20,324 / validation 1,038 (test/predict map to validation). A prompt has several rated
responses (one row each).

Record kinds: ``scored`` (one ScoredResponse per row, each attribute on its declared scale (0, 4);
``attributes`` keeps a subset, e.g. only verbosity) and ``prompt`` (deduplicated by default, since prompts
repeat). Every row must carry all five ratings as integers in 0-4, whichever attributes are kept, so a
broken row is caught however the module is configured. Prompt turns and responses are stripped of
surrounding whitespace (the rule of ``datamodules.base.required_text``).

Multi-turn prompts (HelpSteer2) join turns with NeMo's markers: ``turn 1\\n<extra_id_1>Assistant\\nreply
1\\n<extra_id_1>User\\nturn 2``. They are split back into user/assistant messages; the first turn is the
user's, and a marker must be followed by ``User`` or ``Assistant``.

Shipped sample (``data_files="sample"``): the two example rows printed on the HelpSteer and HelpSteer2
dataset cards (real) plus five hand-written rows in the hub schema (one multi-turn), as train; see
``datamodules/samples/PROVENANCE.md``.
"""

from __future__ import annotations

import re
from typing import Any, ClassVar, Literal

import datasets

from datamodules.base import HubOrFilesDataModule, number, required_text
from zoo.records import Demonstration, PromptRecord, Record, RecordError, ScoredResponse

HUB_IDS = {"helpsteer": "nvidia/HelpSteer", "helpsteer2": "nvidia/HelpSteer2"}
HUB_SPLITS = {"train": "train", "validation": "validation", "test": "validation", "predict": "validation"}
ATTRIBUTES = ("helpfulness", "correctness", "coherence", "complexity", "verbosity")
SCALE = (0.0, 4.0)
_MARKER = re.compile(r"<extra_id_1>")
_SPEAKER = re.compile(r"\s*(User|Assistant)\s*\n?")


def parse_prompt(text: str) -> list[dict[str, str]]:
    """A HelpSteer2 prompt -> messages; a prompt without ``<extra_id_1>`` is a single user turn."""
    parts = _MARKER.split(text)
    messages = [{"role": "user", "content": parts[0].strip()}]
    for i, part in enumerate(parts[1:], start=1):
        speaker = _SPEAKER.match(part)
        if speaker is None:
            raise RecordError(f"turn {i} after <extra_id_1> names no 'User' or 'Assistant'", field="prompt")
        role = "user" if speaker.group(1) == "User" else "assistant"
        if role == messages[-1]["role"]:
            raise RecordError(f"turn {i} repeats the {role} role", field="prompt")
        messages.append({"role": role, "content": part[speaker.end() :].strip()})
    for i, m in enumerate(messages):
        if not m["content"]:
            raise RecordError(f"turn {i} ({m['role']}) is empty", field="prompt")
    if messages[-1]["role"] != "user":
        raise RecordError("the last turn is the assistant's, not the user's", field="prompt")
    return messages


class HelpSteerDataModule(HubOrFilesDataModule):
    """HelpSteer / HelpSteer2 ``scored`` responses (five 0-4 attributes) and ``prompt`` records.

    Args:
        version: ``helpsteer`` (``nvidia/HelpSteer``, used by CMPO and DPA) or ``helpsteer2``.
        data_files: local JSON/JSONL(.gz) files per split in the hub schema; overrides the hub. ``"sample"``
            uses the shipped rows.
        attributes: the ratings to keep as scores (default: all five).
        dedup: drop repeated ``prompt`` records (several responses share a prompt).
        revision: hub revision.
        (see ``RecordDataModule`` for the shared arguments)
    """

    record_kinds: ClassVar[tuple[str, ...]] = ("scored", "demonstration", "prompt")
    sample_files: ClassVar[dict[str, Any]] = {
        "train": ["helpsteer/card_examples.jsonl", "helpsteer/train.handwritten.jsonl"]
    }

    def __init__(
        self,
        version: Literal["helpsteer", "helpsteer2"] = "helpsteer",
        data_files: dict[str, list[str] | str] | str | None = None,
        attributes: list[str] | None = None,
        dedup: bool = True,
        revision: str | None = None,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        if version not in HUB_IDS:
            raise ValueError(f"data.version: unknown HelpSteer version {version!r}; known: {tuple(HUB_IDS)}")
        unknown = sorted(set(attributes or ()) - set(ATTRIBUTES))
        if unknown or attributes == []:
            raise ValueError(f"data.attributes: {unknown or 'empty'}; choose from {ATTRIBUTES}")
        self.data_files = self.local_files(data_files)
        self.version, self.dedup, self.revision = version, dedup, revision
        self.attributes = list(attributes) if attributes else list(ATTRIBUTES)

    # --- raw rows ---------------------------------------------------------------------------------
    label = "HelpSteer"

    def hub_splits(self) -> dict[str, str]:
        return HUB_SPLITS

    def load_hub(self, hub_split: str) -> datasets.Dataset:
        return datasets.load_dataset(HUB_IDS[self.version], split=hub_split, revision=self.revision)

    def hub_name(self, hub_split: str) -> str:
        return f"{HUB_IDS[self.version]}/{hub_split}"

    def record_options(self) -> dict[str, Any]:
        return {"attributes": self.attributes}

    # --- rows -> records -------------------------------------------------------------------------
    @staticmethod
    def to_records(
        row: dict[str, Any], kind: str, attributes: tuple[str, ...] | list[str] = ATTRIBUTES
    ) -> list[Record]:
        prompt = parse_prompt(required_text(row.get("prompt"), "prompt"))
        if kind == "prompt":
            return [PromptRecord(prompt=prompt)]
        response = required_text(row.get("response"), "response")
        ratings = {name: number(row.get(name), name, SCALE, integer=True) for name in ATTRIBUTES}
        if kind == "demonstration":  # every response as an SFT target (the CMPO thesis's SFT on HelpSteer + OASST)
            return [Demonstration(prompt=prompt, response=response)]
        scores = {a: ratings[a] for a in attributes}
        return [
            ScoredResponse(
                prompt=prompt, response=response, scores=scores, scales={a: SCALE for a in attributes}
            )
        ]

    def records(self, split: str, kind: str) -> datasets.Dataset:
        recs = super().records(split, kind)
        return self.drop_repeats(split, recs) if self.dedup and kind == "prompt" else recs
