"""HelpSteer: five 0-4 ratings become scores on their declared scale; HelpSteer2 multi-turn prompts split."""

import pytest

from datamodules.helpsteer import HelpSteerDataModule, parse_prompt
from zoo.records import RecordError, ScoredResponse


def test_card_example_keeps_its_ratings(tmp_cwd):
    scored = HelpSteerDataModule(data_files="sample").records("train", "scored")
    assert len(scored) == 7  # 2 card rows + 5 hand-written
    card = ScoredResponse.from_row(scored[0])  # the nvidia/HelpSteer dataset card's example
    assert card.prompt[0]["content"].startswith("What are the three most important things to consider")
    assert card.scores == {
        "helpfulness": 3,
        "correctness": 4,
        "coherence": 4,
        "complexity": 2,
        "verbosity": 2,
    }
    assert card.scales == {a: (0.0, 4.0) for a in card.scores}
    assert card.normalized(0, 100)["helpfulness"] == 75.0  # DPA's 0-100 range


def test_attributes_keep_a_subset(tmp_cwd):
    scored = HelpSteerDataModule(data_files="sample", attributes=["verbosity"]).records("train", "scored")
    assert ScoredResponse.from_row(scored[1]).scores == {"verbosity": 1}


def test_prompts_are_deduplicated(tmp_cwd):
    assert (
        len(HelpSteerDataModule(data_files="sample").records("train", "prompt")) == 6
    )  # 7 rows, one shared prompt


def test_multi_turn_prompt_becomes_messages(tmp_cwd):
    scored = HelpSteerDataModule(data_files="sample").records("train", "scored")
    multi = ScoredResponse.from_row(scored[5])  # hand-written HelpSteer2-style row
    assert multi.prompt == (
        {"role": "user", "content": "Suggest a name for a grey cat."},
        {"role": "assistant", "content": "How about Smokey?"},
        {"role": "user", "content": "Something less common, please."},
    )
    assert parse_prompt("c#") == [{"role": "user", "content": "c#"}]  # the HelpSteer2 card's one-turn prompt
    with pytest.raises(RecordError, match="last turn is the assistant's"):
        parse_prompt("hi\n<extra_id_1>Assistant\nhello")
