"""The load test (``benchmarks/serve_load.py``): 32 concurrent clients x 8 requests with mixed ``steer`` values on
loopback; no request fails, no reply belongs to another request's prompt or weights, and requests sent together
are batched (far fewer batches than requests). Prints the throughput and latency figures."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from serve_load import load_test  # noqa: E402


def test_concurrent_mixed_steers_no_errors_no_mix_ups():
    out = load_test(clients=32, requests=8, max_tokens=16)
    conc = out["concurrent"]
    print(f"\nsequential {out['sequential']['requests_per_s']:.1f} req/s; concurrent {conc['requests_per_s']:.1f} "
          f"req/s ({out['speedup']:.1f}x), p50 {conc['p50_latency_s']:.3f} s, p95 {conc['p95_latency_s']:.3f} s, "
          f"{conc['batches']} batches")
    assert out["errors"] == [] and out["mixups"] == []
    assert conc["ok"] == 32 * 8
    assert conc["batches"] <= 32 * 8 / 4  # at least four requests a batch on average
