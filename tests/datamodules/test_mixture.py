"""MixtureDataModule: HelpSteer + OASST records in one dataset, each record keeping its own attributes."""

import pytest

from datamodules.helpsteer import HelpSteerDataModule
from datamodules.mixture import MixtureDataModule
from datamodules.oasst import LABELLED_SAMPLE, OASST1DataModule
from lightning_modules.cmpo_pairs import prompt_pairs
from zoo.records import ScoredResponse

HELPSTEER = ("helpfulness", "correctness", "coherence", "complexity", "verbosity")
OASST = ("quality", "humor", "toxicity", "creativity")


def _mixture(**oasst_kwargs) -> MixtureDataModule:
    oasst_kwargs.setdefault("label_names", list(OASST))
    return MixtureDataModule(
        sources=[
            HelpSteerDataModule(data_files="sample"),
            OASST1DataModule(data_files={"train": [str(LABELLED_SAMPLE)]}, **oasst_kwargs),
        ],
        batch_size=2,
    )


def test_scored_records_of_both_sources_keep_their_own_attributes(tmp_cwd):
    mixture = _mixture()
    assert mixture.record_kinds == ("scored", "demonstration", "prompt")  # the kinds both sources provide
    recs = [ScoredResponse.from_row(r) for r in mixture.records("train", "scored")]
    assert len(recs) == 7 + 4  # HelpSteer sample rows, then the labelled OASST replies
    assert all(set(r.scores) == set(HELPSTEER) for r in recs[:7])
    assert all(set(r.scores) == set(OASST) and set(r.scales) == set(OASST) for r in recs[7:])  # no null keys
    assert recs[0].scores["helpfulness"] == 3 and recs[0].scales["helpfulness"] == (0.0, 4.0)
    by_id = {r.source_id: r for r in recs[7:]}
    assert by_id["hand-a2"].scores == pytest.approx({"quality": 0.25, "humor": 0.125, "toxicity": 0.0, "creativity": 0.0})


def test_cmpo_pairs_only_use_attributes_labelled_on_both_sides(tmp_cwd):
    recs = [ScoredResponse.from_row(r) for r in _mixture().records("train", "scored")]
    houseplants = [r for r in recs if r.prompt[0]["content"].startswith("Give me two tips")]
    flowers = [r for r in recs if r.prompt[0]["content"].startswith("How do I keep cut flowers")]
    attributes = list(HELPSTEER + OASST)
    pairs = prompt_pairs(houseplants, attributes, "one_hot")
    assert {p.condition for p in pairs} == {("helpfulness",), ("correctness",), ("coherence",)}
    pairs = prompt_pairs(flowers, attributes, "one_hot")  # hand-a1 vs a2 vs a3 on OASST labels only
    assert {p.condition for p in pairs} == {("quality",), ("humor",), ("creativity",)}
    # a HelpSteer record and an OASST record share no attribute: no pair between them
    assert prompt_pairs([recs[0], recs[7]], attributes, "power_set") == []


def test_examples_build_through_a_method(tmp_cwd):
    from lightning_modules.steerlm import SteerLMConditionedSFT

    acm = SteerLMConditionedSFT(attributes=list(HELPSTEER + OASST), backbone={"name_or_path": "builtin:tiny"},
                                tokenize={"max_length": 1024, "prompt_format": "plain"})
    mixture = _mixture().attach(acm.example_builder())
    train = mixture.build_split("train")  # the samples have no validation split: train only
    assert len(train) == 11
    assert train["condition"][0] == "helpfulness:3,correctness:4,coherence:4,complexity:2,verbosity:2"
    assert train["condition"][7] == "quality:4,humor:0,toxicity:0,creativity:1"  # 0.917*4 -> 4, 0.25*4 -> 1
    mixture.datasets["train"] = train
    batch = next(iter(mixture.train_dataloader()))
    assert batch["input_ids"].shape[0] == 2


def test_conflicting_scales_and_kinds_are_refused(tmp_cwd):
    with pytest.raises(ValueError, match="'helpfulness' is on scale \\[0.0, 4.0\\] in HelpSteerDataModule but "
                                         "\\[0.0, 1.0\\] in OASST1DataModule"):
        _mixture(label_names=None).records("train", "scored")  # OASST's own 0-1 helpfulness label
    with pytest.raises(ValueError, match="needs 'preference'"):
        _mixture().records("train", "preference")
    with pytest.raises(ValueError, match="at least one source"):
        MixtureDataModule(sources=[])
