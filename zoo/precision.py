"""Which precision a device really computes fast.

bf16 is the compute type of choice on Ampere+ GPUs and on CPUs with bf16 instructions (AMX, AVX512-BF16),
where bf16-mixed runs matmuls 2-7x faster than fp32. On a CPU without them (AVX2 only, most laptops
before 2023 and many cloud AMD parts) PyTorch emulates bf16 matmuls in a scalar fallback that is about
10x *slower* than fp32 — a 10-minute CPU run becomes hours. ``resolve_precision`` turns a bf16 request into
fp32 on such a device (the CLI does this unless ``bf16_fallback: false``) and says why.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch

BF16 = ("bf16-mixed", "bf16-true", "bf16")
CPU_BF16_FLAGS = ("amx_bf16", "avx512_bf16")


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU feature flags (Linux ``/proc/cpuinfo``; empty where it is unreadable)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def native_bf16(device: str) -> bool:
    """True when ``device`` ('cpu' or 'cuda') has bf16 arithmetic in hardware."""
    if device == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)
    flags = cpu_flags()
    if not flags:  # not Linux (e.g. an Apple-silicon or Windows laptop): trust the user's choice
        return True
    return any(f in flags for f in CPU_BF16_FLAGS)


def resolve_precision(precision: str | int | None, accelerator: str | None) -> tuple[str | int | None, str | None]:
    """(precision to use, reason it was changed or None). Only bf16 on a device without bf16 changes."""
    if str(precision) not in BF16:
        return precision, None
    device = "cuda" if accelerator in ("gpu", "cuda") or (accelerator in (None, "auto") and torch.cuda.is_available()) else "cpu"
    if accelerator not in (None, "auto", "cpu", "gpu", "cuda") or native_bf16(device):
        return precision, None
    what = "this CPU has no bf16 instructions (no AMX / AVX512-BF16)" if device == "cpu" else "this GPU has no bf16"
    return "32-true", (f"trainer.precision {precision!r}: {what}, so bf16 would be emulated about 10x slower than "
                       "fp32; running 32-true instead (set bf16_fallback: false to keep bf16)")
