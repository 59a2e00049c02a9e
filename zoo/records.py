"""Canonical records: the vocabulary shared by dataset code and method code.

Data flows one way: raw hub rows -> records (``datamodules/``) -> method examples (beside each
LightningModule) -> tensors (``zoo.collate``) -> loss (``zoo.losses``). A record is validated when it is
built, so a bad row fails where it is read, naming its file, row and field, not deep inside torch.

Records travel through ``datasets.Dataset`` as plain rows (``to_row`` / ``from_row``); a conversation is
a list of ``{"role", "content"}`` dicts, the same shape chat templates take.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

ROLES = ("system", "user", "assistant")


class RecordError(ValueError):
    """A row that cannot become a record. The message names where it came from and which field is wrong."""

    def __init__(self, reason: str, *, field: str | None = None, source: str | None = None, row: int | None = None):
        self.reason, self.field, self.source, self.row = reason, field, source, row
        super().__init__(self._message())

    def _message(self) -> str:
        where = []
        if self.source is not None:
            where.append(f"file {self.source}")
        if self.row is not None:
            where.append(f"row {self.row}")
        if self.field is not None:
            where.append(f"field '{self.field}'")
        return f"{', '.join(where)}: {self.reason}" if where else self.reason

    def at(self, source: str | None, row: int | None) -> RecordError:
        """The same error, located (datasets code knows the file and row; record code knows the field)."""
        return RecordError(
            self.reason,
            field=self.field,
            source=self.source if self.source is not None else source,
            row=self.row if self.row is not None else row,
        )


def _text(value: Any, name: str, *, allow_empty: bool = False) -> str:
    if not isinstance(value, str):
        raise RecordError(f"expected a string, got {type(value).__name__}", field=name)
    if not allow_empty and not value.strip():
        raise RecordError("is empty", field=name)
    return value


def _conversation(value: Any, name: str) -> tuple[dict[str, str], ...]:
    """A prompt conversation: non-empty, known roles, non-empty contents, ends with a user turn."""
    if isinstance(value, str):  # a bare prompt string is one user turn
        value = [{"role": "user", "content": value}]
    if not isinstance(value, Sequence) or not value:
        raise RecordError("expected a non-empty list of messages", field=name)
    messages = []
    for i, m in enumerate(value):
        if not isinstance(m, Mapping) or "role" not in m or "content" not in m:
            raise RecordError("each message needs 'role' and 'content'", field=f"{name}[{i}]")
        if m["role"] not in ROLES:
            raise RecordError(f"unknown role {m['role']!r} (expected one of {ROLES})", field=f"{name}[{i}].role")
        messages.append({"role": m["role"], "content": _text(m["content"], f"{name}[{i}].content")})
    if messages[-1]["role"] != "user":
        raise RecordError("a prompt must end with a user turn", field=name)
    return tuple(messages)


def _scales(scales: Mapping[str, Any] | None) -> dict[str, tuple[float, float]]:
    """Declared ``{attribute: (low, high)}`` scales, checked (low < high) and as float pairs."""
    out = {}
    for attr, scale in (scales or {}).items():
        if not (isinstance(scale, Sequence) and len(scale) == 2 and scale[0] < scale[1]):
            raise RecordError(f"scale must be (low, high) with low < high, got {scale!r}", field=f"scales.{attr}")
        out[attr] = (float(scale[0]), float(scale[1]))
    return out


def _scores(value: Any, scales: Mapping[str, tuple[float, float]], name: str) -> dict[str, float]:
    if not isinstance(value, Mapping) or not value:
        raise RecordError("expected a non-empty mapping attribute -> score", field=name)
    out = {}
    for attr, s in value.items():
        if attr not in scales:
            raise RecordError(f"attribute {attr!r} has no declared scale", field=f"{name}.{attr}")
        if isinstance(s, bool) or not isinstance(s, (int, float)) or math.isnan(s):
            raise RecordError(f"expected a number, got {s!r}", field=f"{name}.{attr}")
        lo, hi = scales[attr]
        if not lo <= s <= hi:
            raise RecordError(f"score {s} outside its declared scale [{lo}, {hi}]", field=f"{name}.{attr}")
        out[attr] = float(s)
    return out


@dataclass(frozen=True)
class Record:
    """Base: every record has a prompt conversation and an optional id tracing it to its source row."""

    kind: ClassVar[str] = "record"
    prompt: tuple[dict[str, str], ...]
    source_id: str | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "prompt", _conversation(self.prompt, "prompt"))

    def to_row(self) -> dict[str, Any]:
        row = {f.name: getattr(self, f.name) for f in fields(self)}
        row["prompt"] = [dict(m) for m in self.prompt]
        return row

    @classmethod
    def from_row(cls, row: Mapping[str, Any]):
        return cls(**{f.name: row[f.name] for f in fields(cls) if f.name in row})


@dataclass(frozen=True)
class PromptRecord(Record):
    """A prompt alone, for on-policy sampling (online methods, evaluation)."""

    kind: ClassVar[str] = "prompt"


@dataclass(frozen=True)
class Demonstration(Record):
    """A prompt with one reference response (fine-tuning targets, TL;DR reference summaries)."""

    kind: ClassVar[str] = "demonstration"
    response: str = ""

    def __post_init__(self) -> None:
        super().__post_init__()
        _text(self.response, "response")


@dataclass(frozen=True)
class PreferencePair(Record):
    """``chosen`` is preferred over ``rejected`` for ``prompt``; ``attribute`` says on what, if known."""

    kind: ClassVar[str] = "preference"
    chosen: str = ""
    rejected: str = ""
    attribute: str | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        _text(self.chosen, "chosen")
        _text(self.rejected, "rejected")
        if self.chosen == self.rejected:
            raise RecordError("chosen and rejected responses are identical", field="rejected")
        if self.attribute is not None:
            _text(self.attribute, "attribute")


@dataclass(frozen=True)
class ScoredResponse(Record):
    """One response with per-attribute scores; every score lies inside its attribute's declared scale."""

    kind: ClassVar[str] = "scored"
    response: str = ""
    scores: dict[str, float] = field(default_factory=dict)
    scales: dict[str, tuple[float, float]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__post_init__()
        _text(self.response, "response")
        scales = _scales(self.scales)
        object.__setattr__(self, "scales", scales)
        object.__setattr__(self, "scores", _scores(self.scores, scales, "scores"))

    def to_row(self) -> dict[str, Any]:
        row = super().to_row()
        row["scales"] = {k: list(v) for k, v in self.scales.items()}
        return row

    def normalized(self, low: float = 0.0, high: float = 1.0) -> dict[str, float]:
        """Scores mapped linearly from each declared scale onto ``[low, high]`` (e.g. 0-100)."""
        return {
            a: low + (s - self.scales[a][0]) / (self.scales[a][1] - self.scales[a][0]) * (high - low)
            for a, s in self.scores.items()
        }


@dataclass(frozen=True)
class FeedbackResponse(Record):
    """(x, y, f): a response and the textual feedback it received, what conditional fine-tuning on feedback
    trains on (log p(y | f, x); Abadal Lloret et al. 2024). ``feedback`` is the text itself (a quantile word, a
    category, a critique sentence); ``scores`` optionally keep the numbers it came from (a reward, a judge's
    score), each on its declared scale; ``truncated``: the response hit the length cap (finish reason
    ``length``), so rejection sampling can prefer complete ones."""

    kind: ClassVar[str] = "feedback"
    response: str = ""
    feedback: str = ""
    scores: dict[str, float] = field(default_factory=dict)
    scales: dict[str, tuple[float, float]] = field(default_factory=dict)
    truncated: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        _text(self.response, "response")
        _text(self.feedback, "feedback")
        if not isinstance(self.truncated, bool):
            raise RecordError(f"expected true or false, got {self.truncated!r}", field="truncated")
        scales = _scales(self.scales)
        object.__setattr__(self, "scales", scales)
        object.__setattr__(self, "scores", _scores(self.scores, scales, "scores") if self.scores else {})

    def to_row(self) -> dict[str, Any]:
        row = super().to_row()
        row["scales"] = {k: list(v) for k, v in self.scales.items()}
        return row


RECORD_TYPES: dict[str, type[Record]] = {
    cls.kind: cls for cls in (PromptRecord, Demonstration, PreferencePair, ScoredResponse, FeedbackResponse)
}


def write_records(path: str | Path, records: Sequence[Record]) -> None:
    """``records`` as JSON Lines, one ``to_row()`` per line — what ``datamodules.records_file`` reads back —
    written through a temporary file and a rename, so a crash never leaves half a file."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".tmp")
    with tmp.open("w") as f:
        for r in records:
            f.write(json.dumps(r.to_row(), ensure_ascii=False) + "\n")
    tmp.replace(target)
