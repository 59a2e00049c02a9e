"""``RunSummary``: the short report every embedded demo ends with.

At the end of ``fit`` it prints

- what trained: method, model, trainable parameters, optimizer steps, data (examples per split);
- the method's headline held-out metrics before → after training, each a mean over the validation examples
  with a 95% bootstrap interval over examples, and the paired change with its own interval. "Before" is
  measured, not assumed: the same validation pass run once just before the first training step
  (``on_train_start``; a resumed run says at which step it measured). The metrics come from the module's
  ``example_metrics(batch)`` (per-example values; NaN where an example does not count), so this callback
  knows no method;
- lines other callbacks contribute through ``summary_lines()`` (the steering sweep, the judge);
- where the outputs are: checkpoints, the ``save_pretrained`` directory, logs, plots (all under
  ``trainer.default_root_dir``);
- the one command that uses the result (``predict``, with ``--steer`` for a steerable method).
"""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from zoo.steering import bootstrap_interval


def measure(trainer: L.Trainer, module: L.LightningModule, split: str = "validation",
            max_batches: int | None = None) -> dict[str, np.ndarray]:
    """``module.example_metrics`` over every example of ``split`` (eval mode, no gradients): name -> [N]."""
    dm = trainer.datamodule
    if dm is None or not hasattr(dm, "loader") or not hasattr(module, "example_metrics"):
        return {}
    if split not in getattr(dm, "datasets", {}):
        return {}
    was_training = module.training
    module.eval()
    values: dict[str, list[torch.Tensor]] = {}
    try:
        with torch.no_grad(), trainer.precision_plugin.forward_context():
            for i, batch in enumerate(dm.loader(split, all_examples=True)):
                if max_batches is not None and i >= max_batches:
                    break
                batch = {k: v.to(module.device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
                for name, v in module.example_metrics(batch, split).items():
                    values.setdefault(name, []).append(v.detach().float().cpu())
    finally:
        module.train(was_training)
    return {k: torch.cat(v).numpy() for k, v in values.items()}


def mean_ci(values: np.ndarray) -> tuple[float, float, float, int]:
    """(mean, low, high, n) over the non-NaN values: a 95% percentile bootstrap interval of the mean."""
    v = values[~np.isnan(values)]
    if len(v) == 0:
        return float("nan"), float("nan"), float("nan"), 0
    lo, hi = bootstrap_interval(v)
    return float(v.mean()), lo, hi, len(v)


def _fmt(mean: float, lo: float, hi: float, signed: bool = False) -> str:
    f = "{:+.3f}" if signed else "{:.3f}"
    return f"{f.format(mean)} [{f.format(lo)}, {f.format(hi)}]"


def metric_rows(before: dict[str, np.ndarray], after: dict[str, np.ndarray]) -> list[str]:
    """One line per metric: before, after and the paired change, each with its interval."""
    lines = []
    width = max((len(k) for k in after), default=6)
    for name, a in after.items():
        b = before.get(name)
        ma = mean_ci(a)
        cells = [f"{name:<{width}}"]
        if b is not None and len(b) == len(a):
            mb = mean_ci(b)
            keep = ~(np.isnan(a) | np.isnan(b))
            d = a[keep] - b[keep]
            md = mean_ci(d) if len(d) else (float("nan"),) * 4
            beyond = md[1] > 0 or md[2] < 0
            cells += [_fmt(*mb[:3]), "→", _fmt(*ma[:3]), f"change {_fmt(*md[:3], signed=True)}",
                      "(beyond noise)" if beyond else "(within noise)", f"n={ma[3]}"]
        else:
            cells += [_fmt(*ma[:3]), f"n={ma[3]}"]
        lines.append("  " + "  ".join(cells))
    return lines


def config_args() -> list[str]:
    """The ``--config`` files of this process's command line (what the user ran)."""
    argv, out = sys.argv[1:], []
    for i, arg in enumerate(argv):
        if arg == "--config" and i + 1 < len(argv):
            out.append(argv[i + 1])
        elif arg.startswith("--config="):
            out.append(arg.split("=", 1)[1])
    return out


class RunSummary(L.Callback):
    """Prints the run summary at the end of ``fit`` (see the module docstring).

    Args:
        max_batches: validation batches measured before and after (default: all).
        split: the held-out split measured (``validation``).
    """

    def __init__(self, max_batches: int | None = None, split: str = "validation"):
        self.max_batches, self.split = max_batches, split
        self.before: dict[str, np.ndarray] = {}
        self.after: dict[str, np.ndarray] = {}
        self.before_step: int | None = None
        self.text: str | None = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.before_step = trainer.global_step
        self.before = measure(trainer, pl_module, self.split, self.max_batches)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.after = measure(trainer, pl_module, self.split, self.max_batches)
        if trainer.is_global_zero:
            self.text = self.report(trainer, pl_module)
            print(self.text, flush=True)

    # ---- the report ---------------------------------------------------------------------------------------
    def report(self, trainer: L.Trainer, module: L.LightningModule) -> str:
        root = Path(trainer.default_root_dir)
        lines = ["", f"──── {type(module).__name__} run summary " + "─" * 60]
        lines += ["Trained   " + self.trained(trainer, module), "Data      " + self.data(trainer)]
        if self.after:
            n = len(next(iter(self.after.values())))
            start = "step 0" if self.before_step == 0 else f"step {self.before_step} (resumed)"
            lines.append(f"Held-out  {n} {self.split} examples; mean [95% bootstrap interval over examples], "
                         f"before = measured at {start}, after = step {trainer.global_step}:")
            lines += metric_rows(self.before, self.after)
        for cb in trainer.callbacks:
            extra = getattr(cb, "summary_lines", None)
            if callable(extra):
                lines += extra()
        lines.append("Outputs   (under trainer.default_root_dir = " + str(root) + ")")
        lines += ["  " + line for line in self.outputs(trainer)]
        lines.append("Use it    " + self.command(trainer, module))
        lines.append("─" * 80)
        return "\n".join(lines)

    @staticmethod
    def trained(trainer: L.Trainer, module: L.LightningModule) -> str:
        params = sum(p.numel() for p in module.parameters() if p.requires_grad)
        total = sum(p.numel() for p in module.parameters())
        backbone = getattr(getattr(module, "backbone_cfg", None), "name_or_path", "?")
        dm = trainer.datamodule
        batch = getattr(dm, "batch_size", None)
        epochs = trainer.current_epoch + (0 if trainer.fit_loop.epoch_loop.done else 1)
        return (f"{type(module).__name__} on {backbone}: {params:,} of {total:,} parameters trainable, "
                f"{trainer.global_step} optimizer steps ({epochs} epoch(s), batch {batch})")

    @staticmethod
    def data(trainer: L.Trainer) -> str:
        dm = trainer.datamodule
        if dm is None:
            return "(no datamodule)"
        source = getattr(dm, "data_files", None)
        where = "hub" if source is None else ("files " + ", ".join(sorted({str(Path(f[0]).name) for f in source.values()})))
        reports = getattr(dm, "reports", {})
        counts = ", ".join(f"{s} {r.get('examples', 0) - r.get('dropped', 0)}"
                           + (f" ({r['truncated']} truncated)" if r.get("truncated") else "")
                           + (f" ({r['dropped']} dropped)" if r.get("dropped") else "")
                           for s, r in reports.items())
        return f"{type(dm).__name__} ({where}): examples {counts}"

    @staticmethod
    def outputs(trainer: L.Trainer) -> list[str]:
        out = []
        for cb in trainer.checkpoint_callbacks:
            if isinstance(cb, ModelCheckpoint):
                for path in (cb.last_model_path, cb.best_model_path):  # last first: what a resume or predict uses
                    if path and f"checkpoint: {path}" not in out:
                        out.append(f"checkpoint: {path}")
        for cb in trainer.callbacks:
            written = getattr(cb, "written_paths", None)
            if callable(written):
                out += [f"{kind}: {path}" for kind, path in written()]
        dm = trainer.datamodule
        if dm is not None and getattr(dm, "log_dir", None) is not None and Path(dm.log_dir).exists():
            out.append(f"data reports (counts, skipped rows, length drops): {dm.log_dir}")
        for logger in trainer.loggers:
            if getattr(logger, "log_dir", None):
                out.append(f"logs ({type(logger).__name__}): {logger.log_dir}")
        return out

    @staticmethod
    def command(trainer: L.Trainer, module: L.LightningModule) -> str:
        """``predict`` with this run's configs and last checkpoint (``--steer`` for a steerable method), unless the
        module says how its result is used (``usage(written)``, e.g. a reward model scores, it does not generate)."""
        usage = getattr(module, "usage", None)
        if callable(usage):
            written = dict(kv for cb in trainer.callbacks if callable(getattr(cb, "written_paths", None))
                           for kv in cb.written_paths())
            text = usage(written)
            if text:
                return text
        configs = config_args()
        if not configs and trainer.log_dir:
            configs = [str(Path(trainer.log_dir) / "config.yaml")]
        ckpt = next((cb.last_model_path for cb in trainer.checkpoint_callbacks
                     if isinstance(cb, ModelCheckpoint) and cb.last_model_path), None)
        parts = ["python train.py predict"] + [f"--config {shlex.quote(c)}" for c in configs]
        if ckpt:
            parts.append(f"--ckpt_path {shlex.quote(ckpt)}")
        attrs = list(getattr(module, "attributes", []) or [])
        if attrs:
            parts.append("--steer " + shlex.quote(json.dumps({attrs[0]: 1.0})))
        return " ".join(parts)
