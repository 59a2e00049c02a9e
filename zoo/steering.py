"""Steering sweeps: the same held-out prompts under a grid of preferences, scored by offline scorers.

A sweep moves the weight λ from one attribute ``a`` to another ``b`` (``zoo.preference.interpolation_grid``:
(1, 0) … (0, 1)), generates for every prompt at every grid point, and scores each output with honest offline
scorers (length, VADER, a classifier…; never a label the model was told). It reports, per measured
attribute, the mean over prompts at each point with a 95% bootstrap interval over prompts, Spearman's ρ
between λ and those means, and the difference between the two ends with its own paired bootstrap interval.
Prompts, not samples, are the unit of resampling: a few prompts are noise, and the interval says how much.

Method-agnostic: a method supplies ``generate(preference) -> texts`` (``n`` per prompt, prompt-major) through
the one steering interface, so every steerable method shares the table and the plot.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import stats

from zoo.preference import Preference
from zoo.scorers import Scorer, score_all


def bootstrap_interval(values: np.ndarray, level: float = 0.95, resamples: int = 2000,
                       seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values`` (resampled with replacement)."""
    values = np.asarray(values, dtype=float)
    if len(values) < 2:
        return float(values.mean()), float(values.mean())
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), size=(resamples, len(values)))].mean(1)
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


@dataclass
class SweepResult:
    """Per-prompt scores [points, prompts] of every measured attribute along a steering grid."""

    axis: str  # the attribute whose weight is λ
    grid: list[Preference]
    scores: dict[str, np.ndarray]

    @property
    def lam(self) -> np.ndarray:
        i = self.grid[0].attributes.index(self.axis)
        return np.array([p.weights[i] for p in self.grid])

    def means(self, attr: str) -> np.ndarray:
        return self.scores[attr].mean(1)

    def intervals(self, attr: str) -> list[tuple[float, float]]:
        return [bootstrap_interval(row) for row in self.scores[attr]]

    def spearman(self, attr: str) -> float:
        """ρ between λ and the attribute's mean over the grid (NaN when either is constant)."""
        means = self.means(attr)
        if np.ptp(means) == 0:
            return float("nan")
        return float(stats.spearmanr(self.lam, means).statistic)

    def ends(self, attr: str) -> tuple[float, float, float]:
        """(mean, low, high) of score(λ = 1 end) − score(λ = 0 end), paired over prompts."""
        first, last = self.scores[attr][0], self.scores[attr][-1]
        diff = first - last if self.lam[0] > self.lam[-1] else last - first
        lo, hi = bootstrap_interval(diff)
        return float(diff.mean()), lo, hi

    def beyond_noise(self, attr: str) -> bool:
        """The two ends differ by more than their 95% interval (it excludes 0)."""
        _, lo, hi = self.ends(attr)
        return lo > 0 or hi < 0

    def table(self) -> str:
        attrs = list(self.scores)
        head = ["λ(" + self.axis + ")", "preference"] + [f"{a} (95% CI)" for a in attrs]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        cis = {a: self.intervals(a) for a in attrs}
        for k, pref in enumerate(self.grid):
            cells = [f"{self.lam[k]:.2f}", pref.label()]
            cells += [f"{self.means(a)[k]:.3f} [{cis[a][k][0]:.3f}, {cis[a][k][1]:.3f}]" for a in attrs]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
        for a in attrs:
            d, lo, hi = self.ends(a)
            lines.append(f"- {a}: Spearman ρ(λ, mean) = {self.spearman(a):.2f}; λ=1 end − λ=0 end = {d:.3f} "
                         f"[{lo:.3f}, {hi:.3f}] ({'beyond' if self.beyond_noise(a) else 'within'} its 95% interval)")
        return "\n".join(lines)

    def write(self, out_dir: str | Path, title: str = "steering sweep") -> Path:
        """``sweep.md``, ``sweep.csv`` (one row per grid point and prompt) and ``sweep.png``."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        prompts = next(iter(self.scores.values())).shape[1]
        (out / "sweep.md").write_text(f"# {title}\n\n{prompts} held-out prompts; intervals: bootstrap over prompts\n\n"
                                      + self.table() + "\n")
        with open(out / "sweep.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["lambda", "preference", "prompt", *self.scores])
            for k, pref in enumerate(self.grid):
                for i in range(prompts):
                    writer.writerow([self.lam[k], pref.label(), i, *(self.scores[a][k, i] for a in self.scores)])
        attrs = list(self.scores)
        fig, axes = plt.subplots(1, len(attrs), figsize=(3.6 * len(attrs), 3.3), squeeze=False)
        for ax, attr in zip(axes[0], attrs):
            cis = np.array(self.intervals(attr))
            ax.fill_between(self.lam, cis[:, 0], cis[:, 1], alpha=0.25, color="tab:blue", label="95% CI")
            ax.plot(self.lam, self.means(attr), "o-", color="tab:blue", label="mean over prompts")
            ax.set_xlabel(f"λ on {self.axis} (1 − λ on {self.other})")
            ax.set_title(f"{attr}  (ρ = {self.spearman(attr):.2f})")
            ax.grid(alpha=0.3)
        axes[0][0].legend(fontsize=7)
        fig.suptitle(f"{title} — {prompts} prompts")
        fig.tight_layout()
        fig.savefig(out / "sweep.png", dpi=120)
        plt.close(fig)
        return out / "sweep.png"

    @property
    def other(self) -> str:
        nonzero = [a for a, w in zip(self.grid[-1].attributes, self.grid[-1].weights) if w and a != self.axis]
        return nonzero[0] if nonzero else "the rest"


def steering_sweep(
    generate: Callable[[Preference], list[str]],
    grid: Sequence[Preference],
    axis: str,
    prompts: Sequence[str],
    scorers: Sequence[Scorer],
    n: int = 1,
) -> SweepResult:
    """Generate under each preference of ``grid`` and score every output; a prompt's score is the mean of its
    ``n`` samples. ``words`` (length) is always measured besides the scorers' attributes."""
    per_point: dict[str, list[np.ndarray]] = {}
    expanded = [p for p in prompts for _ in range(n)]
    for pref in grid:
        texts = generate(pref)
        if len(texts) != len(expanded):
            raise ValueError(f"generate({pref.label()}) returned {len(texts)} texts for {len(prompts)} prompts × {n}")
        scores = score_all(scorers, expanded, texts)
        scores.setdefault("words", [float(len(t.split())) for t in texts])
        for attr, values in scores.items():
            per_point.setdefault(attr, []).append(np.asarray(values, dtype=float).reshape(len(prompts), n).mean(1))
    return SweepResult(axis=axis, grid=list(grid), scores={a: np.stack(v) for a, v in per_point.items()})
