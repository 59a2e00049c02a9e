"""What every benchmark measures with: peak memory and CPU time of this process, read from ``/proc`` (Linux)."""

from __future__ import annotations

import os
import time
from pathlib import Path


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def peak_rss_kib() -> int:
    """This process's peak resident memory since the last ``memory_baseline()`` (KiB)."""
    return _status_kib("VmHWM")


def memory_baseline() -> int:
    """Reset the peak-RSS counter to the current RSS and return it (KiB)."""
    Path("/proc/self/clear_refs").write_text("5")
    return _status_kib("VmRSS")


def cpu_snapshot() -> tuple[float, float, float, float]:
    """(wall s, machine busy CPU-s incl. steal, machine total CPU-s, this process's CPU-s)."""
    ticks = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    hz = os.sysconf("SC_CLK_TCK")
    return time.perf_counter(), (sum(ticks) - ticks[3] - ticks[4]) / hz, sum(ticks) / hz, time.process_time()


def run_worker(cmd: list[str], result: Path, log: Path, name: str, cwd: Path) -> dict:
    """Run one measured configuration in a fresh process (so peak memory is its own) and read its JSON result.

    Idle OpenMP threads sleep instead of spinning, so the worker's CPU time is the work it did even when other
    processes share the cores (the benchmarks' ``cpu_tok_s``)."""
    import json
    import subprocess
    import sys

    result.unlink(missing_ok=True)
    env = {"OMP_WAIT_POLICY": "PASSIVE", **os.environ, "TQDM_DISABLE": "1"}
    with log.open("w") as f:
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=cwd, env=env)
    if proc.returncode != 0 or not result.exists():
        sys.exit(f"{name} failed (exit {proc.returncode}); see {log}:\n" + log.read_text()[-3000:])
    return json.loads(result.read_text())
