"""steerzoo's command line: ``python train.py {fit,validate,test,predict} --config configs/<method>.yaml``.

LightningCLI in subclass mode: ``model`` is any LightningModule in ``lightning_modules`` and ``data``
any DataModule in ``datamodules``; several ``--config`` files compose and every key can be overridden
on the command line. The resolved config is saved beside each run's logs.
"""

import os

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from lightning.pytorch.cli import LightningCLI  # noqa: E402

import datamodules  # noqa: E402,F401  (registers the DataModules for class_path lookup)
import lightning_modules  # noqa: E402,F401
from callbacks.checkpoint_io import AtomicCheckpointIO  # noqa: E402
from zoo.precision import resolve_precision  # noqa: E402


class SteerZooCLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:
        parser.add_argument(
            "--bf16_fallback", type=bool, default=True,
            help="run 32-true instead of a bf16 trainer.precision on a device without bf16 hardware "
                 "(CPUs without AMX/AVX512-BF16 emulate bf16 ~10x slower than fp32)",
        )

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        if not config.get("bf16_fallback", True):
            return
        precision, why = resolve_precision(config.trainer.precision, config.trainer.accelerator)
        if why is not None:
            print(f"steerzoo: {why}", flush=True)
            config.trainer.precision = precision

    def _parse_ckpt_path(self) -> None:
        """Lightning would overwrite the command line with the checkpoint's hyper-parameters; here the
        configs and flags you pass win (e.g. ``--model.init_args.steer`` at predict time) and the
        checkpoint supplies the weights (a mismatch is refused by the module with a clear error)."""


def main(args: list[str] | None = None, run: bool = True) -> LightningCLI:
    return SteerZooCLI(
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_kwargs={"overwrite": True},  # re-running in the same folder must not crash
        trainer_defaults={"plugins": [AtomicCheckpointIO()], "use_distributed_sampler": False},
        args=args,
        run=run,
    )


if __name__ == "__main__":
    main()
