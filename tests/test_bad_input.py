"""Bad input gets one clear error naming the file, row and field or key — never a silent drop, never a
traceback from deep inside torch."""

import gzip
import json

import pytest
import torch

from datamodules.hh_rlhf import HHRLHFDataModule
from lightning_modules import DPO, SFT
from tests.factories import hh_sample, tiny_kwargs, trainer
from zoo.backbone import BackboneConfig, load_backbone
from zoo.records import RecordError

GOOD = {"chosen": "\n\nHuman: Hi?\n\nAssistant: Hello!", "rejected": "\n\nHuman: Hi?\n\nAssistant: Go away."}


def _records(tmp_path, rows, on_error="raise"):
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    dm = HHRLHFDataModule(data_files={"train": [str(path)]}, on_error=on_error, log_dir=str(tmp_path / "reports"))
    return dm.records("train", "preference"), path


@pytest.mark.parametrize(
    "bad, field, reason",
    [
        ({"chosen": "\n\nHuman: Hi?", "rejected": "\n\nHuman: Hi?\n\nAssistant: x"}, "chosen", "no '.*Assistant:' turn"),
        ({"chosen": "\n\nHuman: Hi?\n\nAssistant: ok", "rejected": "\n\nHuman: Hi?\n\nAssistant:  "}, "rejected", "empty"),
        ({"chosen": "\n\nHuman: Hi?\n\nAssistant: same", "rejected": "\n\nHuman: Hi?\n\nAssistant: same"}, "rejected",
         "identical"),
        ({"chosen": 42, "rejected": GOOD["rejected"]}, "chosen", "expected a transcript string, got int"),
        ({"chosen": None, "rejected": GOOD["rejected"]}, "chosen", "missing"),
        ({"chosen": "Hi?\n\nAssistant: ok", "rejected": "Hi?\n\nAssistant: no"}, "chosen", "must start with"),
    ],
    ids=["no-assistant-turn", "empty-completion", "chosen-equals-rejected", "non-string", "null", "no-human-turn"],
)
def test_malformed_hh_row_names_file_row_and_field(tmp_cwd, bad, field, reason):
    with pytest.raises(RecordError, match=reason) as info:
        _records(tmp_cwd, [GOOD, GOOD, bad])
    err = info.value
    assert err.row == 2 and err.field == field and err.source.endswith("rows.jsonl")
    assert "rows.jsonl" in str(err) and "row 2" in str(err) and f"field '{field}'" in str(err)


def test_skip_reports_every_skipped_row(tmp_cwd, capsys):
    bad = {"chosen": GOOD["chosen"], "rejected": GOOD["chosen"]}
    recs, _ = _records(tmp_cwd, [GOOD, bad, GOOD, bad], on_error="skip")
    assert len(recs) == 2
    log = (tmp_cwd / "reports" / "HHRLHFDataModule-train-skipped.log").read_text().splitlines()
    assert [line.split(",")[1].strip() for line in log] == ["row 1", "row 3"]
    assert "skipped 2 rows" in capsys.readouterr().out


def test_length_drops_are_counted(tmp_cwd):
    module = DPO(**tiny_kwargs(tokenize={"max_length": 300, "length_policy": "drop"}))
    dm = hh_sample(train=16).attach(module.example_builder())
    dm.setup("fit")
    report = dm.reports["train"]
    assert report["dropped"] > 0 and report["examples"] == 16
    assert len(dm.datasets["train"]) == 16 - report["dropped"]


def test_missing_model_path_is_named():
    with pytest.raises(FileNotFoundError, match="no model directory at './no/such/model'"):
        load_backbone(BackboneConfig(name_or_path="./no/such/model"))


def test_unknown_builtin_is_named():
    with pytest.raises(ValueError, match="unknown builtin model 'builtin:gpt5'"):
        load_backbone(BackboneConfig(name_or_path="builtin:gpt5"))


def test_unknown_backbone_key_is_named():
    with pytest.raises(ValueError, match=r"unknown BackboneConfig keys \['nme_or_path'\]"):
        SFT(backbone={"nme_or_path": "builtin:tiny"})


def test_missing_data_file_is_named(tmp_cwd):
    with pytest.raises(FileNotFoundError, match="data.data_files.train: no file nope.jsonl"):
        HHRLHFDataModule(data_files={"train": ["nope.jsonl"]}).records("train", "preference")


def _checkpoint(tmp_path, module):
    from lightning.pytorch.callbacks import ModelCheckpoint

    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    trainer(tmp_path, max_steps=1, callbacks=[ckpt]).fit(module, datamodule=hh_sample(train=4))
    return tmp_path / "ckpt" / "last.ckpt"


def test_checkpoint_from_another_model_is_refused(tmp_cwd):
    path = _checkpoint(tmp_cwd, SFT(**tiny_kwargs()))
    other = SFT(**tiny_kwargs(backbone={"name_or_path": "builtin:tiny", "extra": {"hidden_size": 32}}))
    with pytest.raises(ValueError, match="is from another model") as info:
        trainer(tmp_cwd / "b", max_steps=2).fit(other, datamodule=hh_sample(train=4), ckpt_path=str(path))
    assert str(path) in str(info.value)


def test_corrupt_checkpoint_is_named(tmp_cwd):
    path = _checkpoint(tmp_cwd, SFT(**tiny_kwargs()))
    path.write_bytes(path.read_bytes()[: 1000])  # truncated, as by a crash mid-write without atomic saves
    with pytest.raises(ValueError, match="corrupt, truncated") as info:
        trainer(tmp_cwd / "b", max_steps=2).fit(SFT(**tiny_kwargs()), datamodule=hh_sample(train=4), ckpt_path=str(path))
    assert str(path) in str(info.value)


def test_atomic_save_keeps_previous_checkpoint_on_failure(tmp_path, monkeypatch):
    from callbacks.checkpoint_io import AtomicCheckpointIO

    io = AtomicCheckpointIO()
    target = tmp_path / "last.ckpt"
    io.save_checkpoint({"state_dict": {"w": torch.ones(2)}}, target)

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(OSError):
        io.save_checkpoint({"state_dict": {"w": torch.zeros(2)}}, target)
    monkeypatch.undo()
    assert torch.equal(io.load_checkpoint(target)["state_dict"]["w"], torch.ones(2))


def test_shipped_sample_bad_rows_are_named_by_file_line(tmp_cwd):
    """The real HH sample has 6 malformed rows (4 empty replies, 2 identical pairs); held-out validation
    rows keep their line number in the source file, so the two reports together name exactly those lines."""
    dm = hh_sample(train=4)
    for split in ("train", "validation"):
        dm.records(split, "preference")
    reports = tmp_cwd / "outputs" / "data_reports"
    named = set()
    for log in reports.glob("HHRLHFDataModule-*-skipped.log"):
        named |= {int(line.split("row ")[1].split(",")[0]) for line in log.read_text().splitlines()}
    assert named == {120, 721, 740, 1214, 2063, 2168}
    lines = [json.loads(x) for x in gzip.open(dm.data_files["train"][0], "rt")]
    assert lines[721]["chosen"] == lines[721]["rejected"]
