"""ALT steers (slow: the embedded SmolLM2-135M-Instruct, ``configs/alt.yaml`` unchanged, about 15 min on 2 cores):
with VADER sentiment as the offline reward, two ALT iterations raise the held-out mean reward of samples
conditioned on the best feedback ("Excellent") over the iteration-0 samples (the initial policy, no feedback)
beyond the 95% bootstrap interval of the paired per-prompt difference, and the worst feedback ("Horrible") gives
a lower reward than the best, also beyond its interval. ``scripts/alt_behaviour.py`` makes the same report and
the figure in docs/methods/alt.md."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.behaviour  # not yet run to the end on 2 cores (docs/methods/alt.md): CI leaves it out until it is
def test_alt_best_feedback_beats_iteration_0_and_worst_feedback(tmp_path):
    spec = importlib.util.spec_from_file_location("alt_behaviour", ROOT / "scripts" / "alt_behaviour.py")
    behaviour = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(behaviour)
    report = behaviour.run(["--config", str(ROOT / "configs" / "alt.yaml"), "--trainer.default_root_dir",
                            str(tmp_path / "run"), "--trainer.enable_progress_bar", "false"], tmp_path / "out")
    assert report["iterations"] == 2 and report["prompts"] >= 30
    up, apart = report["best_minus_iteration_0"], report["best_minus_worst"]
    assert up["low"] > 0, report  # best feedback after two iterations > iteration 0, beyond the 95% interval
    assert apart["low"] > 0, report  # and > the worst feedback: steering works both ways
    assert (tmp_path / "out" / "behaviour.png").stat().st_size > 0
