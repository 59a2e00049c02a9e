"""The base DataModule: raw rows -> canonical records -> method examples -> token ids -> batches.

A dataset file subclasses ``RecordDataModule`` and writes two things: ``load_split`` (the real
``datasets.load_dataset`` call, hub or local files) and ``to_records`` (one raw row -> records); a source
of local files or else hub splits subclasses ``HubOrFilesDataModule``, which handles the splits and the
shipped sample (``data_files="sample"``). ``to_records`` reads raw fields through the checks below
(``required_text``, ``optional_text``, ``number``, ``boolean``, ``pair_index``), so every dataset refuses a
bad field the same way and strips text by one rule (see ``required_text``). It knows
nothing about methods: the method hands it a ``zoo.examples.ExampleBuilder`` (record kind, record ->
examples, tokenizer) through ``attach``, and it knows nothing about datasets. Methods that need the
data (cached reference log-probs) use the public ``loader`` and ``fingerprint``.

Every step runs through ``datasets.map`` (batched, ``num_proc`` configurable) and is cached by the
datasets fingerprint. A bad row stops the run with its file, row and field (``on_error: raise``) or is
skipped and written to a log with its reason (``on_error: skip``); length drops are counted and logged.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal

import datasets
import lightning as L
from torch.utils.data import DataLoader

import zoo.records as records_module
from datamodules.loader import ResumableDataLoader, ResumableSampler
from zoo.collate import tokenize_examples
from zoo.examples import ExampleBuilder, code_digest
from zoo.records import RECORD_TYPES, Record, RecordError

log = logging.getLogger("steerzoo.data")
OnError = Literal["raise", "skip"]
ROW = "__row__"  # a raw row's index in its source file, kept through splits for error messages
STAGE_SPLITS = {"fit": ("train", "validation"), "validate": ("validation",), "test": ("test",), "predict": ("predict",)}
SAMPLES = Path(__file__).parent / "samples"  # the shipped samples (see samples/PROVENANCE.md)


# ---- raw field checks: each raises a RecordError naming the field (convert_rows adds file and row) ----------
def required_text(value: Any, field: str, *, strip: bool = True) -> str:
    """A non-empty string of a raw row (text that is only whitespace is empty).

    The stripping rule, the same for every dataset: surrounding whitespace is removed (``strip=True``). A
    field's edges are formatting, not content: the prompt format adds its own separators, and two replies
    that differ only there are one reply. ``strip=False`` keeps the text exactly, for text whose edges are
    content: a prompt that stops mid-sentence and the continuation that goes on from it, where a leading
    space says whether a word is continued or a new one starts (RealToxicityPrompts).
    """
    if value is None:
        raise RecordError("missing", field=field)
    if not isinstance(value, str):
        raise RecordError(f"expected a string, got {type(value).__name__}", field=field)
    if not value.strip():
        raise RecordError("is empty", field=field)
    return value.strip() if strip else value


def optional_text(value: Any, field: str, *, strip: bool = True) -> str:
    """A string of a raw row that may be null or empty (``""`` then), stripped as in ``required_text``."""
    if value is None:
        return ""
    if not isinstance(value, str):
        raise RecordError(f"expected a string, got {type(value).__name__}", field=field)
    return value.strip() if strip else value


def number(value: Any, field: str, scale: tuple[float, float] | None = None, *, integer: bool = False) -> float:
    """A number of a raw row (not a bool, not NaN), inside ``scale`` if one is given. ``integer``: a whole
    number, which ``3.0`` is (a JSON column with one float anywhere is read as floats throughout)."""
    if value is None:
        raise RecordError("missing", field=field)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise RecordError(f"expected a number, got {value!r}", field=field)
    if integer and not float(value).is_integer():
        raise RecordError(f"expected a whole number, got {value!r}", field=field)
    if scale is not None and not scale[0] <= value <= scale[1]:
        raise RecordError(f"{value!r} outside the declared scale [{scale[0]:g}, {scale[1]:g}]", field=field)
    return float(value)


def boolean(value: Any, field: str) -> bool:
    """``true`` or ``false`` of a raw row (not 0/1, not null)."""
    if not isinstance(value, bool):
        raise RecordError(f"expected true or false, got {value!r}", field=field)
    return value


def pair_index(value: Any, field: str) -> int:
    """0 or 1: which of a row's two responses (a preferred or safer one)."""
    if isinstance(value, bool) or value not in (0, 1):
        raise RecordError(f"expected 0 or 1 (one of the two responses), got {value!r}", field=field)
    return int(value)


def convert_rows(
    batch: dict[str, list],
    indices: list[int] | None = None,
    *,
    to_records: Callable,
    kind: str,
    source: str,
    on_error: OnError,
    options: dict[str, Any],
    code: str = "",
) -> dict[str, list]:
    """Batched ``datasets.map`` function: raw rows -> record rows (+ ``_error`` / ``_row`` columns)."""
    keys = list(batch)
    fields = [f.name for f in dataclasses.fields(RECORD_TYPES[kind])]
    out: dict[str, list] = {f: [] for f in fields} | {"_error": [], "_row": []}
    if indices is None:  # rows carry their original position (a split made from a bigger file)
        indices = batch[ROW]
    for j, row_index in enumerate(indices):
        raw = {k: batch[k][j] for k in keys if k != ROW}
        try:
            records = to_records(raw, kind, **options)
            rows = [r.to_row() for r in records]
            error = ""  # a string, never None: an all-None first batch would fix the column's type to null
        except RecordError as e:
            located = e.at(source, row_index)
            if on_error == "raise":
                raise located from None
            rows, error = [{f: None for f in fields}], str(located)
        for r in rows:
            for f in fields:
                out[f].append(r.get(f))
            out["_error"].append(error)
            out["_row"].append(row_index)
    return out


def make_examples(
    batch: dict[str, list], *, example_fn: Callable, kind: str, code: str = "", **kwargs
) -> dict[str, list]:
    """Batched ``datasets.map`` function: record rows -> method examples (``example_fn`` may yield several)."""
    cls: type[Record] = RECORD_TYPES[kind]
    keys = list(batch)
    out: dict[str, list] = {}
    for j in range(len(batch[keys[0]])):
        record = cls.from_row({k: batch[k][j] for k in keys})
        for ex in example_fn(record, **kwargs):
            for k, v in ex.items():
                out.setdefault(k, []).append(v)
    return out


def group_examples(recs: datasets.Dataset, example_fn: Callable, kind: str, **kwargs: Any) -> datasets.Dataset:
    """Records grouped by prompt (first-seen order) -> ``example_fn(list_of_records)`` -> examples."""
    cls: type[Record] = RECORD_TYPES[kind]
    groups: dict[str, list[Record]] = {}
    for row in recs:
        groups.setdefault(json.dumps(row["prompt"]), []).append(cls.from_row(row))
    rows = [ex for group in groups.values() for ex in example_fn(group, **kwargs)]
    if not rows:
        raise ValueError(f"no method examples from {len(recs)} {kind} records in {len(groups)} prompt groups")
    return datasets.Dataset.from_list(rows)


def checked_files(data_files: dict[str, list[str] | str] | None) -> dict[str, list[str]] | None:
    """``{split: [files]}`` with every file present."""
    if data_files is None:
        return None
    out = {}
    for split, files in data_files.items():
        out[split] = [files] if isinstance(files, str) else list(files)
        for f in out[split]:
            if not Path(f).exists():
                raise FileNotFoundError(f"data.data_files.{split}: no file {f}")
    return out


class RecordDataModule(L.LightningDataModule):
    """Shared machinery; subclasses implement ``load_split`` and ``to_records``.

    Args:
        batch_size: examples per training batch (per process).
        eval_batch_size: examples per validation/test/predict batch (default: batch_size).
        max_samples: cap on examples per split (``{"train": 256}`` or one int for all), applied after
            conversion; handy for quick runs.
        validation_fraction: when the source has no validation split, hold out this fraction of train.
        seed: data order and held-out split.
        on_error: ``raise`` (default) stops at the first bad row; ``skip`` skips it and logs the reason.
        num_proc: processes for ``datasets.map``.
        num_workers: DataLoader workers.
        log_dir: where skip and drop reports are written (default: ``<trainer.default_root_dir>/data_reports``,
            so every output of a run follows its directory).
    """

    record_kinds: ClassVar[tuple[str, ...]] = ()

    def __init__(
        self,
        batch_size: int = 4,
        eval_batch_size: int | None = None,
        max_samples: int | dict[str, int] | None = None,
        validation_fraction: float = 0.0,
        seed: int = 0,
        on_error: OnError = "raise",
        num_proc: int | None = None,
        num_workers: int = 0,
        log_dir: str | None = None,
    ):
        super().__init__()
        if on_error not in ("raise", "skip"):
            raise ValueError(f"data.on_error must be 'raise' or 'skip', got {on_error!r}")
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size or batch_size
        self.max_samples, self.validation_fraction, self.seed = max_samples, validation_fraction, seed
        self.on_error, self.num_proc, self.num_workers, self._log_dir = on_error, num_proc, num_workers, log_dir
        self.datasets: dict[str, datasets.Dataset] = {}
        self.reports: dict[str, dict[str, int]] = {}
        self.builder: ExampleBuilder | None = None  # the method's side of the contract (``attach``)
        self._resume: dict[str, int] | None = None  # a checkpoint's data position (``load_state_dict``)

    # ---- what a dataset file implements -------------------------------------------------------------
    def load_split(self, split: str) -> datasets.Dataset:
        """Raw rows of ``split`` (train / validation / test / predict) through ``datasets.load_dataset``."""
        raise NotImplementedError

    def source_name(self, split: str) -> str:
        """Where ``split``'s rows come from, for error messages (a file path or hub id)."""
        return split

    @staticmethod
    def to_records(row: dict[str, Any], kind: str, **options: Any) -> list[Record]:
        """One raw row -> canonical records of ``kind``. Raise ``RecordError`` naming the field.

        A static function of the row and ``record_options()`` alone, so datasets can fingerprint and cache it.
        """
        raise NotImplementedError

    def record_options(self) -> dict[str, Any]:
        """Plain values ``to_records`` needs (filters, attribute names...)."""
        return {}

    def record_code(self) -> tuple[Any, ...]:
        """Objects whose source shapes ``to_records``'s output (their files feed the records cache fingerprint,
        so editing one re-converts): the dataset file and ``zoo.records``, plus what a dataset calls (scorers)."""
        return (type(self), records_module)

    # ---- the pipeline ---------------------------------------------------------------------------------
    def attach(self, builder: ExampleBuilder) -> RecordDataModule:
        """Take the method's ``ExampleBuilder`` (``module.example_builder()``); ``train.py`` calls this."""
        if not isinstance(builder, ExampleBuilder):
            raise TypeError(f"attach() takes a zoo.examples.ExampleBuilder (module.example_builder()), "
                            f"got {type(builder).__name__}")
        if self.builder is not None and self.builder != builder:
            self.datasets = {}  # examples built for another method
        self.builder = builder
        return self

    def _builder(self) -> ExampleBuilder:
        if self.builder is None:
            raise RuntimeError(f"{type(self).__name__} has no method attached: call "
                               "datamodule.attach(module.example_builder()) before use (train.py does this)")
        return self.builder

    @property
    def log_dir(self) -> Path:
        if self._log_dir is not None:
            return Path(self._log_dir)
        root = self.trainer.default_root_dir if self.trainer is not None else "outputs"
        return Path(root) / "data_reports"

    def records(self, split: str, kind: str) -> datasets.Dataset:
        """Canonical records of ``kind`` for ``split``, validated; bad rows raise or are skipped and logged."""
        if kind not in self.record_kinds:
            raise ValueError(
                f"{type(self).__name__} provides records of kinds {self.record_kinds}, but the method needs {kind!r}"
            )
        raw = self.load_split(split)
        source = self.source_name(split)
        recs = raw.map(
            convert_rows,
            batched=True,
            with_indices=ROW not in raw.column_names,
            remove_columns=raw.column_names,
            num_proc=self.num_proc,
            fn_kwargs=dict(
                to_records=type(self).to_records,
                kind=kind,
                source=source,
                on_error=self.on_error,
                options=self.record_options(),
                code=code_digest(*self.record_code()),
            ),
            desc=f"{type(self).__name__}: {split} rows -> {kind} records",
        )
        if "_row" not in recs.column_names:  # no row yielded a record: datasets keeps no output columns
            raise ValueError(f"{type(self).__name__} {split}: none of the {len(raw)} rows of {source} "
                             f"yields a {kind} record (options {self.record_options()})")
        produced = len(set(recs["_row"]))
        if produced < len(raw):  # a dataset's own filter (single-turn, subset...) said no: count it
            self._report(split, "filtered", [f"{len(raw) - produced} of {len(raw)} rows yield no {kind} record"])
        errors = [e for e in recs["_error"] if e]
        if errors:
            self._report(split, "skipped", errors)
            recs = recs.filter(lambda e: not e, input_columns="_error", num_proc=self.num_proc)
        return recs.remove_columns(["_error"])

    def drop_repeats(self, split: str, recs: datasets.Dataset, keys: Sequence[str] = ("prompt",)) -> datasets.Dataset:
        """``recs`` without the records that repeat an earlier one on ``keys`` (the first is kept); the number
        removed goes to the split's ``deduplicated`` report."""
        seen: set[str] = set()
        keep = []
        for i, key in enumerate(map(repr, zip(*(recs[k] for k in keys)))):
            if key not in seen:
                seen.add(key)
                keep.append(i)
        if len(keep) < len(recs):
            self._report(split, "deduplicated",
                         [f"{len(recs) - len(keep)} records repeating an earlier one's {', '.join(keys)} removed"])
            recs = recs.select(keep)
        return recs

    def _report(self, split: str, what: str, lines: list[str]) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        path = self.log_dir / f"{type(self).__name__}-{split}-{what}.log"
        path.write_text("\n".join(lines) + "\n")
        msg = f"{type(self).__name__} {split}: {what} {len(lines)} rows (reasons in {path})"
        print(msg)

    def _cap(self, split: str, ds: datasets.Dataset) -> datasets.Dataset:
        cap = self.max_samples.get(split) if isinstance(self.max_samples, dict) else self.max_samples
        return ds.select(range(min(cap, len(ds)))) if cap is not None else ds

    def build_split(self, split: str) -> datasets.Dataset:
        """Records of ``split`` -> the attached method's examples -> token ids, with an ``idx`` column."""
        kind = self._builder().kind_for(split)
        return self.tokenized_examples(split, self._cap(split, self.records(split, kind)), kind)

    def build_round(self, epoch: int) -> datasets.Dataset:
        """An online method's train split for ``epoch``: the method makes the records from this DataModule's
        source records (``ExampleBuilder.rounds``); they then take the same path as any records."""
        b = self._builder()
        source = self._cap("train", self.records("train", b.rounds_source_kind))
        cls = RECORD_TYPES[b.rounds_source_kind]
        made = b.rounds(epoch, [cls.from_row(row) for row in source])
        if not made:
            raise ValueError(f"{b.method}: round of epoch {epoch} made no training records from {len(source)} "
                             f"{b.rounds_source_kind} records")
        kinds = {r.kind for r in made}
        if kinds != {b.record_kind}:
            raise ValueError(f"{b.method}: a round must make {b.record_kind!r} records, got {sorted(kinds)}")
        recs = datasets.Dataset.from_list([r.to_row() for r in made])
        return self.tokenized_examples("train", recs, b.record_kind)

    def tokenized_examples(self, split: str, recs: datasets.Dataset, kind: str) -> datasets.Dataset:
        """Record rows of ``kind`` -> the attached method's examples -> token ids, with an ``idx`` column."""
        b = self._builder()
        if b.grouped(split):
            examples = group_examples(recs, b.example_fn, kind, **b.kwargs_for(split))
        else:
            examples = recs.map(
                make_examples,
                batched=True,
                remove_columns=recs.column_names,
                num_proc=self.num_proc,
                fn_kwargs=dict(example_fn=b.fn_for(split), kind=kind, code=b.code + code_digest(records_module),
                               **b.kwargs_for(split)),
                desc=f"{b.method}: {kind} records -> examples",
            )
        settings = b.tokenize
        tokenized = examples.map(
            tokenize_examples,
            batched=True,
            num_proc=self.num_proc,
            fn_kwargs=dict(tokenizer=b.tokenizer, settings=settings, code=code_digest(tokenize_examples)),
            desc="tokenize",
        )
        counts = Counter(tokenized["length_status"])
        self.reports[split] = {"examples": len(tokenized), **counts}
        if counts.get("dropped") or counts.get("truncated"):
            print(
                f"{split}: {counts.get('dropped', 0)} examples dropped and {counts.get('truncated', 0)} truncated "
                f"for max_length={settings.max_length} ({settings.length_policy}) of {len(tokenized)}"
            )
        if counts.get("dropped"):
            tokenized = tokenized.filter(lambda s: s != "dropped", input_columns="length_status")
        if len(tokenized) == 0:
            raise ValueError(f"{type(self).__name__} {split}: no examples left (see the counts above)")
        return tokenized.add_column("idx", list(range(len(tokenized))))

    def prepare_data(self) -> None:
        """Download/convert once per node (datasets caches the result for setup)."""

    def setup(self, stage: str | None = None) -> None:
        for split in STAGE_SPLITS.get(stage or "fit", ()):
            if split == "train" and self._builder().rounds is not None:
                continue  # made per epoch by the method (``build_round``), once the model exists
            if split not in self.datasets:
                self.datasets[split] = self.build_split(split)
        if self.trainer is not None and self.trainer.logger is not None and self.reports:
            flat = {f"data/{s}/{k}": float(v) for s, r in self.reports.items() for k, v in r.items()}
            self.trainer.logger.log_hyperparams(flat)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        (self.log_dir / "counts.json").write_text(json.dumps(self.reports, indent=2))

    # ---- what methods may ask -------------------------------------------------------------------------
    def fingerprint(self, split: str) -> str:
        """Identity of ``split``'s examples (the datasets cache fingerprint): a key for per-example caches."""
        if split not in self.datasets:
            self.datasets[split] = self.build_split(split)
        return self.datasets[split]._fingerprint

    def num_examples(self, split: str) -> int:
        if split not in self.datasets:
            self.datasets[split] = self.build_split(split)
        return len(self.datasets[split])

    def loader(self, split: str, batch_size: int | None = None, shuffle: bool = False,
               all_examples: bool = False) -> DataLoader:
        """Batches of ``split`` in the seeded order; this rank's shard, or every example (``all_examples``,
        for per-example caches every rank needs whole)."""
        if split not in self.datasets:
            self.datasets[split] = self.build_split(split)
        ds = self.datasets[split]
        rank, world = (self.trainer.global_rank, self.trainer.world_size) if self.trainer is not None else (0, 1)
        if all_examples:
            rank, world = 0, 1
        sampler = ResumableSampler(len(ds), shuffle=shuffle, seed=self.seed, rank=rank, world_size=world)
        loader = ResumableDataLoader(
            ds.with_format(None, columns=[c for c in ds.column_names if c not in ("prompt", "completions")]),
            sampler=sampler,
            batch_size=batch_size or self.eval_batch_size,
            collate_fn=self._builder().collator(),
            num_workers=self.num_workers,
        )
        return loader

    # ---- resuming the data order ----------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Where the train order stands (saved in every checkpoint): the epoch, the batches of it already
        trained on (a checkpoint taken in ``on_train_batch_end`` counts its batch), and what the order depends
        on. Read from the trainer, not from a loader: loaders may be rebuilt at any time."""
        t = self.trainer
        if t is None or not t.training or "train" not in self.datasets:
            return {}
        done = t.fit_loop.epoch_loop.batch_progress.current.processed
        return {"train_order": {"epoch": t.current_epoch, "batches_done": done, **self._order_facts()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._resume = state.get("train_order")

    def _order_facts(self) -> dict[str, int]:
        world = self.trainer.world_size if self.trainer is not None else 1
        return {"seed": self.seed, "num_examples": len(self.datasets["train"]), "world_size": world,
                "batch_size": self.batch_size}

    def _apply_resume(self, sampler: ResumableSampler) -> None:
        state = self._resume
        if state is None:
            return
        facts = self._order_facts()
        epoch = self.trainer.current_epoch if self.trainer is not None else state["epoch"]
        if self._builder().rounds is not None and epoch != state["epoch"]:
            # an online method's later round may hold more examples (a pool that accumulates); the saved
            # position only skips batches within its own epoch, so this round's size does not matter
            facts.pop("num_examples")
        for key, value in facts.items():
            if state.get(key) != value:
                raise ValueError(
                    f"cannot resume the data order: the checkpoint's train data had {key}={state.get(key)}, "
                    f"this run has {value} (the same data, seed, batch size and world size are needed)"
                )
        # every train loader built from now on gets it (Lightning's own, also when a scheduler built one
        # earlier to count batches); a sampler skips only in the saved epoch, so later epochs are untouched
        sampler.resume(state["epoch"], state["batches_done"] * self.batch_size)

    # ---- Lightning's loaders --------------------------------------------------------------------------
    def train_dataloader(self) -> DataLoader:
        if self._builder().rounds is not None:  # an online method: this epoch's round
            self.datasets["train"] = self.build_round(self.trainer.current_epoch if self.trainer is not None else 0)
        loader = self.loader("train", self.batch_size, shuffle=True)
        self._apply_resume(loader.sampler)
        return loader

    def val_dataloader(self) -> DataLoader:
        return self.loader("validation")

    def test_dataloader(self) -> DataLoader:
        return self.loader("test")

    def predict_dataloader(self) -> DataLoader:
        return self.loader("predict")

    def split_off_validation(self, train: datasets.Dataset) -> tuple[datasets.Dataset, datasets.Dataset]:
        """(train, validation) from one split, seeded; for sources without a validation split."""
        if not 0 < self.validation_fraction < 1:
            raise ValueError(
                f"{type(self).__name__}: the source has no validation split; set data.validation_fraction in (0, 1)"
            )
        if ROW not in train.column_names:
            train = train.add_column(ROW, list(range(len(train))))
        parts = train.train_test_split(test_size=self.validation_fraction, seed=self.seed, shuffle=True)
        return parts["train"], parts["test"]


class HubOrFilesDataModule(RecordDataModule):
    """Split handling for a source read from local files per split (``self.data_files``) or else the hub.

    A split comes from its own files (``datasets.load_dataset("json", ...)``) or hub split; where there is no
    validation split, ``validation_fraction`` holds out a seeded part of train, which then also serves the
    other missing splits. A subclass sets ``data_files`` from its argument through ``local_files`` (None
    for the hub), names its shipped sample in ``sample_files``, and writes the hooks: ``hub_splits``
    (split -> hub split), ``load_hub`` (the real hub ``datasets.load_dataset`` call), ``hub_name`` (a hub
    split in source names) and ``label`` (the dataset in error messages).
    """

    data_files: dict[str, list[str]] | None
    held_out_note: ClassVar[str] = " (held-out {split} part)"  # appended to a held-out split's source name
    # The shipped sample, paths under datamodules/samples/: {split: [files]}, or {variant: {split: [files]}}
    # where an option picks the sample (TL;DR's subset); local_files resolves data_files="sample" with it.
    sample_files: ClassVar[dict[str, Any]] = {}

    def local_files(self, data_files: dict[str, list[str] | str] | str | None,
                    variant: str | None = None) -> dict[str, list[str]] | None:
        """The ``data_files`` argument as ``{split: [files]}``, every file present (``checked_files``), or None
        for the hub: ``"sample"`` is the shipped sample (of ``variant``), another string is one train file."""
        if data_files == "sample":
            shipped = self.sample_files if variant is None else self.sample_files.get(variant)
            if not shipped:
                raise ValueError(f"data.data_files: {type(self).__name__} ships no sample"
                                 + (f" for {variant!r}" if variant is not None else ""))
            data_files = {split: [str(SAMPLES / f) for f in files] for split, files in shipped.items()}
        elif isinstance(data_files, str):
            data_files = {"train": [data_files]}
        return checked_files(data_files)

    # ---- hooks --------------------------------------------------------------------------------------
    def hub_splits(self) -> dict[str, str]:
        """Our split name -> the hub's split name, for the splits the hub has."""
        raise NotImplementedError

    def load_hub(self, hub_split: str) -> datasets.Dataset:
        """Raw rows of one hub split (``datasets.load_dataset`` with the hub id, config, revision)."""
        raise NotImplementedError

    def hub_name(self, hub_split: str) -> str:
        """``hub_split`` as a source name, e.g. ``nvidia/HelpSteer/train``."""
        raise NotImplementedError

    @property
    def label(self) -> str:
        """The dataset's name in error messages."""
        return type(self).__name__

    def missing_split(self, split: str) -> str:
        """The error for a split that is neither given nor held out."""
        return f"{self.label}: no {split!r} split; give data.data_files.{split} or validation_fraction"

    # ---- split handling -----------------------------------------------------------------------------
    def _has(self, split: str) -> bool:
        return split in (self.data_files if self.data_files is not None else self.hub_splits())

    def _held_out(self) -> bool:
        return self.validation_fraction > 0 and not self._has("validation")

    def _load(self, split: str) -> datasets.Dataset:
        if self.data_files is not None:
            return datasets.load_dataset("json", data_files=self.data_files[split], split="train")
        return self.load_hub(self.hub_splits()[split])

    def load_split(self, split: str) -> datasets.Dataset:
        if split == "train" and self._held_out():
            return self.split_off_validation(self._load("train"))[0]
        if self._has(split):
            return self._load(split)
        if self._held_out():
            return self.split_off_validation(self._load("train"))[1]
        raise ValueError(self.missing_split(split))

    def _source_of(self, part: str) -> str:
        """The files or hub split that split ``part`` is read from."""
        if self.data_files is not None:
            return ",".join(self.data_files.get(part, []))
        return self.hub_name(self.hub_splits().get(part, part))

    def source_name(self, split: str) -> str:
        own = self._has(split) and not (split == "train" and self._held_out())  # else a part of train
        tail = "" if own or split == "train" else self.held_out_note.format(split=split)
        return self._source_of(split if own else "train") + tail
