"""The rollout engine on 2 CPU processes (gloo): each rank generates its share of the prompts and the
gathered result, in prompt order, equals the one-process result (same tokens; log-probs to float rounding)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).with_name("rollout_ranks.py")
pytestmark = [pytest.mark.multiprocess, pytest.mark.slow]


def run(out: Path, world: int) -> list[dict]:
    proc = subprocess.run([sys.executable, str(SCRIPT), str(out), "--world", str(world)], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text())


def test_two_ranks_gather_the_one_process_result(tmp_path):
    one, two = run(tmp_path / "one.json", 1), run(tmp_path / "two.json", 2)
    assert [(r["prompt"], r["sample"]) for r in two] == [(i, j) for i in range(7) for j in range(3)]
    assert [(r["tokens"], r["finish"]) for r in two] == [(r["tokens"], r["finish"]) for r in one]
    for a, b in zip(one, two):
        torch.testing.assert_close(torch.tensor(b["logprobs"]), torch.tensor(a["logprobs"]), rtol=0, atol=1e-5)
    assert len({tuple(r["tokens"]) for r in one}) == len(one)  # samples differ: the seeds reach each sample
