"""``validate`` / ``test`` on a trained checkpoint, and a new validation split after a resume, score the policy
against the *initial* weights, never against the trained policy itself (which gave loss = log 2, accuracy 0,
margin 0: the untrained values). Checked against an independent computation: the textbook full-logits
log-probs of the checkpoint's policy and of a freshly built initial model, and the DPO formula by hand."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from lightning_modules.cli import main
from tests.factories import TINY_CLI
from zoo.collate import PadCollator
from zoo.logprobs import full_logits_reference
from zoo.tiny import tiny_model

ROOT = Path(__file__).resolve().parents[2]


def run(method: str, subcommand: str, root: Path, *extra: str):
    args = ["--config", str(ROOT / "configs" / f"{method}.yaml"), *TINY_CLI,
            "--data.init_args.max_samples", '{"train": 12, "validation": 6, "test": 6, "predict": 2}',
            "--trainer.max_epochs", "1", "--trainer.default_root_dir", str(root),
            "--model.init_args.optim.lr", "3e-3", "--trainer.val_check_interval", "null", *extra]
    if subcommand == "build":
        return main(args, run=False)
    return main([subcommand, *args])


def sequence_logps(model, rows) -> torch.Tensor:
    """Summed completion log-probs [C*B] of each example's completions (completion-major), one unpacked row each."""
    batch = PadCollator(0)(rows)
    with torch.no_grad():
        return full_logits_reference(model, batch["input_ids"], batch["attention_mask"], batch["labels"])[0].double()


def hand_dpo(policy, split_rows, beta: float, eps: float) -> dict[str, float]:
    """Mean loss, reward accuracy and margin over a split, the reference being the initial tiny model."""
    reference = tiny_model().eval()
    pol, ref = sequence_logps(policy, split_rows), sequence_logps(reference, split_rows)
    b = len(split_rows)
    h = (pol[:b] - ref[:b]) - (pol[b:] - ref[b:])
    losses = [(1 - eps) * math.log1p(math.exp(-beta * x)) + (eps * math.log1p(math.exp(beta * x)) if eps else 0.0)
              for x in h.tolist()]  # −log σ(βh) = log(1 + e^{−βh})
    return {"loss": sum(losses) / b, "reward_accuracy": float((h > 0).double().mean()),
            "reward_margin": float(beta * h.mean())}


def split_rows(cli, split: str) -> list[dict]:
    ds = cli.datamodule.datasets[split]
    return [{"prompt_ids": r["prompt_ids"], "completion_ids": r["completion_ids"]} for r in ds]


@pytest.mark.parametrize("subcommand,split,stage", [("validate", "validation", "val"), ("test", "test", "test")])
def test_evaluating_a_trained_checkpoint_uses_the_initial_weights_as_reference(tmp_cwd, subcommand, split, stage):
    run("dpo", "fit", tmp_cwd / "run")
    ckpt = str(tmp_cwd / "run" / "checkpoints" / "last.ckpt")
    cli = run("dpo", "build", tmp_cwd / "eval")
    metrics = getattr(cli.trainer, subcommand)(cli.model, datamodule=cli.datamodule, ckpt_path=ckpt, verbose=False)[0]
    want = hand_dpo(cli.model.model.eval(), split_rows(cli, split), beta=0.1, eps=0.0)
    # fp32 sums of ~1000 byte-token log-probs (chunked, prefix-shared) vs the textbook path: ~1e-5 apart
    assert metrics[f"{stage}/loss"] == pytest.approx(want["loss"], abs=1e-4)
    assert metrics[f"{stage}/reward_accuracy"] == pytest.approx(want["reward_accuracy"], abs=1e-6)
    assert metrics[f"{stage}/reward_margin"] == pytest.approx(want["reward_margin"], abs=1e-4)
    assert abs(metrics[f"{stage}/loss"] - math.log(2)) > 1e-3  # not the untrained value: the policy moved


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_cmpo_test_split_reference_is_the_initial_single_head_model(tmp_cwd, lora):
    """Fully trained: the initial weights are reloaded; under LoRA: the adapter-disabled base."""
    lora_cfg = "{r: 4, alpha: 8, dropout: 0.0, target_modules: [q_proj, v_proj]}" if lora else "null"
    (tmp_cwd / "lora.yaml").write_text(f"model:\n  init_args:\n    backbone:\n      lora: {lora_cfg}\n")
    # the trunk trains, reference cached (the heads-only demo takes it live from the same frozen trunk pass)
    extra = ["--data.init_args.batch_size", "2", "--model.init_args.train_trunk", "true",
             "--model.init_args.tradeoffs_only", "false", "--model.init_args.reference", "cached", "--config", str(tmp_cwd / "lora.yaml")]
    run("cmpo", "fit", tmp_cwd / "run", *extra)
    cli = run("cmpo", "build", tmp_cwd / "eval", *extra)
    cli.trainer.test(cli.model, datamodule=cli.datamodule, ckpt_path=str(tmp_cwd / "run" / "checkpoints" / "last.ckpt"),
                     verbose=False)
    rows = split_rows(cli, "test")
    want = sequence_logps(tiny_model().eval(), rows)  # the single base head of the initial weights
    got = cli.model.ref_cache.logps["test"]
    torch.testing.assert_close(got.T.reshape(-1).double(), want, rtol=1e-6, atol=1e-4)  # sums of ~1000: fp32 ulps


def test_a_new_validation_split_after_resume_uses_the_initial_weights(tmp_cwd, capsys):
    root = tmp_cwd / "run"
    run("dpo", "fit", root, "--trainer.max_steps", "2")
    cli = main(["fit", "--config", str(ROOT / "configs" / "dpo.yaml"), *TINY_CLI,
                "--data.init_args.max_samples", '{"train": 12, "validation": 5, "predict": 2}',  # other data
                "--trainer.max_epochs", "1", "--trainer.max_steps", "3", "--trainer.default_root_dir", str(root),
                "--model.init_args.optim.lr", "3e-3", "--trainer.val_check_interval", "null", "--ckpt_path", "last"])
    assert "reference = the initial weights, reloaded" in capsys.readouterr().out
    rows = split_rows(cli, "validation")
    want = sequence_logps(tiny_model().eval(), rows)
    torch.testing.assert_close(cli.model.ref_cache.logps["validation"].T.reshape(-1).double(), want, rtol=1e-6, atol=1e-4)
