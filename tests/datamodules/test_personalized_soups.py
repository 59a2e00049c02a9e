"""Personalized Soups: the preference prompts and evaluation prompts as printed; prompts x combinations."""

import pytest

from datamodules.personalized_soups import (
    COMBINATIONS,
    EVALUATION_PROMPTS,
    PREFERENCE_PROMPTS_AS_PRINTED,
    PersonalizedSoupsDataModule,
    parse_preferences,
    preference_prompt,
)


def test_preference_prompts_as_printed():
    assert PREFERENCE_PROMPTS_AS_PRINTED["P1A"] == (
        "Generate/Choose a response that can be easily understood by an elementary school student."
    )
    assert (
        PREFERENCE_PROMPTS_AS_PRINTED["P3B"]
        == "Generate/Choose a response (that answers) in an unfriendly manner."
    )
    assert (
        preference_prompt("P2B")
        == "Generate a response that is very informative, without missing any background information."
    )
    assert preference_prompt("P3B") == "Generate a response in an unfriendly manner."
    assert preference_prompt("P3B", "Choose") == "Choose a response that answers in an unfriendly manner."
    assert preference_prompt("P3A", "Choose") == (
        "Choose a response that is friendly, witty, funny, and humorous, like a close friend."
    )


def test_evaluation_prompts_as_printed():
    assert len(EVALUATION_PROMPTS) == 49 and 48 not in EVALUATION_PROMPTS  # Table 5 skips ID 48
    assert EVALUATION_PROMPTS[1] == "Why can't bank use cash as capital as a buffer for potential losses?"
    assert EVALUATION_PROMPTS[2] == "Can you tell my a story about nuclear physics?"  # typo as printed
    assert EVALUATION_PROMPTS[41] == "Is a banana a fruit or a herb"
    assert (
        EVALUATION_PROMPTS[50]
        == "List the layers of the TCP/IP model and for each layer identify one protocol."
    )
    assert (
        EVALUATION_PROMPTS[17]
        == 'Do you know something about the book "the art of thinking clearly" wrote by Rolf Dobelli?'
    )
    assert "pay $13 for my product" in EVALUATION_PROMPTS[44]


def test_combination_codes():
    assert parse_preferences("ABA") == ("P1A", "P2B", "P3A")
    assert parse_preferences("BAD") == ("P1B", "P2A", "P3D")
    assert parse_preferences("P1A+P3B") == ("P1A", "P3B")
    with pytest.raises(ValueError, match="two preferences of one dimension"):
        parse_preferences("P1A+P1B")
    with pytest.raises(ValueError, match="unknown"):
        PersonalizedSoupsDataModule(preferences=["ABE"])


def test_prompts_times_combinations(tmp_cwd):
    dm = PersonalizedSoupsDataModule(data_files="sample")
    train = dm.records("train", "prompt")
    assert len(train) == 3 * len(COMBINATIONS)
    assert train[2]["source_id"] == "P1A+P2B+P3A"  # row 0, combination ABA
    assert train[2]["prompt"][0]["content"] == (
        "Explain why leaves change colour in autumn. "
        "Generate a response that can be easily understood by an elementary school student. "
        "Generate a response that is very informative, without missing any background information. "
        "Generate a response that is friendly, witty, funny, and humorous, like a close friend."
    )
    with_input = train[8]["prompt"][0]["content"]  # row 1 has an input, joined by a space
    assert with_input.startswith(
        "Summarise the following paragraph in one sentence. The city council met on Tuesday"
    )

    evaluation = dm.records("validation", "prompt")
    assert len(evaluation) == 49 * 8
    assert evaluation[-1]["source_id"] == "koala-50:P1B+P2B+P3B"


def test_single_preferences_for_soup_policies(tmp_cwd):
    dm = PersonalizedSoupsDataModule(
        data_files="sample", preferences=["P1A", "P3C"], evaluation_prompts=False, validation_fraction=0.34
    )
    train, validation = dm.records("train", "prompt"), dm.records("validation", "prompt")
    assert len(train) + len(validation) == 3 * 2
    assert train[0]["prompt"][0]["content"].endswith(
        "Generate a response that can be easily understood by an elementary school student."
    )
