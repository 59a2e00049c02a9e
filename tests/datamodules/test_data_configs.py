"""Every dataset config under configs/data/ runs offline on its shipped sample with a method: `validate`
with DPO (preference data) or CMPO (scored data), and `predict` with SFT for prompt-only data.
(configs/data/hh_rlhf.yaml points at the hub; the HH sample runs in tests/test_cli.py.)"""

import json
from pathlib import Path

import pytest

from lightning_modules.cli import main

ROOT = Path(__file__).resolve().parents[2]
TINY = [
    "--model.init_args.backbone.name_or_path", "builtin:tiny",
    "--model.init_args.tokenize.max_length", "256",
    "--model.init_args.tokenize.max_prompt_length", "160",
    "--model.init_args.tokenize.length_policy", "truncate",
    "--model.init_args.sampling.max_new_tokens", "4",
    "--data.init_args.max_samples", '{"train": 8, "validation": 8, "predict": 2}',
    "--data.init_args.batch_size", "2",
    "--trainer.precision", "32-true",
    "--trainer.enable_progress_bar", "false",
    "--trainer.logger", "false",
]
CMPO = ["--model", "lightning_modules.CMPO"]
CASES = {
    "tldr": ("validate", "dpo", []),
    "ultrafeedback": ("validate", "dpo", []),
    "pku_saferlhf": ("validate", "dpo", []),
    "oasst1": ("validate", "dpo", []),
    "helpsteer": ("validate", "cmpo", ["--model.init_args.attributes", "[helpfulness, verbosity]"]),
    "beavertails": ("predict", "sft", []),
    "real_toxicity_prompts": ("predict", "sft", []),
    "personalized_soups": ("predict", "sft", []),
    "apm_labelled": ("validate", "cmpo", ["--model.init_args.attributes", "[helpfulness, verbosity]"]),
}


def _write_apm_labelled(root: Path) -> None:
    """What scripts/apm_label.py writes, where configs/data/apm_labelled.yaml looks (relative to the run)."""
    from datamodules.records_file import write_records
    from zoo.records import ScoredResponse

    scales = {"helpfulness": (0, 4), "verbosity": (0, 4)}
    for split in ("train", "validation"):
        records = [ScoredResponse(prompt=f"Question {i} of {split}?", response=f"Answer {j} " * (j + 1),
                                  scores={"helpfulness": float((i + j) % 5), "verbosity": float(j * 2)},
                                  scales=scales) for i in range(4) for j in range(2)]
        write_records(str(root / "runs" / "paper" / "apm_labelled" / f"{split}.jsonl"), records)


def test_every_data_config_has_a_case():
    configs = {p.stem for p in (ROOT / "configs" / "data").glob("*.yaml")} - {"hh_rlhf"}
    assert configs == set(CASES)


@pytest.mark.parametrize("name", sorted(CASES))
def test_data_config_runs_with_a_method(tmp_cwd, name):
    subcommand, method, extra = CASES[name]
    if name == "apm_labelled":
        _write_apm_labelled(tmp_cwd)
    args = [subcommand, "--config", str(ROOT / "configs" / f"{method}.yaml"),
            "--config", str(ROOT / "configs" / "data" / f"{name}.yaml"), *TINY, *extra,
            "--trainer.default_root_dir", str(tmp_cwd)]
    if method == "cmpo":
        args += ["--trainer.callbacks", "[]",  # no steering sweep for a validate run
                 "--model.init_args.tradeoffs_only", "false"]  # the demo's pair filter: a few sample rows trade off nothing
    if subcommand == "predict":
        out = tmp_cwd / "preds.jsonl"
        args += ["--trainer.callbacks", "[{class_path: callbacks.artifacts.JsonlPredictionWriter, "
                 f"init_args: {{output_path: {out}}}}}]"]
    cli = main(args)
    if subcommand == "validate":
        metrics = cli.trainer.callback_metrics
        assert "val/loss" in metrics and float(metrics["val/loss"]) > 0
    else:
        rows = [json.loads(line) for line in out.read_text().splitlines()]
        assert len(rows) == 2 and all("completion" in r for r in rows)
