"""``SteeringSweep``: at the end of ``fit``, generate for held-out prompts under each one-hot steering
condition and a few mixtures, score the outputs with offline scorers, print the table, and write
``sweep.md`` / ``sweep.csv`` / ``sweep.png`` (``zoo.steering``)."""

from __future__ import annotations

from pathlib import Path

import lightning as L

from zoo.sampling import sample
from zoo.scorers import build_scorers
from zoo.steering import format_table, steering_sweep, write_sweep


class SteeringSweep(L.Callback):
    """Args:
        scorers: offline scorer names (``zoo.scorers.build_scorers``), e.g. ``[verbosity, sentiment]``.
        mixtures: extra conditions besides the one-hot ones, as weights by attribute name.
        num_prompts: prompts from the datamodule's ``predict`` split (rendered like training prompts).
        out_dir: default ``<log_dir>/steering``.
    """

    def __init__(self, scorers: list[str], mixtures: list[dict[str, float]] | None = None, num_prompts: int = 8,
                 out_dir: str | None = None):
        self.scorer_names, self.mixtures, self.num_prompts, self.out_dir = scorers, mixtures or [], num_prompts, out_dir

    def conditions(self, attributes: list[str]) -> dict[str, dict[str, float]]:
        conds = {a: {a: 1.0} for a in attributes}
        for mix in self.mixtures:
            conds["+".join(f"{w:g}*{a}" for a, w in mix.items())] = mix
        return conds

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero or not hasattr(pl_module, "steered"):
            return
        dm = trainer.datamodule
        if "predict" not in dm.datasets:
            dm.datasets["predict"] = dm.build_split("predict")
        prompt_ids = dm.datasets["predict"]["prompt_ids"][: self.num_prompts]
        prompts = [pl_module.tokenizer.decode(p) for p in prompt_ids]
        conds = self.conditions(pl_module.attributes)

        def generate(name: str) -> list[str]:
            with pl_module.steered(conds[name]):
                return sample(pl_module.model, pl_module.tokenizer, None, pl_module.sampling, prompt_ids).texts

        rows = steering_sweep(generate, list(conds), prompts, build_scorers(self.scorer_names), pl_module.sampling.n)
        out = Path(self.out_dir or Path(trainer.log_dir or "outputs") / "steering")
        png = write_sweep(rows, out, title=f"{type(pl_module).__name__} steering sweep")
        print(f"\nSteering sweep ({len(prompts)} prompts; scores are means of the offline scorers):\n"
              f"{format_table(rows)}\n(table and plot: {out}/sweep.md, {png})")
