"""Killed and resumed through ``train.py``'s CLI, every method continues exactly as if never interrupted.

Each method's own config runs on the tiny model (16 pairs, batch 4: 4 steps per epoch, 2 epochs, a linear LR
schedule with warm-up, validation every 2 steps, a ``last.ckpt`` after every step and at every epoch end). One
run is killed at step 3 (mid-epoch), resumed with ``--ckpt_path last`` and killed again at step 4 (right after
the epoch-boundary checkpoint), then resumed to the end. Every logged value — train and validation, every
step — must equal the uninterrupted run's to 1e-6. (A resumed epoch that replays its first batches, or
cached reference log-probs that no longer match their examples, change the trace; both happened before.)
"""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from lightning_modules.cli import main
from tests.factories import TINY_CLI, KillAt, Killed

ROOT = Path(__file__).resolve().parents[1]
APM_ACM = ["--model.init_args.attributes", "[verbosity, sentiment]", "--model.init_args.tokenize.prompt_format", "plain",
           "--data.init_args.scorers", "[verbosity, sentiment]"]
METHODS = {  # name: (config, extra flags)
    "dpo": ("dpo", []),
    "sft": ("sft", []),
    "reward_model": ("reward_model", []),
    # all valid pairs: trade-off rows alone (~40%) leave 8 tiny rows one batch per epoch; heads-only stays on
    "cmpo": ("cmpo", ["--model.init_args.tradeoffs_only", "false"]),
    "meet": ("meet", ["--model.init_args.control.length", "2"]),
    "coh": ("coh", ["--model.init_args.phases.second_epochs", "2"]),
    "steerlm_apm": ("cmpo", ["--model", "lightning_modules.steerlm.SteerLMAttributeModel", *APM_ACM]),
    "steerlm_acm": ("cmpo", ["--model", "lightning_modules.steerlm.SteerLMConditionedSFT", *APM_ACM]),
}
SLOW = {"reward_model", "coh", "steerlm_apm", "steerlm_acm", "sft"}  # the fast tier keeps dpo, cmpo and meet


def args(method: str, root: Path) -> list[str]:
    config, extra = METHODS[method]
    return [
        "--config", str(ROOT / "configs" / f"{config}.yaml"), *TINY_CLI, *extra,
        "--model.init_args.optim.lr", "1e-3", "--model.init_args.optim.scheduler", "linear",
        "--model.init_args.optim.warmup_steps", "2",
        "--data.init_args.max_samples", '{"train": 16, "validation": 4, "predict": 2}',
        "--data.init_args.batch_size", "4",
        "--trainer.max_epochs", "2", "--trainer.max_steps", "-1",
        "--trainer.log_every_n_steps", "1", "--trainer.val_check_interval", "2",
        "--trainer.default_root_dir", str(root),
        "--trainer.logger", f"[{{class_path: lightning.pytorch.loggers.CSVLogger, init_args: {{save_dir: {root}, name: csv}}}}]",
        "--trainer.callbacks", "[{class_path: callbacks.checkpoint_io.LastCheckpoint, init_args: {save_top_k: 0, "
        "save_last: true, every_n_train_steps: 1, save_on_train_epoch_end: true}}]",
    ]


def killed_run(method: str, root: Path, step: int, ckpt_path: str | None) -> None:
    cli = main(args(method, root), run=False)
    cli.trainer.callbacks.append(KillAt(step))
    with pytest.raises(Killed):
        cli.trainer.fit(cli.model, datamodule=cli.datamodule, ckpt_path=ckpt_path)


def trace(root: Path) -> dict[tuple[int, str], float]:
    """Every logged (step, metric) -> value, over all versions of the run (a resumed run logs to a new one)."""
    out: dict[tuple[int, str], float] = {}
    for path in sorted((root / "csv").glob("version_*/metrics.csv"), key=lambda p: int(p.parent.name.split("_")[1])):
        for row in csv.DictReader(path.open()):
            for key, value in row.items():
                if key != "step" and value not in ("", None):
                    out[(int(row["step"]), key)] = float(value)
    return out


@pytest.mark.parametrize("method", [pytest.param(m, marks=pytest.mark.slow) if m in SLOW else m for m in METHODS])
def test_killed_and_resumed_run_equals_the_uninterrupted_run(tmp_cwd, method):
    main(["fit", *args(method, tmp_cwd / "straight")])
    root = tmp_cwd / "resumed"
    killed_run(method, root, step=3, ckpt_path=None)  # mid-epoch: batch 3 of epoch 0 never starts
    killed_run(method, root, step=4, ckpt_path="last")  # right after epoch 0's end-of-epoch checkpoint
    main(["fit", *args(method, root), "--ckpt_path", "last"])
    straight, resumed = trace(tmp_cwd / "straight"), trace(root)
    assert {k for k in straight if k[1].startswith("train/")} and {k for k in straight if k[1].startswith("val/")}
    assert max(step for step, _ in straight) >= 7  # both epochs were logged
    assert set(resumed) == set(straight), sorted(set(resumed) ^ set(straight))[:10]
    wrong = {k: (straight[k], resumed[k]) for k in straight if abs(straight[k] - resumed[k]) > 1e-6}
    assert not wrong, sorted(wrong.items())[:10]
    losses = [v for (_, name), v in straight.items() if name == "train/loss"]
    assert len({round(v, 6) for v in losses}) > 4  # the steps really differ from each other
