"""RSF works (slow: ``configs/rsf.yaml`` unchanged, the embedded SmolLM2-135M-Instruct, about 12 min on 2 cores):
over its two rounds of best-of-4 VADER-sentiment fine-tuning, the held-out mean sentiment of greedy replies to 32
prompts the run never trains on rises beyond the 95% bootstrap interval of the paired per-prompt change. The
numbers and the command are in docs/methods/rsf.md, "Measured"."""

from __future__ import annotations

from pathlib import Path

import pytest

from lightning_modules.cli import main as cli_main

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_two_rsf_rounds_raise_the_held_out_score_beyond_noise(tmp_path):
    cli = cli_main(["fit", "--config", str(ROOT / "configs" / "rsf.yaml"), "--trainer.default_root_dir",
                    str(tmp_path / "run"), "--trainer.enable_progress_bar", "false"])
    module = cli.model
    assert len(module.eval_scores) == 3  # before training (sanity pass) and after each of the two rounds
    change = module.held_out_change()
    assert change is not None and change["prompts"] == 32 and change["first_step"] == 0, change
    assert change["low"] > 0, change  # the paired change's 95% interval lies above 0
