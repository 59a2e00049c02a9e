"""Malformed rows stop conversion with an error naming the file, the row and the field; ``skip`` logs them.

Each case copies a few good rows of a shipped sample to a temporary JSONL file, breaks one row (for OASST,
one message line) and converts the file through the DataModule, as a user's local file would be.
"""

import gzip
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from datamodules.beavertails import BeaverTailsDataModule
from datamodules.helpsteer import HelpSteerDataModule
from datamodules.oasst import OASST1DataModule
from datamodules.personalized_soups import PersonalizedSoupsDataModule
from datamodules.pku_saferlhf import PKUSafeRLHFDataModule
from datamodules.real_toxicity import RealToxicityPromptsDataModule
from datamodules.tldr import TLDRDataModule
from datamodules.ultrafeedback import UltraFeedbackDataModule
from zoo.records import RecordError

SAMPLES = Path(__file__).resolve().parents[2] / "datamodules" / "samples"


def _rows(relative: str, n: int = 4) -> list[dict[str, Any]]:
    path = SAMPLES / relative
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for _, line in zip(range(n), f)]


def put(*keys: Any, value: Any) -> Callable[[dict], None]:
    """A mutation setting ``row[k1][k2]... = value``."""

    def mutate(row: dict) -> None:
        for k in keys[:-1]:
            row = row[k]
        row[keys[-1]] = value

    return mutate


def same_as(target: tuple, source: tuple) -> Callable[[dict], None]:
    """A mutation copying one nested value of the row onto another."""

    def mutate(row: dict) -> None:
        value = row
        for k in source:
            value = value[k]
        put(*target, value=value)(row)

    return mutate


def drop(*keys: Any) -> Callable[[dict], None]:
    def mutate(row: dict) -> None:
        for k in keys[:-1]:
            row = row[k]
        del row[keys[-1]]

    return mutate


TLDR_CMP = "tldr/comparisons/validation.jsonl.gz"
OASST = "oasst1/labelled-tree.handwritten.jsonl"
PKU_HUB = "pku-saferlhf/hub-schema.handwritten.jsonl"
UF_RAW = "ultrafeedback/raw.handwritten.jsonl"
UF_H4 = "ultrafeedback_binarized/h4-form.handwritten.jsonl"
RTP = "real-toxicity-prompts/prompts.jsonl.gz"
HELPSTEER = "helpsteer/train.handwritten.jsonl"
BEAVERTAILS = "beavertails/30k_train.jsonl.gz"
PKU_SAFER_FIRST = "pku-saferlhf/test.safer-first-pairs.first300.jsonl.gz"
UF_TRL = "ultrafeedback_binarized/train_prefs.trl-lib-form.first320.jsonl.gz"
SOUPS = "personalized_soups/alpaca_gpt4.handwritten.jsonl"

# id: (DataModule, options, record kind, sample, row to break, mutation, field the error must name)
# fmt: off
CASES: dict[str, tuple] = {
    "tldr-choice-not-0-or-1": (TLDRDataModule, {}, "preference", TLDR_CMP, 2, put("choice", value=2), "choice"),
    "tldr-empty-summary": (
        TLDRDataModule, {}, "preference", TLDR_CMP, 1, put("summaries", 1, "text", value="  "), "summaries[1].text"),
    "tldr-chosen-equals-rejected": (
        TLDRDataModule, {}, "preference", TLDR_CMP, 3,
        same_as(("summaries", 1, "text"), ("summaries", 0, "text")), "summaries[1].text"),
    "tldr-missing-title": (TLDRDataModule, {}, "prompt", TLDR_CMP, 2, put("info", "title", value=None), "info.title"),
    "tldr-axis-rating-off-scale": (
        TLDRDataModule, {"subset": "axis"}, "scored", "tldr/axis/validation.handwritten.jsonl", 1,
        put("summary", "axes", "overall", value=9), "summary.axes.overall"),
    "tldr-sft-label-only-prefix": (
        TLDRDataModule, {"subset": "sft"}, "demonstration", "tldr/sft/train.handwritten.jsonl", 1,
        put("label", value="TL;DR: "), "label"),
    "helpsteer-rating-off-scale": (HelpSteerDataModule, {}, "scored", HELPSTEER, 2, put("helpfulness", value=5), "helpfulness"),
    "helpsteer-fractional-rating": (HelpSteerDataModule, {}, "scored", HELPSTEER, 3, put("verbosity", value=2.5), "verbosity"),
    "helpsteer-missing-rating": (HelpSteerDataModule, {}, "scored", HELPSTEER, 1, put("coherence", value=None), "coherence"),
    "helpsteer-empty-response": (HelpSteerDataModule, {}, "scored", HELPSTEER, 0, put("response", value=""), "response"),
    "helpsteer-unknown-turn-marker": (
        HelpSteerDataModule, {}, "prompt", HELPSTEER, 2,
        put("prompt", value="Hi\n<extra_id_1>Robot\nbeep\n<extra_id_1>User\nagain"), "prompt"),
    "oasst-missing-parent": (OASST1DataModule, {}, "prompt", OASST, 4, put("parent_id", value="not-in-tree"), "parent_id"),
    "oasst-second-root": (OASST1DataModule, {}, "prompt", OASST, 6, put("parent_id", value=None), "parent_id"),
    "oasst-assistant-replies-to-assistant": (
        OASST1DataModule, {}, "demonstration", OASST, 5, put("parent_id", value="hand-a1"), "role"),
    "oasst-unknown-role": (OASST1DataModule, {}, "prompt", OASST, 2, put("role", value="bot"), "role"),
    "oasst-empty-text": (OASST1DataModule, {}, "demonstration", OASST, 2, put("text", value=" "), "text"),
    "oasst-negative-rank": (OASST1DataModule, {}, "preference", OASST, 3, put("rank", value=-1), "rank"),
    "oasst-duplicate-id": (OASST1DataModule, {}, "prompt", OASST, 3, put("message_id", value="hand-a1"), "message_id"),
    "oasst-label-off-scale": (
        OASST1DataModule, {}, "scored", OASST, 1, put("labels", "value", 0, value=1.5), "labels.quality"),
    "oasst-ranked-siblings-identical": (  # line 2 (rank 2) gets the text of line 1 (rank 0)
        OASST1DataModule, {}, "preference", OASST, 2, put("text", value=_rows(OASST, 2)[1]["text"]), "text"),
    "beavertails-missing-is-safe": (
        BeaverTailsDataModule, {}, "scored", BEAVERTAILS, 1, put("is_safe", value=None), "is_safe"),
    "beavertails-missing-category": (
        BeaverTailsDataModule, {}, "scored", BEAVERTAILS, 2, drop("category", "self_harm"), "category.self_harm"),
    "saferlhf-safer-id-not-0-or-1": (
        PKUSafeRLHFDataModule, {}, "preference", PKU_HUB, 1, put("safer_response_id", value=2), "safer_response_id"),
    "saferlhf-identical-responses": (
        PKUSafeRLHFDataModule, {}, "preference", PKU_HUB, 2, same_as(("response_1",), ("response_0",)), "response_1"),
    "saferlhf-missing-safety-flag": (
        PKUSafeRLHFDataModule, {}, "scored", PKU_HUB, 3, put("is_response_1_safe", value=None), "is_response_1_safe"),
    "saferlhf-safer-first-one-response": (
        PKUSafeRLHFDataModule, {}, "preference", PKU_SAFER_FIRST, 1,
        lambda row: row.update(response=row["response"][:1]), "response"),
    "ultrafeedback-rating-off-scale": (
        UltraFeedbackDataModule, {"source": "raw"}, "scored", UF_RAW, 1,
        put("completions", 1, "annotations", "honesty", "Rating", value="7"), "completions[1].annotations.honesty.Rating"),
    "ultrafeedback-overall-off-scale": (
        UltraFeedbackDataModule, {"source": "raw"}, "preference", UF_RAW, 0,
        put("completions", 0, "overall_score", value=11.0), "completions[0].overall_score"),
    "ultrafeedback-empty-completion": (
        UltraFeedbackDataModule, {"source": "raw"}, "scored", UF_RAW, 1,
        put("completions", 2, "response", value=""), "completions[2].response"),
    "ultrafeedback-trl-chosen-equals-rejected": (
        UltraFeedbackDataModule, {}, "preference", UF_TRL, 2, same_as(("rejected",), ("chosen",)), "rejected"),
    "ultrafeedback-h4-score-off-scale": (
        UltraFeedbackDataModule, {}, "scored", UF_H4, 2, put("score_chosen", value=0.5), "score_chosen"),
    "ultrafeedback-h4-chosen-ends-with-user": (
        UltraFeedbackDataModule, {}, "preference", UF_H4, 1, lambda row: row.update(chosen=row["chosen"][:1]), "chosen"),
    "rtp-prompt-score-off-scale": (
        RealToxicityPromptsDataModule, {}, "prompt", RTP, 2, put("prompt", "toxicity", value=1.7), "prompt.toxicity"),
    "rtp-missing-challenging": (
        RealToxicityPromptsDataModule, {}, "prompt", RTP, 1, put("challenging", value=None), "challenging"),
    "rtp-empty-continuation": (
        RealToxicityPromptsDataModule, {}, "scored", RTP, 3, put("continuation", "text", value=""), "continuation.text"),
    "soups-missing-instruction": (
        PersonalizedSoupsDataModule, {}, "prompt", SOUPS, 1, put("instruction", value=None), "instruction"),
    "soups-empty-instruction": (
        PersonalizedSoupsDataModule, {}, "prompt", SOUPS, 2, put("instruction", value="   "), "instruction"),
}
# fmt: on


def _broken_file(tmp_path: Path, sample: str, row: int, mutate: Callable[[dict], None]) -> Path:
    rows = _rows(sample, n=8 if sample == OASST else 4)
    mutate(rows[row])
    path = tmp_path / "broken.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_error_names_file_row_and_field(case, tmp_cwd):
    module, options, kind, sample, row, mutate, field = CASES[case]
    path = _broken_file(tmp_cwd, sample, row, mutate)
    dm = module(data_files={"train": [str(path)]}, **options)
    with pytest.raises(RecordError) as info:
        dm.records("train", kind)
    error = info.value
    assert (error.source, error.row, error.field) == (str(path), row, field), str(error)
    assert str(error).startswith(f"file {path}, row {row}, field '{field}': ")


def test_skip_logs_the_row_and_keeps_the_rest(tmp_cwd):
    path = _broken_file(tmp_cwd, "helpsteer/train.handwritten.jsonl", 2, put("helpfulness", value=5))
    dm = HelpSteerDataModule(data_files={"train": [str(path)]}, on_error="skip")
    scored = dm.records("train", "scored")
    assert sorted(scored["_row"]) == [0, 1, 3]
    log = (tmp_cwd / "outputs" / "data_reports" / "HelpSteerDataModule-train-skipped.log").read_text()
    assert f"file {path}, row 2, field 'helpfulness'" in log


def test_a_held_out_split_names_the_original_row(tmp_cwd):
    rows = _rows(RTP, n=40)
    rows[25]["prompt"]["toxicity"] = -0.5
    path = tmp_cwd / "broken.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    dm = RealToxicityPromptsDataModule(
        data_files={"train": [str(path)]}, split_fractions=[0.5, 0.25, 0.25], on_error="skip"
    )
    errors = []
    for split in ("train", "validation", "test"):
        dm.records(split, "prompt")
        log = tmp_cwd / "outputs" / "data_reports" / f"RealToxicityPromptsDataModule-{split}-skipped.log"
        errors += log.read_text().splitlines() if log.exists() else []
    assert len(errors) == 1 and "row 25, field 'prompt.toxicity'" in errors[0]
