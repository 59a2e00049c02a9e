"""HH-RLHF on the shared split handling: hub subsets concatenated, hub splits mapped, files held out.

(Malformed HH rows and the shipped sample's bad lines are tested in tests/test_bad_input.py.)"""

import json

import datasets
import pytest

from datamodules.hh_rlhf import HUB_ID, HHRLHFDataModule
from zoo.records import RecordError


def _row(question: str) -> dict[str, str]:
    return {"chosen": f"\n\nHuman: {question}\n\nAssistant: Yes.", "rejected": f"\n\nHuman: {question}\n\nAssistant: No."}


@pytest.fixture
def hub(monkeypatch):
    """``datasets.load_dataset`` answering for the hub: two rows per (data_dir, split), calls recorded."""
    calls = []

    def load_dataset(path, data_dir=None, split=None, revision=None, **kwargs):
        calls.append((path, data_dir, split, revision))
        return datasets.Dataset.from_list([_row(f"{data_dir} {split} {i}?") for i in range(2)])

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    return calls


def test_hub_subsets_are_concatenated(tmp_cwd, hub):
    dm = HHRLHFDataModule(data_dir=["helpful-base", "harmless-base"], revision="r1")
    prompts = dm.records("validation", "prompt")
    assert hub == [(HUB_ID, "helpful-base", "test", "r1"), (HUB_ID, "harmless-base", "test", "r1")]
    assert [p["prompt"][0]["content"] for p in prompts] == [
        "helpful-base test 0?", "helpful-base test 1?", "harmless-base test 0?", "harmless-base test 1?"]
    assert dm.source_name("validation") == "Anthropic/hh-rlhf[helpful-base+harmless-base]/test"
    assert len(dm.records("train", "preference")) == 4 and hub[-1][2] == "train"


def test_a_bad_hub_row_names_the_hub_split(tmp_cwd, monkeypatch):
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: datasets.Dataset.from_list(
        [_row("ok?"), {"chosen": "\n\nHuman: x", "rejected": "\n\nHuman: x"}]))
    with pytest.raises(RecordError) as info:
        HHRLHFDataModule().records("train", "preference")
    assert (info.value.source, info.value.row, info.value.field) == ("Anthropic/hh-rlhf[helpful-base]/train", 1, "chosen")


def test_local_files_hold_out_validation(tmp_cwd):
    path = tmp_cwd / "rows.jsonl"
    path.write_text("".join(json.dumps(_row(f"q{i}?")) + "\n" for i in range(10)))
    dm = HHRLHFDataModule(data_files=str(path), validation_fraction=0.2)
    train, validation = dm.records("train", "prompt"), dm.records("validation", "prompt")
    assert (len(train), len(validation)) == (8, 2) and not set(train["_row"]) & set(validation["_row"])
    assert dm.source_name("validation") == f"{path} (held-out validation part)"
    with pytest.raises(ValueError, match="HH-RLHF: no 'validation' split"):
        HHRLHFDataModule(data_files=str(path)).records("validation", "prompt")
