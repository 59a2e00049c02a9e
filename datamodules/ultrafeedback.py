"""UltraFeedback: raw GPT-4 ratings (``openbmb/UltraFeedback``) and the Zephyr binarized pairs
(``HuggingFaceH4/ultrafeedback_binarized``) -> scored responses, preference pairs, prompts.

**Raw** (``source="raw"``; hub: train only, 63,967 rows). Row: ``source``, ``instruction``, ``models``,
``completions`` (four), each ``{model, principle, custom_system_prompt, response, annotations,
fine-grained_score, overall_score, critique}``; ``annotations`` has ``instruction_following``, ``honesty``,
``truthfulness``, ``helpfulness``, each with a ``Rating`` string ``"1"``-``"5"`` (``"N/A"`` allowed, and
left out). Yields ``scored``: one record per completion with the four aspect ratings on (1, 5) and
``overall_score`` (the critique's score) on (1, 10) when present (``fine-grained_score`` is the mean of the
four and is not repeated); ``preference``: for each attribute in ``pair_attributes`` (default
``overall_score``) the best-rated completion over the worst (the first on ties; none when all tie), with
``attribute`` set; ``prompt``. The prompt is the instruction alone: ``custom_system_prompt`` steered the
generating model and is not part of the task.

**Binarized** (``source="binarized"``, the default; hub splits ``train_prefs`` 61,135 / ``test_prefs``
2,000 -> train / validation, test and predict -> ``test_prefs``): the Zephyr prompt split, which DPA uses.
Hub (H4) row: ``prompt``, ``prompt_id``, ``chosen`` and ``rejected`` (``[{"role": "user", …},
{"role": "assistant", …}]``), ``messages``, ``score_chosen``, ``score_rejected`` (overall scores, 1-10).
Yields ``preference``, ``scored`` (both responses with ``overall_score`` on (1, 10)), ``prompt``.

A second, documented local schema is accepted for the binarized data, recognised by its columns: the
**trl-lib form** of the shipped sample: ``prompt``, ``chosen``, ``rejected`` as plain strings,
``source_index``, ``metadata{score_chosen, score_rejected}``.

``zephyr_split`` (raw only) keeps the raw rows whose instruction is a prompt of the matching binarized
split (train_prefs for train, test_prefs otherwise), read from the hub or from ``zephyr_files``: the raw
ratings on Zephyr's prompt split.

Prompts and responses are stripped of surrounding whitespace, the rule of ``datamodules.base.required_text``
(22 of the 320 sample prompts carry some); ``zephyr_split`` compares instructions stripped too.

Shipped samples (``data_files="sample"``): binarized, the first 320 real rows of ``train_prefs`` in the
trl-lib form (three are malformed: identical or empty texts); raw, two hand-written rows in the hub schema.
The README's real raw example (one completion) and hand-written H4 rows are shipped too. See
``datamodules/samples/PROVENANCE.md``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, Literal

import datasets

from datamodules.base import ROW, SAMPLES, HubOrFilesDataModule, checked_files, number, required_text
from zoo.records import PreferencePair, PromptRecord, Record, RecordError, ScoredResponse

RAW_ID = "openbmb/UltraFeedback"
BINARIZED_ID = "HuggingFaceH4/ultrafeedback_binarized"
HUB_SPLITS = {
    "raw": {"train": "train"},
    "binarized": {
        "train": "train_prefs",
        "validation": "test_prefs",
        "test": "test_prefs",
        "predict": "test_prefs",
    },
}
H4_SAMPLE = SAMPLES / "ultrafeedback_binarized" / "h4-form.handwritten.jsonl"
README_EXAMPLE = SAMPLES / "ultrafeedback" / "readme_example.jsonl"
ASPECTS = ("instruction_following", "honesty", "truthfulness", "helpfulness")
ASPECT_SCALE = (1.0, 5.0)
OVERALL = "overall_score"
OVERALL_SCALE = (1.0, 10.0)


def row_form(row: Mapping[str, Any]) -> str:
    if "completions" in row:
        return "raw"
    if "chosen" in row and "rejected" in row:
        return "h4" if "score_chosen" in row else "trl"
    raise RecordError(
        f"unknown UltraFeedback schema with columns {sorted(row)}: expected completions (raw) or chosen+rejected",
        field="columns",
    )


def prompt_text(value: Any, field: str = "prompt") -> str:
    """The prompt of a binarized row as text (a conversation's last user turn)."""
    if isinstance(value, list) and value and isinstance(value[-1], Mapping):
        value = value[-1].get("content")
    return required_text(value, field)


class UltraFeedbackDataModule(HubOrFilesDataModule):
    """UltraFeedback ``scored`` responses, ``preference`` pairs and ``prompt`` records (raw or binarized).

    Args:
        source: ``binarized`` (``HuggingFaceH4/ultrafeedback_binarized``, Zephyr's split) or ``raw``
            (``openbmb/UltraFeedback``).
        data_files: local JSON/JSONL(.gz) files per split (raw, H4 or trl-lib schema); overrides the hub.
            ``"sample"`` uses the shipped sample of ``source``.
        pair_attributes: raw only: the scores that make pairs (``overall_score`` and/or the four aspects).
        zephyr_split: raw only: keep the rows whose instruction is in the binarized split's prompts.
        zephyr_files: local binarized files per split for ``zephyr_split`` (default: the hub).
        revision: hub revision.
        (see ``RecordDataModule`` for the shared arguments)
    """

    record_kinds: ClassVar[tuple[str, ...]] = ("preference", "scored", "prompt")
    sample_files: ClassVar[dict[str, Any]] = {
        "binarized": {"train": ["ultrafeedback_binarized/train_prefs.trl-lib-form.first320.jsonl.gz"]},
        "raw": {"train": ["ultrafeedback/raw.handwritten.jsonl"]},
    }

    def __init__(
        self,
        source: Literal["binarized", "raw"] = "binarized",
        data_files: dict[str, list[str] | str] | str | None = None,
        pair_attributes: list[str] | None = None,
        zephyr_split: bool = False,
        zephyr_files: dict[str, list[str] | str] | None = None,
        revision: str | None = None,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        if source not in HUB_SPLITS:
            raise ValueError(f"data.source must be 'binarized' or 'raw', got {source!r}")
        pair_attributes = list(pair_attributes) if pair_attributes is not None else [OVERALL]
        if not pair_attributes or set(pair_attributes) - {OVERALL, *ASPECTS}:
            raise ValueError(f"data.pair_attributes: {pair_attributes}; choose from {(OVERALL, *ASPECTS)}")
        if zephyr_split and source != "raw":
            raise ValueError(
                "data.zephyr_split filters raw rows; the binarized source already is Zephyr's split"
            )
        self.data_files = self.local_files(data_files, variant=source)
        self.zephyr_files = checked_files(zephyr_files)
        self.source, self.pair_attributes, self.zephyr_split, self.revision = (
            source,
            pair_attributes,
            zephyr_split,
            revision,
        )

    # --- raw rows ---------------------------------------------------------------------------------
    @property
    def label(self) -> str:
        return f"UltraFeedback ({self.source})"

    def hub_splits(self) -> dict[str, str]:
        return HUB_SPLITS[self.source]

    def load_hub(self, hub_split: str) -> datasets.Dataset:
        hub_id = RAW_ID if self.source == "raw" else BINARIZED_ID
        return datasets.load_dataset(hub_id, split=hub_split, revision=self.revision)

    def hub_name(self, hub_split: str) -> str:
        return f"{RAW_ID if self.source == 'raw' else BINARIZED_ID}/{hub_split}"

    def _has(self, split: str) -> bool:
        if self.zephyr_split:  # every split is a prompt-filtered view of the raw train rows
            return split in (self.zephyr_files if self.zephyr_files is not None else HUB_SPLITS["binarized"])
        return super()._has(split)

    def _load(self, split: str) -> datasets.Dataset:
        if not self.zephyr_split:
            return super()._load(split)
        if self.zephyr_files is not None:
            binarized = datasets.load_dataset("json", data_files=self.zephyr_files[split], split="train")
        else:
            binarized = datasets.load_dataset(
                BINARIZED_ID, split=HUB_SPLITS["binarized"][split], revision=self.revision
            )
        prompts = {prompt_text(p) for p in binarized["prompt"]}
        raw = super()._load("train")
        if ROW not in raw.column_names:  # keep each raw row's line for error messages
            raw = raw.add_column(ROW, list(range(len(raw))))
        return raw.filter(  # compared as records hold them, stripped
            lambda text: isinstance(text, str) and text.strip() in prompts,
            input_columns="instruction",
            desc=f"Zephyr {split} prompts",
        )

    def _source_of(self, part: str) -> str:
        return super()._source_of("train" if self.zephyr_split else part)  # Zephyr: all from raw train

    def source_name(self, split: str) -> str:
        return super().source_name(split) + (f" (Zephyr {split} prompts)" if self.zephyr_split else "")

    def record_options(self) -> dict[str, Any]:
        return {"pair_attributes": self.pair_attributes}

    # --- rows -> records -------------------------------------------------------------------------
    @staticmethod
    def to_records(
        row: dict[str, Any], kind: str, pair_attributes: tuple[str, ...] | list[str] = (OVERALL,)
    ) -> list[Record]:
        form = row_form(row)
        if form == "raw":
            return _raw_records(row, kind, pair_attributes)
        prompt = prompt_text(row.get("prompt"))
        source_id = row.get("prompt_id") if form == "h4" else row.get("source_index")
        source_id = None if source_id is None else str(source_id)
        if kind == "prompt":
            return [PromptRecord(prompt=prompt, source_id=source_id)]
        chosen, rejected = (_reply(row.get(name), name, prompt) for name in ("chosen", "rejected"))
        if chosen == rejected:
            raise RecordError("chosen and rejected responses are identical", field="rejected")
        if kind == "preference":
            return [PreferencePair(prompt=prompt, chosen=chosen, rejected=rejected, source_id=source_id)]
        scores = row if form == "h4" else row.get("metadata")
        where = "" if form == "h4" else "metadata."
        if not isinstance(scores, Mapping):
            raise RecordError("expected a mapping {score_chosen, score_rejected}", field="metadata")
        return [
            ScoredResponse(
                prompt=prompt,
                response=response,
                scores={OVERALL: number(scores.get(f"score_{name}"), f"{where}score_{name}", OVERALL_SCALE)},
                scales={OVERALL: OVERALL_SCALE},
                source_id=source_id,
            )
            for name, response in (("chosen", chosen), ("rejected", rejected))
        ]


def _reply(value: Any, field: str, prompt: str) -> str:
    """The assistant reply of a binarized ``chosen``/``rejected``: a string, or a conversation ending in it."""
    if isinstance(value, list):
        if not value or not isinstance(value[-1], Mapping) or value[-1].get("role") != "assistant":
            raise RecordError("expected a conversation ending in an assistant message", field=field)
        users = [m.get("content") for m in value[:-1] if isinstance(m, Mapping) and m.get("role") == "user"]
        if users and not (isinstance(users[-1], str) and users[-1].strip() == prompt):  # the prompt is stripped
            raise RecordError("its user turn differs from the row's prompt", field=field)
        return required_text(value[-1].get("content"), f"{field}[-1].content")
    return required_text(value, field)


def _raw_records(
    row: dict[str, Any], kind: str, pair_attributes: tuple[str, ...] | list[str]
) -> list[Record]:
    prompt = required_text(row.get("instruction"), "instruction")
    if kind == "prompt":
        return [PromptRecord(prompt=prompt)]
    completions = row.get("completions")
    if not isinstance(completions, list) or not completions:
        raise RecordError("expected a non-empty list of completions", field="completions")
    rated: list[tuple[str, dict[str, float]]] = []
    for i, c in enumerate(completions):
        where = f"completions[{i}]"
        if not isinstance(c, Mapping):
            raise RecordError("expected a mapping {model, response, annotations, ...}", field=where)
        response = required_text(c.get("response"), f"{where}.response")
        annotations = c.get("annotations")
        if not isinstance(annotations, Mapping):
            raise RecordError(
                "expected a mapping aspect -> {Rating, Rationale}", field=f"{where}.annotations"
            )
        scores: dict[str, float] = {}
        for aspect in ASPECTS:
            note = annotations.get(aspect)
            rating = note.get("Rating") if isinstance(note, Mapping) else None
            if rating == "N/A":  # the annotator found the aspect not applicable
                continue
            if isinstance(rating, str) and rating.strip().isdigit():
                rating = int(rating)
            scores[aspect] = number(rating, f"{where}.annotations.{aspect}.Rating", ASPECT_SCALE)
        if c.get(OVERALL) is not None:
            scores[OVERALL] = number(c.get(OVERALL), f"{where}.{OVERALL}", OVERALL_SCALE)
        rated.append((response, scores))
    if kind == "scored":
        return [
            ScoredResponse(
                prompt=prompt,
                response=response,
                scores=scores,
                scales={a: OVERALL_SCALE if a == OVERALL else ASPECT_SCALE for a in scores},
            )
            for response, scores in rated
            if scores
        ]
    pairs: list[Record] = []
    for attribute in pair_attributes:
        candidates = [(s[attribute], i, response) for i, (response, s) in enumerate(rated) if attribute in s]
        if len(candidates) < 2:
            continue
        best = max(candidates, key=lambda c: (c[0], -c[1]))  # the first of the best on ties
        worst = min(candidates, key=lambda c: (c[0], c[1]))
        if best[0] == worst[0]:
            continue
        if best[2] == worst[2]:
            raise RecordError(
                f"completions {best[1]} and {worst[1]} have the same text but different {attribute}",
                field=f"completions[{worst[1]}].response",
            )
        pairs.append(PreferencePair(prompt=prompt, chosen=best[2], rejected=worst[2], attribute=attribute))
    return pairs
