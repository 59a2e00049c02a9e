"""Rejection-sampling fine-tuning on the online loop (tiny model, HH prompts, VADER sentiment):

- selection by hand (best, top-k, quantile) and the replay share;
- a run killed while sampling round 1, and one killed while training on it, continue with ``--ckpt_path last``
  exactly as the uninterrupted run: the same pool (every sample and score) and the same loss trace (1e-6);
- each round's JSONL pool equals the checkpoint's and reads back through ``RecordsFileDataModule``;
- bad input fails with a clear message before any training step.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import torch

from lightning_modules.cli import main
from lightning_modules.rsf import RSF
from tests.factories import TINY_CLI, kill_online_run
from zoo.records import Demonstration, ScoredResponse
from zoo.rounds import Round

ROOT = Path(__file__).resolve().parents[2]


def scored(prompt: str, values: list[float]) -> list[ScoredResponse]:
    return [ScoredResponse(prompt=prompt, response=f"reply {k}", scores={"sentiment": v},
                           scales={"sentiment": (-1.0, 1.0)}) for k, v in enumerate(values)]


def rsf(**kwargs) -> RSF:
    return RSF(scorers=["sentiment"], backbone={"name_or_path": "builtin:tiny"}, samples_per_prompt=3, **kwargs)


def test_selection_and_replay_by_hand():
    rnd = Round(index=0, policy_step=0, n=3, samples=scored("a", [0.1, 0.9, 0.9]) + scored("b", [-0.5, -0.2, -0.7]))
    assert rsf().select(rnd) == [1, 4]  # best per prompt; the tie at 0.9 keeps the earlier sample
    assert rsf(selection="top_k", top_k=2).select(rnd) == [1, 2, 3, 4]
    # quantile 0.5 of the six values [-0.7, -0.5, -0.2, 0.1, 0.9, 0.9] is the 4th smallest, 0.1
    assert rsf(selection="quantile", quantile=0.5).select(rnd) == [0, 1, 2]
    demos = [Demonstration(prompt=f"q{i}", response=f"demo {i}") for i in range(10)]
    records = rsf(replay_fraction=0.5).round_records(rnd, demos, [0, 1])
    assert [r.response for r in records[:2]] == ["reply 1", "reply 1"]
    assert len(records) == 4 and all(r.response.startswith("demo") for r in records[2:])  # 50% replayed
    assert rsf(replay_fraction=0.15).replay_count(17) == 3  # 3 / 20 = 15%


def test_bad_settings_fail_at_start_up():
    with pytest.raises(ValueError, match="samples_per_prompt must be >= 1"):
        rsf_kwargs = {"scorers": ["sentiment"], "backbone": {"name_or_path": "builtin:tiny"}}
        RSF(samples_per_prompt=0, **rsf_kwargs)
    with pytest.raises(ValueError, match="objective names \\['helpfulness'\\]"):
        RSF(objective={"helpfulness": 1.0}, **rsf_kwargs)
    with pytest.raises(ValueError, match="unknown offline scorer"):
        RSF(scorers=["nope"], backbone={"name_or_path": "builtin:tiny"})


RUN = [
    "--config", str(ROOT / "configs" / "rsf.yaml"), *TINY_CLI,
    "--model.init_args.prompts_per_round", "6", "--model.init_args.samples_per_prompt", "2",
    "--model.init_args.round_sampling", "{max_new_tokens: 6, temperature: 1.0}",
    "--model.init_args.eval_sampling", "{max_new_tokens: 6, temperature: 0.0}",
    "--model.init_args.optim.lr", "1e-3",
    "--data.init_args.max_samples", '{"train": 16, "validation": 4, "predict": 2}',
    "--data.init_args.batch_size", "2",  # 3 steps per round
    "--trainer.max_epochs", "2", "--trainer.log_every_n_steps", "1", "--trainer.num_sanity_val_steps", "0",
    "--trainer.callbacks", "[{class_path: callbacks.checkpoint_io.LastCheckpoint, init_args: {save_top_k: 0, "
    "save_last: true, every_n_train_steps: 1, save_on_train_epoch_end: true}}]",
]


def args(root: Path) -> list[str]:
    return [*RUN, "--trainer.default_root_dir", str(root), "--trainer.logger",
            f"[{{class_path: lightning.pytorch.loggers.CSVLogger, init_args: {{save_dir: {root}, name: csv}}}}]"]


def losses(root: Path) -> dict[int, float]:
    out = {}
    for path in sorted((root / "csv").glob("version_*/metrics.csv")):
        for row in csv.DictReader(path.open()):
            if row.get("train/loss"):
                out[int(row["step"])] = float(row["train/loss"])
    return out


def pool(root: Path) -> list[dict]:
    return torch.load(root / "checkpoints" / "last.ckpt", weights_only=True)["online"]["pool"]["rounds"]


def killed(root: Path, ckpt_path: str | None, *, during: str) -> None:
    """Kill while sampling round 1, or at the start of round 1's second training step (round 1 is steps 3-5)."""
    kill_online_run(main(args(root), run=False), during=during, step=4, ckpt_path=ckpt_path)


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("straight")
    main(["fit", *args(root)])
    return root


@pytest.mark.parametrize("during", ["sampling", "training"])
def test_killed_round_resumes_as_if_uninterrupted(tmp_path, straight, during):
    root = tmp_path / "run"
    killed(root, None, during=during)
    main(["fit", *args(root), "--ckpt_path", "last"])
    assert pool(root) == pool(straight) and len(pool(root)) == 2
    want, got = losses(straight), losses(root)
    assert sorted(got) == sorted(want) == list(range(6))
    for step in want:
        assert math.isclose(got[step], want[step], abs_tol=1e-6), (step, got[step], want[step])
    assert len({round(v, 6) for v in want.values()}) > 3  # the loss really moves


def test_round_pools_are_written_as_jsonl_that_reads_back(straight):
    from datamodules.records_file import RecordsFileDataModule

    rounds = pool(straight)
    assert [r["index"] for r in rounds] == [0, 1] and rounds[1]["policy_step"] == 3  # sampled after round 0
    for r in rounds:
        path = straight / "rounds" / f"round-{r['index']}.jsonl"
        lines = [json.loads(line) for line in path.read_text().splitlines()]
        assert lines == r["samples"] and len(lines) == 6 * 2
    dm = RecordsFileDataModule(data_files={"train": [str(straight / "rounds" / "round-1.jsonl")]}, kind="scored")
    back = [ScoredResponse.from_row(row) for row in dm.records("train", "scored")]
    assert [b.to_row() for b in back] == rounds[1]["samples"]


class Broken:
    """A scorer whose output is wrong in a chosen way."""

    def __init__(self, how: str):
        self.how, self.names, self.scales = how, ["sentiment"], {"sentiment": (-1.0, 1.0)}

    def score(self, prompts, responses):
        if self.how == "nan":
            return {"sentiment": [float("nan")] * len(responses)}
        return {"sentiment": [0.0] * (len(responses) - 1)}


@pytest.mark.parametrize("how,message", [("nan", "is not a finite number for samples \\[0, 1"),
                                         ("short", "has 11 scores for 12 samples")])
def test_a_broken_scorer_stops_before_any_training_step(tmp_path, how, message):
    cli = main(args(tmp_path), run=False)
    cli.model.scorers = [Broken(how)]
    with pytest.raises(ValueError, match=f"RSF round 0: scorer output 'sentiment' {message}"):
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    assert cli.trainer.global_step == 0


def test_an_empty_prompt_set_is_refused(tmp_path):
    cli = main(args(tmp_path), run=False)
    with pytest.raises(ValueError, match="gave no demonstration records to sample prompts from"):
        cli.model.make_round(0, [])


def test_a_prompt_over_the_length_cap_stops_before_any_training_step(tmp_path):
    cli = main([*args(tmp_path), "--model.init_args.round_sampling", "{max_new_tokens: 6, max_total_length: 10}"],
               run=False)
    with pytest.raises(ValueError, match="RSF round 0: prompt 0 has \\d+ tokens, more than sampling.max_total_length 10"):
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    assert cli.trainer.global_step == 0


def test_held_out_change_pairs_the_first_and_last_evaluation():
    from types import SimpleNamespace

    from lightning_modules.online import OnlineModule

    run = SimpleNamespace(eval_scores={0: [0.1, 0.2, 0.0], 16: [0.9, 0.9, 0.9], 32: [0.5, 0.4, 0.6]})
    change = OnlineModule.held_out_change(run)
    assert (change["first_step"], change["last_step"], change["prompts"]) == (0, 32, 3)
    assert change["change"] == pytest.approx(0.4) and 0 < change["low"] <= 0.4 <= change["high"]
    for scores in ({}, {0: [0.1, 0.2]}, {0: [0.1, 0.2], 8: [0.3]}):  # no pair: one evaluation or another held-out set
        assert OnlineModule.held_out_change(SimpleNamespace(eval_scores=scores)) is None
