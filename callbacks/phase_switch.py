"""Two-phase training: at the epoch its schedule names, move the module to its next phase.

A module that trains in phases (MEET: step 1 trains the control tokens with the LM frozen, step 2 trains
both) exposes ``phase`` (the phase its requires_grad flags and optimizer are set for), ``phase_for_epoch``,
``set_phase`` (flips requires_grad) and ``optimizer_phase`` (the phase ``configure_optimizers`` last built
for). At the start of each training epoch this callback compares the phase due with the current one and,
on a change, calls ``set_phase`` and rebuilds the optimizer and scheduler through the strategy (a fresh
optimizer with the new phase's param groups and learning rates, and a schedule over the new phase's
steps), then logs the switch.

Resuming: the module saves its phase in every checkpoint. Lightning restores the module (and with it the
phase) before ``configure_optimizers`` on ordinary strategies, so the optimizer is built for the saved
phase and the saved optimizer state fits it; a checkpoint taken at the end of the last epoch of phase 1
resumes in phase 1 and switches at the next epoch start, as an uninterrupted run does. Strategies that
restore after setup (FSDP2's ``ModelParallelStrategy``) build the optimizer before the phase is known: then
``on_load_checkpoint`` rebuilds it for the restored phase and carries over whatever state was already
loaded (the param-group layout is the same in every phase, so the state always fits).
"""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.utilities import rank_zero_info


class PhaseSwitch(L.Callback):
    def __init__(self) -> None:
        self.switches: list[dict[str, int]] = []  # every switch made in this run (epoch, step, phase)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._switch_if_due(trainer, pl_module)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int) -> None:
        # resuming from a checkpoint taken on an epoch's last batch, Lightning goes straight into the next
        # epoch without calling on_train_epoch_start; the optimizer for this step is fetched after this hook
        self._switch_if_due(trainer, pl_module)

    def _switch_if_due(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        due = pl_module.phase_for_epoch(trainer.current_epoch)
        if due == pl_module.phase:
            return
        before = pl_module.phase
        pl_module.set_phase(due)
        trainer.strategy.setup_optimizers(trainer)
        self.switches.append({"epoch": trainer.current_epoch, "step": trainer.global_step, "phase": due})
        groups = ", ".join(f"{g.get('name', i)}: lr {g['lr']:.2g}" for i, g in enumerate(trainer.optimizers[0].param_groups))
        rank_zero_info(
            f"PhaseSwitch: phase {before} -> {due} at epoch {trainer.current_epoch} (global step {trainer.global_step}); "
            f"{pl_module.trainable_summary()}; new optimizer groups [{groups}]"
        )

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        built = getattr(pl_module, "optimizer_phase", None)
        if not trainer.strategy.optimizers or built is None or built == pl_module.phase:
            return
        old = trainer.strategy.optimizers
        pl_module.set_phase(pl_module.phase)
        trainer.strategy.setup_optimizers(trainer)
        for new_opt, old_opt in zip(trainer.strategy.optimizers, old):
            new_opt.load_state_dict(old_opt.state_dict())

    def state_dict(self) -> dict[str, Any]:
        return {"switches": [dict(s) for s in self.switches]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.switches = [dict(s) for s in state_dict.get("switches", [])]
