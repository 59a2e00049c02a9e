"""Rejection-sampling fine-tuning (best-of-n): RAFT (Dong et al., 2023) and DPA's iterative RSF step
(Wang et al., 2024, "Arithmetic Control of LLMs for Diverse User Preferences", §2.2), on the online loop.

Each round (``lightning_modules.online``): sample n replies per prompt from the current policy, score them,
keep the best per prompt (``selection: best``; or the ``top_k`` per prompt, or every sample at or above the
round's ``quantile`` of the objective), add a replay of the data's original demonstrations
(``replay_fraction`` of the round's training data; DPA: about 15%), and fine-tune with the SFT loss on the
completion tokens only (``zoo.losses.nll_loss``). ``restart_each_round``: train every round from the initial
weights (DPA) rather than continue (RAFT).

Where the papers are silent (our choices, each a switch): ties in the objective keep the earliest sample;
replayed demonstrations are drawn uniformly without replacement, seeded per round; an empty sampled reply is
kept as the text "(empty)" so it can still be scored and rejected.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from typing import Any, Literal

from lightning_modules.online import OnlineModule
from lightning_modules.sft import SFT
from zoo.records import Demonstration, Record
from zoo.rounds import Round, round_seed

Selection = Literal["best", "top_k", "quantile"]


class RSF(OnlineModule, SFT):
    """Best-of-n rejection sampling, then SFT on the kept samples, in rounds.

    Args:
        selection: ``best`` (one per prompt), ``top_k`` (``top_k`` per prompt) or ``quantile`` (every sample at or
            above the round's ``quantile`` of the objective).
        top_k / quantile: see ``selection``.
        replay_fraction: share of each round's training data that are the data's own demonstrations.
        (see ``OnlineModule`` for scorers, objective, prompts_per_round, samples_per_prompt, restart_each_round…)
    """

    def __init__(self, selection: Selection = "best", top_k: int = 1, quantile: float = 0.75,
                 replay_fraction: float = 0.0, **kwargs: Any):
        if selection not in ("best", "top_k", "quantile"):
            raise ValueError(f"model.selection must be best, top_k or quantile, got {selection!r}")
        if not 0 <= replay_fraction < 1:
            raise ValueError(f"model.replay_fraction must lie in [0, 1), got {replay_fraction}")
        if not 0 < quantile < 1 or top_k < 1:
            raise ValueError(f"model.quantile must lie in (0, 1) and model.top_k be >= 1 (got {quantile}, {top_k})")
        self.selection, self.top_k, self.quantile, self.replay_fraction = selection, top_k, quantile, replay_fraction
        super().__init__(**kwargs)
        if selection == "top_k" and top_k > self.samples_per_prompt:
            raise ValueError(f"model.top_k ({top_k}) exceeds samples_per_prompt ({self.samples_per_prompt})")

    def method_hparams(self) -> dict[str, Any]:
        return {**super().method_hparams(), "selection": self.selection, "top_k": self.top_k,
                "quantile": self.quantile, "replay_fraction": self.replay_fraction}

    def select(self, rnd: Round) -> list[int]:
        """Indices into ``rnd.samples`` of the kept samples, prompt by prompt."""
        values = self.objective_of(rnd.samples)
        if self.selection == "quantile":
            cut = sorted(values)[min(int(math.floor(self.quantile * len(values))), len(values) - 1)]
            return [k for k, v in enumerate(values) if v >= cut]
        keep = 1 if self.selection == "best" else self.top_k
        kept = []
        for i in range(rnd.num_prompts):
            rows = range(i * rnd.n, (i + 1) * rnd.n)
            kept += sorted(sorted(rows, key=lambda k: -values[k])[:keep])  # stable: ties keep the earliest
        return kept

    def round_records(self, rnd: Round, source: Sequence[Record], chosen: Sequence[int]) -> list[Record]:
        kept = [Demonstration(prompt=s.prompt, response=s.response, source_id=s.source_id)
                for s in (rnd.samples[k] for k in self.select(rnd))]
        replay = self.replay_count(len(kept))
        if replay:
            demos = [r for r in source if isinstance(r, Demonstration)]
            if not demos:
                raise ValueError("model.replay_fraction > 0 needs demonstration records from the data")
            rng = random.Random(round_seed(self.round_seed, rnd.index) + 1)
            kept += rng.sample(demos, min(replay, len(demos)))
        return kept

    def replay_count(self, kept: int) -> int:
        """Replayed demonstrations so that they make ``replay_fraction`` of the round's data."""
        return round(self.replay_fraction / (1 - self.replay_fraction) * kept)

    def round_size(self) -> int:
        prompts = self.prompts_per_round or 1
        per_prompt = {"best": 1, "top_k": self.top_k, "quantile": (1 - self.quantile) * self.samples_per_prompt}
        kept = max(round(prompts * per_prompt[self.selection]), 1)
        return kept + self.replay_count(kept)
