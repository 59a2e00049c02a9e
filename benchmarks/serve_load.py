"""Load test of ``train.py serve`` (``zoo.serve``) on loopback: concurrent clients with mixed ``steer`` values and
prompts against the same requests sent one at a time.

The model is the tiny CMPO of the tests (``tests.factories.steered_cmpo``: random heads that differ, so
every (prompt, steer) pair has its own greedy reply and a reply given to the wrong request is caught, not
mistaken for numerics). First every distinct request is sent alone, one after another: those replies are
the references, and their pace is the sequential throughput. Then ``--clients`` threads each send
``--requests`` requests (official ``openai`` client, temperature 0, the pairs interleaved across clients) at
once. Checks: no request fails, every reply equals the reference of its own (prompt, steer). Prints
throughput (requests/s, generated tokens/s) for both, the speed-up, p50/p95 latency and the batches formed.
Bounded: ``clients x requests`` requests with a timeout each, then the server stops.

    HF_HUB_OFFLINE=1 python benchmarks/serve_load.py [--clients 32] [--requests 8] [--max-tokens 16] [--json out.json]

``--backbone builtin:smollm2-135m --noise 0.02`` runs the same test on SmolLM2-135M-Instruct with two slightly
perturbed copies of its head (English replies that differ per steer; an untrained demo model).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

PROMPTS = ["hello", "tell me a story about the sea", "why is the sky blue?", "list three fruits"]
STEERS = [{"verbosity": 1.0}, {"sentiment": 1.0}, {"verbosity": 0.5, "sentiment": 0.5},
          {"verbosity": 0.8, "sentiment": 0.2}]
NAME = "tiny-cmpo"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def ask(client: Any, prompt: str, steer: dict[str, float], max_tokens: int) -> tuple[str, int]:
    reply = client.chat.completions.create(model=NAME, messages=[{"role": "user", "content": prompt}],
                                           temperature=0, max_tokens=max_tokens, extra_body={"steer": steer})
    return reply.choices[0].message.content, reply.usage.completion_tokens


def load_test(clients: int = 32, requests: int = 8, max_tokens: int = 16, max_batch: int = 32,
              batch_window_ms: float = 5.0, backbone: str = "builtin:tiny", noise: float = 0.5) -> dict[str, Any]:
    import openai

    from tests.factories import steered_cmpo
    from zoo.serve import ServeSettings, create_app, serve_in_thread

    module = steered_cmpo(max_new_tokens=max_tokens, backbone=backbone, noise=noise)
    app = create_app(module, ServeSettings(model_name=NAME, max_batch=max_batch, batch_window_ms=batch_window_ms))
    pairs = [(p, s) for p in PROMPTS for s in STEERS]
    key = lambda p, s: (p, json.dumps(s, sort_keys=True))  # noqa: E731
    with serve_in_thread(app) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=120)
        ask(client, "warm up", STEERS[0], max_tokens)
        reference, tokens, started = {}, 0, time.perf_counter()
        for p, s in pairs:  # one at a time: the references and the sequential pace
            reference[key(p, s)], n = ask(client, p, s, max_tokens)
            tokens += n
        sequential = {"requests": len(pairs), "seconds": time.perf_counter() - started, "tokens": tokens}
        if len(set(reference.values())) != len(pairs):
            raise AssertionError("the model gives two (prompt, steer) pairs the same reply: a mix-up between "
                                 "them would go unseen; change the prompts or the head noise")

        latencies, errors, mixups, tokens_done = [], [], [], []
        lock, barrier = threading.Lock(), threading.Barrier(clients)
        batches_before = app.state.server.batcher.batches

        def client_loop(c: int) -> None:
            barrier.wait()
            for r in range(requests):
                p, s = pairs[(c * requests + r) % len(pairs)]
                t = time.perf_counter()
                try:
                    text, n = ask(client, p, s, max_tokens)
                except Exception as e:  # noqa: BLE001  (counted and reported)
                    with lock:
                        errors.append(f"{type(e).__name__}: {e}")
                    continue
                with lock:
                    latencies.append(time.perf_counter() - t)
                    tokens_done.append(n)
                    if text != reference[key(p, s)]:
                        mixups.append({"prompt": p, "steer": s, "got": text, "want": reference[key(p, s)]})

        threads = [threading.Thread(target=client_loop, args=(c,)) for c in range(clients)]
        started = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        seconds = time.perf_counter() - started
        batches = app.state.server.batcher.batches - batches_before
    total = clients * requests
    seq_rps = sequential["requests"] / sequential["seconds"]
    conc_rps = len(latencies) / seconds
    return {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs visible, "
                   f"torch threads {__import__('torch').get_num_threads()}",
        "backbone": backbone, "clients": clients, "requests_per_client": requests, "max_tokens": max_tokens, "max_batch": max_batch,
        "batch_window_ms": batch_window_ms,
        "sequential": {**sequential, "requests_per_s": seq_rps, "tokens_per_s": sequential["tokens"] / sequential["seconds"]},
        "concurrent": {"requests": total, "ok": len(latencies), "seconds": seconds, "requests_per_s": conc_rps,
                       "tokens_per_s": sum(tokens_done) / seconds, "batches": batches,
                       "p50_latency_s": percentile(latencies, 0.5) if latencies else None,
                       "p95_latency_s": percentile(latencies, 0.95) if latencies else None},
        "speedup": conc_rps / seq_rps,
        "errors": errors, "mixups": mixups,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--requests", type=int, default=8, help="requests per client")
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--max-batch", type=int, default=32)
    parser.add_argument("--batch-window-ms", type=float, default=5.0)
    parser.add_argument("--backbone", default="builtin:tiny")
    parser.add_argument("--noise", type=float, default=0.5, help="std of the noise added to the CMPO heads")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)
    out = load_test(args.clients, args.requests, args.max_tokens, args.max_batch, args.batch_window_ms,
                    args.backbone, args.noise)
    seq, conc = out["sequential"], out["concurrent"]
    print(f"model: CMPO on {out['backbone']}; machine: {out['machine']}")
    print(f"sequential: {seq['requests']} requests one at a time: {seq['requests_per_s']:.1f} req/s, "
          f"{seq['tokens_per_s']:.0f} tokens/s")
    print(f"concurrent: {out['clients']} clients x {out['requests_per_client']} requests: {conc['ok']}/{conc['requests']} "
          f"ok in {conc['seconds']:.1f} s, {conc['requests_per_s']:.1f} req/s, {conc['tokens_per_s']:.0f} tokens/s, "
          f"{conc['batches']} batches, latency p50 {conc['p50_latency_s']:.3f} s, p95 {conc['p95_latency_s']:.3f} s")
    print(f"speed-up over sequential: {out['speedup']:.2f}x; errors: {len(out['errors'])}; "
          f"replies mixed up: {len(out['mixups'])}")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    return out


if __name__ == "__main__":
    result = main()
    sys.exit(1 if result["errors"] or result["mixups"] else 0)
