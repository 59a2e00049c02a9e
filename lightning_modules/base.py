"""What every steerzoo LightningModule shares: the backbone, the data contract, steering, the optimizer, predict.

The data contract: ``example_builder()`` returns a ``zoo.examples.ExampleBuilder`` that the CLI hands to
the DataModule (``datamodule.attach``). A subclass fills it through
- ``record_kind``: which canonical record the method trains on (``preference``, ``demonstration``, ...);
- ``example_fn(record, **example_kwargs(split))``: a pure function, record -> method examples
  ``{"prompt": messages, "completions": [...], **extras}``;
- ``tokenizer`` and ``tokenize_settings``: how examples become ids (``zoo.collate``).

Steering (``zoo.preference``): every module is a ``Steerable``. ``attributes`` names what ``steer`` accepts
(empty: not steerable), ``preference(value)`` validates weights by attribute name, ``steer(preference)`` is
a context inside which ``generate`` follows them, and ``predict`` uses the ``steer`` argument. A steerable
method implements ``apply_preference``.

Models are built in ``configure_model`` (Lightning calls it under the strategy's context, so sharded and
meta-device initialisation work); the module holds only configs until then.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar, Literal

import lightning as L
import torch
from torch import nn
from transformers import get_scheduler

from zoo.backbone import (
    BackboneConfig,
    LoraSettings,
    PromptTuningSettings,
    decoder_layers,
    load_backbone,
    load_tokenizer,
)
from zoo.collate import TokenizeSettings
from zoo.examples import ExampleBuilder, code_digest, prompt_examples
from zoo.memory_plan import MethodFacts, ModelFacts
from zoo.preference import Preference
from zoo.records import Record
from zoo.sampling import Samples, SamplingSettings, sample

SteerValue = Preference | Mapping[str, float] | str | None


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


def plain_values(obj: Any) -> Any:
    """Dataclasses -> dicts, tuples -> lists: what ``torch.load(weights_only=True)`` accepts."""
    if dataclasses.is_dataclass(obj):
        return {k: plain_values(v) for k, v in dataclasses.asdict(obj).items()}
    if isinstance(obj, dict):
        return {k: plain_values(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain_values(v) for v in obj]
    return obj


class CausalLMModule(L.LightningModule):
    """Base class: a causal LM backbone and the shared plumbing. Subclasses write the loss."""

    record_kind: ClassVar[str] = "preference"
    group_by_prompt: ClassVar[bool] = False
    mixes_preferences: ClassVar[bool] = False  # generate_steered serves different preferences in one batch
    attributes: list[str] = []  # what ``steer`` accepts; a steerable method sets its own before super().__init__

    def __init__(
        self,
        backbone: BackboneConfig | None = None,
        tokenize: TokenizeSettings | None = None,
        optim: OptimSettings | None = None,
        sampling: SamplingSettings | None = None,
        sharding: ShardingSettings | None = None,
        logprob_chunk_size: int = 1024,
        steer: dict[str, float] | str | None = None,
    ):
        super().__init__()
        # checked before any weights load: an unknown attribute fails at start-up, naming the model's list
        self.steer_preference: Preference | None = self.preference(steer)
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
                "backbone": plain_values(self.backbone_cfg),
                "tokenize": plain_values(self.tokenize_settings),
                "optim": plain_values(self.optim),
                "sampling": plain_values(self.sampling),
                "sharding": plain_values(self.sharding),
                "logprob_chunk_size": logprob_chunk_size,
                "steer": self.steer_preference.as_dict() if self.steer_preference is not None else None,
                **self.method_hparams(),
            }
        )
        self.tokenizer = load_tokenizer(self.backbone_cfg)
        self.model: nn.Module | None = None

    # ---- data interface ---------------------------------------------------------------------------
    @staticmethod
    def example_fn(record: Record, **kwargs: Any) -> Iterable[dict[str, Any]]:
        raise NotImplementedError

    prompt_example_fn = staticmethod(prompt_examples)  # predict's prompt-only examples (SteerLM overrides it)

    def example_kwargs(self, split: str) -> dict[str, Any]:
        return {}

    def method_hparams(self) -> dict[str, Any]:
        """The subclass's own constructor arguments, as plain values (saved with each checkpoint)."""
        return {}

    def collate_options(self) -> dict[str, Any]:
        """Keyword arguments for ``zoo.collate.PadCollator`` (DPO asks for prefix-shared rows)."""
        return {}

    def shared_prompt_collate(self, share_prompt: bool) -> dict[str, Any]:
        """Collator options for prefix-shared rows (``zoo.collate.packed_rows``: one trunk pass per prompt) when
        the attention takes a 4-D mask (sdpa, eager); flash-attention kernels take none: padded rows."""
        return {"share_prompt": share_prompt and self.backbone_cfg.attn_implementation in (None, "sdpa", "eager")}

    def example_builder(self) -> ExampleBuilder:
        """This method's side of the data contract (``zoo.examples``), handed to ``datamodule.attach``."""
        return ExampleBuilder(
            method=type(self).__name__,
            record_kind=self.record_kind,
            example_fn=self.example_fn,
            prompt_example_fn=self.prompt_example_fn,
            tokenizer=self.tokenizer,
            tokenize=self.tokenize_settings,
            split_kwargs={s: self.example_kwargs(s) for s in ("train", "validation", "test", "predict")},
            group_by_prompt=self.group_by_prompt,
            collate=self.collate_options(),
            code=code_digest(type(self)),
        )

    # ---- steering (zoo.preference) ----------------------------------------------------------------
    def preference_rules(self) -> dict[str, Any]:
        """How ``Preference.parse`` validates weights for this method (allow_negative, allow_zero, max_weight)."""
        return {}

    def preference(self, value: SteerValue) -> Preference | None:
        """``value`` (weights by attribute name, JSON or a ``Preference``) validated against ``attributes``."""
        if value is None:
            return None
        return Preference.parse(value, self.attributes, **self.preference_rules())

    def default_preference(self) -> Preference | None:
        """What ``predict`` and ``generate`` use when no ``steer`` is given (CMPO: uniform; MEET: good)."""
        return None

    @contextmanager
    def steer(self, value: SteerValue = None) -> Iterator[Preference | None]:
        """Inside this context, ``generate`` (and the method's log-probs) follow ``value`` (or the default)."""
        pref = self.preference(value) if value is not None else self.default_preference()
        if pref is None:
            yield None
            return
        with self.apply_preference(pref):
            yield pref

    def apply_preference(self, preference: Preference):
        """A context manager that puts ``preference`` into effect (steerable methods implement it)."""
        raise NotImplementedError(f"{type(self).__name__} is not steerable")

    def generate(self, prompt_ids: Sequence[Sequence[int]], settings: SamplingSettings | None = None) -> Samples:
        """Samples for tokenized prompts under the current steering (``zoo.sampling``)."""
        return sample(self.model, self.tokenizer, None, settings or self.sampling, prompt_ids=prompt_ids)

    def encode_prompts(self, prompts: Sequence[Sequence[Mapping[str, str]] | str],
                       truncate: bool = True) -> list[list[int]]:
        """Token ids of conversations (or bare user strings) rendered exactly as ``predict`` renders its prompts:
        the method's prompt examples, then ``zoo.collate`` with this module's tokenize settings. Over-long
        prompts keep their end (``truncate``) or stay whole, for the caller to refuse (the server does)."""
        from zoo.collate import tokenize_examples
        from zoo.records import PromptRecord

        builder = self.example_builder()
        examples = [ex for p in prompts
                    for ex in builder.prompt_example_fn(PromptRecord(prompt=p), **builder.kwargs_for("predict"))]
        settings = dataclasses.replace(self.tokenize_settings, length_policy="truncate")
        if not truncate:
            settings = dataclasses.replace(settings, max_prompt_length=None, max_length=sys.maxsize)
        tok = tokenize_examples({"prompt": [e["prompt"] for e in examples], "completions": [[] for _ in examples]},
                                self.tokenizer, settings)
        return tok["prompt_ids"]

    def generate_steered(self, prompt_ids: Sequence[Sequence[int]], preferences: Sequence[SteerValue],
                         settings: SamplingSettings | None = None) -> list[Samples]:
        """One ``Samples`` per prompt, prompt i under ``preferences[i]``: prompts sharing a preference
        generate together (a method that can mix preferences within a batch overrides this)."""
        if len(prompt_ids) != len(preferences):
            raise ValueError(f"{len(prompt_ids)} prompts but {len(preferences)} preferences")
        prefs = [self.preference(p) if p is not None else None for p in preferences]
        groups: dict[Preference | None, list[int]] = {}
        for i, p in enumerate(prefs):
            groups.setdefault(p, []).append(i)
        out: list[Samples | None] = [None] * len(prompt_ids)
        for pref, rows in groups.items():
            with self.steer(pref):
                samples = self.generate([prompt_ids[i] for i in rows], settings)
            for j, i in enumerate(rows):
                out[i] = prompt_samples(samples, j)
        return out

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
        decay, no_decay = split_decay((n, p) for n, p in self.named_parameters() if p.requires_grad)
        if not decay and not no_decay:
            raise ValueError(f"{type(self).__name__}: no trainable parameters (check backbone.lora / freezing)")
        groups = [{"params": decay, "weight_decay": self.optim.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        return self.optimizer_and_schedule(groups, self.schedule_steps())

    def optimizer_and_schedule(self, groups: list[dict[str, Any]], steps: int) -> dict[str, Any]:
        """AdamW over the non-empty ``groups`` (a group's own ``lr`` wins over ``optim.lr``) and the configured
        per-step schedule over ``steps``."""
        optimizer = torch.optim.AdamW([g for g in groups if g["params"]], lr=self.optim.lr, betas=self.optim.betas)
        scheduler = get_scheduler(
            "constant_with_warmup" if self.optim.scheduler == "constant" else self.optim.scheduler,
            optimizer,
            num_warmup_steps=self.optim.warmup_steps,
            num_training_steps=steps,
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def schedule_steps(self, epochs: int | None = None) -> int:
        """Optimizer steps the LR schedule spans: ``epochs`` (default: the trainer's max_epochs) of the train
        loader, capped by max_steps.

        Not ``trainer.estimated_stepping_batches``: with max_epochs set it builds Lightning's train loader
        inside ``configure_optimizers``, before a checkpoint is restored. The data order's position now lives
        in the DataModule's state (``datamodules.loader``), so that no longer loses it, but the datamodule's
        own loader gives the batch count without touching Lightning's state at all.
        """
        t = self._trainer
        if t is None:
            return 1
        epochs = t.max_epochs if epochs is None else epochs
        dm = getattr(t, "datamodule", None)
        if epochs is None or epochs < 0 or dm is None:
            return max(t.max_steps, 1)  # no epoch bound or no datamodule: a schedule as long as the run
        try:
            batches = len(dm.train_dataloader())
        except (TypeError, NotImplementedError):
            return max(t.max_steps, 1)  # a loader without a length
        limit = t.limit_train_batches
        batches = min(batches, int(limit)) if isinstance(limit, int) else int(batches * limit)
        steps = math.ceil(batches / t.accumulate_grad_batches) * max(epochs, 1)
        return max(min(steps, t.max_steps) if t.max_steps > 0 else steps, 1)

    # ---- predict ----------------------------------------------------------------------------------
    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> list[dict[str, Any]]:
        with self.steer(self.steer_preference) as pref:
            samples = self.generate(batch["prompt_ids"])
            info = self.prediction_info()
        if pref is not None:
            info["steer"] = pref.as_dict()
        idx = batch["idx"].tolist()
        return [
            {
                "idx": idx[k // samples.n],
                "sample": k % samples.n,
                "prompt": samples.prompts[k // samples.n],
                "completion": text,
                "truncated": samples.truncated[k],
                **info,
            }
            for k, text in enumerate(samples.texts)
        ]

    def example_metrics(self, batch: dict[str, torch.Tensor], split: str = "validation") -> dict[str, torch.Tensor]:
        """The method's headline held-out metrics, per example ([B] each; NaN where an example does not count).
        ``callbacks.summary.RunSummary`` averages them over the validation split before and after training."""
        return {}

    def prediction_info(self) -> dict[str, Any]:
        """Extra fields written beside each prediction, under the current steering (e.g. MEET's control)."""
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

    # ---- memory plan (zoo.memory_plan) ------------------------------------------------------------
    @classmethod
    def memory_facts(cls, init_args: dict[str, Any], model: ModelFacts) -> MethodFacts:
        """How this method uses ``model`` (the backbone's meta-device counts, ``backbone.lora`` included),
        read from a config's ``init_args`` alone: the plan runs before anything is built or loaded.

        The default is a plain LM method: one row per example, completion log-probs through the chunked LM
        head, no reference; the base trains unless LoRA is on. A method that holds or runs more overrides
        this (calling it first) and says in its docstring what it holds per device.
        """
        return MethodFacts(cls.__name__)


def split_decay(named: Iterable[tuple[str, nn.Parameter]]) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(decayed, not decayed): weight matrices decay; biases, norms and other vectors do not."""
    decay, no_decay = [], []
    for name, p in named:
        (decay if p.ndim >= 2 and "norm" not in name.lower() else no_decay).append(p)
    return decay, no_decay


def prompt_samples(samples: Samples, i: int) -> Samples:
    """Prompt ``i``'s samples alone, as a ``Samples`` of one prompt."""
    rows = slice(i * samples.n, (i + 1) * samples.n)
    fields = {f.name: getattr(samples, f.name) for f in dataclasses.fields(samples)}
    picked = {k: (v[rows] if isinstance(v, list) and len(v) == len(samples.texts) else v) for k, v in fields.items()}
    picked["prompts"] = [samples.prompts[i]]
    return type(samples)(**picked)
