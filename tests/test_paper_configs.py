"""The paper set-ups under configs/paper/ run end to end: each config, unchanged but for the model (the
tiny one), the data source (the shipped sample of the same dataset), the hardware (1 CPU) and the length
of the run, goes through ``fit`` (both MEET steps) and ``predict`` via the CLI. So a paper config's every
other key — controls, phases, tokenization, sampling, callbacks, data options — is exercised as written."""

import json
from pathlib import Path

import pytest
import torch

from lightning_modules.cli import main
from tests.factories import TINY_CLI

ROOT = Path(__file__).resolve().parents[1]
SMALL_RUN = [
    *TINY_CLI,
    "--model.init_args.sampling.max_new_tokens", "6",
    "--data.init_args.data_files", "sample",
    "--data.init_args.num_proc", "1",
    "--data.init_args.validation_fraction", "0.1",  # the HH sample is one split
    "--data.init_args.batch_size", "2",
    "--data.init_args.eval_batch_size", "2",
    "--data.init_args.max_samples", '{"train": 4, "validation": 4, "predict": 2}',
    "--trainer.accelerator", "cpu",
    "--trainer.devices", "1",
]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["meet_hh_prompt", "meet_hh_lora", "meet_hh_coh",
                                  "meet_tldr_prompt", "meet_tldr_lora", "meet_tldr_coh"])
def test_meet_paper_config_runs(tmp_cwd, name):
    config = str(ROOT / "configs" / "paper" / f"{name}.yaml")
    # one epoch per MEET step (2 batches each), so fit crosses the phase switch; CoH has no step 1 (nothing to
    # train in a hand-crafted prompt), so it runs two epochs of step 2
    first = "0" if name.endswith("coh") else "1"
    phases = ["--model.init_args.phases.first_epochs", first,
              "--model.init_args.phases.second_epochs", str(2 - int(first)), "--trainer.max_epochs", "2"]
    main(["fit", "--config", config, *SMALL_RUN, *phases])
    run = tmp_cwd / "runs" / "paper" / name
    state = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert state["global_step"] == 4 and state["meet"]["phase"] == 2
    main(["predict", "--config", config, *SMALL_RUN, *phases, "--ckpt_path", str(run / "checkpoints" / "last.ckpt")])
    rows = [json.loads(line) for line in (run / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(r["control"] == "good" for r in rows)
