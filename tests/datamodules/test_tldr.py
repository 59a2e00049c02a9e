"""TL;DR: the shipped comparisons become pairs by ``choice``; axis ratings, SFT and CarperAI rows convert."""

import gzip
import json

from datamodules.tldr import TLDRDataModule
from zoo.records import PreferencePair, ScoredResponse

COMPARISONS = TLDRDataModule(data_files="sample").data_files["train"][0]


def _raw_rows() -> list[dict]:
    with gzip.open(COMPARISONS, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def test_choice_picks_the_chosen_summary(tmp_cwd):
    raw = _raw_rows()
    pairs = TLDRDataModule(data_files="sample").records("train", "preference")
    assert len(pairs) == len(raw) == 674  # every comparison is a Reddit post with two summaries

    first = PreferencePair.from_row(pairs[0])  # row 0: choice 0
    assert raw[0]["choice"] == 0 and first.source_id == "t3_js7re"
    assert first.chosen == raw[0]["summaries"][0]["text"].strip()
    assert first.rejected == raw[0]["summaries"][1]["text"].strip()
    assert first.chosen.startswith("my girlfriends grandma got mad at us")
    prompt = first.prompt[0]["content"]
    assert prompt.startswith(
        "SUBREDDIT: r/AskReddit\nTITLE: My girlfriends grandma caught us making out on her couch.\nPOST: I was at"
    )
    assert prompt.endswith("what i should do or say.\nTL;DR:")

    i = next(i for i, r in enumerate(raw) if r["choice"] == 1)
    second = PreferencePair.from_row(pairs[i])
    assert second.chosen == raw[i]["summaries"][1]["text"].strip()
    assert second.rejected == raw[i]["summaries"][0]["text"].strip()


def test_reference_summaries_and_prompts_are_deduplicated(tmp_cwd):
    dm = TLDRDataModule(data_files="sample")
    demos = dm.records("train", "demonstration")
    assert len(demos) == 110  # 339 'ref' summaries of 110 posts, one distinct TL;DR each
    assert len(dm.records("train", "prompt")) == 110
    assert (tmp_cwd / "outputs" / "data_reports" / "TLDRDataModule-train-deduplicated.log").exists()
    assert len(TLDRDataModule(data_files="sample", dedup=False).records("train", "prompt")) == 674


def test_validation_is_held_out_of_train(tmp_cwd):
    dm = TLDRDataModule(data_files="sample", validation_fraction=0.1)
    train, validation = dm.records("train", "preference"), dm.records("validation", "preference")
    assert len(train) + len(validation) == 674
    assert not set(train["_row"]) & set(validation["_row"])


def test_axis_ratings_keep_their_7_point_scale(tmp_cwd):
    scored = TLDRDataModule(subset="axis", data_files="sample").records("train", "scored")
    first = ScoredResponse.from_row(scored[0])
    assert first.scores == {"overall": 6.0, "accuracy": 7.0, "coverage": 6.0, "coherence": 7.0}
    assert first.scales["overall"] == (1.0, 7.0)
    assert first.normalized()["overall"] == 5 / 6
    unrated = ScoredResponse.from_row(scored[2])
    assert "coverage" not in unrated.scores  # null on the hub: not rated


def test_sft_and_carper_rows_share_the_prompt_form(tmp_cwd):
    demo = TLDRDataModule(subset="sft", data_files="sample").records("train", "demonstration")[0]
    assert demo["prompt"][0]["content"].endswith("\nTL;DR:")
    assert demo["response"].startswith("My bread rises in summer")  # leading space stripped
    pair = TLDRDataModule(subset="carper_comparisons", data_files="sample").records("train", "preference")[0]
    assert pair["prompt"][0]["content"].endswith(
        "15C) and I leave the dough on the counter for the usual hour.\nTL;DR:"
    )
    assert (
        pair["chosen"] == "Same recipe works in summer but gives dense bread in my cold winter kitchen."
    )  # 'TL;DR: ' cut
