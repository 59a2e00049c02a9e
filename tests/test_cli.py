"""End to end through ``train.py`` on the tiny model: fit (DPO, SFT, reward model), predict writes JSONL,
``--ckpt_path last`` resumes, and re-running in the same folder does not crash."""

import json
from pathlib import Path

import pytest
import torch

from tests.factories import TINY_CLI
from lightning_modules.cli import main

ROOT = Path(__file__).resolve().parents[1]
TINY = [
    *TINY_CLI,
    "--model.init_args.sampling.max_new_tokens", "8",
    "--data.init_args.max_samples", '{"train": 8, "validation": 4, "predict": 3}',
    "--trainer.val_check_interval", "2",
    "--trainer.max_epochs", "10",
]


def cli(method: str, subcommand: str, tmp: Path, *extra: str):
    return main([subcommand, "--config", str(ROOT / "configs" / f"{method}.yaml"), *TINY,
                 "--trainer.default_root_dir", str(tmp), *extra])


@pytest.mark.parametrize("method", ["dpo", "sft", "reward_model"])
def test_fit_runs_and_saves_artifacts(tmp_cwd, method):
    cli(method, "fit", tmp_cwd, "--trainer.max_steps", "2")
    hf = sorted(Path("runs").glob(f"{method}/csv/version_*/hf"))
    assert hf, "save_pretrained directory missing"
    assert (hf[-1] / "config.json").exists() and (hf[-1] / "tokenizer_config.json").exists()
    assert sorted(Path("runs").glob(f"{method}/csv/version_*/metrics.csv"))
    if method == "reward_model":
        assert (hf[-1] / "value_head.safetensors").exists()


def test_predict_writes_jsonl_and_resume_from_last(tmp_cwd):
    cli("dpo", "fit", tmp_cwd, "--trainer.max_steps", "2")
    ckpts = list(Path(tmp_cwd).rglob("last.ckpt"))
    assert len(ckpts) == 1
    state = torch.load(ckpts[0], weights_only=True)  # plain contents: loads with weights_only
    assert state["global_step"] == 2 and "ref_logps" in state
    # resume the same run (same folder: saving the config again must not crash)
    cli("dpo", "fit", tmp_cwd, "--trainer.max_steps", "3", "--ckpt_path", "last")
    assert torch.load(ckpts[0], weights_only=True)["global_step"] == 3
    out = tmp_cwd / "preds.jsonl"
    main(["predict", "--config", str(ROOT / "configs" / "dpo.yaml"), *TINY, "--trainer.default_root_dir", str(tmp_cwd),
          "--trainer.callbacks+=callbacks.artifacts.JsonlPredictionWriter",
          f"--trainer.callbacks.output_path={out}", "--ckpt_path", str(ckpts[0])])
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 3 and {"prompt", "completion", "truncated", "idx"} <= set(rows[0])


def test_cmpo_fit_resume_and_predict_with_two_weight_vectors(tmp_cwd):
    """configs/cmpo.yaml end to end on the tiny model: fit (stopping mid-run), resume, then predict with
    two different steering vectors; the saved directory reloads its trained heads."""
    no_lora = tmp_cwd / "no_lora.yaml"  # the tiny model trains fully; a YAML null removes the LoRA block
    no_lora.write_text("model:\n  init_args:\n    backbone:\n      lora: null\n")
    cmpo = ["--config", str(no_lora), "--data.init_args.max_samples",
            '{"train": 24, "validation": 4, "predict": 3}', "--data.init_args.batch_size", "2"]
    cli("cmpo", "fit", tmp_cwd, *cmpo, "--trainer.max_steps", "2")
    cli("cmpo", "fit", tmp_cwd, *cmpo, "--trainer.max_steps", "4", "--ckpt_path", "last")
    last = tmp_cwd / "runs" / "cmpo" / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True)["global_step"] == 4
    assert list((tmp_cwd / "runs" / "cmpo").rglob("steering/sweep.png"))
    outputs = {}
    for name, steer in (("v", '{"verbosity": 1.0}'), ("s", '{"sentiment": 1.0}')):
        out = tmp_cwd / f"preds_{name}.jsonl"
        main(["predict", "--config", str(ROOT / "configs" / "cmpo.yaml"), *TINY, *cmpo,
              "--trainer.default_root_dir", str(tmp_cwd), "--model.init_args.steer", steer,
              "--trainer.callbacks", f"[{{class_path: callbacks.artifacts.JsonlPredictionWriter, init_args: "
              f"{{output_path: {out}}}}}]", "--ckpt_path", str(last)])
        outputs[name] = [json.loads(line) for line in out.read_text().splitlines()]
    assert outputs["v"][0]["steer"] == {"verbosity": 1.0, "sentiment": 0.0}
    assert outputs["s"][0]["steer"] == {"verbosity": 0.0, "sentiment": 1.0}
    hf = sorted((tmp_cwd / "runs" / "cmpo").rglob("hf/plural_heads.safetensors"))
    assert hf and (hf[-1].parent / "cmpo.json").exists()


BF16_ARGS = ["--config", str(ROOT / "configs" / "dpo.yaml"), "--model.init_args.backbone.name_or_path", "builtin:tiny",
             "--trainer.accelerator", "cpu"]


def test_bf16_falls_back_to_fp32_on_a_cpu_without_bf16(monkeypatch, capsys):
    import zoo.precision as precision

    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset({"avx2", "fma"}))
    cli = main([*BF16_ARGS], run=False)
    assert cli.trainer.precision == "32-true"
    assert "no bf16 instructions" in capsys.readouterr().out
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset({"avx2", "avx512_bf16"}))
    cli = main([*BF16_ARGS], run=False)
    assert cli.trainer.precision == "bf16-mixed"
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset({"avx2"}))
    cli = main([*BF16_ARGS,
                "--bf16_fallback", "false"], run=False)
    assert cli.trainer.precision == "bf16-mixed"  # the user's explicit choice wins
