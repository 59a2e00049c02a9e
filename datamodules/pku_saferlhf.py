"""PKU-Alignment PKU-SafeRLHF (``PKU-Alignment/PKU-SafeRLHF``): response pairs -> pairs per attribute.

Hub splits train / test (validation/test/predict -> test); ``data_dir`` picks a hub subset such as
``data/Alpaca-7B``. Hub row: ``prompt``, ``response_0``, ``response_1``, ``is_response_0_safe``,
``is_response_1_safe``, ``better_response_id`` (0/1: more helpful), ``safer_response_id`` (0/1); the current
release adds per-response sources, harm categories and ``response_{i}_severity_level`` (0-3), of which only
the severity level is read. Yields:

- ``preference``: one pair per attribute in ``attributes``: ``helpfulness`` (``better_response_id``
  chosen) and ``safety`` (``safer_response_id`` chosen), with ``PreferencePair.attribute`` set;
- ``scored``: each response with ``is_safe`` (0/1, scale (0, 1)) and, where present, ``severity_level``
  (scale (0, 3));
- ``prompt`` (deduplicated).

``different_safety_only`` is the filter CMPO applies: keep only rows whose two responses have different
safety labels (other rows are counted as filtered).

A second, documented local schema is accepted, recognised by its columns: **safer-first pairs**
``{prompt, response: [safer, less safe]}`` (the shipped real sample), which holds only pairs whose two
responses differ in safety. It yields ``safety`` pairs and prompts only; it has no helpfulness label and no
per-response flags, so ``helpfulness`` pairs are skipped and ``scored`` records are refused.

Shipped samples (``data_files="sample"``): the first 300 real safer-first test pairs (``form="safer_first"``)
or four hand-written rows in the hub schema (``form="hub"``). See ``datamodules/samples/PROVENANCE.md``.
Content warning: the dataset holds harmful text by design.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import datasets

from datamodules.base import HubOrFilesDataModule, boolean, number, pair_index, required_text
from zoo.records import PreferencePair, PromptRecord, Record, RecordError, ScoredResponse

HUB_ID = "PKU-Alignment/PKU-SafeRLHF"
HUB_SPLITS = {"train": "train", "validation": "test", "test": "test", "predict": "test"}
PAIR_ATTRIBUTES = {"helpfulness": "better_response_id", "safety": "safer_response_id"}
FLAG = (0.0, 1.0)
SEVERITY = (0.0, 3.0)


class PKUSafeRLHFDataModule(HubOrFilesDataModule):
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
    label = HUB_ID
    sample_files: ClassVar[dict[str, Any]] = {
        "safer_first": {"train": ["pku-saferlhf/test.safer-first-pairs.first300.jsonl.gz"]},
        "hub": {"train": ["pku-saferlhf/hub-schema.handwritten.jsonl"]},
    }

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
        if form not in self.sample_files:
            raise ValueError(f"data.form must be one of {tuple(self.sample_files)}, got {form!r}")
        self.data_files = self.local_files(data_files, variant=form)
        self.attributes, self.different_safety_only = attributes, different_safety_only
        self.data_dir, self.revision = data_dir, revision

    # --- raw rows ---------------------------------------------------------------------------------
    def hub_splits(self) -> dict[str, str]:
        return HUB_SPLITS

    def load_hub(self, hub_split: str) -> datasets.Dataset:
        return datasets.load_dataset(HUB_ID, data_dir=self.data_dir, split=hub_split, revision=self.revision)

    def hub_name(self, hub_split: str) -> str:
        return f"{HUB_ID}/{hub_split}"

    def record_options(self) -> dict[str, Any]:
        return {"attributes": self.attributes, "different_safety_only": self.different_safety_only}

    # --- rows -> records -------------------------------------------------------------------------
    @staticmethod
    def to_records(
        row: dict[str, Any],
        kind: str,
        attributes: tuple[str, ...] | list[str] = tuple(PAIR_ATTRIBUTES),
        different_safety_only: bool = False,
    ) -> list[Record]:
        prompt = required_text(row.get("prompt"), "prompt")
        if "response_0" not in row and "response" in row:
            return _safer_first_records(row, kind, prompt, attributes)
        responses = [required_text(row.get(f"response_{i}"), f"response_{i}") for i in (0, 1)]
        safe = [boolean(row.get(f"is_response_{i}_safe"), f"is_response_{i}_safe") for i in (0, 1)]
        if different_safety_only and safe[0] == safe[1]:
            return []
        if kind == "prompt":
            return [PromptRecord(prompt=prompt)]
        if kind == "scored":
            out: list[Record] = []
            for i in (0, 1):
                scores, scales = {"is_safe": float(safe[i])}, {"is_safe": FLAG}
                severity = f"response_{i}_severity_level"  # in the current release only
                if row.get(severity) is not None:
                    scores["severity_level"] = number(row[severity], severity, SEVERITY, integer=True)
                    scales["severity_level"] = SEVERITY
                out.append(ScoredResponse(prompt=prompt, response=responses[i], scores=scores, scales=scales))
            return out
        if responses[0] == responses[1]:
            raise RecordError("the two responses are identical", field="response_1")
        pairs: list[Record] = []
        for attribute in attributes:
            best = pair_index(row.get(PAIR_ATTRIBUTES[attribute]), PAIR_ATTRIBUTES[attribute])
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
    safer, less_safe = required_text(pair[0], "response[0]"), required_text(pair[1], "response[1]")
    if safer == less_safe:
        raise RecordError("the two responses are identical", field="response[1]")
    if "safety" not in attributes:
        return []
    return [PreferencePair(prompt=prompt, chosen=safer, rejected=less_safe, attribute="safety")]
