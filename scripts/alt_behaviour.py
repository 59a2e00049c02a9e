"""Does ALT steer? Held-out reward before and after an ALT ``fit``, conditioned both ways.

    python scripts/alt_behaviour.py --out docs/figures/alt_embedded -- --config configs/alt.yaml [CLI overrides]

On the config's held-out prompts (the ``validation`` split), with the config's ``eval_sampling``:
1. *iteration 0*: the initial policy, unconditioned (what ALT's first round samples);
2. ``fit`` (every iteration of the config);
3. the trained policy conditioned on the best feedback (the exemplar) and on the worst (the last label).
Scored by the config's scorers and objective (the reward). Reported (``behaviour.json``, ``behaviour.md``,
``behaviour.png``): each condition's mean over prompts with a 95% bootstrap interval over prompts
(``zoo.steering.bootstrap_interval``), and the paired per-prompt differences best − iteration 0 and
best − worst with their own intervals; "beyond" means the difference's interval excludes 0.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lightning_modules.cli import main as cli_main  # noqa: E402
from zoo.rounds import objective  # noqa: E402
from zoo.scorers import score_all  # noqa: E402
from zoo.steering import bootstrap_interval  # noqa: E402


def held_out_rewards(module, prompt_ids, feedback: str | None) -> np.ndarray:
    """Mean reward per prompt of ``eval_sampling`` samples (``feedback`` None: unconditioned)."""
    rewards = []
    was_training = module.training
    module.eval()
    for start in range(0, len(prompt_ids), 32):
        ids = prompt_ids[start : start + 32]
        samples = module.conditioned_samples(ids, [feedback] * len(ids), module.eval_sampling)
        prompts = [p for p in samples.prompts for _ in range(samples.n)]
        texts = [t if t.strip() else "(empty)" for t in samples.texts]
        values = objective(score_all(module.scorers, prompts, texts), module.objective_weights)
        rewards += list(np.asarray(values).reshape(len(ids), samples.n).mean(1))
    module.train(was_training)
    return np.asarray(rewards)


def summary(values: np.ndarray) -> dict[str, float]:
    lo, hi = bootstrap_interval(values)
    return {"mean": float(values.mean()), "low": lo, "high": hi}


def run(cli_args: list[str], out: Path) -> dict:
    t0 = time.time()
    cli = cli_main(cli_args, run=False)
    module, dm, trainer = cli.model, cli.datamodule, cli.trainer
    dm.setup("validate")
    prompt_ids = [list(p) for batch in dm.loader("validation") for p in batch["prompt_ids"]]
    module.configure_model()
    start = held_out_rewards(module, prompt_ids, None)
    trainer.fit(module, datamodule=dm)
    best, worst = module.feedback_text(0), module.feedback_text(len(module.labels) - 1)
    after_best = held_out_rewards(module, prompt_ids, best)
    after_worst = held_out_rewards(module, prompt_ids, worst)
    report = {
        "prompts": len(prompt_ids), "samples_per_prompt": module.eval_sampling.n,
        "iterations": trainer.max_epochs / module.epochs_per_round, "best": best, "worst": worst,
        "iteration_0": summary(start), "best_feedback": summary(after_best), "worst_feedback": summary(after_worst),
        "best_minus_iteration_0": summary(after_best - start), "best_minus_worst": summary(after_best - after_worst),
        "minutes": (time.time() - t0) / 60, "args": cli_args,
    }
    for key in ("best_minus_iteration_0", "best_minus_worst"):
        report[key]["beyond_95"] = report[key]["low"] > 0
    write(report, {"iteration 0 (unconditioned)": start, f"after: {best}": after_best, f"after: {worst}": after_worst},
          out)
    return report


def write(report: dict, per_prompt: dict[str, np.ndarray], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    (out / "behaviour.json").write_text(json.dumps(report, indent=2))
    lines = [f"# ALT behaviour: {report['prompts']} held-out prompts x {report['samples_per_prompt']} samples, "
             f"{report['iterations']:g} iterations, {report['minutes']:.1f} min", "",
             "| condition | mean reward | 95% interval (bootstrap over prompts) |", "|---|---|---|"]
    for key in ("iteration_0", "best_feedback", "worst_feedback", "best_minus_iteration_0", "best_minus_worst"):
        s = report[key]
        lines.append(f"| {key} | {s['mean']:.3f} | [{s['low']:.3f}, {s['high']:.3f}] |")
    (out / "behaviour.md").write_text("\n".join(lines) + "\n")
    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    for k, values in enumerate(per_prompt.values()):
        s = summary(values)
        ax.errorbar([k], [s["mean"]], yerr=[[s["mean"] - s["low"]], [s["high"] - s["mean"]]], fmt="o", capsize=6)
        ax.scatter(np.full(len(values), k + 0.15), values, s=6, alpha=0.35)
    ax.set_xticks(range(len(per_prompt)), list(per_prompt), fontsize=8)
    ax.set_ylabel("held-out reward (per-prompt mean)")
    ax.set_title(f"ALT: {report['prompts']} held-out prompts, mean and 95% bootstrap interval", fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "behaviour.png", dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs/alt/behaviour")
    parser.add_argument("cli", nargs=argparse.REMAINDER, help="-- then train.py fit arguments (--config …)")
    ns = parser.parse_args()
    args = ns.cli[1:] if ns.cli[:1] == ["--"] else ns.cli
    result = run(args, Path(ns.out))
    print(json.dumps({k: v for k, v in result.items() if k != "args"}, indent=2))
