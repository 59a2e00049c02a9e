"""Rollouts on builtin:tiny with 1 or 2 CPU processes (gloo): every rank passes the same prompts with
``split_across_ranks=True``; rank 0 writes the gathered completions to a JSON file.

    python tests/multiproc/rollout_ranks.py OUT.json --world 2
"""

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402

from zoo.rollout import SamplingSettings, generate  # noqa: E402
from zoo.tiny import tiny_model, tiny_tokenizer  # noqa: E402

LENGTHS = (3, 17, 8, 30, 1, 12, 9)


def rollout(rank: int, out: Path, world: int) -> None:
    torch.set_num_threads(1)
    if world > 1:
        dist.init_process_group("gloo", rank=rank, world_size=world)
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(0, 256, (n,), generator=g).tolist() for n in LENGTHS]
    settings = SamplingSettings(n=3, max_new_tokens=10, temperature=1.0, top_p=0.9, seed=11, batch_size=2,
                                max_total_length=36)
    result = generate(tiny_model(), tiny_tokenizer(), prompts, settings, split_across_ranks=True)
    if rank == 0:
        rows = [{"prompt": c.prompt_index, "sample": c.sample_index, "tokens": c.token_ids, "logprobs": c.logprobs,
                 "finish": c.finish_reason} for c in result.completions]
        out.write_text(json.dumps(rows))
    if world > 1:
        dist.destroy_process_group()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out", type=Path)
    ap.add_argument("--world", type=int, default=1)
    a = ap.parse_args()
    if a.world == 1:
        rollout(0, a.out, 1)
        return
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(29500 + os.getpid() % 1000))
    mp.spawn(rollout, args=(a.out, a.world), nprocs=a.world)


if __name__ == "__main__":
    main()
