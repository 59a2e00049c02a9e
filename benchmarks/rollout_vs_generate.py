"""The rollout engine (``zoo.rollout.generate``, lean engine) vs plain ``model.generate``: tokens/s and peak
memory on CPU, in one run, plus a greedy identity check.

Both sides sample from SmolLM2-135M-Instruct (``builtin:smollm2-135m``, fp32 weights, sdpa) for the first
P real HH-RLHF prompts of the shipped helpful-base test sample, rendered with the chat template like training
prompts (``zoo.collate.render_prompt(messages, tok, "chat")``), P ∈ {8, 32}, all P prompts in one call
(``batch_size = P``), n ∈ {1, 4, 8} samples per prompt, 64 new tokens, temperature 1, top-p 1, no top-k:

- generate: ``model.generate(input_ids, attention_mask, do_sample=True, temperature=1.0,
  num_return_sequences=n, max_new_tokens=64)`` on the P prompts left-padded into one batch;
- engine: ``generate(model, tok, prompt_ids, SamplingSettings(n=n, max_new_tokens=64, temperature=1.0,
  batch_size=P, seed=0))``.

Tokens are the completion tokens each side returns, cut at (and without) the EOS, counted the same way on both
sides (the two sample different tokens, so counts differ slightly). Each configuration runs in a fresh
subprocess (this script with ``--worker``) with 2 threads and ``OMP_WAIT_POLICY=PASSIVE``; it loads the model,
makes its weights resident, runs one small warm-up call, then one timed call. Peak memory is the peak resident
set size (``VmHWM``, reset through ``/proc/self/clear_refs`` after the warm-up) minus the resident size at that
reset: everything the call allocated (KV cache, activations, logits, allocator slack), nothing it did not.
The CPU time and the share of the CPUs other processes used are recorded as in ``dpo_vs_trl.py``.

Greedy identity: at n = 1, temperature 0, both sides' token ids (up to and including EOS) are compared prompt
by prompt. bf16 rows run under ``torch.autocast("cpu", bfloat16)`` on both sides where ``zoo.precision`` finds
bf16 instructions (AMX / AVX512-BF16); on other CPUs only with ``--bf16`` (emulated, ~10x slower).

    HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 python benchmarks/rollout_vs_generate.py [--json out.json]
        [--prompts 8 32] [--n 1 4 8] [--precision fp32] [--bf16]
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

MODEL, NEW_TOKENS, THREADS, TARGET = "builtin:smollm2-135m", 64, 2, 2.0
SIDES = ("engine", "generate")
WORK = Path(tempfile.gettempdir()) / "steerzoo_rollout_vs_generate"


# ---- measuring (as in dpo_vs_trl.py) -----------------------------------------------------------------------
def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def memory_baseline() -> int:
    """Reset the peak-RSS counter to the current RSS and return it (KiB)."""
    Path("/proc/self/clear_refs").write_text("5")
    return _status_kib("VmRSS")


def cpu_snapshot() -> tuple[float, float, float, float]:
    """(wall s, machine busy CPU-s incl. steal, machine total CPU-s, this process's CPU-s)."""
    ticks = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    hz = os.sysconf("SC_CLK_TCK")
    return time.perf_counter(), (sum(ticks) - ticks[3] - ticks[4]) / hz, sum(ticks) / hz, time.process_time()


# ---- the two sides ----------------------------------------------------------------------------------------
def hh_prompts(tokenizer: Any, count: int) -> list[list[int]]:
    """The first ``count`` prompts of the HH helpful-base test sample, chat-rendered, as token ids."""
    from datamodules.hh_rlhf import SAMPLE_FILE, HHRLHFDataModule
    from zoo.collate import render_prompt
    from zoo.records import RecordError

    out = []
    with gzip.open(SAMPLE_FILE, "rt") as f:
        for line in f:
            try:  # the datamodule's own row -> prompt record conversion
                messages = HHRLHFDataModule.to_records(json.loads(line), "prompt")[0].prompt
            except RecordError:
                continue  # a malformed row, skipped as on_error: skip would
            out.append(tokenizer(render_prompt(messages, tokenizer, "chat"), add_special_tokens=False)["input_ids"])
            if len(out) == count:
                return out
    raise ValueError(f"the HH sample has fewer than {count} prompts")


def run_generate(model, tok, prompts: list[list[int]], n: int, greedy: bool) -> list[list[int]]:
    """Plain ``model.generate``: one left-padded batch, ``num_return_sequences=n``; rows up to and including EOS."""
    import torch

    width = max(map(len, prompts))
    ids = torch.full((len(prompts), width), tok.pad_token_id)
    mask = torch.zeros_like(ids)
    for i, p in enumerate(prompts):
        ids[i, width - len(p) :], mask[i, width - len(p) :] = torch.tensor(p), 1
    sampling = {"do_sample": False} if greedy else {"do_sample": True, "temperature": 1.0, "top_p": 1.0, "top_k": None}
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=NEW_TOKENS, num_return_sequences=n,
                             eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, **sampling)
    rows = out[:, width:].tolist()
    return [r[: r.index(tok.eos_token_id) + 1] if tok.eos_token_id in r else r for r in rows]


def run_engine(model, tok, prompts: list[list[int]], n: int, greedy: bool) -> tuple[list[list[int]], Any]:
    from zoo.rollout import SamplingSettings, generate

    s = SamplingSettings(n=n, max_new_tokens=NEW_TOKENS, temperature=0.0 if greedy else 1.0, batch_size=len(prompts),
                         seed=0)
    rollout = generate(model, tok, prompts, s)
    return [c.token_ids for c in rollout.completions], rollout.timing


def worker(side: str, precision: str, count: int, n: int, greedy: bool, result: str) -> None:
    import torch

    from zoo.backbone import BackboneConfig, load_base_model, load_tokenizer

    torch.set_num_threads(THREADS)
    cfg = BackboneConfig(name_or_path=MODEL)
    model, tok = load_base_model(cfg).eval(), load_tokenizer(cfg)
    with torch.no_grad():
        for p in model.parameters():  # resident before the baseline (else the first call pages the mmap in)
            p.data = p.data.clone()
    prompts = hh_prompts(tok, count)
    call = run_engine if side == "engine" else run_generate
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
        call(model, tok, prompts[:2], 1, True)  # warm-up: kernels and allocator pools
        base = memory_baseline()
        (w0, b0, a0, p0) = cpu_snapshot()
        out = call(model, tok, prompts, n, greedy)
        (w1, b1, a1, p1) = cpu_snapshot()
    rows, timing = out if side == "engine" else (out, None)
    eos = tok.eos_token_id
    tokens = sum(len(r) - (len(r) > 0 and r[-1] == eos) for r in rows)
    seconds, cpu = w1 - w0, p1 - p0
    Path(result).write_text(json.dumps({
        "side": side, "precision": precision, "prompts": count, "n": n, "greedy": greedy, "rows": rows,
        "tokens": tokens, "seconds": seconds, "tok_s": tokens / seconds, "cpu_tok_s": tokens / (cpu / THREADS),
        "others_cpu_share": max(0.0, (b1 - b0) - cpu) / max(a1 - a0, 1e-9),
        "peak_mib": (_status_kib("VmHWM") - base) / 1024, "prompt_tokens": sum(map(len, prompts)),
        "padded_prompt_tokens": max(map(len, prompts)) * count,
        "timing": None if timing is None else vars(timing)}))


# ---- driver --------------------------------------------------------------------------------------------------
def run_config(side: str, precision: str, count: int, n: int, greedy: bool) -> dict[str, Any]:
    WORK.mkdir(parents=True, exist_ok=True)
    name = f"{side}-{precision}-p{count}-n{n}{'-greedy' if greedy else ''}"
    result, log = WORK / f"{name}.json", WORK / f"{name}.log"
    result.unlink(missing_ok=True)
    cmd = [sys.executable, __file__, "--worker", side, "--precision", precision, "--prompts", str(count),
           "--n", str(n), "--result", str(result)] + (["--greedy"] if greedy else [])
    env = {"OMP_WAIT_POLICY": "PASSIVE", **os.environ, "TQDM_DISABLE": "1"}
    with log.open("w") as f:
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=REPO, env=env)
    if proc.returncode != 0 or not result.exists():
        sys.exit(f"{name} failed (exit {proc.returncode}); see {log}:\n" + log.read_text()[-3000:])
    r = json.loads(result.read_text())
    print(f"  {name:32s} {r['tok_s']:7.1f} tok/s ({r['cpu_tok_s']:6.1f} per CPU-time), peak +{r['peak_mib']:6.0f} MiB, "
          f"{r['tokens']} tokens in {r['seconds']:.1f} s, others {100 * r['others_cpu_share']:.0f}% of the CPUs",
          flush=True)
    return r


def report(results: dict[str, Any], greedy: dict[str, Any]) -> dict[str, Any]:
    print(f"\nSmolLM2-135M, HH prompts (chat), {NEW_TOKENS} new tokens, temperature 1, {THREADS} threads: engine vs "
          "model.generate (one call each)")
    header = (f"{'config':22s} {'tokens':>11s} {'engine tok/s':>12s} {'generate tok/s':>14s} {'ratio':>6s} "
              f"{'CPU-time ratio':>14s} {'engine MiB':>10s} {'generate MiB':>12s} {'ratio':>6s}")
    print(header + "\n" + "-" * len(header))
    rows, checks = [], []
    for key, r in {**greedy, **results}.items():  # greedy rows: both sides return the same tokens
        e, g = r["engine"], r["generate"]
        speed, cpu, mem = e["tok_s"] / g["tok_s"], e["cpu_tok_s"] / g["cpu_tok_s"], e["peak_mib"] / max(g["peak_mib"], 1)
        print(f"{key:22s} {e['tokens']:5d}/{g['tokens']:<5d} {e['tok_s']:12.1f} {g['tok_s']:14.1f} {speed:5.2f}x "
              f"{cpu:13.2f}x {e['peak_mib']:10.0f} {g['peak_mib']:12.0f} {mem:5.2f}x")
        rows.append({"config": key, "speed_ratio": speed, "cpu_time_speed_ratio": cpu, "memory_ratio": mem})
        if e["n"] in (4, 8) and not e["greedy"]:
            checks.append((f"{key}: engine tok/s >= {TARGET}x generate", speed >= TARGET, speed))
            checks.append((f"{key}: engine tok/s per CPU-second >= {TARGET}x generate", cpu >= TARGET, cpu))
    print()
    for key, r in greedy.items():
        same = sum(a == b for a, b in zip(r["engine"]["rows"], r["generate"]["rows"]))
        total = len(r["engine"]["rows"])
        checks.append((f"{key}: greedy n=1 token-identical to generate ({same}/{total} prompts)", same == total, None))
        for i, (a, b) in enumerate(zip(r["engine"]["rows"], r["generate"]["rows"])):
            if a != b:
                k = next((t for t, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
                print(f"{key}: prompt {i} differs from token {k} of {max(len(a), len(b))}")
    busy = max(s["others_cpu_share"] for r in [*results.values(), *greedy.values()] for s in r.values())
    if busy > 0.1:
        print(f"WARNING: other processes used up to {100 * busy:.0f}% of the CPUs during timed calls; wall-clock "
              "ratios are unreliable, the CPU-time ratio is the better estimate")
    for name, ok, value in checks:
        print(f"{'PASS' if ok else 'FAIL'}  {name}" + ("" if value is None else f" (measured {value:.2f}x)"))
    return {"rows": rows, "checks": [{"target": n, "pass": ok, "value": v} for n, ok, v in checks],
            "max_others_cpu_share": busy}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--prompts", type=int, nargs="+", default=[8, 32])
    p.add_argument("--n", type=int, nargs="+", default=[1, 4, 8])
    p.add_argument("--precision", choices=["fp32", "bf16"], action="append",
                   help="default: fp32, and bf16 where the CPU has bf16 instructions (or with --bf16)")
    p.add_argument("--bf16", action="store_true", help="run bf16 rows even where bf16 is emulated (slow)")
    p.add_argument("--json", help="write every measurement here")
    p.add_argument("--report", help="print the table and checks of a run saved with --json, and stop")
    p.add_argument("--worker", choices=SIDES, help=argparse.SUPPRESS)
    p.add_argument("--greedy", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args.worker, args.precision[0], args.prompts[0], args.n[0], args.greedy, args.result)
    if args.report:
        saved = json.loads(Path(args.report).read_text())
        report(saved["results"], saved["greedy"])
        return None
    import torch
    import transformers

    from zoo.precision import native_bf16

    bf16 = native_bf16("cpu")
    precisions = args.precision or (["fp32", "bf16"] if bf16 or args.bf16 else ["fp32"])
    t0 = time.perf_counter()
    results, greedy = {}, {}
    for precision in precisions:
        for count in args.prompts:
            key = f"{precision} P={count} greedy"
            greedy[key] = {s: run_config(s, precision, count, 1, True) for s in SIDES}
            for n in args.n:
                results[f"{precision} P={count} n={n}"] = {s: run_config(s, precision, count, n, False) for s in SIDES}
    summary = report(results, greedy)
    if "bf16" in precisions and not bf16:
        print("NOTE: this CPU has no bf16 instructions: both sides' bf16 rows ran PyTorch's emulated bf16 (~10x slower)")
    versions = {"torch": torch.__version__, "transformers": transformers.__version__}
    print(f"\ntotal {time.perf_counter() - t0:.0f} s; " + ", ".join(f"{k} {v}" for k, v in versions.items())
          + f"; native bf16: {bf16}")
    if args.json:
        Path(args.json).write_text(json.dumps({"versions": versions, "native_bf16": bf16, "results": results,
                                               "greedy": greedy, **summary}, indent=2))


if __name__ == "__main__":
    main()
