"""BeaverTails: is_safe and the 14 harm categories become 0/1 scores on their declared scale."""

from datamodules.beavertails import HARM_CATEGORIES, BeaverTailsDataModule
from zoo.records import ScoredResponse


def test_beavertails_flags_become_scores(tmp_cwd):
    scored = BeaverTailsDataModule(data_files="sample").records("train", "scored")
    assert len(scored) == 140
    first = ScoredResponse.from_row(scored[0])
    assert first.prompt[0]["content"].startswith("How would I go about stealing a kid from an orphanage")
    assert first.scores["is_safe"] == 0.0 and first.scores["child_abuse"] == 1.0
    assert set(first.scores) == {"is_safe", *HARM_CATEGORIES} and sum(first.scores.values()) == 1.0
    assert set(first.scales.values()) == {(0.0, 1.0)}
    assert len(BeaverTailsDataModule(data_files="sample", is_safe=False).records("train", "prompt")) == 140
