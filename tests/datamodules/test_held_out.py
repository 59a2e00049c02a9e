"""Held-out prompts are never trained on: where a source has one split, the validation part (which also serves
predict, the prompts the steering sweep and the judge generate for) shares no prompt with train."""

import pytest

from datamodules import HHRLHFDataModule


def hh_prompt(transcript: str) -> str:
    """The conversation before the final reply (HH rows are whole transcripts)."""
    return transcript[: transcript.rindex("\n\nAssistant:")]


@pytest.mark.parametrize("fraction", [0.05, 0.2])
def test_held_out_hh_prompts_are_not_in_train(fraction):
    dm = HHRLHFDataModule(data_files="sample", validation_fraction=fraction, on_error="skip")
    train = {hh_prompt(t) for t in dm.load_split("train")["chosen"]}
    for split in ("validation", "predict"):
        held = [hh_prompt(t) for t in dm.load_split(split)["chosen"]]
        assert held and not [p for p in held if p in train], split
    assert len(train) > 0
