"""Records written by steerzoo (``write_records``) read back unchanged through ``RecordsFileDataModule``;
bad lines name file, line and field; SteerLM's APM relabelling (``scripts/apm_label.py``) feeds the ACM."""

import json

import pytest
import torch

from datamodules.helpsteer import HelpSteerDataModule
from datamodules.records_file import RecordsFileDataModule, write_records
from lightning_modules.sft import SFT
from lightning_modules.steerlm import SteerLMAttributeModel, SteerLMConditionedSFT
from tests.factories import trainer
from zoo.records import PreferencePair, RecordError, ScoredResponse

ATTRS = ["helpfulness", "correctness", "coherence", "complexity", "verbosity"]
TINY = {"name_or_path": "builtin:tiny"}
PLAIN = {"max_length": 96, "max_prompt_length": 48, "prompt_format": "plain", "length_policy": "truncate"}
SCORED = [
    ScoredResponse(prompt="Say hi", response="Hi!", scores={"a": 1.0, "b": 3.0}, scales={"a": (0, 4), "b": (0, 4)},
                   source_id="x:0"),
    ScoredResponse(prompt=[{"role": "user", "content": "Two"}, {"role": "assistant", "content": "turns"},
                           {"role": "user", "content": "here"}], response="ok", scores={"a": 4.0, "b": 0.0},
                   scales={"a": (0, 4), "b": (0, 4)}),
]


def _read(path, kind="scored", split="train", method_kind=None, **kw):
    dm = RecordsFileDataModule(data_files={split: [str(path)]}, kind=kind, **kw)
    method = SFT(backbone=TINY)
    method.record_kind = method_kind or kind
    dm.attach(method.example_builder())
    return dm.records(split, method_kind or kind)


def test_written_records_read_back_unchanged(tmp_cwd):
    write_records(str(tmp_cwd / "s.jsonl"), SCORED)
    back = [ScoredResponse.from_row(r) for r in _read(tmp_cwd / "s.jsonl")]
    assert back == SCORED and back[0].source_id == "x:0"
    pairs = [PreferencePair(prompt="q", chosen="good", rejected="bad", attribute="safety"),
             PreferencePair(prompt="r", chosen="yes", rejected="no")]
    write_records(str(tmp_cwd / "p.jsonl"), pairs)
    assert [PreferencePair.from_row(r) for r in _read(tmp_cwd / "p.jsonl", kind="preference")] == pairs
    # prompts of any file, deduplicated, for predict
    write_records(str(tmp_cwd / "d.jsonl"), SCORED + SCORED)
    assert len(_read(tmp_cwd / "d.jsonl", split="predict", method_kind="prompt")) == 2


@pytest.mark.parametrize("line,field,reason", [
    ("{not json", "line", "not a JSON object"),
    ('{"prompt": "p", "response": "r", "scores": {"a": 1}}', "scales", "missing"),
    ('{"prompt": "p", "response": "r", "scores": {"a": 9}, "scales": {"a": [0, 4]}}', "scores.a", "outside"),
    ('{"prompt": "p", "response": "r", "scores": {}, "scales": {}, "extra": 1}', "extra", "unknown keys"),
    ('{"prompt": "p", "response": "", "scores": {}, "scales": {}}', "response", "empty"),
])
def test_bad_lines_name_file_line_and_field(tmp_cwd, line, field, reason):
    good = json.dumps(SCORED[0].to_row())
    path = tmp_cwd / "bad.jsonl"
    path.write_text(good + "\n" + line + "\n")
    with pytest.raises(RecordError) as err:
        _read(path)
    msg = str(err.value)
    assert str(path) in msg and "row 1" in msg and field in msg and reason in msg, msg


def test_a_file_of_another_kind_is_refused(tmp_cwd):
    write_records(str(tmp_cwd / "s.jsonl"), SCORED)
    with pytest.raises(RecordError, match="holds scored records; the method needs 'preference'"):
        _read(tmp_cwd / "s.jsonl", method_kind="preference")


def test_apm_relabels_helpsteer_and_the_acm_trains_on_the_labels(tmp_cwd):
    from scripts.apm_label import label_split

    apm = SteerLMAttributeModel(attributes=ATTRS, backbone=TINY, tokenize=PLAIN)
    apm.configure_model()
    with torch.no_grad():  # a non-trivial head, so predicted classes differ between records
        apm.head.requires_grad_(False)
        for p in apm.head.parameters():
            p.normal_(0, 1.0, generator=torch.Generator().manual_seed(0))
    source = HelpSteerDataModule(data_files="sample", batch_size=2)
    labelled = label_split(apm, source, "train")
    originals = [ScoredResponse.from_row(r) for r in source.records("train", "scored")]
    assert len(labelled) == len(originals) > 3
    expected = apm.predict_attributes([r.prompt for r in originals], [r.response for r in originals])
    assert [r.scores for r in labelled] == [{a: float(c) for a, c in e.items()} for e in expected]
    assert [r.response for r in labelled] == [r.response for r in originals]
    assert len({tuple(r.scores.values()) for r in labelled}) > 1  # the labels are the APM's, not constant
    write_records(str(tmp_cwd / "apm" / "train.jsonl"), labelled)
    acm = SteerLMConditionedSFT(attributes=ATTRS, backbone=TINY, tokenize=PLAIN, optim={"lr": 1e-3})
    dm = RecordsFileDataModule(data_files={"train": [str(tmp_cwd / "apm" / "train.jsonl")]}, batch_size=2,
                               validation_fraction=0.3)
    t = trainer(tmp_cwd, 2)
    t.fit(acm, datamodule=dm)
    assert t.global_step == 2


def test_apm_label_script_end_to_end(tmp_cwd):
    """fit an APM through the CLI, relabel its data with scripts/apm_label.py, read the files back."""
    from lightning_modules.cli import main
    from scripts.apm_label import main as label_main

    config = tmp_cwd / "apm.yaml"
    config.write_text(f"""
model:
  class_path: lightning_modules.steerlm.SteerLMAttributeModel
  init_args:
    attributes: {ATTRS}
    backbone: {{name_or_path: builtin:tiny}}
    tokenize: {{max_length: 96, max_prompt_length: 48, prompt_format: plain, length_policy: truncate}}
data:
  class_path: datamodules.helpsteer.HelpSteerDataModule
  init_args: {{data_files: sample, validation_fraction: 0.3, batch_size: 2}}
trainer:
  max_steps: 2
  precision: 32-true
  logger: false
  enable_progress_bar: false
  callbacks:
    - class_path: callbacks.checkpoint_io.LastCheckpoint
      init_args: {{dirpath: {tmp_cwd}/ckpt, save_top_k: 0, save_last: true}}
""")
    main(["fit", "--config", str(config)])
    assert label_main(["--config", str(config), "--ckpt_path", str(tmp_cwd / "ckpt" / "last.ckpt"),
                       "--out", str(tmp_cwd / "labelled")]) == 0
    for split, n in (("train", 4), ("validation", 3)):
        rows = [json.loads(line) for line in (tmp_cwd / "labelled" / f"{split}.jsonl").read_text().splitlines()]
        assert len(rows) == n, split
        assert all(set(r["scores"]) == set(ATTRS) and all(v in range(5) for v in r["scores"].values()) for r in rows)
    with pytest.raises(FileNotFoundError, match="nope.ckpt"):
        label_main(["--config", str(config), "--ckpt_path", str(tmp_cwd / "nope.ckpt"), "--out", "x"])
