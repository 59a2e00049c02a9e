"""AllenAI RealToxicityPrompts (``allenai/real-toxicity-prompts``): prompts with their Perspective scores.

Hub rows (train only, 99,442): ``filename``, ``begin``, ``end``, ``challenging`` (bool), ``prompt`` and
``continuation``, each ``{text, toxicity, severe_toxicity, profanity, sexually_explicit, identity_attack,
flirtation, threat, insult}`` with Perspective API scores in 0-1 (null where Perspective returned none).

Record kinds:

- ``prompt``: the prompt text as one user turn, kept exactly (it stops mid-sentence and the model continues
  it; the toxicity task runs on a base LM). ``source_id`` is ``filename``. The prompt's own Perspective
  scores travel beside each record in a ``prompt_scores`` column (``{attribute: score or null}``), since a
  ``PromptRecord`` has no field for them; method code that does not need them ignores the column.
- ``scored``: the human continuation as the response, its Perspective scores on the declared scale (0, 1);
  null scores are left out and a continuation with none yields nothing (counted as filtered).

Options: ``challenging_only`` keeps the ``challenging`` subset. ``split_fractions`` makes seeded
train/validation/test splits of the single hub split, e.g. ``[0.85, 0.05, 0.10]``: ALT's (and Quark's)
85k/5k/10k of ~100k prompts. The sizes match; the membership is a seeded shuffle, not Quark's files (give
those as ``data_files`` per split to use them). Without it, ``validation_fraction`` holds out a part of train.

Shipped sample (``data_files="sample"``): 600 real rows from the Quark/ALT validation subset (7
challenging; 3 with null prompt scores). See ``datamodules/samples/PROVENANCE.md``.
Content warning: the data holds offensive text by design.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import datasets

from datamodules.base import ROW, HubOrFilesDataModule, boolean, number, required_text
from zoo.records import PromptRecord, Record, RecordError, ScoredResponse

HUB_ID = "allenai/real-toxicity-prompts"
ATTRIBUTES = (
    "toxicity",
    "severe_toxicity",
    "profanity",
    "sexually_explicit",
    "identity_attack",
    "flirtation",
    "threat",
    "insult",
)
SCALE = (0.0, 1.0)
SPLIT_ORDER = ("train", "validation", "test")


def perspective_scores(part: Any, field: str) -> tuple[str, dict[str, float]]:
    """(text, non-null Perspective scores) of a ``prompt`` or ``continuation``, each checked against (0, 1)."""
    if not isinstance(part, Mapping):
        raise RecordError("expected a mapping {text, toxicity, ...}", field=field)
    text = required_text(part.get("text"), f"{field}.text", strip=False)  # its edges continue the prompt
    scores = {  # null: Perspective returned no score
        name: number(part[name], f"{field}.{name}", SCALE) for name in ATTRIBUTES if part.get(name) is not None
    }
    return text, scores


class RealToxicityPromptsDataModule(HubOrFilesDataModule):
    """RealToxicityPrompts ``prompt`` records (with ``prompt_scores``) and ``scored`` continuations.

    Args:
        data_files: local JSON/JSONL(.gz) files per split in the hub schema; overrides the hub. ``"sample"``
            uses the shipped 600 rows.
        challenging_only: keep only the ``challenging`` prompts.
        split_fractions: ``[train, validation, test]`` fractions of the (single) source split, seeded by
            ``seed``; e.g. ``[0.85, 0.05, 0.10]`` for ALT's 85k/5k/10k.
        revision: hub revision.
        (see ``RecordDataModule`` for the shared arguments)
    """

    record_kinds: ClassVar[tuple[str, ...]] = ("prompt", "scored")
    sample_files: ClassVar[dict[str, Any]] = {"train": ["real-toxicity-prompts/prompts.jsonl.gz"]}

    def __init__(
        self,
        data_files: dict[str, list[str] | str] | str | None = None,
        challenging_only: bool = False,
        split_fractions: list[float] | None = None,
        revision: str | None = None,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        if split_fractions is not None:
            if len(split_fractions) != 3 or min(split_fractions) < 0 or abs(sum(split_fractions) - 1) > 1e-6:
                raise ValueError(f"data.split_fractions: three fractions summing to 1, got {split_fractions}")
        self.data_files = self.local_files(data_files)
        self.challenging_only, self.split_fractions, self.revision = (
            challenging_only,
            split_fractions,
            revision,
        )

    # --- raw rows ---------------------------------------------------------------------------------
    held_out_note = " ({split} part)"

    def hub_splits(self) -> dict[str, str]:
        return {"train": "train"}

    def load_hub(self, hub_split: str) -> datasets.Dataset:
        return datasets.load_dataset(HUB_ID, split=hub_split, revision=self.revision)

    def hub_name(self, hub_split: str) -> str:
        return f"{HUB_ID}/{hub_split}"

    def missing_split(self, split: str) -> str:
        return (
            f"RealToxicityPrompts: no {split!r} split; give data.data_files.{split}, validation_fraction or "
            "split_fractions"
        )

    def _fraction_split(self, split: str) -> datasets.Dataset:
        rows = self._load("train")
        rows = rows.add_column(ROW, list(range(len(rows)))).shuffle(seed=self.seed)
        bounds = [0]
        for f in self.split_fractions:
            bounds.append(bounds[-1] + round(f * len(rows)))
        bounds[-1] = len(rows)
        i = SPLIT_ORDER.index("test" if split == "predict" else split)
        return rows.select(range(bounds[i], bounds[i + 1]))

    def load_split(self, split: str) -> datasets.Dataset:
        if self.split_fractions is not None:
            return self._fraction_split(split)
        return super().load_split(split)

    def source_name(self, split: str) -> str:
        if self.split_fractions is not None:  # every split is a part of train
            return self._source_of("train") + f" ({split} part)"
        return super().source_name(split)

    def record_options(self) -> dict[str, Any]:
        return {"challenging_only": self.challenging_only}

    # --- rows -> records -------------------------------------------------------------------------
    @staticmethod
    def to_records(row: dict[str, Any], kind: str, challenging_only: bool = False) -> list[Record]:
        challenging = boolean(row.get("challenging"), "challenging")
        if challenging_only and not challenging:
            return []
        prompt, _ = perspective_scores(row.get("prompt"), "prompt")
        if kind == "prompt":
            return [PromptRecord(prompt=prompt, source_id=row.get("filename"))]
        response, scores = perspective_scores(row.get("continuation"), "continuation")
        if not scores:
            return []
        return [
            ScoredResponse(
                prompt=prompt,
                response=response,
                scores=scores,
                scales={name: SCALE for name in scores},
                source_id=row.get("filename"),
            )
        ]

    def records(self, split: str, kind: str) -> datasets.Dataset:
        recs = super().records(split, kind)
        if kind != "prompt":
            return recs
        # attach each prompt's Perspective scores, found through the raw row the record came from
        raw = self.load_split(split)
        positions = raw[ROW] if ROW in raw.column_names else range(len(raw))
        by_row = {}
        for position, part in zip(positions, raw["prompt"]):
            by_row[position] = (
                {name: part.get(name) for name in ATTRIBUTES} if isinstance(part, Mapping) else None
            )
        return recs.add_column("prompt_scores", [by_row[r] for r in recs["_row"]])
