"""``SteeringJudge``: at the end of ``fit``, a reward model judges the model's outputs under two preferences.

For held-out prompts (the datamodule's ``predict`` split) the model generates once under ``ours`` and once under
``theirs`` (MEET: the "good" control against the "bad" one), a reward model scores both replies of each prompt,
and each prompt is a win, a loss or a tie (tie when σ(r_ours − r_theirs) ∈ [0.45, 0.55], the MEET paper's
band; ``zoo.judge.reward_outcomes``). It prints and writes (``<log_dir>/judge/judge.md``, ``judge.jsonl``)
win / lose / tie rates and Δ = win − lose with a 95% bootstrap interval over prompts.

The judge is a steerzoo reward model directory (``save_pretrained`` of ``lightning_modules.RewardModel``:
``python train.py fit --config configs/reward_model.yaml`` writes ``runs/reward_model/hf``); no hub model is
needed. Works for any steerable method (``zoo.preference``).
"""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import numpy as np

from zoo.judge import reward_outcomes, win_rates
from zoo.steering import bootstrap_interval


class SteeringJudge(L.Callback):
    """Args:
        reward_model: a steerzoo reward-model directory (trunk + ``value_head.safetensors``).
        ours, theirs: the two preferences compared, by attribute name (default: MEET's good vs bad).
        num_prompts: held-out prompts from the ``predict`` split.
        out_dir: default ``<log_dir>/judge``.
    """

    def __init__(self, reward_model: str, ours: dict[str, float] | None = None,
                 theirs: dict[str, float] | None = None, num_prompts: int = 16, out_dir: str | None = None):
        self.reward_model, self.num_prompts, self.out_dir = reward_model, num_prompts, out_dir
        self.ours, self.theirs = ours or {"good": 1.0}, theirs or {"bad": 1.0}
        self.result: dict | None = None
        self.written: Path | None = None

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        if not (Path(self.reward_model) / "value_head.safetensors").exists():
            print(f"SteeringJudge: no reward model at {self.reward_model}; train one first "
                  "(python train.py fit --config configs/reward_model.yaml); no judgement")
            return
        from zoo.scorers import RewardModelScorer

        dm = trainer.datamodule
        dm.loader("predict")  # builds the split if this run has not yet
        rows = dm.datasets["predict"][: self.num_prompts]
        prompt_ids, conversations = rows["prompt_ids"], rows["prompt"]
        texts = {}
        for side, pref in (("ours", self.ours), ("theirs", self.theirs)):
            with pl_module.steer(pref):
                texts[side] = pl_module.generate(prompt_ids).texts[:: pl_module.sampling.n]  # first sample each
        judge = RewardModelScorer(self.reward_model, device=str(pl_module.device))
        name = judge.names[0]
        r_ours = judge.score(conversations, texts["ours"])[name]
        r_theirs = judge.score(conversations, texts["theirs"])[name]
        outcomes = reward_outcomes(r_ours, r_theirs)
        rates = win_rates(outcomes)
        signed = np.array([{"win": 1.0, "lose": -1.0, "tie": 0.0}[o] for o in outcomes])
        lo, hi = bootstrap_interval(signed)
        self.result = {**rates.as_dict(), "delta_low": 100 * lo, "delta_high": 100 * hi,
                       "ours": self.ours, "theirs": self.theirs, "reward_model": self.reward_model}
        out = Path(self.out_dir or Path(trainer.log_dir or trainer.default_root_dir) / "judge")
        out.mkdir(parents=True, exist_ok=True)
        with open(out / "judge.jsonl", "w") as f:
            for i in range(len(outcomes)):
                f.write(json.dumps({"prompt": conversations[i], "ours": texts["ours"][i], "theirs": texts["theirs"][i],
                                    "reward_ours": r_ours[i], "reward_theirs": r_theirs[i],
                                    "outcome": outcomes[i]}, ensure_ascii=False) + "\n")
        (out / "judge.md").write_text("# Reward-model judge\n\n" + "\n".join(self.lines()) + "\n")
        self.written = out
        print("\n" + "\n".join(self.lines()) + f"\n(per-prompt replies and rewards: {out / 'judge.jsonl'})")

    def lines(self) -> list[str]:
        r = self.result
        if r is None:
            return []
        beyond = r["delta_low"] > 0 or r["delta_high"] < 0
        return [f"Judge     {r['reward_model']} on {r['n']} held-out prompts, {json.dumps(r['ours'])} vs "
                f"{json.dumps(r['theirs'])} (tie: σ(r₁ − r₂) in [0.45, 0.55]):",
                f"  win {r['win']:.1f}%  lose {r['lose']:.1f}%  tie {r['tie']:.1f}%  "
                f"Δ = win − lose = {r['delta']:+.1f} [{r['delta_low']:+.1f}, {r['delta_high']:+.1f}] points "
                f"(95% bootstrap over prompts; {'beyond' if beyond else 'within'} noise)"]

    # ---- for callbacks.summary.RunSummary ----------------------------------------------------------------
    def summary_lines(self) -> list[str]:
        return self.lines()

    def written_paths(self) -> list[tuple[str, Path]]:
        return [("judge (table, per-prompt replies and rewards)", self.written)] if self.written else []
