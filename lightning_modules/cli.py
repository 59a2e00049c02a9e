"""steerzoo's command line (LightningCLI), importable by scripts: ``train.py`` only calls ``main``.

``model`` is any LightningModule in ``lightning_modules`` and ``data`` any DataModule in ``datamodules``
(subclass mode); several ``--config`` files compose and every key can be overridden on the command line.
What the CLI adds to Lightning's:

- the method -> data contract: the model's ``example_builder()`` is handed to the DataModule (``attach``);
- ``--steer '{"attribute": weight}'``: the same steering flag for every method (``zoo.preference``);
- one directory per run: ``--trainer.default_root_dir DIR`` (plus ``--run_name NAME``: ``DIR/NAME``) holds
  every output — CSV and TensorBoard logs (unless the config names its own loggers), ``checkpoints/``,
  ``hf/``, ``predictions/``, steering sweeps and data reports;
- ``--overwrite``: outputs that would replace an existing file (a named predictions file) may do so;
- bf16 on a CPU without bf16 instructions runs as fp32 (``--bf16_fallback``);
- ``serve``: the configured model with a checkpoint's weights behind an OpenAI-compatible API with a ``steer``
  field (``zoo.serve``): ``python train.py serve --config <the run's config> --ckpt_path <ckpt>``, or
  ``steerzoo-serve --config ... --ckpt_path ...``. Options: ``--host`` (127.0.0.1), ``--port`` (8000; 0 picks
  a free one), ``--api_key`` (or env ``STEERZOO_API_KEY``), ``--model_name`` (default: the run directory's
  name), ``--max_batch``, ``--batch_window_ms``, ``--max_body_bytes``; ``--steer`` sets the default steering.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from lightning.pytorch.cli import LightningCLI  # noqa: E402
from lightning.pytorch.plugins.io import CheckpointIO  # noqa: E402

import datamodules  # noqa: E402,F401  (registers the DataModules for class_path lookup)
import lightning_modules  # noqa: E402,F401
from callbacks.checkpoint_io import AtomicCheckpointIO, RunCheckpoint  # noqa: E402
from lightning_modules.serving import SteerZooTrainer  # noqa: E402
from zoo.precision import resolve_precision  # noqa: E402

DEFAULT_LOGGERS = (("lightning.pytorch.loggers.CSVLogger", "csv"), ("lightning.pytorch.loggers.TensorBoardLogger", "tb"))


class SteerZooCLI(LightningCLI):
    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        return {**LightningCLI.subcommands(), "serve": {"model", "datamodule"}}

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_argument(
            "--bf16_fallback", type=bool, default=True,
            help="run 32-true instead of a bf16 trainer.precision on a device without bf16 hardware "
                 "(CPUs without AMX/AVX512-BF16 emulate bf16 ~10x slower than fp32)",
        )
        parser.add_argument(
            "--steer", type=str | None, default=None,
            help='steering weights by attribute name, as JSON, e.g. \'{"verbosity": 1}\' (any steerable method)',
        )
        parser.add_argument("--run_name", type=str | None, default=None,
                            help="a sub-directory of trainer.default_root_dir for this run's outputs")
        parser.add_argument("--overwrite", type=bool, default=False,
                            help="let outputs replace existing files (otherwise refused with a clear error)")

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        if config.get("steer") is not None:
            config.model.init_args.steer = config.steer
        trainer = config.trainer
        root = Path(trainer.get("default_root_dir") or ".")
        if config.get("run_name"):
            root = root / config.run_name
        trainer.default_root_dir = str(root)
        if trainer.get("logger") in (None, True):
            trainer.logger = [{"class_path": cls, "init_args": {"save_dir": str(root), "name": name}}
                              for cls, name in DEFAULT_LOGGERS]
        if not config.get("bf16_fallback", True):
            return
        precision, why = resolve_precision(trainer.precision, trainer.accelerator)
        if why is not None:
            print(f"steerzoo: {why}", flush=True)
            trainer.precision = precision

    def after_instantiate_classes(self) -> None:
        super().after_instantiate_classes()
        if self.datamodule is not None and hasattr(self.datamodule, "attach"):
            self.datamodule.attach(self.model.example_builder())
        config = self.config[self.subcommand] if self.subcommand else self.config
        for callback in self.trainer.callbacks:
            if hasattr(callback, "overwrite") and config.get("overwrite"):
                callback.overwrite = True
            if isinstance(callback, RunCheckpoint) and callback.dirpath is None:
                callback.dirpath = str(Path(self.trainer.default_root_dir) / "checkpoints")  # before --ckpt_path last

    def instantiate_trainer(self, **kwargs):
        """Checkpoints are written atomically (``AtomicCheckpointIO``) unless the config names its own
        CheckpointIO. Added here, not as a parser default: an object default cannot be saved in config.yaml."""
        config = self.config_init[self.subcommand] if self.subcommand else self.config_init
        plugins = list(config["trainer"].get("plugins") or [])
        if not any(isinstance(p, CheckpointIO) for p in plugins):
            plugins.append(AtomicCheckpointIO())
        return super().instantiate_trainer(**{"plugins": plugins, **kwargs})

    def _parse_ckpt_path(self) -> None:
        """Lightning would overwrite the command line with the checkpoint's hyper-parameters; here the
        configs and flags you pass win (e.g. ``--steer`` at predict time) and the checkpoint supplies the
        weights (a mismatch is refused by the module with a clear error)."""


def main(args: list[str] | None = None, run: bool = True) -> LightningCLI:
    return SteerZooCLI(
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_kwargs={"overwrite": True},  # re-running in the same folder must not crash
        trainer_class=SteerZooTrainer,
        trainer_defaults={"use_distributed_sampler": False},
        args=args,
        run=run,
    )


def serve_main() -> None:
    """``steerzoo-serve``: ``train.py serve`` as a console script."""
    sys.argv.insert(1, "serve")
    main()
