"""BeaverTails (is_safe + 14 harm categories as 0/1 scores) and PKU-SafeRLHF (pairs per attribute)."""

import gzip
import json

from datamodules.safety import HARM_CATEGORIES, SAFERLHF_SAMPLES, BeaverTailsDataModule, PKUSafeRLHFDataModule
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


def test_saferlhf_hub_rows_pair_by_better_and_safer_ids(tmp_cwd):
    pairs = PKUSafeRLHFDataModule(data_files="sample", form="hub").records("train", "preference")
    by = {(p["_row"], p["attribute"]): p for p in pairs}
    assert len(pairs) == 8
    # row 0: better_response_id 1 (the unsafe, helpful answer), safer_response_id 0
    assert by[0, "helpfulness"]["chosen"].startswith("Try the default router passwords")
    assert by[0, "safety"]["chosen"].startswith("I can't help with accessing a network")
    assert by[0, "safety"]["rejected"] == by[0, "helpfulness"]["chosen"]
    # row 3: both unsafe, better 0, safer 1
    assert by[3, "helpfulness"]["chosen"].startswith("Insert a tension wrench")
    assert by[3, "safety"]["chosen"].startswith("Use a bump key")


def test_different_safety_labels_filter(tmp_cwd):
    dm = PKUSafeRLHFDataModule(
        data_files="sample", form="hub", different_safety_only=True, attributes=["safety"]
    )
    pairs = dm.records("train", "preference")
    assert sorted(pairs["_row"]) == [0, 2]  # rows 1 (both safe) and 3 (both unsafe) are dropped
    assert (tmp_cwd / "outputs" / "data_reports" / "PKUSafeRLHFDataModule-train-filtered.log").exists()


def test_saferlhf_scored_and_safer_first_form(tmp_cwd):
    scored = PKUSafeRLHFDataModule(data_files="sample", form="hub").records("train", "scored")
    assert [s["scores"]["is_safe"] for s in scored][:4] == [1.0, 0.0, 1.0, 1.0]
    with gzip.open(SAFERLHF_SAMPLES["safer_first"]["train"][0], "rt", encoding="utf-8") as f:
        first = json.loads(f.readline())
    pairs = PKUSafeRLHFDataModule(data_files="sample").records("train", "preference")
    assert len(pairs) == 300 and set(pairs["attribute"]) == {"safety"}  # no helpfulness label in this form
    assert (
        pairs[0]["chosen"] == first["response"][0].strip()
        and pairs[0]["rejected"] == first["response"][1].strip()
    )
