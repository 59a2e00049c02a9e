"""``configs/rsf.yaml`` (shortened, tiny model) on 2 gloo processes samples the same pool as on one: each
process generates its share of a round's prompts, seeds follow the prompt, and the samples are gathered in
prompt order, so round 0 (the initial policy) is identical sample for sample. Round 1 is sampled after round 0's
training, which is not the same computation on 2 processes (DDP averages the two halves' token-mean losses, one
process takes the token mean of the whole batch): it has the same prompts, sample ids and policy step."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.multiprocess, pytest.mark.slow]
TINY = ["--model.init_args.backbone.name_or_path", "builtin:tiny", "--model.init_args.tokenize.max_length", "384",
        "--model.init_args.tokenize.max_prompt_length", "256", "--trainer.precision", "32-true",
        "--trainer.enable_progress_bar", "false", "--trainer.accelerator", "cpu", "--trainer.num_sanity_val_steps", "0",
        "--model.init_args.prompts_per_round", "8", "--model.init_args.samples_per_prompt", "2",
        "--model.init_args.round_sampling", "{max_new_tokens: 6, temperature: 1.0}",
        "--model.init_args.eval_sampling", "{max_new_tokens: 6, temperature: 0.0}",
        "--model.init_args.optim.lr", "1e-3",
        "--data.init_args.max_samples", '{"train": 32, "validation": 4, "predict": 2}', "--trainer.max_epochs", "2"]


def pool(root: Path, *extra: str) -> list[dict]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    cmd = [sys.executable, str(ROOT / "train.py"), "fit", "--config", str(ROOT / "configs" / "rsf.yaml"), *TINY,
           "--trainer.default_root_dir", str(root), *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=root.parent, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return torch.load(root / "checkpoints" / "last.ckpt", weights_only=True)["online"]["pool"]["rounds"]


def test_two_processes_sample_the_same_pool_as_one(tmp_path):
    one = pool(tmp_path / "one", "--trainer.devices", "1", "--data.init_args.batch_size", "4")
    two = pool(tmp_path / "two", "--trainer.devices", "2", "--trainer.strategy", "ddp",
               "--data.init_args.batch_size", "2")
    assert [r["index"] for r in one] == [0, 1] and len(one[0]["samples"]) == 16
    assert one[0]["samples"] == two[0]["samples"]  # round 0: the initial policy, whatever the process count
    assert [(s["prompt"], s["source_id"]) for s in one[1]["samples"]] == \
        [(s["prompt"], s["source_id"]) for s in two[1]["samples"]]
    assert one[1]["policy_step"] == two[1]["policy_step"] == 2  # round 0: 8 kept samples, global batch 4
