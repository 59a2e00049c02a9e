"""Small builders the tests share: tiny modules on the shipped HH sample."""

from __future__ import annotations

from typing import Any

import lightning as L

from datamodules.hh_rlhf import HHRLHFDataModule
from lightning_modules import CMPO, DPO, SFT, RewardModel, SteerLMAttributeModel, SteerLMConditionedSFT
from lightning_modules.meet import MEET

TINY = {"name_or_path": "builtin:tiny"}
# train.py flags for a quick CPU run of any method config on the tiny model (tests add their own extras)
TINY_CLI = [
    "--model.init_args.backbone.name_or_path", "builtin:tiny",
    "--model.init_args.tokenize.max_length", "384",
    "--model.init_args.tokenize.max_prompt_length", "256",
    "--model.init_args.tokenize.length_policy", "truncate",
    "--trainer.precision", "32-true",
    "--trainer.enable_progress_bar", "false",
]

# every method on the tiny model and the HH sample: name -> (class, extra module kwargs, extra data kwargs)
LORA = {"name_or_path": "builtin:tiny", "lora": {"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]}}
SCORED = {"scorers": ["verbosity", "sentiment"]}  # HH replies labelled offline: what CMPO and SteerLM train on
PLAIN = {"max_length": 384, "max_prompt_length": 256, "length_policy": "truncate", "prompt_format": "plain"}
METHODS = {  # name: (class, extra module kwargs, extra data kwargs)
    "SFT": (SFT, {}, {}),
    "DPO": (DPO, {}, {}),
    "RewardModel": (RewardModel, {}, {}),
    "CMPO-copy": (CMPO, {"attributes": ["verbosity", "sentiment"]}, SCORED),
    "CMPO-lowrank": (CMPO, {"attributes": ["verbosity", "sentiment"], "head_init": "lowrank"}, SCORED),
    "SteerLM-APM": (SteerLMAttributeModel, {"attributes": ["verbosity", "sentiment"], "tokenize": PLAIN}, SCORED),
    "SteerLM-ACM": (SteerLMConditionedSFT, {"attributes": ["verbosity", "sentiment"], "tokenize": PLAIN}, SCORED),
    "MEET": (MEET, {"control": {"kind": "prompt", "length": 2},
                    "phases": {"first_epochs": 1, "second_epochs": 1}}, {}),
}


def hh_sample(train: int = 16, validation: int = 8, batch_size: int = 4, **kwargs: Any) -> HHRLHFDataModule:
    return HHRLHFDataModule(
        data_files="sample",
        validation_fraction=0.05,
        on_error="skip",
        max_samples={"train": train, "validation": validation, "predict": 4},
        batch_size=batch_size,
        **kwargs,
    )


def tiny_kwargs(**overrides: Any) -> dict[str, Any]:
    kw: dict[str, Any] = dict(
        backbone=dict(TINY),
        # byte tokens: truncate to keep attention cheap on the tiny model
        tokenize={"max_length": 384, "max_prompt_length": 256, "length_policy": "truncate", "prompt_format": "chat"},
        optim={"lr": 1e-3},
    )
    kw.update(overrides)
    return kw


class Trainer(L.Trainer):
    """``L.Trainer`` that first hands the module's ``ExampleBuilder`` to the DataModule, as ``train.py`` does."""

    def _wired(self, model: Any, datamodule: Any) -> None:
        if datamodule is not None and hasattr(datamodule, "attach"):
            datamodule.attach(model.example_builder())

    def fit(self, model, *args: Any, datamodule=None, **kwargs: Any):
        self._wired(model, datamodule)
        return super().fit(model, *args, datamodule=datamodule, **kwargs)

    def validate(self, model=None, *args: Any, datamodule=None, **kwargs: Any):
        self._wired(model, datamodule)
        return super().validate(model, *args, datamodule=datamodule, **kwargs)

    def test(self, model=None, *args: Any, datamodule=None, **kwargs: Any):
        self._wired(model, datamodule)
        return super().test(model, *args, datamodule=datamodule, **kwargs)

    def predict(self, model=None, *args: Any, datamodule=None, **kwargs: Any):
        self._wired(model, datamodule)
        return super().predict(model, *args, datamodule=datamodule, **kwargs)


def trainer(tmp_path, max_steps: int, callbacks: list | None = None, **kwargs: Any) -> Trainer:
    from callbacks.checkpoint_io import AtomicCheckpointIO

    defaults = dict(
        max_steps=max_steps,
        accelerator="cpu",
        devices=1,
        precision="32-true",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        default_root_dir=str(tmp_path),
        plugins=[AtomicCheckpointIO()],
        use_distributed_sampler=False,
        callbacks=callbacks or [],
        deterministic=True,
    )
    defaults.update(kwargs)
    return Trainer(**defaults)


class LossRecorder(L.Callback):
    """Collects the training loss of every step."""

    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses.append(float(outputs["loss"]))


class Killed(BaseException):
    """Raised by ``KillAt``: a crash that skips every save (Lightning saves no checkpoint on an exception)."""


class KillAt(L.Callback):
    """Dies at the start of step ``step``: right after the checkpoints of step ``step`` - 1 were written,
    like a SIGKILL between two steps (the next step's work never starts)."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            raise Killed(f"killed at step {self.step}")


def kill_online_run(cli: Any, *, during: str, step: int, ckpt_path: str | None = None) -> None:
    """Fit an online method's built CLI until it dies: while sampling round 1 (``during="sampling"``), or at the
    start of training step ``step`` (``during="training"``); the checkpoints written before stay, as after a
    SIGKILL."""
    import pytest

    module = cli.model
    if during == "sampling":
        real = module.sample_round

        def sample_round(r, records):
            if r == 1:
                raise Killed("killed while sampling round 1")
            return real(r, records)

        module.sample_round = sample_round
    else:
        cli.trainer.callbacks.append(KillAt(step=step))
    with pytest.raises(Killed):
        cli.trainer.fit(module, datamodule=cli.datamodule, ckpt_path=ckpt_path)


def steered_cmpo(max_new_tokens: int = 12, noise: float = 0.5, seed: int = 1, max_prompt_length: int = 256,
                 backbone: str = "builtin:tiny") -> Any:
    """A CMPO (attributes verbosity, sentiment; the tiny model by default) built and ready to generate, whose two
    heads differ by seeded noise, so each weight setting gives its own greedy continuation: untrained heads are
    copies of one head and would all give the same, and a request mixed up with another would go unseen.
    (SmolLM2's heads keep writing English with ``noise=0.02``: a demo model for the page's screenshot.)"""
    import torch

    from lightning_modules.cmpo import CMPO

    tokenize = {"max_length": max_prompt_length + 128, "max_prompt_length": max_prompt_length,
                "length_policy": "truncate", "prompt_format": "chat"}
    module = CMPO(attributes=["verbosity", "sentiment"], ref_cache_dir=None,
                  **tiny_kwargs(backbone={"name_or_path": backbone}, tokenize=tokenize,
                                sampling={"max_new_tokens": max_new_tokens, "temperature": 0.0}))
    module.configure_model()
    with torch.no_grad():
        module.heads.weight.add_(noise * torch.randn(module.heads.weight.shape, generator=torch.Generator().manual_seed(seed)))
    return module.eval()
