"""The shared raw-field checks and the shipped-sample resolution of ``datamodules/base.py``."""

import json
import math

import pytest

from datamodules.base import SAMPLES, boolean, number, optional_text, pair_index, required_text
from datamodules.helpsteer import HelpSteerDataModule
from datamodules.pku_saferlhf import PKUSafeRLHFDataModule
from datamodules.real_toxicity import RealToxicityPromptsDataModule
from datamodules.records_file import RecordsFileDataModule
from datamodules.tldr import TLDRDataModule
from datamodules.ultrafeedback import UltraFeedbackDataModule
from zoo.records import RecordError


def _error(check, *args, **kwargs) -> RecordError:
    with pytest.raises(RecordError) as info:
        check(*args, **kwargs)
    return info.value


def test_text_checks_name_the_field():
    assert (_error(required_text, None, "a.b").field, _error(required_text, None, "a.b").reason) == ("a.b", "missing")
    assert _error(required_text, 3, "x").reason == "expected a string, got int"
    assert _error(required_text, " \n\t", "x").reason == "is empty"
    assert _error(required_text, " \n", "x", strip=False).reason == "is empty"  # blank is empty either way
    assert optional_text(None, "input") == "" and optional_text("  ", "input") == ""
    assert _error(optional_text, ["no"], "input").reason == "expected a string, got list"


def test_text_is_stripped_unless_its_edges_are_content():
    assert required_text("  Red, green and blue.\n", "response") == "Red, green and blue."
    assert required_text(" is going on", "continuation.text", strip=False) == " is going on"


def test_number_boolean_and_pair_index():
    assert number(3.0, "r", (0, 4), integer=True) == 3.0  # a JSON column with one float reads 3 as 3.0
    assert _error(number, 2.5, "r", integer=True).reason == "expected a whole number, got 2.5"
    assert _error(number, 5, "r", (0, 4)).reason == "5 outside the declared scale [0, 4]"
    for bad in (True, math.nan, "3"):
        assert _error(number, bad, "r").reason.startswith("expected a number")
    assert _error(number, None, "r").reason == "missing"
    assert boolean(False, "f") is False and _error(boolean, 0, "f").reason == "expected true or false, got 0"
    assert pair_index(1.0, "choice") == 1
    for bad in (True, 2, None):
        assert _error(pair_index, bad, "choice").field == "choice"


def _write(tmp_path, rows) -> str:
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_padded_text_is_stripped_where_the_copies_disagreed(tmp_cwd):
    """HelpSteer and UltraFeedback kept surrounding whitespace, TL;DR and the safety sets stripped it; now all
    strip, and RealToxicityPrompts alone keeps text exactly (see test_real_toxicity for its continuations)."""
    ratings = {"helpfulness": 3, "correctness": 3, "coherence": 4, "complexity": 1, "verbosity": 1}
    helpsteer = HelpSteerDataModule(data_files=_write(tmp_cwd, [{"prompt": "Hi?", "response": " Hello!\n", **ratings}]))
    assert helpsteer.records("train", "scored")[0]["response"] == "Hello!"

    conversation = [{"role": "user", "content": " Name a colour.\n"}, {"role": "assistant", "content": "Red. "}]
    h4 = {"prompt": " Name a colour.\n", "prompt_id": "p", "chosen": conversation, "score_chosen": 8.0,
          "rejected": [conversation[0], {"role": "assistant", "content": " Blue"}], "score_rejected": 2.0}
    pair = UltraFeedbackDataModule(data_files=_write(tmp_cwd, [h4])).records("train", "preference")[0]
    assert (pair["prompt"][0]["content"], pair["chosen"], pair["rejected"]) == ("Name a colour.", "Red.", "Blue")


def test_sample_resolves_per_variant(tmp_cwd):
    assert HelpSteerDataModule(data_files="sample").data_files == {
        "train": [str(SAMPLES / "helpsteer" / "card_examples.jsonl"),
                  str(SAMPLES / "helpsteer" / "train.handwritten.jsonl")]}
    assert TLDRDataModule(subset="axis", data_files="sample").data_files == {
        "train": [str(SAMPLES / "tldr" / "axis" / "validation.handwritten.jsonl")]}
    assert PKUSafeRLHFDataModule(form="hub", data_files="sample").data_files["train"][0].endswith("handwritten.jsonl")
    one_file = str(SAMPLES / "real-toxicity-prompts" / "prompts.jsonl.gz")
    assert RealToxicityPromptsDataModule(data_files=one_file).data_files == {"train": [one_file]}
    assert RealToxicityPromptsDataModule().data_files is None  # the hub
    with pytest.raises(ValueError, match="RecordsFileDataModule ships no sample"):
        RecordsFileDataModule(data_files="sample")
    with pytest.raises(FileNotFoundError, match="data.data_files.train: no file nope.jsonl"):
        HelpSteerDataModule(data_files="nope.jsonl")
