"""Rows/s of HH-RLHF conversion (raw transcripts -> validated preference records -> DPO examples) and
tokenization (SmolLM2's tokenizer, chat template), cold (empty datasets cache) and warm (cached by the
fingerprint), with ``num_proc`` 1 and 2; a plain per-row Python loop over the same steps is the peer.

    HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 python benchmarks/data_throughput.py [--rows 2354] [--tiny]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="byte tokenizer of builtin:tiny instead of SmolLM2's")
    a = ap.parse_args()
    cache = tempfile.mkdtemp(prefix="steerzoo-bench-cache-")
    os.environ["HF_DATASETS_CACHE"] = cache
    import datasets

    datasets.config.HF_DATASETS_CACHE = Path(cache)
    from datamodules.hh_rlhf import HHRLHFDataModule
    from lightning_modules import DPO
    from zoo.collate import _tokenize_one

    module = DPO(backbone={"name_or_path": "builtin:tiny" if a.tiny else "builtin:smollm2-135m"},
                 tokenize={"max_length": 256, "length_policy": "truncate"}, ref_cache_dir=None)
    rows = {}
    for num_proc in (None, 2):
        for state in ("cold", "warm"):
            if state == "cold":
                for f in Path(cache).glob("**/cache-*.arrow"):
                    f.unlink()  # forget earlier conversions and tokenizations
            dm = HHRLHFDataModule(data_files="sample", on_error="skip", num_proc=num_proc, log_dir=f"{cache}/reports")
            dm.attach(module.example_builder())
            t = time.perf_counter()
            ds = dm.build_split("train")
            rows[(num_proc or 1, state)] = (len(ds), time.perf_counter() - t)

    # the peer: the same steps as a plain per-row loop (no datasets, no cache)
    raw = HHRLHFDataModule(data_files="sample").load_split("train")
    t = time.perf_counter()
    n = 0
    for row in raw:
        try:
            recs = HHRLHFDataModule.to_records(row, "preference")
        except Exception:
            continue
        for r in recs:
            for ex in DPO.example_fn(r):
                _tokenize_one(ex["prompt"], ex["completions"], module.tokenizer, module.tokenize_settings)
                n += 1
    loop = (n, time.perf_counter() - t)

    print(f"\nHH-RLHF helpful-base sample ({len(raw)} raw rows) -> DPO examples, tokenizer "
          f"{'builtin:tiny' if a.tiny else 'SmolLM2-135M'}, max_length 256")
    print("| path | num_proc | cache | examples | seconds | rows/s | vs loop |")
    print("|---|---|---|---|---|---|---|")
    loop_rate = len(raw) / loop[1]
    for (procs, state), (count, secs) in rows.items():
        rate = len(raw) / secs
        print(f"| datasets.map | {procs} | {state} | {count} | {secs:.2f} | {rate:,.0f} | {rate / loop_rate:.2f}x |")
    print(f"| python loop (peer) | 1 | none | {loop[0]} | {loop[1]:.2f} | {loop_rate:,.0f} | 1.00x |")


if __name__ == "__main__":
    main()
