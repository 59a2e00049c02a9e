"""``SteeringSweep``: at the end of ``fit``, generate for held-out prompts along a grid of preferences from all
weight on one attribute to all on another, score the outputs with offline scorers, print the table (means
with 95% bootstrap intervals over prompts, Spearman ρ, the ends' difference) and write ``sweep.md``,
``sweep.csv`` and ``sweep.png`` (``zoo.steering``) under ``<log_dir>/steering``.

Works for every method that implements the steering interface (``zoo.preference``); a method that cannot
mix two attributes (MEET's text or LoRA controls) is swept at the grid's ends only, and says so.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L

from zoo.preference import PreferenceError, interpolation_grid
from zoo.scorers import build_scorers
from zoo.steering import SweepResult, steering_sweep


class SteeringSweep(L.Callback):
    """Args:
        scorers: offline scorer names (``zoo.scorers.build_scorers``), e.g. ``[verbosity, sentiment]``.
        between: the two attributes to sweep between (default: the model's first two).
        points: grid points from (1, 0) to (0, 1), ends included.
        num_prompts: held-out prompts from the datamodule's ``predict`` split.
        out_dir: default ``<log_dir>/steering``.
    """

    def __init__(self, scorers: list[str], between: list[str] | None = None, points: int = 5,
                 num_prompts: int = 16, out_dir: str | None = None):
        if points < 2:
            raise ValueError(f"SteeringSweep: points must be >= 2, got {points}")
        self.scorer_names, self.between, self.points = scorers, between, points
        self.num_prompts, self.out_dir = num_prompts, out_dir
        self.result: SweepResult | None = None
        self.png: Path | None = None

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # trainer.log_dir broadcasts from rank 0: every rank must ask, before the others return
        out = Path(self.out_dir or Path(trainer.log_dir or trainer.default_root_dir) / "steering")
        if not trainer.is_global_zero:
            return
        attrs = list(getattr(pl_module, "attributes", []))
        if len(attrs) < 2:
            print(f"SteeringSweep: {type(pl_module).__name__} has fewer than two steering attributes; no sweep")
            return
        a, b = self.between or attrs[:2]
        prompt_ids = trainer.datamodule.loader("predict").dataset["prompt_ids"][: self.num_prompts]
        prompts = [pl_module.tokenizer.decode(p) for p in prompt_ids]

        done: dict = {}

        def generate(pref):
            if pref not in done:
                with pl_module.steer(pref):
                    done[pref] = pl_module.generate(prompt_ids).texts
            return done[pref]

        grid = interpolation_grid(attrs, a, b, self.points)
        try:
            generate(grid[1])  # kept for the sweep
        except PreferenceError as e:  # the method takes one attribute at a time
            print(f"SteeringSweep: {e}; sweeping the two ends only")
            grid = [grid[0], grid[-1]]
        self.result = steering_sweep(generate, grid, a, prompts, build_scorers(self.scorer_names),
                                     pl_module.sampling.n)
        self.png = self.result.write(out, title=f"{type(pl_module).__name__} steering sweep")
        print(f"\nSteering sweep ({len(prompts)} held-out prompts):\n{self.result.table()}\n"
              f"(table, per-prompt scores and plot: {out}/sweep.md, sweep.csv, {self.png.name})")

    # ---- for callbacks.summary.RunSummary ----------------------------------------------------------------
    def summary_lines(self) -> list[str]:
        if self.result is None:
            return []
        r = self.result
        prompts = next(iter(r.scores.values())).shape[1]
        return ([f"Steering  {len(r.grid)} weight vectors from {r.grid[0].label()} to {r.grid[-1].label()}, "
                 f"{prompts} held-out prompts (95% bootstrap intervals over prompts):"]
                + ["  " + line[2:] for line in r.verdicts()])

    def written_paths(self) -> list[tuple[str, Path]]:
        return [("steering sweep (plot, table, per-prompt scores)", self.png)] if self.png else []
