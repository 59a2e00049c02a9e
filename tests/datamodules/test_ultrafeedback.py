"""UltraFeedback: raw completions -> aspect/overall scores and pairs; binarized (H4 and trl-lib forms) -> pairs."""

from datamodules.ultrafeedback import H4_SAMPLE, README_EXAMPLE, UltraFeedbackDataModule
from zoo.records import ScoredResponse


def test_raw_completions_become_scores(tmp_cwd):
    scored = UltraFeedbackDataModule(source="raw", data_files="sample").records("train", "scored")
    assert len(scored) == 8  # 2 rows x 4 completions
    best = ScoredResponse.from_row(scored[0])
    assert best.prompt[0]["content"] == "Name the three primary colours of light."
    assert best.scores == {
        "instruction_following": 5,
        "honesty": 5,
        "truthfulness": 5,
        "helpfulness": 5,
        "overall_score": 9,
    }
    assert best.scales["honesty"] == (1.0, 5.0) and best.scales["overall_score"] == (1.0, 10.0)
    assert best.normalized()["overall_score"] == 8 / 9
    unsure = ScoredResponse.from_row(scored[3])
    assert "helpfulness" not in unsure.scores  # rated "N/A"


def test_readme_example_ratings(tmp_cwd):
    scored = UltraFeedbackDataModule(source="raw", data_files={"train": [str(README_EXAMPLE)]}).records(
        "train", "scored"
    )
    assert len(scored) == 1
    assert scored[0]["scores"] == {
        "instruction_following": 2.0,
        "honesty": 3.0,
        "truthfulness": 3.0,
        "helpfulness": 3.0,
    }
    assert scored[0]["response"].startswith("Cairo is a city that has something for everyone.")


def test_raw_pairs_per_attribute(tmp_cwd):
    dm = UltraFeedbackDataModule(
        source="raw", data_files="sample", pair_attributes=["overall_score", "helpfulness"]
    )
    pairs = {(p["_row"], p["attribute"]): p for p in dm.records("train", "preference")}
    assert pairs[0, "overall_score"]["chosen"] == "Red, green and blue."
    assert (
        pairs[0, "overall_score"]["rejected"]
        == "I think it might be cyan, magenta and yellow, but I am not sure."
    )
    assert pairs[0, "helpfulness"]["rejected"] == "Red, yellow and blue."  # "N/A" completion left out
    assert pairs[1, "overall_score"]["chosen"] == "Quick."  # 8.0 ties with completion 1: the first wins
    assert pairs[1, "helpfulness"]["chosen"] == "Swift, or quick."


def test_binarized_forms(tmp_cwd):
    dm = UltraFeedbackDataModule(data_files="sample", on_error="skip")
    pairs = dm.records("train", "preference")
    assert len(pairs) == 319  # row 306 has identical chosen and rejected: skipped and logged
    assert (
        "row 306, field 'rejected'"
        in (tmp_cwd / "outputs/data_reports/UltraFeedbackDataModule-train-skipped.log").read_text()
    )
    assert pairs[0]["prompt"] == [{"role": "user", "content": "how to cook t-bone in the oven"}]
    assert (
        pairs[0]["chosen"].startswith("To cook a delicious T-bone steak") and pairs[0]["source_id"] == "27808"
    )
    scored = dm.records("train", "scored")
    assert [s["scores"] for s in scored][:2] == [{"overall_score": 9.0}, {"overall_score": 8.0}]

    h4 = UltraFeedbackDataModule(data_files={"train": [str(H4_SAMPLE)]})
    pair = h4.records("train", "preference")[0]
    assert (pair["chosen"], pair["rejected"], pair["source_id"]) == (
        "Red, green and blue.",
        "Red, yellow and blue.",
        "h4-hand-1",
    )


def test_zephyr_split_filters_raw_rows(tmp_cwd):
    dm = UltraFeedbackDataModule(
        source="raw",
        data_files="sample",
        zephyr_split=True,
        zephyr_files={"train": [str(H4_SAMPLE)]},
    )
    assert [p["prompt"][0]["content"] for p in dm.records("train", "prompt")] == [
        "Name the three primary colours of light.",
        "Give a synonym for 'rapid'.",
    ]
