"""Sharded training on 2 CPU processes (gloo): FSDP2 (ModelParallelStrategy + fully_shard) and DDP give
the same global loss trace as one process with the same global batch, resume from their (sharded)
checkpoints with the trace unchanged, and the consolidated FSDP checkpoint loads with plain transformers
giving the trained module's logits."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).with_name("dpo_trace.py")
pytestmark = [pytest.mark.multiprocess, pytest.mark.slow]


def run(out: Path, *args: str) -> list[list[float]]:
    proc = subprocess.run([sys.executable, str(SCRIPT), str(out), *args], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((out / "trace.json").read_text())


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    out = tmp_path_factory.mktemp("single")
    return out, run(out, "--batch", "8")


@pytest.mark.parametrize("strategy", ["fsdp", "ddp"])
def test_two_processes_match_one_and_resume(tmp_path, single, strategy):
    _, reference = single
    straight = run(tmp_path / "straight", "--strategy", strategy, "--devices", "2", "--batch", "4")
    torch.testing.assert_close(torch.tensor(straight), torch.tensor(reference), rtol=0, atol=1e-5)
    assert len({round(loss, 4) for _, loss in reference}) > 3  # the trace moves

    interrupted = tmp_path / "interrupted"
    run(interrupted, "--strategy", strategy, "--devices", "2", "--batch", "4", "--stop_at", "3")
    if strategy == "fsdp":
        assert (interrupted / "ckpt" / "last.ckpt").is_dir()  # sharded: one file per rank
        assert len(list((interrupted / "ckpt" / "last.ckpt").glob("*.distcp"))) == 2
    resumed = run(interrupted, "--strategy", strategy, "--devices", "2", "--batch", "4", "--resume")
    torch.testing.assert_close(torch.tensor(resumed), torch.tensor(reference), rtol=0, atol=1e-5)

    if strategy == "fsdp":  # consolidate -> save_pretrained -> plain transformers, same logits
        from transformers import AutoModelForCausalLM

        from callbacks.artifacts import export_pretrained
        from lightning_modules import DPO
        from tests.factories import tiny_kwargs

        hf = export_pretrained(DPO(**tiny_kwargs()), interrupted / "ckpt" / "last.ckpt", tmp_path / "hf")
        plain = AutoModelForCausalLM.from_pretrained(hf)
        probe = torch.arange(40).reshape(2, 20) % 250
        with torch.no_grad():
            logits = plain(input_ids=probe, attention_mask=torch.ones_like(probe)).logits
        torch.testing.assert_close(logits, torch.load(interrupted / "final_logits.pt"), rtol=1e-5, atol=1e-5)
