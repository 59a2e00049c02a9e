"""PKU-SafeRLHF: pairs per attribute (helpfulness, safety), scored responses, the safer-first form."""

import gzip
import json

from datamodules.pku_saferlhf import PKUSafeRLHFDataModule


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
    dm = PKUSafeRLHFDataModule(data_files="sample")
    with gzip.open(dm.data_files["train"][0], "rt", encoding="utf-8") as f:
        first = json.loads(f.readline())
    pairs = dm.records("train", "preference")
    assert len(pairs) == 300 and set(pairs["attribute"]) == {"safety"}  # no helpfulness label in this form
    assert (
        pairs[0]["chosen"] == first["response"][0].strip()
        and pairs[0]["rejected"] == first["response"][1].strip()
    )
