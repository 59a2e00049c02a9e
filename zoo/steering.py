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
from zoo.scorers import LengthScorer, Scorer, score_all


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

    def follows_weight(self, attr: str, min_rho: float = 0.9) -> bool:
        """``attr`` (one of the two swept attributes) moves with its own weight: Spearman ρ between that weight
        (λ for ``axis``, 1 − λ for the other) and the attribute's mean is at least ``min_rho``, and the ends
        differ beyond their 95% interval in that direction."""
        want = self.expected(attr)
        if not want:
            raise ValueError(f"{attr!r} is not one of the two swept attributes ({self.axis}, {self.other})")
        sign = 1 if want == "up" else -1
        rho = self.spearman(attr)
        _, lo, hi = self.ends(attr)
        return bool(not np.isnan(rho) and sign * rho >= min_rho and (lo > 0 if sign > 0 else hi < 0))

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
        lines += self.verdicts()
        return "\n".join(lines)

    def verdicts(self) -> list[str]:
        """One line per attribute: ρ, the ends' difference with its interval, and whether it follows its weight."""
        lines = []
        for a in self.scores:
            d, lo, hi = self.ends(a)
            want = self.expected(a)
            verdict = ("" if not want else
                       "; follows its weight" if self.follows_weight(a) else "; does NOT follow its weight")
            lines.append(f"- {a}: Spearman ρ(λ, mean) = {self.spearman(a):.2f}; λ=1 end − λ=0 end = {d:.3f} "
                         f"[{lo:.3f}, {hi:.3f}] ({'beyond' if self.beyond_noise(a) else 'within'} its 95% interval)"
                         + verdict)
        return lines

    def write(self, out_dir: str | Path, title: str = "steering sweep") -> Path:
        """``sweep.md``, ``sweep.csv`` (one row per grid point and prompt) and ``sweep.png``."""
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
        self.plot(out / "sweep.png", title=f"{title} — {prompts} held-out prompts")
        return out / "sweep.png"

    def expected(self, attr: str) -> str:
        """Which way ``attr`` should move as λ (the weight on ``axis``) rises: up, down, or '' (a side measure)."""
        return "up" if attr == self.axis else "down" if attr == self.other else ""

    def plot(self, path: str | Path, title: str = "steering sweep") -> None:
        """One panel per measured attribute: the mean over prompts against λ with its 95% band, the expected
        direction, Spearman ρ and the ends' difference with its interval (beyond or within noise)."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        attrs = list(self.scores)
        fig, axes = plt.subplots(1, len(attrs), figsize=(4.2 * len(attrs), 3.8), squeeze=False)
        order = np.argsort(self.lam)
        lam = self.lam[order]
        for ax, attr in zip(axes[0], attrs):
            cis = np.array(self.intervals(attr))[order]
            means = self.means(attr)[order]
            d, lo, hi = self.ends(attr)
            beyond = self.beyond_noise(attr)
            want = self.expected(attr)
            ok = beyond and ((want == "up" and lo > 0) or (want == "down" and hi < 0))
            color = "tab:green" if ok else ("tab:red" if want else "tab:gray")
            ax.fill_between(lam, cis[:, 0], cis[:, 1], alpha=0.2, color=color, label="95% interval (prompts)")
            ax.plot(lam, means, "o-", color=color, label="mean over prompts")
            ax.set_xlabel(f"weight on {self.axis}  (1 − weight on {self.other})")
            ax.set_xlim(-0.05, 1.05)
            expect = {"up": "should rise with λ", "down": "should fall with λ", "": "side measure"}[want]
            ax.set_title(f"{attr} — {expect}\nSpearman ρ = {self.spearman(attr):+.2f}", fontsize=10)
            ax.text(0.02, 0.02, f"λ=1 − λ=0: {d:+.3g} [{lo:+.3g}, {hi:+.3g}]\n"
                                f"{'beyond' if beyond else 'within'} the 95% interval",
                    transform=ax.transAxes, fontsize=8, va="bottom",
                    bbox={"facecolor": "white", "alpha": 0.8, "edgecolor": "none"})
            ax.grid(alpha=0.3)
        axes[0][0].legend(fontsize=7, loc="upper left")
        fig.suptitle(title)
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)

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
    ``n`` samples. ``words`` (length) is always measured besides the scorers' attributes, unless a scorer
    already counts words (``verbosity``)."""
    per_point: dict[str, list[np.ndarray]] = {}
    counts_words = any(isinstance(s, LengthScorer) and s.unit == "words" for s in scorers)
    expanded = [p for p in prompts for _ in range(n)]
    for pref in grid:
        texts = generate(pref)
        if len(texts) != len(expanded):
            raise ValueError(f"generate({pref.label()}) returned {len(texts)} texts for {len(prompts)} prompts × {n}")
        scores = score_all(scorers, expanded, texts)
        if not counts_words:  # length is the usual side effect of steering anything: always measured once
            scores.setdefault("words", [float(len(t.split())) for t in texts])
        for attr, values in scores.items():
            per_point.setdefault(attr, []).append(np.asarray(values, dtype=float).reshape(len(prompts), n).mean(1))
    return SweepResult(axis=axis, grid=list(grid), scores={a: np.stack(v) for a, v in per_point.items()})
