"""Several datasets as one (CMPO's and SteerLM's HelpSteer + OASST): each source DataModule reads and
converts its own rows; the mixture concatenates their canonical records. It knows nothing about methods.

- ``record_kinds``: the kinds every source provides (the intersection, in the first source's order).
- ``records(split, kind)``: each source's records of ``split``, capped by that source's own
  ``max_samples``, concatenated in source order. Each source handles its own splits (hub splits,
  ``validation_fraction``), filters and malformed rows (``on_error``, reports).
- ``scored`` records of different sources carry different attribute sets. Arrow stores a dict column as
  a struct with one field per key, so concatenating HelpSteer's five ratings with OASST's four labels
  would give every record all nine keys, the missing ones as null (and a record with a null score is
  invalid). Here ``scores`` and ``scales`` are stored as ``datasets.Json`` features instead, which is what
  datasets 5 infers itself for variable-key dicts: every record keeps exactly its own attributes, and
  methods skip attributes a record lacks (CMPO pairs only attributes labelled on both sides, SteerLM
  ignores unlabelled entries). (Json encoding keeps floats to about 10 significant digits.)
- An attribute must mean one thing: the same name on different scales in two sources (OASST's
  ``helpfulness`` on 0-1, HelpSteer's on 0-4) is refused, since methods compare raw scores; keep one
  with the sources' ``attributes`` / ``label_names``.

The mixture's own ``max_samples`` caps the concatenation (the first N records, so mostly the first
source): cap each source instead. The mixture's ``batch_size``, ``seed`` and loaders serve the mixed data.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import datasets

from datamodules.base import RecordDataModule

JSON_COLUMNS = ("scores", "scales")


def _own_keys(batch: dict[str, list]) -> dict[str, list]:
    """Batched ``datasets.map``: drop null-valued keys (a struct's fields that a record does not have)."""
    return {c: [None if d is None else {k: v for k, v in d.items() if v is not None} for d in batch[c]]
            for c in JSON_COLUMNS}


def as_json_scores(recs: datasets.Dataset) -> datasets.Dataset:
    """``scores`` / ``scales`` as Json features holding only each record's own keys."""
    features = recs.features.copy()
    for c in JSON_COLUMNS:
        features[c] = datasets.Json()
    return recs.map(_own_keys, batched=True, features=features, desc="scores -> Json")


class MixtureDataModule(RecordDataModule):
    """Concatenates the records of several ``RecordDataModule`` sources.

    Args:
        sources: the DataModules to mix (each configured as usual, e.g. ``class_path`` + ``init_args``).
        (see ``RecordDataModule`` for the shared arguments; they apply to the mixed data)
    """

    def __init__(self, sources: list[RecordDataModule], **kwargs: Any):
        super().__init__(**kwargs)
        if not sources:
            raise ValueError("data.sources: a mixture needs at least one source DataModule")
        self.sources: list[RecordDataModule] = list(sources)
        first, rest = self.sources[0], self.sources[1:]
        self.record_kinds = tuple(k for k in first.record_kinds if all(k in s.record_kinds for s in rest))
        if not self.record_kinds:
            raise ValueError(f"data.sources share no record kind: {self._kinds()}")

    def _kinds(self) -> str:
        return "; ".join(f"{type(s).__name__} {s.record_kinds}" for s in self.sources)

    def records(self, split: str, kind: str) -> datasets.Dataset:
        if kind not in self.record_kinds:
            raise ValueError(f"MixtureDataModule provides the kinds all its sources share, {self.record_kinds} "
                             f"({self._kinds()}), but the method needs {kind!r}")
        parts = [s._cap(split, s.records(split, kind)) for s in self.sources]
        if kind == "scored":
            parts = [as_json_scores(p) for p in parts]
            check_scales(parts, [type(s).__name__ for s in self.sources])
        mixed = datasets.concatenate_datasets(parts)
        print(f"MixtureDataModule {split}: {len(mixed)} {kind} records = "
              + " + ".join(f"{len(p)} {type(s).__name__}" for p, s in zip(parts, self.sources)))
        return mixed


def check_scales(parts: Sequence[datasets.Dataset], names: Sequence[str]) -> None:
    """Refuse an attribute declared on different scales in different sources."""
    seen: dict[str, tuple[tuple[float, ...], str]] = {}
    for part, name in zip(parts, names):
        for scales in part["scales"]:
            for attr, scale in scales.items():
                scale = tuple(scale)
                if attr in seen and seen[attr][0] != scale:
                    raise ValueError(
                        f"attribute {attr!r} is on scale {list(seen[attr][0])} in {seen[attr][1]} but {list(scale)} "
                        f"in {name}; methods compare raw scores, so keep it in one source (attributes / label_names)"
                    )
                seen.setdefault(attr, (scale, name))
