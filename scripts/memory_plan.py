"""Will this training config fit? Per-device memory, estimated before training (``zoo.memory_plan``).

    python scripts/memory_plan.py --config configs/dpo.yaml
    python scripts/memory_plan.py --config configs/dpo.yaml --config configs/trainer/gpu.yaml \\
        --model.init_args.backbone.name_or_path meta-llama/Llama-2-7b-hf --world_size 8 --strategy fsdp \\
        --device_memory_gib 40

The YAMLs merge as LightningCLI merges them (later files and ``--dotted.key value`` overrides win; a
``--model.beta``-style key gets its ``init_args`` added). The model is built on the meta device from its
config only: ``builtin:*`` models need nothing, hub ids need their config.json in the local HF cache.
The method (``model.class_path``) is imported, not built, and asked for its facts (``memory_facts``).
Exit status 0: fits (or no ``--device_memory_gib`` given); 1: does not fit; 2: bad config.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a plan never downloads
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import warnings  # noqa: E402

import yaml  # noqa: E402

warnings.filterwarnings("ignore", category=FutureWarning)  # transformers' deprecation notes while wrapping

from zoo.memory_plan import (  # noqa: E402
    FsdpSettings,
    MemoryPlan,
    as_dict,
    config_facts,
    format_plan,
    load_model_config,
    plan,
)


def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """Deep merge: nested dicts combine, anything else (lists too) is replaced by the later value."""
    out = dict(base)
    for key, value in over.items():
        out[key] = merge(out[key], value) if isinstance(out.get(key), dict) and isinstance(value, dict) else value
    return out


def dotted(key: str, value: Any) -> dict[str, Any]:
    """``model.beta`` -> ``{"model": {"init_args": {"beta": v}}}``; ``trainer.precision`` stays as it is."""
    parts = key.split(".")
    if parts[0] in ("model", "data") and len(parts) > 1 and parts[1] not in ("class_path", "init_args"):
        parts.insert(1, "init_args")
    tree: Any = value
    for part in reversed(parts):
        tree = {part: tree}
    return tree


def parse_overrides(extra: list[str]) -> list[tuple[str, Any]]:
    """``--a.b value`` / ``--a.b=value`` pairs; values parsed as YAML (numbers, booleans, lists, null)."""
    pairs, i = [], 0
    while i < len(extra):
        arg = extra[i]
        if not arg.startswith("--"):
            raise SystemExit(f"memory plan: unexpected argument {arg!r} (overrides look like --model.init_args.x value)")
        if "=" in arg:
            key, raw = arg[2:].split("=", 1)
            i += 1
        else:
            if i + 1 >= len(extra):
                raise SystemExit(f"memory plan: {arg} needs a value")
            key, raw = arg[2:], extra[i + 1]
            i += 2
        pairs.append((key, yaml.safe_load(raw)))
    return pairs


def load_config(paths: list[str], overrides: list[tuple[str, Any]]) -> dict[str, Any]:
    cfg: dict[str, Any] = {}
    for path in paths:
        cfg = merge(cfg, yaml.safe_load(Path(path).read_text()) or {})
    for key, value in overrides:
        cfg = merge(cfg, dotted(key, value))
    return cfg


def world_size_of(trainer: dict[str, Any]) -> int | None:
    """devices × num_nodes, or None when the config leaves it to the machine (``auto`` / -1)."""
    devices = trainer.get("devices", "auto")
    if isinstance(devices, (list, tuple)):
        n = len(devices)
    elif isinstance(devices, int) or (isinstance(devices, str) and devices.lstrip("-").isdigit()):
        n = int(devices)
        if n < 1:
            return None
    else:
        return None
    return n * int(trainer.get("num_nodes", 1))


def strategy_of(strategy: Any, world_size: int) -> str:
    """Lightning strategy (name or ``class_path`` dict) -> single / ddp / fsdp."""
    name = str(strategy.get("class_path", "") if isinstance(strategy, dict) else strategy or "auto").lower()
    if "fsdp" in name or "modelparallel" in name:  # steerzoo shards with FSDP2 under ModelParallelStrategy
        return "fsdp"
    if "deepspeed" in name:
        raise ValueError("DeepSpeed is not modelled (single, ddp, fsdp)")
    if "ddp" in name:
        return "ddp"
    return "ddp" if world_size > 1 else "single"  # auto / single_device


def device_of(accelerator: Any, asked: str | None, device_memory_gib: float | None) -> str:
    if asked:
        return asked
    acc = str(accelerator or "auto").lower()
    if acc == "cpu":
        return "cpu"
    if acc in ("gpu", "cuda"):
        return "cuda"
    import torch

    # auto: a capacity to check against means GPUs; otherwise plan for what this machine has
    return "cuda" if device_memory_gib is not None or torch.cuda.is_available() else "cpu"


def method_class(class_path: str) -> type:
    """The LightningModule a config names (``lightning_modules.CMPO``, or a bare name exported by
    ``lightning_modules``), imported but not built."""
    if not class_path:
        raise ValueError("model.class_path is missing: which method does the config train?")
    module_name, _, name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name or "lightning_modules"), name, None)
    except ImportError as err:
        raise ValueError(f"model.class_path {class_path!r}: {err}") from err
    if cls is None or not hasattr(cls, "memory_facts"):
        raise ValueError(f"model.class_path {class_path!r} is not a steerzoo method (no memory_facts)")
    return cls


def build_plan(cfg: dict[str, Any], world_size: int | None, strategy: str | None, device: str | None,
               device_memory_gib: float | None) -> tuple[MemoryPlan, list[str]]:
    from zoo.backbone import LoraSettings

    model_cfg, data_cfg, trainer = cfg.get("model") or {}, cfg.get("data") or {}, cfg.get("trainer") or {}
    args = model_cfg.get("init_args") or {}
    backbone = args.get("backbone") or {}
    name = backbone.get("name_or_path", "builtin:smollm2-135m")
    lora = LoraSettings(**backbone["lora"]) if backbone.get("lora") else None
    if backbone.get("prompt_tuning"):
        raise ValueError("prompt tuning is not modelled yet (LoRA and full fine-tuning are)")
    notes = []
    if world_size is None:
        world_size = world_size_of(trainer)
        if world_size is None:
            world_size = 1
            notes.append("trainer.devices is auto: planned for 1 process (pass --world_size N)")
    kind = strategy or strategy_of(trainer.get("strategy"), world_size)
    if kind == "single" and world_size > 1:
        kind = "ddp"
    tokenize = args.get("tokenize") or {}
    config = load_model_config(name, backbone.get("revision"), bool(backbone.get("trust_remote_code", False)))
    facts, method = config_facts(config, method_class(model_cfg.get("class_path", "")), args, lora, name)
    sharding = {k: v for k, v in (args.get("sharding") or {}).items() if k in FsdpSettings.__dataclass_fields__}
    result = plan(
        facts,
        method,
        batch_size=int((data_cfg.get("init_args") or {}).get("batch_size", 4)),
        seq_len=int(tokenize.get("max_length", 512)),
        precision=str(trainer.get("precision", "32-true")),
        strategy=kind,
        world_size=world_size,
        weight_dtype=backbone.get("dtype", "float32"),
        quantization=backbone.get("quantization"),
        gradient_checkpointing=bool(backbone.get("gradient_checkpointing", False)),
        logprob_chunk_size=int(args.get("logprob_chunk_size", 1024)),
        attn_implementation=backbone.get("attn_implementation", "sdpa"),
        device=device_of(trainer.get("accelerator"), device, device_memory_gib),
        fsdp=FsdpSettings(**sharding),
    )
    return result, notes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", action="append", required=True, help="YAML config; repeat to compose")
    parser.add_argument("--world_size", type=int, help="processes in all (default: trainer.devices x num_nodes)")
    parser.add_argument("--strategy", choices=["single", "ddp", "fsdp"], help="default: from trainer.strategy")
    parser.add_argument("--device", choices=["cuda", "cpu"], help="default: from trainer.accelerator")
    parser.add_argument("--device_memory_gib", type=float, help="memory per device, for the verdict (A100: 40/80)")
    parser.add_argument("--json", action="store_true", help="print the plan as JSON")
    opts, extra = parser.parse_known_args(argv)
    try:
        cfg = load_config(opts.config, parse_overrides(extra))
        result, notes = build_plan(cfg, opts.world_size, opts.strategy, opts.device, opts.device_memory_gib)
    except (FileNotFoundError, ValueError, TypeError) as err:
        print(str(err) if str(err).startswith("memory plan") else f"memory plan: {err}", file=sys.stderr)
        return 2
    result.notes[:0] = notes
    if opts.json:
        out = as_dict(result)
        if opts.device_memory_gib is not None:
            out["fits"] = result.fits(opts.device_memory_gib)
        print(json.dumps(out, indent=2))
    else:
        print(format_plan(result, opts.device_memory_gib))
    return 0 if opts.device_memory_gib is None or result.fits(opts.device_memory_gib) else 1


if __name__ == "__main__":
    sys.exit(main())
