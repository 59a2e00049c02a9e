"""Relabel a dataset with a trained SteerLM attribute prediction model (APM), for the ACM.

The thesis (§5.3.1) trains SteerLM's attribute-conditioned SFT model (ACM) on HelpSteer + OASST records
whose attributes were *predicted by the APM*, not on the human labels. This script is that step: it
builds the APM from its own config, loads a checkpoint, takes the scored records of the config's data
(every source of a mixture), replaces every record's attributes by the APM's predicted classes (0..C-1)
and writes one JSONL file per split in ``zoo.records`` row form, which ``RecordsFileDataModule`` reads.

    python scripts/apm_label.py --config configs/paper/steerlm_apm.yaml \\
        --ckpt_path runs/paper/steerlm_apm/checkpoints/best-step=….ckpt --out runs/paper/apm_labelled
    python train.py fit --config configs/paper/steerlm_acm.yaml --config configs/data/apm_labelled.yaml

Extra arguments after ``--`` go to the config parser (e.g. ``-- --data.init_args.max_samples 100``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def label_split(apm, datamodule, split: str, batch_size: int = 8) -> list:
    """The APM-labelled scored records of ``split``."""
    from tqdm.auto import tqdm

    from zoo.records import ScoredResponse

    datamodule.attach(apm.example_builder())
    rows = datamodule.records(split, "scored")
    records = [ScoredResponse.from_row(r) for r in rows]
    out = []
    for start in tqdm(range(0, len(records), 256), desc=f"APM labels ({split})"):
        out += apm.label_records(records[start : start + 256], batch_size=batch_size)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", required=True, action="append", help="the APM's config (composable)")
    p.add_argument("--ckpt_path", required=True, help="a checkpoint of that APM run (last.ckpt or best-*.ckpt)")
    p.add_argument("--out", required=True, help="folder for <split>.jsonl")
    p.add_argument("--splits", nargs="+", default=["train", "validation"])
    p.add_argument("--batch_size", type=int, default=8)
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    args = p.parse_args(argv[: argv.index("--")] if "--" in argv else argv)

    import torch

    from callbacks.checkpoint_io import AtomicCheckpointIO
    from datamodules.records_file import write_records
    from lightning_modules.cli import main as cli_main
    from lightning_modules.steerlm import SteerLMAttributeModel

    cli = cli_main([arg for c in args.config for arg in ("--config", c)] + extra, run=False)
    apm = cli.model
    if not isinstance(apm, SteerLMAttributeModel):
        print(f"error: {args.config} configures {type(apm).__name__}, not a SteerLMAttributeModel", file=sys.stderr)
        return 2
    state = AtomicCheckpointIO().load_checkpoint(args.ckpt_path)  # clear errors for a missing/corrupt file
    apm.configure_model()
    apm.on_load_checkpoint(state)  # refuses a checkpoint of another model, naming it
    apm.load_state_dict(state["state_dict"])
    device = "cuda" if torch.cuda.is_available() else "cpu"
    apm.to(device)
    out = Path(args.out)
    for split in args.splits:
        records = label_split(apm, cli.datamodule, split, args.batch_size)
        write_records(str(out / f"{split}.jsonl"), records)
        print(f"{split}: {len(records)} APM-labelled records -> {out / f'{split}.jsonl'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
