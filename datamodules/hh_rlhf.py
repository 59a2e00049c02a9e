"""Anthropic HH-RLHF (``Anthropic/hh-rlhf``): full transcripts -> preference pairs, demonstrations, prompts.

Hub rows are ``{"chosen": transcript, "rejected": transcript}``, each ``\\n\\nHuman: …\\n\\nAssistant: …``
and sharing every turn but the last assistant reply. The prompt is the shared prefix up to the last
``\\n\\nAssistant:`` inside it (a few real rows have replies that themselves contain fake turns, so
splitting each transcript at its own last marker would give two different prompts); the rest of each
transcript is its completion. The prompt is parsed into user/assistant messages, so any prompt format
(HH text or a chat template) can render it.

Sources: the hub (``data_dir``: helpful-base, harmless-base, helpful-online, helpful-rejection-sampled;
several are concatenated; hub splits train / test, validation and predict -> test), local JSON(L) files
(``data_files``), or the shipped sample (the whole helpful-base *test* split, MIT; see
``datamodules/samples/PROVENANCE.md``), all through ``datasets.load_dataset``. Splits without files are
held out of train by ``validation_fraction`` (``HubOrFilesDataModule``).
"""

from __future__ import annotations

import functools
import re
from typing import Any, ClassVar

import datasets

from datamodules.base import HubOrFilesDataModule
from zoo.records import Demonstration, PreferencePair, PromptRecord, Record, RecordError, ScoredResponse
from zoo.scorers import Scorer, build_scorers, score_all

HUB_ID = "Anthropic/hh-rlhf"
SUBSETS = ("helpful-base", "harmless-base", "helpful-online", "helpful-rejection-sampled", "red-team-attempts")
HUB_SPLITS = {"train": "train", "validation": "test", "test": "test", "predict": "test"}
ASSISTANT = "\n\nAssistant:"
_TURN = re.compile(r"\n\n(Human|Assistant):")


@functools.cache
def _scorers(names: tuple[str, ...]) -> list[Scorer]:
    return build_scorers(names)  # built once per process (VADER loads its lexicon)


def parse_transcript(text: str, field: str) -> list[dict[str, str]]:
    """``\\n\\nHuman: a\\n\\nAssistant: b…`` -> [{"role": "user", "content": "a"}, {"role": "assistant", …}]."""
    parts = _TURN.split(text)
    if parts[0].strip():
        raise RecordError("transcript must start with '\\n\\nHuman:'", field=field)
    messages = []
    for speaker, content in zip(parts[1::2], parts[2::2]):
        role = "user" if speaker == "Human" else "assistant"
        content = content.strip()
        if not content:
            raise RecordError(f"empty {speaker} turn", field=field)
        messages.append({"role": role, "content": content})
    if not messages:
        raise RecordError("no '\\n\\nHuman:' turn", field=field)
    return messages


def split_pair(chosen: Any, rejected: Any) -> tuple[str, str, str]:
    """(prompt transcript ending in ``\\n\\nAssistant:``, chosen reply, rejected reply)."""
    for name, value in (("chosen", chosen), ("rejected", rejected)):
        if not isinstance(value, str):
            raise RecordError(f"expected a transcript string, got {type(value).__name__}", field=name)
        if ASSISTANT not in value:
            raise RecordError("no '\\n\\nAssistant:' turn", field=name)
    common = 0
    for a, b in zip(chosen, rejected):
        if a != b:
            break
        common += 1
    cut = chosen.rfind(ASSISTANT, 0, common)  # the last marker lying wholly inside the shared prefix
    if cut < 0:
        raise RecordError("chosen and rejected share no prompt ending in '\\n\\nAssistant:'", field="rejected")
    start = cut + len(ASSISTANT)
    return chosen[:start], chosen[start:].strip(), rejected[start:].strip()


class HHRLHFDataModule(HubOrFilesDataModule):
    """HH-RLHF preference pairs (``preference``), chosen replies as demonstrations (``demonstration``),
    and prompts (``prompt``).

    Args:
        data_dir: hub subsets to load (concatenated), e.g. ``["helpful-base", "harmless-base"]``.
        data_files: local JSON/JSONL(.gz) files per split (``{"train": [...], "test": [...]}``); overrides
            the hub. ``"sample"`` uses the shipped helpful-base test split.
        single_turn: keep only prompts with one human turn.
        scorers: offline scorers (``zoo.scorers.build_scorers`` names, e.g. ``[verbosity, sentiment]``) that
            label both replies of each row, yielding ``scored`` records (the embedded multi-attribute demo data).
        dedup: drop repeated (prompt, chosen, rejected) rows (counted in the deduplicated report).
        (see ``RecordDataModule`` for the shared arguments)
    """

    record_kinds: ClassVar[tuple[str, ...]] = ("preference", "demonstration", "prompt", "scored")
    sample_files: ClassVar[dict[str, Any]] = {"train": ["hh-rlhf/helpful-base/test.jsonl.gz"]}

    def __init__(
        self,
        data_dir: list[str] | str = "helpful-base",
        data_files: dict[str, list[str] | str] | str | None = None,
        single_turn: bool = False,
        dedup: bool = False,
        scorers: list[str] | None = None,
        revision: str | None = None,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        self.data_dir = [data_dir] if isinstance(data_dir, str) else list(data_dir)
        unknown = [d for d in self.data_dir if d not in SUBSETS]
        if unknown:
            raise ValueError(f"data.data_dir: unknown HH-RLHF subsets {unknown}; known: {SUBSETS}")
        self.data_files = self.local_files(data_files)
        self.single_turn, self.dedup, self.revision = single_turn, dedup, revision
        self.scorers = list(scorers or [])

    # --- raw rows ---------------------------------------------------------------------------------
    label = "HH-RLHF"

    def hub_splits(self) -> dict[str, str]:
        return HUB_SPLITS

    def load_hub(self, hub_split: str) -> datasets.Dataset:
        parts = [
            datasets.load_dataset(HUB_ID, data_dir=d, split=hub_split, revision=self.revision) for d in self.data_dir
        ]
        return datasets.concatenate_datasets(parts) if len(parts) > 1 else parts[0]

    def hub_name(self, hub_split: str) -> str:
        return f"{HUB_ID}[{'+'.join(self.data_dir)}]/{hub_split}"

    def record_options(self) -> dict[str, Any]:
        return {"single_turn": self.single_turn, "scorers": self.scorers}

    def record_code(self) -> tuple[Any, ...]:
        import zoo.scorers

        return (*super().record_code(), zoo.scorers) if self.scorers else super().record_code()

    @staticmethod
    def to_records(row: dict[str, Any], kind: str, single_turn: bool = False, scorers: list[str] = ()) -> list[Record]:
        for name in ("chosen", "rejected"):
            if name not in row or row[name] is None:
                raise RecordError("missing", field=name)
        prompt_text, chosen, rejected = split_pair(row["chosen"], row["rejected"])
        prompt = parse_transcript(prompt_text[: -len(ASSISTANT)], "chosen")
        if single_turn and sum(m["role"] == "user" for m in prompt) > 1:
            return []
        if kind == "preference":
            return [PreferencePair(prompt=prompt, chosen=chosen, rejected=rejected)]
        if kind == "demonstration":
            return [Demonstration(prompt=prompt, response=chosen)]
        if kind == "scored":
            if not scorers:
                raise ValueError("HH-RLHF 'scored' records need data.scorers (e.g. [verbosity, sentiment])")
            built = _scorers(tuple(scorers))
            replies = [chosen, rejected]
            scores = score_all(built, [prompt[-1]["content"]] * 2, replies)
            scales = {a: sc for s in built for a, sc in s.scales.items()}
            return [
                ScoredResponse(prompt=prompt, response=reply, scores={a: v[i] for a, v in scores.items()}, scales=scales)
                for i, reply in enumerate(replies)
            ]
        return [PromptRecord(prompt=prompt)]

    def records(self, split: str, kind: str) -> datasets.Dataset:
        recs = super().records(split, kind)
        if not self.dedup:
            return recs
        return self.drop_repeats(split, recs, ("prompt", "chosen", "rejected") if kind == "preference" else ("prompt",))
