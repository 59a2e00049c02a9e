"""The online loop's memory: what each round sampled and how it scored.

Online methods (rejection sampling, learning from textual feedback, direction-conditioned fine-tuning) repeat *round = sample → score → build data →
train*. A ``RoundPool`` keeps every round's samples as records (``ScoredResponse``, or ``FeedbackResponse`` where a
round's samples got textual feedback) together with the round index and the policy version (global step) that
produced them. It is part of every checkpoint (so a run killed
while sampling or training continues as if uninterrupted) and is also written as JSON Lines per round
(``zoo.records.write_records``: ``datamodules.records_file.RecordsFileDataModule`` reads them back) for
inspection.

Sampling a round is deterministic given the policy and ``round_seed(seed, round)``: a round re-sampled after a
crash produces the same pool.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zoo.records import RECORD_TYPES, Record, ScoredResponse, write_records


def round_seed(seed: int, round_index: int) -> int:
    """The sampling seed of a round: fixed by (seed, round), whatever happened before."""
    return seed * 1_000_003 + round_index


@dataclass
class Round:
    """One round: every sample (prompt-major: ``n`` per prompt) and the step of the policy that sampled it.
    Samples are ``ScoredResponse`` records unless a method keeps another kind (all of one kind per round)."""

    index: int
    policy_step: int
    n: int
    samples: list[Record] = field(default_factory=list)

    def for_prompt(self, i: int) -> list[Record]:
        return self.samples[i * self.n : (i + 1) * self.n]

    @property
    def num_prompts(self) -> int:
        return len(self.samples) // self.n

    def state(self) -> dict[str, Any]:
        kind = self.samples[0].kind if self.samples else ScoredResponse.kind
        return {"index": self.index, "policy_step": self.policy_step, "n": self.n, "kind": kind,
                "samples": [s.to_row() for s in self.samples]}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Round:
        record = RECORD_TYPES[state.get("kind", ScoredResponse.kind)]
        return cls(state["index"], state["policy_step"], state["n"], [record.from_row(row) for row in state["samples"]])


class RoundPool:
    """Rounds by index; ``state_dict`` / ``load_state_dict`` put it in checkpoints (plain values only)."""

    def __init__(self) -> None:
        self.rounds: dict[int, Round] = {}

    def __contains__(self, index: int) -> bool:
        return index in self.rounds

    def __getitem__(self, index: int) -> Round:
        return self.rounds[index]

    def add(self, rnd: Round) -> None:
        self.rounds[rnd.index] = rnd

    def drop(self, index: int) -> None:
        """Forget round ``index`` (a method that trains on the newest round only keeps checkpoints small; the
        round's JSONL file stays)."""
        self.rounds.pop(index, None)

    def write_jsonl(self, directory: str | Path, index: int) -> Path:
        """Round ``index`` as ``round-<index>.jsonl`` (one scored record per line)."""
        path = Path(directory) / f"round-{index}.jsonl"
        write_records(path, self.rounds[index].samples)
        return path

    def state_dict(self) -> dict[str, Any]:
        return {"rounds": [r.state() for _, r in sorted(self.rounds.items())]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rounds = {r["index"]: Round.from_state(r) for r in state.get("rounds", [])}


def checked_scores(scores: dict[str, list[float]], expected: int, where: str) -> dict[str, list[float]]:
    """A scorer's output, refused with a clear message when a list has the wrong length or holds NaN / inf."""
    for name, values in scores.items():
        if len(values) != expected:
            raise ValueError(f"{where}: scorer output {name!r} has {len(values)} scores for {expected} samples")
        bad = [i for i, v in enumerate(values) if not isinstance(v, (int, float)) or not math.isfinite(v)]
        if bad:
            raise ValueError(f"{where}: scorer output {name!r} is not a finite number for samples {bad[:5]} "
                             f"(e.g. {values[bad[0]]!r})")
    return scores


def objective(scores: dict[str, Sequence[float]], weights: dict[str, float]) -> list[float]:
    """Σ_a w_a · score_a per sample: the scalar a round selects on."""
    missing = sorted(set(weights) - set(scores))
    if missing:
        raise ValueError(f"objective names {missing}, which no scorer produces (scorers give {sorted(scores)})")
    n = len(next(iter(scores.values())))
    return [sum(w * scores[a][i] for a, w in weights.items()) for i in range(n)]
