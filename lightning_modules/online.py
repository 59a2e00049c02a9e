"""The online loop shared by every method that trains in rounds: *round = sample → score → build data → train*.

Mapped onto Lightning as one round per ``epochs_per_round`` epochs. The DataModule does not read a train
split: at each epoch it hands its source records (prompts, or demonstrations whose prompts are sampled and
whose replies can be replayed) to ``make_round`` (``ExampleBuilder.rounds``), which

1. samples ``samples_per_prompt`` replies from the *current* policy for a seeded subset of the prompts (the
   round's seed is fixed by (seed, round), so a round sampled again after a crash is the same round;
   the rollout engine, each process its share of the prompts, gathered in prompt order),
2. scores every sample with the configured scorers (``zoo.scorers``: offline scorers or a saved reward model;
   NaN or a wrong number of scores stop the run naming the scorer),
3. keeps the round in the ``RoundPool`` (saved in every checkpoint, also written as
   ``<default_root_dir>/rounds/round-<r>.jsonl``), and
4. returns the round's training records (the subclass's ``round_records``: best-of-n, feedback-conditioned…),
   which then take the same path as any records: examples, the one collator, the losses.

``restart_each_round`` starts every round's training from the initial weights with a fresh optimizer (DPA
does), after sampling with the policy the previous round trained. Validation generates on held-out prompts
(greedy, ``eval_sampling``) and logs the mean objective with its per-prompt scores kept for intervals.

Resuming: the pool, the round the weights were last restarted for and the held-out scores are part of the
checkpoint, and the data order resumes as for any method (``datamodules.loader``), so a run killed while
sampling a round (the round is sampled again, identically) or while training on it continues as if it had
never stopped.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from callbacks.summary import metric_rows
from lightning_modules.base import STAGE_PREFIX, CausalLMModule, as_dataclass
from zoo.examples import ExampleBuilder
from zoo.records import Record, ScoredResponse
from zoo.rollout import generate
from zoo.rounds import Round, RoundPool, checked_scores, objective, round_seed
from zoo.sampling import Samples, SamplingSettings
from zoo.scorers import Scorer, build_scorers, score_all
from zoo.steering import bootstrap_interval


class OnlineModule(CausalLMModule):
    """Base class of round-based methods; a subclass writes ``round_records`` (and its loss).

    Args:
        scorers: scorer names (``zoo.scorers.build_scorers``: ``verbosity``, ``sentiment``, ``reward_model:<dir>``…).
        objective: weights of the scorers' attributes in the scalar a round selects on, e.g. ``{sentiment: 1}``.
        prompts_per_round: prompts sampled each round (a seeded subset of the source; ``None``: all of them).
        samples_per_prompt: n, replies sampled per prompt.
        epochs_per_round: training epochs on each round's data.
        round_sampling: how rounds sample (temperature 1 by default; ``n`` is ``samples_per_prompt``).
        eval_sampling: how validation generates (greedy by default).
        restart_each_round: train every round from the initial weights (fresh optimizer), as DPA does.
        round_seed: the seed rounds derive theirs from.
    """

    record_kind = "demonstration"
    rounds_source_kind = "demonstration"

    def __init__(
        self,
        scorers: list[str] | None = None,
        objective: dict[str, float] | None = None,
        prompts_per_round: int | None = None,
        samples_per_prompt: int = 4,
        epochs_per_round: int = 1,
        round_sampling: SamplingSettings | None = None,
        eval_sampling: SamplingSettings | None = None,
        restart_each_round: bool = False,
        round_seed: int = 0,
        **kwargs: Any,
    ):
        if not scorers:
            raise ValueError("model.scorers: an online method needs at least one scorer (e.g. [sentiment])")
        if samples_per_prompt < 1:
            raise ValueError(f"model.samples_per_prompt must be >= 1, got {samples_per_prompt}")
        if epochs_per_round < 1:
            raise ValueError(f"model.epochs_per_round must be >= 1, got {epochs_per_round}")
        if prompts_per_round is not None and prompts_per_round < 1:
            raise ValueError(f"model.prompts_per_round must be >= 1 (or null: all), got {prompts_per_round}")
        self.scorer_names, self.prompts_per_round = list(scorers), prompts_per_round
        self.samples_per_prompt, self.epochs_per_round = samples_per_prompt, epochs_per_round
        self.restart_each_round, self.round_seed = restart_each_round, round_seed
        round_sampling = as_dataclass(SamplingSettings, round_sampling or {"temperature": 1.0})
        self.round_sampling = dataclasses.replace(round_sampling, n=samples_per_prompt)
        self.eval_sampling = as_dataclass(SamplingSettings, eval_sampling or {"temperature": 0.0})
        self.scorers: list[Scorer] = build_scorers(self.scorer_names)
        produced = [name for s in self.scorers for name in s.names]
        self.objective_weights = dict(objective or {produced[0]: 1.0})
        unknown = sorted(set(self.objective_weights) - set(produced))
        if unknown:
            raise ValueError(f"model.objective names {unknown}; the scorers {self.scorer_names} give {produced}")
        super().__init__(**kwargs)
        self.pool = RoundPool()
        self.restarted_round = 0  # the last round whose training started from the initial weights
        self.eval_scores: dict[int, list[float]] = {}  # global step -> held-out objective per prompt
        self._eval_batch: list[float] = []
        self._initial: dict[str, torch.Tensor] | None = None

    def method_hparams(self) -> dict[str, Any]:
        return {"scorers": self.scorer_names, "objective": self.objective_weights,
                "prompts_per_round": self.prompts_per_round, "samples_per_prompt": self.samples_per_prompt,
                "epochs_per_round": self.epochs_per_round, "restart_each_round": self.restart_each_round,
                "round_seed": self.round_seed, "round_sampling": dataclasses.asdict(self.round_sampling),
                "eval_sampling": dataclasses.asdict(self.eval_sampling)}

    def example_builder(self) -> ExampleBuilder:
        return dataclasses.replace(super().example_builder(), rounds=self.make_round,
                                   rounds_source_kind=self.rounds_source_kind,
                                   split_kinds={"validation": "prompt", "test": "prompt"})

    # ---- what a subclass writes -------------------------------------------------------------------
    def round_records(self, rnd: Round, source: Sequence[Record], chosen: Sequence[int]) -> list[Record]:
        """The round's training records from its scored samples (``chosen``: the source records it sampled)."""
        raise NotImplementedError

    # ---- the round --------------------------------------------------------------------------------
    def round_of(self, epoch: int) -> int:
        return epoch // self.epochs_per_round

    def make_round(self, epoch: int, source: list[Record]) -> list[Record]:
        """The training records of ``epoch``'s round (``ExampleBuilder.rounds``), sampling it first if needed."""
        if not source:
            raise ValueError(f"{type(self).__name__}: the data gave no {self.rounds_source_kind} records to "
                             "sample prompts from")
        r = self.round_of(epoch)
        chosen = self.round_prompts(r, len(source))
        if r not in self.pool:
            self.pool.add(self.sample_round(r, [source[i] for i in chosen]))
            if self.trainer is not None and self.trainer.is_global_zero:
                path = self.pool.write_jsonl(Path(self.trainer.default_root_dir) / "rounds", r)
                print(f"{type(self).__name__} round {r}: {len(chosen)} prompts x {self.samples_per_prompt} samples "
                      f"scored -> {path}", flush=True)
        return self.round_records(self.pool[r], source, chosen)

    def round_prompts(self, r: int, available: int) -> list[int]:
        """The source records round ``r`` samples from: a seeded subset, the same in every run."""
        k = available if self.prompts_per_round is None else min(self.prompts_per_round, available)
        return sorted(random.Random(round_seed(self.round_seed, r)).sample(range(available), k))

    @torch.no_grad()
    def sample_round(self, r: int, records: Sequence[Record]) -> Round:
        """n samples per prompt from the current policy, scored: every process samples a share, all gather."""
        prompt_ids = self.encode_prompts([rec.prompt for rec in records])
        settings = dataclasses.replace(self.round_sampling, seed=round_seed(self.round_seed, r))
        where = f"{type(self).__name__} round {r}"
        try:
            texts = self.generate_shared(prompt_ids, settings).texts
        except ValueError as e:  # a prompt over the length cap, bad settings: say which round
            raise ValueError(f"{where}: {e}") from None
        n = settings.n
        prompts = [self.tokenizer.decode(p) for p in prompt_ids for _ in range(n)]
        scores = checked_scores(score_all(self.scorers, prompts, texts), len(texts), where)
        scales = {a: s.scales[a] for s in self.scorers for a in s.names}
        samples = []
        for k, text in enumerate(texts):
            rec = records[k // n]
            values = {a: scores[a][k] for a in scores}
            try:
                samples.append(ScoredResponse(prompt=rec.prompt, response=text if text.strip() else "(empty)",
                                              scores=values, scales=scales,
                                              source_id=f"round{r}:{rec.source_id or k // n}:{k % n}"))
            except ValueError as e:
                raise ValueError(f"{where}: sample {k}: {e}") from None
        return Round(index=r, policy_step=self.global_step, n=n, samples=samples)

    def generate_shared(self, prompt_ids: list[list[int]], settings: SamplingSettings) -> Samples:
        """The policy's samples for every prompt; with several processes each generates a share and all get the
        whole, in prompt order, identical to one process's (seeds follow the prompt, not the process)."""
        rollout = generate(self.model, self.tokenizer, prompt_ids, settings, split_across_ranks=True)
        return Samples.from_rollout([self.tokenizer.decode(p) for p in prompt_ids], rollout)

    def objective_of(self, samples: Sequence[ScoredResponse]) -> list[float]:
        return objective({a: [s.scores[a] for s in samples] for a in samples[0].scores}, self.objective_weights)

    # ---- restarting each round from the initial weights -------------------------------------------
    def configure_model(self) -> None:
        super().configure_model()
        if self.restart_each_round and self._initial is None:  # before any checkpoint is restored into it
            self._initial = {n: p.detach().cpu().clone() for n, p in self.named_parameters() if p.requires_grad}

    def on_fit_start(self) -> None:
        # each epoch's train loader must be rebuilt: it is that epoch's round
        self.trainer.reload_dataloaders_every_n_epochs = 1

    def on_train_epoch_start(self) -> None:
        self._restart_if_due()

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        self._restart_if_due()  # resuming right after an epoch's last batch skips on_train_epoch_start

    def _restart_if_due(self) -> None:
        r = self.round_of(self.trainer.current_epoch)
        if not self.restart_each_round or r <= self.restarted_round:
            return
        with torch.no_grad():
            for n, p in self.named_parameters():
                if n in self._initial:
                    p.copy_(self._initial[n].to(p.device))
        self.trainer.strategy.setup_optimizers(self.trainer)  # a fresh optimizer and schedule for the round
        self.restarted_round = r
        print(f"{type(self).__name__} round {r}: training restarts from the initial weights", flush=True)

    def schedule_steps(self, epochs: int | None = None) -> int:
        """One round's optimizer steps with ``restart_each_round`` (each round has its schedule), else the run's.
        Counted from the round's size, never by building a round (that would sample before a restore)."""
        t = self._trainer
        if t is None:
            return 1
        per_epoch = -(-self.round_size() // (t.datamodule.batch_size * t.world_size * t.accumulate_grad_batches))
        epochs = self.epochs_per_round if self.restart_each_round else (t.max_epochs or 1)
        steps = max(per_epoch * max(epochs, 1), 1)
        return min(steps, t.max_steps) if t.max_steps > 0 else steps

    def round_size(self) -> int:
        """Training records per round, for the LR schedule's length (a subclass knows its selection)."""
        return self.prompts_per_round or 1

    # ---- held-out evaluation ----------------------------------------------------------------------
    def eval_step(self, batch: dict[str, Any], split: str) -> None:
        samples = self.generate(batch["prompt_ids"], self.eval_sampling)
        scores = checked_scores(score_all(self.scorers, samples.prompts, samples.texts), len(samples.texts),
                                f"{type(self).__name__} {split}")
        values = objective(scores, self.objective_weights)
        self._eval_batch += values
        self.log(f"{STAGE_PREFIX[split]}/objective", sum(values) / len(values), batch_size=len(values),
                 sync_dist=True, prog_bar=True)
        for attr, v in scores.items():
            self.log(f"{STAGE_PREFIX[split]}/{attr}", sum(v) / len(v), batch_size=len(v), sync_dist=True)

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self.eval_step(batch, "validation")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self.eval_step(batch, "test")

    def on_validation_epoch_start(self) -> None:
        self._eval_batch = []

    def on_validation_epoch_end(self) -> None:
        if self._eval_batch:
            self.eval_scores[int(self.global_step)] = list(self._eval_batch)

    def held_out_change(self) -> dict[str, Any] | None:
        """The held-out objective at the first and the last evaluation (per-prompt means) and the paired change
        last − first with its 95% bootstrap interval over prompts; None before two paired evaluations."""
        first, last = min(self.eval_scores, default=0), max(self.eval_scores, default=0)
        a, b = np.asarray(self.eval_scores.get(first, [])), np.asarray(self.eval_scores.get(last, []))
        if first == last or len(a) != len(b):  # one evaluation, or another held-out set after a resume
            return None
        low, high = bootstrap_interval(b - a)
        return {"first_step": first, "last_step": last, "first": float(a.mean()), "last": float(b.mean()),
                "change": float((b - a).mean()), "low": low, "high": high, "prompts": len(a)}

    def on_fit_end(self) -> None:
        change = self.held_out_change()
        if change is not None and self.trainer.is_global_zero:
            first, last = change["first_step"], change["last_step"]
            print(f"{type(self).__name__}: held-out objective per prompt, step {first} -> step {last}:")
            print("\n".join(metric_rows({"objective": np.asarray(self.eval_scores[first])},
                                        {"objective": np.asarray(self.eval_scores[last])})))

    # ---- checkpoints ------------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["online"] = {"pool": self.pool.state_dict(), "restarted_round": self.restarted_round,
                                "eval_scores": {str(k): v for k, v in self.eval_scores.items()}}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        state = checkpoint.get("online", {})
        self.pool.load_state_dict(state.get("pool", {}))
        self.restarted_round = int(state.get("restarted_round", 0))
        self.eval_scores = {int(k): list(v) for k, v in state.get("eval_scores", {}).items()}

