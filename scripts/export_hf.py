"""Export a training checkpoint (a file, or a sharded FSDP checkpoint directory) as a plain
``save_pretrained`` directory (or PEFT adapter files), using the run's own config to rebuild the model.

    python scripts/export_hf.py --config configs/dpo.yaml --ckpt runs/dpo/checkpoints/last.ckpt --out runs/dpo/hf
"""

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from callbacks.artifacts import export_pretrained  # noqa: E402
from lightning_modules.cli import main as cli  # noqa: E402


def main(argv: list[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", action="append", required=True, help="the run's config(s), in order")
    ap.add_argument("--ckpt", required=True, help="checkpoint file or sharded checkpoint directory")
    ap.add_argument("--out", required=True, help="output directory")
    ap.add_argument("overrides", nargs="*", help="extra CLI overrides, e.g. --model.init_args.beta=0.1")
    a = ap.parse_args(argv)
    args = [x for c in a.config for x in ("--config", c)] + a.overrides + ["--trainer.logger=false"]
    model = cli(args, run=False).model
    out = export_pretrained(model, a.ckpt, a.out)
    print(f"exported {a.ckpt} to {out}")
    return out


if __name__ == "__main__":
    main()
