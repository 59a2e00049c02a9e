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

import lightning as L  # noqa: E402
from lightning.pytorch.cli import LightningCLI  # noqa: E402
from lightning.pytorch.plugins.io import CheckpointIO  # noqa: E402

import datamodules  # noqa: E402,F401  (registers the DataModules for class_path lookup)
import lightning_modules  # noqa: E402,F401
from callbacks.checkpoint_io import AtomicCheckpointIO, RunCheckpoint  # noqa: E402
from zoo.precision import resolve_precision  # noqa: E402

DEFAULT_LOGGERS = (("lightning.pytorch.loggers.CSVLogger", "csv"), ("lightning.pytorch.loggers.TensorBoardLogger", "tb"))


class SteerZooTrainer(L.Trainer):
    """Lightning's ``Trainer`` plus ``serve``: LightningCLI makes each method named in ``subcommands()`` a
    subcommand and reads its options from the method's signature."""

    def serve(
        self,
        model: L.LightningModule,
        datamodule: L.LightningDataModule | None = None,
        ckpt_path: str | None = None,
        host: str = "127.0.0.1",
        port: int = 8000,
        api_key: str | None = None,
        model_name: str | None = None,
        max_batch: int = 32,
        batch_window_ms: float = 5.0,
        max_body_bytes: int = 1 << 20,
    ) -> None:
        """Serve the model behind an OpenAI-compatible API with a ``steer`` field, and a steering page at /.

        Args:
            model: the configured module (its checkpoint weights are loaded into it).
            datamodule: unused (the configs name one for training).
            ckpt_path: the checkpoint to serve: a path, ``last`` or ``best`` (this run's ``checkpoints/``), or
                None for the configured backbone's own weights.
            host: the address to bind; 127.0.0.1 keeps the server private to this machine.
            port: the port (0: a free one; the address is printed).
            api_key: required as ``Authorization: Bearer <key>`` (default: env STEERZOO_API_KEY; none: open).
            model_name: the served model's name (default: the run directory's name, else the class name).
            max_batch: requests generated together at most.
            batch_window_ms: how long a batch waits for more requests after its first.
            max_body_bytes: larger request bodies are refused (413).
        """
        from zoo.serve import run

        app = serving_app(self, model, ckpt_path, api_key=api_key, model_name=model_name, max_batch=max_batch,
                          batch_window_ms=batch_window_ms, max_body_bytes=max_body_bytes)
        if host not in ("127.0.0.1", "localhost", "::1") and not app.state.server.settings.api_key:
            print(f"steerzoo: warning: serving on {host} without an API key (--api_key or STEERZOO_API_KEY)")
        run(app, host, port)


def resolve_checkpoint(trainer: L.Trainer, ckpt_path: str) -> Path:
    """``last`` / ``best`` -> this run's checkpoint file (``<default_root_dir>/checkpoints``); else the path."""
    folder = Path(trainer.default_root_dir) / "checkpoints"
    if ckpt_path == "last":
        return folder / "last.ckpt"
    if ckpt_path == "best":
        best = sorted(folder.glob("best-*.ckpt"), key=lambda p: p.stat().st_mtime)
        if not best:
            raise FileNotFoundError(f"no best-*.ckpt in {folder}")
        return best[-1]
    return Path(ckpt_path)


def serving_app(trainer: L.Trainer, model: L.LightningModule, ckpt_path: str | None = None, **settings):
    """``zoo.serve``'s app for ``model`` with ``ckpt_path``'s weights, on the trainer's device and precision
    (the same weights, dtype and autocast ``predict`` uses). ``settings``: ``zoo.serve.ServeSettings`` fields."""
    from callbacks.artifacts import load_checkpoint_state
    from zoo.serve import ServeSettings, create_app

    model.configure_model()
    if ckpt_path is not None:
        state = load_checkpoint_state(resolve_checkpoint(trainer, ckpt_path))
        model.on_load_checkpoint(state)  # refuses another model's checkpoint, naming both
        model.load_state_dict(state["state_dict"], strict=model.strict_loading)
    model = trainer.precision_plugin.convert_module(model).to(trainer.strategy.root_device).eval()
    root = Path(trainer.default_root_dir).resolve()
    name = settings.pop("model_name", None) or (root.name if root != Path.cwd().resolve() else type(model).__name__)
    api_key = settings.pop("api_key", None) or os.environ.get("STEERZOO_API_KEY") or None
    serve = ServeSettings(model_name=name, api_key=api_key, default_steer=model.steer_preference, **settings)
    return create_app(model, serve, context=trainer.precision_plugin.forward_context)


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
