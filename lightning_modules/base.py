"""What every steerzoo LightningModule shares: the backbone, the data interface, the optimizer, predict.

The data interface (read by ``datamodules.base.RecordDataModule``):
- ``record_kind``: which canonical record the method trains on (``preference``, ``demonstration``, ...);
- ``example_fn(record, **example_kwargs(split))``: a pure function, record -> method examples
  ``{"prompt": messages, "completions": [...], **extras}``;
- ``tokenizer`` and ``tokenize_settings``: how examples become ids (``zoo.collate``).

Models are built in ``configure_model`` (Lightning calls it under the strategy's context, so sharded and
meta-device initialisation work); the module holds only configs until then.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from pathlib import Path
from typing import Any, ClassVar, Literal

import lightning as L
import torch
from torch import nn
from transformers import get_scheduler

from zoo.backbone import BackboneConfig, LoraSettings, PromptTuningSettings, load_backbone, load_tokenizer
from zoo.collate import TokenizeSettings
from zoo.records import Record
from zoo.sampling import SamplingSettings, sample


@dataclasses.dataclass
class OptimSettings:
    lr: float = 1e-5
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    scheduler: Literal["constant", "linear", "cosine"] = "constant"
    warmup_steps: int = 0


STAGE_PREFIX = {"train": "train", "validation": "val", "test": "test"}  # metric names per split
@dataclasses.dataclass
class ShardingSettings:
    """FSDP2 (``fully_shard``) options, used when the trainer's strategy is ``ModelParallelStrategy``."""

    param_dtype: Literal["float32", "bfloat16"] = "bfloat16"  # compute dtype of gathered parameters
    reduce_dtype: Literal["float32", "bfloat16"] = "float32"  # gradient reduce-scatter dtype
    activation_checkpointing: bool = False  # recompute each decoder layer in backward
    cpu_offload: bool = False  # keep sharded parameters, gradients and optimizer state in CPU memory
    reshard_after_forward: bool = True  # ZeRO-3 (True) or ZeRO-2-like (False)


_NESTED = {"lora": LoraSettings, "prompt_tuning": PromptTuningSettings}


def as_dataclass(cls: type, value: Any) -> Any:
    """Accept a dataclass instance or a plain dict (from a checkpoint's hyper-parameters or a YAML)."""
    if value is None:
        return cls()
    if isinstance(value, cls):
        return value
    if not isinstance(value, dict):
        raise TypeError(f"expected {cls.__name__} or a dict, got {type(value).__name__}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(value) - names
    if unknown:
        raise ValueError(f"unknown {cls.__name__} keys {sorted(unknown)}; known: {sorted(names)}")
    kwargs = {k: (as_dataclass(_NESTED[k], v) if k in _NESTED and v is not None else v) for k, v in value.items()}
    if "betas" in kwargs:
        kwargs["betas"] = tuple(kwargs["betas"])
    return cls(**kwargs)


def _plain(obj: Any) -> Any:
    """Dataclasses -> dicts, tuples -> lists: what ``torch.load(weights_only=True)`` accepts."""
    if dataclasses.is_dataclass(obj):
        return {k: _plain(v) for k, v in dataclasses.asdict(obj).items()}
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


class CausalLMModule(L.LightningModule):
    """Base class: a causal LM backbone and the shared plumbing. Subclasses write the loss."""

    record_kind: ClassVar[str] = "preference"

    def __init__(
        self,
        backbone: BackboneConfig | None = None,
        tokenize: TokenizeSettings | None = None,
        optim: OptimSettings | None = None,
        sampling: SamplingSettings | None = None,
        sharding: ShardingSettings | None = None,
        logprob_chunk_size: int = 1024,
    ):
        super().__init__()
        self.backbone_cfg: BackboneConfig = as_dataclass(BackboneConfig, backbone)
        self.tokenize_settings: TokenizeSettings = as_dataclass(TokenizeSettings, tokenize)
        self.optim: OptimSettings = as_dataclass(OptimSettings, optim)
        self.sampling: SamplingSettings = as_dataclass(SamplingSettings, sampling)
        self.sharding: ShardingSettings = as_dataclass(ShardingSettings, sharding)
        self.logprob_chunk_size = logprob_chunk_size
        # plain values only, so checkpoints load with weights_only=True and load_from_checkpoint works
        self.save_hyperparameters(
            {
                "_class_path": f"{type(self).__module__}.{type(self).__qualname__}",  # LightningCLI reads it back
                "backbone": _plain(self.backbone_cfg),
                "tokenize": _plain(self.tokenize_settings),
                "optim": _plain(self.optim),
                "sampling": _plain(self.sampling),
                "sharding": _plain(self.sharding),
                "logprob_chunk_size": logprob_chunk_size,
                **self.method_hparams(),
            }
        )
        self.tokenizer = load_tokenizer(self.backbone_cfg)
        self.model: nn.Module | None = None

    # ---- data interface ---------------------------------------------------------------------------
    @staticmethod
    def example_fn(record: Record, **kwargs: Any) -> Iterable[dict[str, Any]]:
        raise NotImplementedError

    @staticmethod
    def prompt_example_fn(record: Record, **kwargs: Any) -> Iterable[dict[str, Any]]:
        """Prompt records -> prompt-only examples, for ``predict`` (methods with a control override it)."""
        yield {"prompt": list(record.prompt), "completions": []}

    def example_kwargs(self, split: str) -> dict[str, Any]:
        return {}

    def method_hparams(self) -> dict[str, Any]:
        """The subclass's own constructor arguments, as plain values (saved with each checkpoint)."""
        return {}

    def collate_options(self) -> dict[str, Any]:
        """Keyword arguments for ``zoo.collate.PadCollator`` (DPO asks for prefix-shared rows)."""
        return {}

    # ---- model ------------------------------------------------------------------------------------
    def configure_model(self) -> None:
        """Build the backbone and extras; shard them with FSDP2 when the strategy provides a device mesh."""
        if self.model is not None:
            return
        self.model = load_backbone(self.backbone_cfg)
        self.build_extras()
        if self.device_mesh is not None:
            self.check_shardable()
            self.shard(self.device_mesh["data_parallel"])

    def check_shardable(self) -> None:
        """Fail at start-up, not mid-run, on combinations that sharding does not support (override)."""
        if self.backbone_cfg.quantization is not None:
            raise ValueError("FSDP with bitsandbytes-quantized base weights is not supported; use DDP for QLoRA")
        if self.backbone_cfg.prompt_tuning is not None:
            raise ValueError("FSDP with PEFT prompt tuning is not supported; use DDP")

    def shard(self, mesh) -> None:
        """``fully_shard`` each decoder layer, then the backbone root, then every other trainable child."""
        from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, fully_shard

        s = self.sharding
        dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16}
        kwargs = dict(
            mesh=mesh,
            mp_policy=MixedPrecisionPolicy(param_dtype=dtypes[s.param_dtype], reduce_dtype=dtypes[s.reduce_dtype]),
            reshard_after_forward=s.reshard_after_forward,
        )
        if s.cpu_offload:
            kwargs["offload_policy"] = CPUOffloadPolicy()
        layers = decoder_layers(self.model)
        if s.activation_checkpointing:
            from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

            for i, layer in enumerate(layers):
                layers[i] = checkpoint_wrapper(layer)
        for layer in layers:
            fully_shard(layer, **kwargs)
        # the root keeps its parameters gathered after forward: the LM head is applied to the hidden states
        # after the model's own forward (completion positions only), and again when recomputed in backward
        fully_shard(self.model, **{**kwargs, "reshard_after_forward": False})
        for name, child in self.named_children():
            if name != "model" and any(p.requires_grad for p in child.parameters()):
                fully_shard(child, **kwargs)  # e.g. a reward head: its gradients must be reduced too

    def build_extras(self) -> None:
        """Heads, references... created after the backbone (override)."""

    def configure_optimizers(self):
        decay, no_decay = [], []
        for name, p in self.named_parameters():
            if p.requires_grad:
                (no_decay if p.ndim < 2 or "norm" in name.lower() else decay).append(p)
        if not decay and not no_decay:
            raise ValueError(f"{type(self).__name__}: no trainable parameters (check backbone.lora / freezing)")
        groups = [{"params": decay, "weight_decay": self.optim.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        optimizer = torch.optim.AdamW([g for g in groups if g["params"]], lr=self.optim.lr, betas=self.optim.betas)
        total = self.trainer.estimated_stepping_batches if self.trainer is not None else 1
        scheduler = get_scheduler(
            "constant_with_warmup" if self.optim.scheduler == "constant" else self.optim.scheduler,
            optimizer,
            num_warmup_steps=self.optim.warmup_steps,
            num_training_steps=max(int(total), 1),
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ---- predict ----------------------------------------------------------------------------------
    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> list[dict[str, Any]]:
        samples = sample(self.model, self.tokenizer, prompts=None, settings=self.sampling, prompt_ids=batch["prompt_ids"])
        prompts = samples.prompts
        idx = batch["idx"].tolist()
        return [
            {
                "idx": idx[k // samples.n],
                "sample": k % samples.n,
                "prompt": prompts[k // samples.n],
                "completion": text,
                "truncated": samples.truncated[k],
                **self.prediction_info(),
            }
            for k, text in enumerate(samples.texts)
        ]

    def prediction_info(self) -> dict[str, Any]:
        """Extra fields written beside each prediction (e.g. the control or steering weights used)."""
        return {}

    # ---- artifacts and checkpoints ----------------------------------------------------------------
    def save_pretrained(self, path: str | Path) -> Path:
        """An HF directory (``from_pretrained`` loads it; PEFT adapter files when LoRA is on) plus tokenizer."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(path)
        self.tokenizer.save_pretrained(path)
        return path

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["steerzoo"] = {
            "module": type(self).__name__,
            "backbone": self.backbone_cfg.name_or_path,
            "shapes": {k: list(v.shape) for k, v in self.state_dict().items()},
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        info = checkpoint.get("steerzoo")
        where = checkpoint.get("steerzoo_path", "the checkpoint")
        if info is None:
            raise ValueError(f"{where} was not written by steerzoo (no 'steerzoo' entry)")
        mine = {k: list(v.shape) for k, v in self.state_dict().items()}
        if info["module"] != type(self).__name__ or info["shapes"] != mine:
            diff = sorted(set(info["shapes"]).symmetric_difference(mine))[:3] or [
                k for k in mine if info["shapes"].get(k) != mine[k]
            ][:3]
            raise ValueError(
                f"{where} is from another model: it holds {info['module']} on {info['backbone']!r}, this run is "
                f"{type(self).__name__} on {self.backbone_cfg.name_or_path!r} (first differing weights: {diff})"
            )


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The repeated decoder blocks of a (PEFT-wrapped) transformers causal LM."""
    from zoo.backbone import base_model

    trunk = base_model(model).get_decoder()
    for name in ("layers", "h", "blocks"):  # Llama/Mistral/Qwen, GPT-2/GPT-J/GPT-Neo, others
        layers = getattr(trunk, name, None)
        if isinstance(layers, nn.ModuleList):
            return layers
    raise ValueError(f"cannot find the decoder layers of {type(trunk).__name__} to shard")
