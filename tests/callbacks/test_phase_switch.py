"""PhaseSwitch: MEET moves from step 1 to step 2 at the configured epoch, in an uninterrupted run and after
resuming from a checkpoint taken in step 1 (mid-epoch, or on the last batch before the switch) or in step 2;
the resumed run repeats the uninterrupted run's losses and phases exactly (optimizer state and the per-phase
LR schedule restored), also on a strategy that restores checkpoints after setup (as FSDP2 does)."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.strategies import SingleDeviceStrategy

from callbacks.checkpoint_io import AtomicCheckpointIO
from callbacks.phase_switch import PhaseSwitch
from lightning_modules.meet import MEET
from tests.factories import hh_sample, tiny_kwargs, trainer

SHORT = {"max_length": 96, "max_prompt_length": 64, "length_policy": "truncate", "prompt_format": "chat"}  # fast rows


class PhaseRecorder(L.Callback):
    """(epoch, phase, LM trainable?, loss) of every training step."""

    def __init__(self) -> None:
        self.steps: list[tuple[int, int, bool, float]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        lm_trainable = all(p.requires_grad for _, p in pl_module.lm_parameters())
        self.steps.append((trainer.current_epoch, pl_module.phase, lm_trainable, float(outputs["loss"])))


class StopAt(L.Callback):
    def __init__(self, step: int):
        self.step = step

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step >= self.step:
            trainer.should_stop = True


class LateRestore(SingleDeviceStrategy):
    """Restores the checkpoint after setup (after configure_optimizers), like ModelParallelStrategy."""

    @property
    def restore_checkpoint_after_setup(self) -> bool:
        return True


def run(root, kind: str, stop_at: int | None = None, ckpt_path: str | None = None, late: bool = False):
    L.seed_everything(0)
    rec, switch = PhaseRecorder(), PhaseSwitch()
    ckpt = ModelCheckpoint(dirpath=root / "ckpt", save_last=True, every_n_train_steps=1, save_top_k=-1)
    callbacks = [rec, switch, ckpt] + ([StopAt(stop_at)] if stop_at else [])
    extra = {}
    if late:
        extra = dict(strategy=LateRestore(device=torch.device("cpu"), checkpoint_io=AtomicCheckpointIO()), plugins=[])
    t = trainer(root, max_steps=-1, max_epochs=3, callbacks=callbacks, **extra)
    module = MEET(
        control={"kind": kind, "length": 3},
        # two epochs of step 1, one of step 2; linear schedules per phase, so a wrong schedule after resume shows
        phases={"first_epochs": 2, "second_epochs": 1, "control_lr": 1e-2},
        **tiny_kwargs(optim={"lr": 1e-3, "scheduler": "linear", "warmup_steps": 1}, tokenize=SHORT),
    )
    # 8 pairs / batch 4 = 2 steps per epoch: steps 1-4 are step 1 (epochs 0-1), steps 5-6 step 2 (epoch 2)
    t.fit(module, datamodule=hh_sample(train=8), ckpt_path=ckpt_path)
    return rec.steps, switch, t


def test_switch_happens_at_the_configured_epoch(tmp_cwd):
    steps, switch, _ = run(tmp_cwd, "prompt")
    assert [(e, ph, lm) for e, ph, lm, _ in steps] == [(0, 1, False)] * 2 + [(1, 1, False)] * 2 + [(2, 2, True)] * 2
    assert switch.switches == [{"epoch": 2, "step": 4, "phase": 2}]


@pytest.mark.parametrize(
    "kind,stop_at,late",
    [
        ("prompt", 3, False),  # step 1, mid-epoch
        ("prompt", 4, False),  # step 1, its last batch: the switch comes after the resume
        ("prompt", 5, False),  # step 2
        ("lora", 5, False),
        ("prompt", 5, True),  # checkpoint restored after configure_optimizers built a step-1 optimizer
        ("prompt", 3, True),
    ],
)
def test_resume_in_either_phase_repeats_the_uninterrupted_run(tmp_cwd, kind, stop_at, late):
    straight, _, _ = run(tmp_cwd / "a", kind, late=late)
    first, _, _ = run(tmp_cwd / "b", kind, stop_at=stop_at, late=late)
    resumed, switch, t = run(tmp_cwd / "b", kind, ckpt_path=str(tmp_cwd / "b" / "ckpt" / "last.ckpt"), late=late)
    assert len(first) == stop_at and t.global_step == 6
    assert [s[:3] for s in first + resumed] == [s[:3] for s in straight]
    torch.testing.assert_close(torch.tensor([s[3] for s in first + resumed]), torch.tensor([s[3] for s in straight]),
                               rtol=0, atol=1e-6)
    assert switch.switches[-1] == {"epoch": 2, "step": 4, "phase": 2}
    assert len({round(s[3], 6) for s in straight}) > 3  # the steps really differ
