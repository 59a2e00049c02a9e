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


class SteerZooCLI(LightningCLI):
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
