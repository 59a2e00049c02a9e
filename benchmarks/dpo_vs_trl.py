"""steerzoo's DPO training step vs TRL's DPOTrainer step: tokens/s and peak memory, on CPU, in one run.

Both sides train the same SmolLM2-135M (``builtin:smollm2-135m``, full fine-tuning, fp32 weights) on the
same HH-RLHF rows (the shipped sample, through ``HHRLHFDataModule``), tokenized once by steerzoo (chat
template, max length 256, over-long pairs truncated), in the same order and the same batches of 4 pairs:

- steerzoo: ``lightning_modules.dpo.DPO`` in its default mode (reference log-probs cached once before
  the first step) under a real ``lightning.Trainer.fit`` (``32-true`` / ``bf16-mixed``);
- TRL: ``trl.DPOTrainer`` with its default reference (a second model, a reference forward each step),
  and, as a second row, with ``precompute_ref_log_probs=True``. TRL gets steerzoo's token ids (its own
  tokenization is skipped: tokenizing is not part of a step) and ``bf16`` / ``activation_checkpointing``
  are set explicitly (no checkpointing on either side).

Each configuration runs in a fresh subprocess (this script with ``--worker``). A step is timed from after
its batch is fetched to after its optimizer step and zero_grad (Lightning's ``on_train_batch_start`` /
``_end``, TRL's ``on_step_begin`` / ``_end``), after ``--warmup`` untimed steps. Tokens are the non-pad
tokens of every chosen and rejected sequence of the timed batches, the prompt counted in both (TRL's
count of its own batch; steerzoo's from the rows of its batch, since with prefix sharing, its default,
the trunk sees each prompt once: the same sequence log-probs from fewer trunk tokens). Peak memory is the peak resident set size (``VmHWM``, reset through
``/proc/self/clear_refs``) minus the resident size right after the policy was loaded and made resident.

The cores may be shared with other processes: each step also records the process's CPU time and the
share of the machine's CPUs others used. Workers run with ``OMP_WAIT_POLICY=PASSIVE`` (idle threads sleep,
not spin), so tokens per CPU-second (times the thread count) estimates the speed on idle cores; the table
shows that ratio beside the wall-clock one, and a warning when others used over 10% of the CPUs.

    HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 python benchmarks/dpo_vs_trl.py [--warmup 1] [--steps 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from measure import cpu_snapshot, memory_baseline, peak_rss_kib, run_worker  # noqa: E402  (benchmarks/measure.py)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

MODEL, BATCH, MAX_LENGTH, THREADS = "builtin:smollm2-135m", 4, 256, 2
SIDES = ("steerzoo", "trl", "trl_precompute")
PRECISIONS = {"fp32": ("32-true", False), "bf16-mixed": ("bf16-mixed", True)}  # Lightning precision, TRL bf16
TARGET_SPEED, TARGET_MEMORY = 1.5, 0.7
WORK = Path(tempfile.gettempdir()) / "steerzoo_dpo_vs_trl"


class Steps:
    """Per-step wall time, own CPU time, other processes' share of the machine, and tokens;
    the first ``warmup`` steps left out. (Other processes on the same cores slow the step down.)"""

    def __init__(self, warmup: int):
        self.warmup, self.seen, self.first_loss = warmup, 0, None
        self.times, self.cpu, self.others, self.tokens = [], [], [], []
        self._t0 = cpu_snapshot()

    def begin(self) -> None:
        self._t0 = cpu_snapshot()

    def end(self, tokens: int, loss: float) -> None:
        (w0, b0, a0, p0), (w1, b1, a1, p1) = self._t0, cpu_snapshot()
        if self.first_loss is None:
            self.first_loss = loss
        if self.seen >= self.warmup:
            self.times.append(w1 - w0)
            self.cpu.append(p1 - p0)
            self.others.append(max(0.0, (b1 - b0) - (p1 - p0)) / max(a1 - a0, 1e-9))
            self.tokens.append(tokens)
        self.seen += 1


def load_policy() -> Any:
    """steerzoo's own loader (fp32, sdpa); the weights are copied out of the safetensors mmap so that they
    are resident before the baseline (otherwise the first forward would page them in and count them)."""
    import torch

    from zoo.backbone import BackboneConfig, load_base_model

    model = load_base_model(BackboneConfig(name_or_path=MODEL)).train()
    with torch.no_grad():
        for p in model.parameters():  # tied embeddings stay tied: the Parameter object is kept
            p.data = p.data.clone()
    return model


def build_data(n_rows: int) -> tuple[Any, Any, list[int]]:
    """(DPO module, HH datamodule set up for fit, epoch-0 row order of the train loader)."""
    from datamodules.hh_rlhf import HHRLHFDataModule
    from datamodules.loader import ResumableSampler
    from lightning_modules.dpo import DPO

    module = DPO(backbone={"name_or_path": MODEL}, tokenize={"max_length": MAX_LENGTH, "length_policy": "truncate"},
                 ref_cache_dir=None)  # no disk cache: the reference pass is timed every run
    dm = HHRLHFDataModule(data_files="sample", validation_fraction=0.05, on_error="skip", batch_size=BATCH,
                          max_samples={"train": n_rows, "validation": BATCH}, log_dir=str(WORK / "data_reports"))
    dm.attach(module.example_builder())
    dm.setup("fit")
    order = list(ResumableSampler(len(dm.datasets["train"]), shuffle=True, seed=dm.seed))
    return module, dm, order


def sequence_tokens(ds, idx) -> int:
    """Non-pad tokens of the batch's chosen and rejected sequences, prompt counted in each (what TRL's
    batches hold), whatever layout steerzoo fed the trunk (prefix sharing runs each prompt once)."""
    rows = ds.select(idx.tolist())
    return sum(len(r["completion_ids"]) * len(r["prompt_ids"]) + sum(map(len, r["completion_ids"])) for r in rows)


# ---- the two sides ----------------------------------------------------------------------------------------
def run_steerzoo(precision: str, warmup: int, steps: int) -> dict[str, Any]:
    import lightning as L

    module, dm, _ = build_data((warmup + steps) * BATCH)
    module.model = load_policy()  # configure_model then keeps it
    timer, cache = Steps(warmup), {}
    ensure = module.ensure_reference_cache

    def timed_ensure(split: str) -> None:
        if split != "train":  # validation never runs here (limit_val_batches=0): skip its reference pass
            return
        t0 = time.perf_counter()
        ensure(split)
        cache[split] = time.perf_counter() - t0

    module.ensure_reference_cache = timed_ensure

    class Timer(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            self.tokens = sequence_tokens(dm.datasets["train"], batch["idx"])  # counted outside the timed span
            timer.begin()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            timer.end(self.tokens, float(outputs["loss"]))

    trainer = L.Trainer(accelerator="cpu", devices=1, precision=PRECISIONS[precision][0], max_steps=warmup + steps,
                        logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0,
                        use_distributed_sampler=False, callbacks=[Timer()], default_root_dir=str(WORK))
    base = memory_baseline()
    trainer.fit(module, datamodule=dm)
    return {"timer": timer, "peak_kib": peak_rss_kib() - base, "ref_pass_s": cache.get("train"),
            "rows": len(dm.datasets["train"]), "checkpointing": module.model.is_activation_checkpointing}


def run_trl(precision: str, warmup: int, steps: int, precompute: bool) -> dict[str, Any]:
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import DPOConfig, DPOTrainer

    module, dm, order = build_data((warmup + steps) * BATCH)
    ds = dm.datasets["train"]
    rows = [ds[i] for i in order]  # the Lightning loader's order; TRL samples sequentially
    train = Dataset.from_dict({"prompt_ids": [r["prompt_ids"] for r in rows],
                               "chosen_ids": [r["completion_ids"][0] for r in rows],
                               "rejected_ids": [r["completion_ids"][1] for r in rows]})
    timer, info = Steps(warmup), {}

    class IdsDPOTrainer(DPOTrainer):
        """DPOTrainer on steerzoo's token ids; records each step's batch tokens and the precompute time."""

        def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
            return dataset

        def _precompute_ref_logps(self, dataset, name, batch_size):
            t0 = time.perf_counter()
            out = super()._precompute_ref_logps(dataset, name, batch_size)
            info["ref_pass_s"] = time.perf_counter() - t0
            return out

        def training_step(self, model, inputs, *args, **kwargs):
            info["tokens"] = int(inputs["attention_mask"].sum())
            loss = super().training_step(model, inputs, *args, **kwargs)
            info["loss"] = float(loss)
            return loss

    class Timer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            timer.begin()

        def on_step_end(self, args, state, control, **kwargs):
            timer.end(info["tokens"], info["loss"])

    config = DPOConfig(output_dir=str(WORK / "trl"), report_to=[], use_cpu=True, bf16=PRECISIONS[precision][1],
                       activation_checkpointing=False, per_device_train_batch_size=BATCH, max_length=MAX_LENGTH,
                       precompute_ref_log_probs=precompute, max_steps=warmup + steps,
                       train_sampling_strategy="sequential", save_strategy="no", logging_strategy="no",
                       disable_tqdm=True, dataloader_num_workers=0)
    policy = load_policy()
    base = memory_baseline()
    trainer = IdsDPOTrainer(model=policy, args=config, train_dataset=train, processing_class=module.tokenizer,
                            callbacks=[Timer()])
    trainer.train()
    return {"timer": timer, "peak_kib": peak_rss_kib() - base, "ref_pass_s": info.get("ref_pass_s"),
            "rows": len(train), "checkpointing": trainer.model.is_activation_checkpointing,
            "ref_model": trainer.ref_model is not None}


def worker(side: str, precision: str, warmup: int, steps: int, result: str) -> None:
    import torch

    torch.set_num_threads(THREADS)
    torch.manual_seed(0)
    if side == "steerzoo":
        r = run_steerzoo(precision, warmup, steps)
    else:
        r = run_trl(precision, warmup, steps, precompute=side == "trl_precompute")
    t: Steps = r.pop("timer")
    seconds, tokens = sum(t.times), sum(t.tokens)
    out = {"side": side, "precision": precision, "step_s": t.times, "step_cpu_s": t.cpu, "step_tokens": t.tokens,
           "tokens": tokens, "seconds": seconds, "tok_s": tokens / seconds,
           "cpu_tok_s": tokens / (sum(t.cpu) / THREADS),  # per second of THREADS busy cores
           "others_cpu_share": sum(o * dt for o, dt in zip(t.others, t.times)) / seconds,
           "peak_mib": r.pop("peak_kib") / 1024, "first_loss": t.first_loss, **r}
    if out["ref_pass_s"] is not None:  # the one-off reference pass, pro-rated to the timed rows (one epoch)
        out["tok_s_amortised"] = tokens / (seconds + out["ref_pass_s"] * steps * BATCH / out["rows"])
    Path(result).write_text(json.dumps(out))


# ---- driver --------------------------------------------------------------------------------------------------
def run_config(side: str, precision: str, warmup: int, steps: int) -> dict[str, Any]:
    WORK.mkdir(parents=True, exist_ok=True)
    result, log = WORK / f"{side}-{precision}.json", WORK / f"{side}-{precision}.log"
    cmd = [sys.executable, __file__, "--worker", side, "--precision", precision, "--warmup", str(warmup),
           "--steps", str(steps), "--result", str(result)]
    t0 = time.perf_counter()
    r = run_worker(cmd, result, log, f"{side} {precision}", REPO)
    print(f"  {side:15s} {precision:10s} {r['tok_s']:7.1f} tok/s ({r['cpu_tok_s']:.1f} per CPU-time) "
          f"peak +{r['peak_mib']:6.0f} MiB; {r['tokens']} tokens in {r['seconds']:.1f} s, other processes "
          f"{100 * r['others_cpu_share']:.0f}% of the CPUs; worker {time.perf_counter() - t0:.0f} s", flush=True)
    return r


def report(results: dict[str, dict[str, dict[str, Any]]], args: argparse.Namespace) -> dict[str, Any]:
    """Print the table, the token counts, the reference-pass costs and the PASS/FAIL lines."""
    print(f"\nDPO training step, SmolLM2-135M full fine-tuning, batch {BATCH} pairs, max length {MAX_LENGTH}, "
          f"CPU {THREADS} threads, {args.warmup} warm-up + {args.steps} timed steps")
    header = (f"{'config':36s} {'steerzoo tok/s':>14s} {'TRL tok/s':>9s} {'ratio':>6s} {'steerzoo MiB':>12s} "
              f"{'TRL MiB':>8s} {'ratio':>6s} {'CPU-time ratio':>14s}")
    print(header + "\n" + "-" * len(header))
    rows, checks = [], []
    for precision, r in results.items():
        z = r["steerzoo"]
        for peer in [s for s in SIDES[1:] if s in r]:
            t = r[peer]
            speed, mem, cpu = z["tok_s"] / t["tok_s"], z["peak_mib"] / t["peak_mib"], z["cpu_tok_s"] / t["cpu_tok_s"]
            name = f"{precision} vs {'DPOTrainer' if peer == 'trl' else 'DPOTrainer(precompute)'}"
            print(f"{name:36s} {z['tok_s']:14.1f} {t['tok_s']:9.1f} {speed:5.2f}x {z['peak_mib']:12.0f} "
                  f"{t['peak_mib']:8.0f} {mem:5.2f}x {cpu:13.2f}x")
            rows.append({"config": name, "precision": precision, "peer": peer, "speed_ratio": speed,
                         "memory_ratio": mem, "cpu_time_speed_ratio": cpu})
            if peer == "trl":
                checks += [(f"{precision}: steerzoo tok/s >= {TARGET_SPEED}x TRL", speed >= TARGET_SPEED, speed),
                           (f"{precision}: steerzoo peak memory <= {TARGET_MEMORY}x TRL", mem <= TARGET_MEMORY, mem)]
    print()
    for precision, r in results.items():
        counts = ", ".join(f"{s} {r[s]['tokens']}" for s in r)
        same = len({r[s]["tokens"] for s in r}) == 1
        print(f"{precision}: timed tokens {counts} ({'equal' if same else 'DIFFERENT'}); first-step loss "
              + ", ".join(f"{s} {r[s]['first_loss']:.4f}" for s in r) + "; activation checkpointing "
              + ", ".join(f"{s} {r[s]['checkpointing']}" for s in r))
        for s in [s for s in ("steerzoo", "trl_precompute") if s in r]:
            print(f"  {s}: one-off reference pass over its {r[s]['rows']} rows {r[s]['ref_pass_s']:.1f} s; "
                  f"tok/s with it amortised over one epoch {r[s]['tok_s_amortised']:.1f}")
    from zoo.precision import native_bf16

    if "bf16-mixed" in results and not native_bf16("cpu"):
        print("\nNOTE: this CPU has no bf16 instructions (no AMX / AVX512-BF16): both sides' bf16 matmuls run in "
              "PyTorch's emulated fallback, ~10x slower than fp32, so bf16 tok/s say little about either; the "
              "memory ratio still holds (steerzoo's CLI runs such a CPU in fp32, see zoo/precision.py)")
    busy = max(r[s]["others_cpu_share"] for r in results.values() for s in r)
    if busy > 0.1:
        print(f"\nWARNING: other processes used up to {100 * busy:.0f}% of the CPUs during timed steps; wall-clock "
              "ratios are unreliable, the CPU-time ratio is the better estimate")
    print()
    for name, ok, value in checks:
        print(f"{'PASS' if ok else 'FAIL'}  {name} (measured {value:.2f}x)")
    return {"rows": rows, "checks": [{"target": n, "pass": ok, "value": v} for n, ok, v in checks],
            "max_others_cpu_share": busy}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=3, help="timed steps per configuration")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    p.add_argument("--precision", choices=list(PRECISIONS), action="append", help="default: both")
    p.add_argument("--no-precompute", action="store_true", help="skip the TRL precompute_ref_log_probs row")
    p.add_argument("--json", help="write every measurement here")
    p.add_argument("--worker", choices=SIDES, help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args.worker, args.precision[0], args.warmup, args.steps, args.result)
    import torch  # noqa: E401  (versions for the record)
    import transformers
    import trl

    sides = SIDES[:2] if args.no_precompute else SIDES
    results: dict[str, dict[str, dict[str, Any]]] = {}
    t0 = time.perf_counter()
    for precision in args.precision or list(PRECISIONS):
        results[precision] = {s: run_config(s, precision, args.warmup, args.steps) for s in sides}
    summary = report(results, args)
    versions = {"torch": torch.__version__, "transformers": transformers.__version__, "trl": trl.__version__}
    print(f"\ntotal {time.perf_counter() - t0:.0f} s; " + ", ".join(f"{k} {v}" for k, v in versions.items()))
    if args.json:
        Path(args.json).write_text(json.dumps({"versions": versions, "warmup": args.warmup, "steps": args.steps,
                                               "results": results, **summary}, indent=2))


if __name__ == "__main__":
    main()
