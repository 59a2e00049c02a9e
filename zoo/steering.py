"""Steering sweeps: the same prompts under several steering conditions, scored per attribute by offline
scorers, written as a table (Markdown + CSV) and a PNG. Method-agnostic: a method supplies
``generate(condition) -> texts``; CMPO's conditions are weight vectors, other methods' may be prompts.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Sequence
from pathlib import Path
from statistics import mean

from zoo.scorers import Scorer, score_all


def steering_sweep(
    generate: Callable[[str], list[str]],
    conditions: Sequence[str],
    prompts: Sequence[str],
    scorers: Sequence[Scorer],
    n: int = 1,
) -> list[dict[str, float | str]]:
    """One row per condition: mean score per attribute over ``prompts`` (× ``n`` samples) and mean length."""
    rows = []
    for condition in conditions:
        texts = generate(condition)
        expanded = [p for p in prompts for _ in range(n)]
        scores = score_all(scorers, expanded, texts)
        row: dict[str, float | str] = {"condition": condition}
        row.update({attr: mean(values) for attr, values in scores.items()})
        row["words"] = float(mean(len(t.split()) for t in texts))
        rows.append(row)
    return rows


def format_table(rows: Sequence[dict[str, float | str]]) -> str:
    cols = list(rows[0])
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        lines.append("| " + " | ".join(f"{r[c]:.3f}" if isinstance(r[c], float) else str(r[c]) for c in cols) + " |")
    return "\n".join(lines)


def write_sweep(rows: Sequence[dict[str, float | str]], out_dir: str | Path, title: str = "steering sweep") -> Path:
    """``sweep.md``, ``sweep.csv`` and ``sweep.png`` (one panel per attribute, a bar per condition)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "sweep.md").write_text(format_table(rows) + "\n")
    with open(out / "sweep.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    attrs = [c for c in rows[0] if c != "condition"]
    fig, axes = plt.subplots(1, len(attrs), figsize=(3.2 * len(attrs), 3.2), squeeze=False)
    labels = [str(r["condition"]) for r in rows]
    for ax, attr in zip(axes[0], attrs):
        ax.bar(range(len(rows)), [float(r[attr]) for r in rows], color="tab:blue")
        ax.set_xticks(range(len(rows)), labels, rotation=45, ha="right", fontsize=7)
        ax.set_title(attr)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out / "sweep.png", dpi=120)
    plt.close(fig)
    return out / "sweep.png"
