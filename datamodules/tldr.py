"""Reddit TL;DR (Stiennon et al. 2020): comparisons -> preference pairs, axis ratings -> scored summaries,
reference summaries -> demonstrations, posts -> prompts.

Hub sources (``subset``):

- ``comparisons``: ``openai/summarize_from_feedback``, config ``comparisons`` (train 92,858 / validation
  86,086). Row: ``info{id, post, title, subreddit, site, article}``, ``summaries[{text, policy, note}]`` (two),
  ``choice`` (0 or 1: the index of the preferred summary), ``worker``, ``batch``, ``split``, ``extra{confidence}``.
  Yields ``preference`` (``summaries[choice]`` over the other), ``demonstration`` (summaries whose
  ``policy`` is ``ref``: the human-written TL;DRs), ``prompt``.
- ``axis``: the same hub id, config ``axis`` (validation 8,585 / test 6,312; no train). Row: ``info``,
  ``summary{text, policy, note, axes{overall, accuracy, coverage, coherence, compatible}}``. Yields ``scored``:
  the four axes on their 7-point Likert scale (1-7) and ``compatible`` (a bool, set on news rows) on 0-1; an
  unrated axis is null on the hub and is left out; a summary with no rated axis yields nothing (counted).
  Also ``demonstration`` (``ref`` summaries) and ``prompt``.
- ``sft``: ``CarperAI/openai_summarize_tldr`` (train / valid / test). Row: ``prompt`` (already in the form
  below, ending in ``TL;DR:``), ``label`` (the reference summary). Yields ``demonstration``, ``prompt``.
- ``carper_comparisons``: ``CarperAI/openai_summarize_comparisons`` (train / valid1 / valid2 / test). Row:
  ``prompt`` (the form below without the final ``TL;DR:``), ``chosen``, ``rejected`` (each ``"TL;DR: …"``).
  Yields ``preference``, ``prompt``.

Each row's form is recognised by its columns, so local JSON(L) files of any of the four schemas work.

Choices: every prompt is one user turn ``SUBREDDIT: r/{subreddit}\\nTITLE: {title}\\nPOST: {post}\\nTL;DR:``
(the CarperAI form; its prompts are kept as they are, with ``\\nTL;DR:`` appended where missing). Summaries
are stripped of surrounding space and of a leading ``TL;DR:``. The validation and axis sets also hold CNN/DM
news rows (``post`` null, ``article`` set); they are dropped by default (``reddit_only``, counted as
filtered) and otherwise prompted as ``ARTICLE: {article}\\nTL;DR:``. A post appears in many comparisons, so
``prompt`` and ``demonstration`` records are deduplicated by default (``dedup``, reported). Records carry
``info.id`` as ``source_id``.

Split mapping on the hub: validation -> the source's validation split (``valid1`` for
``carper_comparisons``); test/predict -> its test split, or validation where it has none (``comparisons``).

Shipped sample (``data_files="sample"``, see ``datamodules/samples/PROVENANCE.md``): for ``comparisons``, 674
real rows of the hub's validation split (OpenAI batch18), used as train with ``validation_fraction``; for the
other subsets a few hand-written rows in the hub schema.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, Literal

import datasets

from datamodules.base import HubOrFilesDataModule, boolean, number, pair_index, required_text
from zoo.records import Demonstration, PreferencePair, PromptRecord, Record, RecordError, ScoredResponse

Subset = Literal["comparisons", "axis", "sft", "carper_comparisons"]
# subset -> (hub id, config, our split -> hub split)
HUB: dict[str, tuple[str, str | None, dict[str, str]]] = {
    "comparisons": (
        "openai/summarize_from_feedback",
        "comparisons",
        {"train": "train", "validation": "validation", "test": "validation", "predict": "validation"},
    ),
    "axis": (
        "openai/summarize_from_feedback",
        "axis",
        {"validation": "validation", "test": "test", "predict": "test"},
    ),
    "sft": (
        "CarperAI/openai_summarize_tldr",
        None,
        {"train": "train", "validation": "valid", "test": "test", "predict": "test"},
    ),
    "carper_comparisons": (
        "CarperAI/openai_summarize_comparisons",
        None,
        {"train": "train", "validation": "valid1", "test": "test", "predict": "test"},
    ),
}
AXES = ("overall", "accuracy", "coverage", "coherence")
LIKERT = (1.0, 7.0)
TLDR = "TL;DR:"
FORM_KINDS = {
    "comparisons": ("preference", "demonstration", "prompt"),
    "axis": ("scored", "demonstration", "prompt"),
    "sft": ("demonstration", "prompt"),
    "carper_comparisons": ("preference", "prompt"),
}


def _summary(value: Any, field: str) -> str:
    """A summary without surrounding space or a leading ``TL;DR:`` (the CarperAI files keep one)."""
    text = required_text(value, field)
    text = text[len(TLDR) :].strip() if text.startswith(TLDR) else text
    if not text:
        raise RecordError("is empty after its 'TL;DR:' prefix", field=field)
    return text


def post_prompt(info: Any, reddit_only: bool = True) -> str | None:
    """``SUBREDDIT: r/… TITLE: … POST: … TL;DR:`` from a hub ``info``; None for a news row when ``reddit_only``."""
    if not isinstance(info, Mapping):
        raise RecordError("expected a mapping {id, post, title, subreddit, ...}", field="info")
    if info.get("post") is None and info.get("article") is not None:  # CNN/DM rows of the eval sets
        return None if reddit_only else f"ARTICLE: {required_text(info['article'], 'info.article')}\n{TLDR}"
    subreddit = required_text(info.get("subreddit"), "info.subreddit")
    title = required_text(info.get("title"), "info.title")
    post = required_text(info.get("post"), "info.post")
    return f"SUBREDDIT: r/{subreddit}\nTITLE: {title}\nPOST: {post}\n{TLDR}"


def row_form(row: Mapping[str, Any]) -> str:
    """Which of the four schemas a row is in, from its columns."""
    if "summaries" in row and "choice" in row:
        return "comparisons"
    if "summary" in row and "info" in row:
        return "axis"
    if "prompt" in row and "label" in row:
        return "sft"
    if "prompt" in row and "chosen" in row and "rejected" in row:
        return "carper_comparisons"
    raise RecordError(
        f"unknown TL;DR schema with columns {sorted(row)}: expected summaries+choice, info+summary, "
        "prompt+label or prompt+chosen+rejected",
        field="columns",
    )


class TLDRDataModule(HubOrFilesDataModule):
    """Reddit TL;DR: ``preference`` (comparisons), ``scored`` (axis), ``demonstration``, ``prompt``.

    Args:
        subset: which hub source (see the module docstring): ``comparisons``, ``axis``, ``sft``,
            ``carper_comparisons``.
        data_files: local JSON/JSONL(.gz) files per split, any of the four schemas; overrides the hub.
            ``"sample"`` uses the shipped sample of ``subset``.
        reddit_only: drop CNN/DailyMail news rows (counted as filtered).
        dedup: drop repeated ``prompt`` / ``demonstration`` records (a post recurs across comparisons).
        revision: hub revision.
        (see ``RecordDataModule`` for the shared arguments)
    """

    record_kinds: ClassVar[tuple[str, ...]] = ("preference", "scored", "demonstration", "prompt")
    sample_files: ClassVar[dict[str, Any]] = {
        "comparisons": {"train": ["tldr/comparisons/validation.jsonl.gz"]},
        "axis": {"train": ["tldr/axis/validation.handwritten.jsonl"]},
        "sft": {"train": ["tldr/sft/train.handwritten.jsonl"]},
        "carper_comparisons": {"train": ["tldr/carper-comparisons/train.handwritten.jsonl"]},
    }

    def __init__(
        self,
        subset: Subset = "comparisons",
        data_files: dict[str, list[str] | str] | str | None = None,
        reddit_only: bool = True,
        dedup: bool = True,
        revision: str | None = None,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        if subset not in HUB:
            raise ValueError(f"data.subset: unknown TL;DR subset {subset!r}; known: {tuple(HUB)}")
        self.data_files = self.local_files(data_files, variant=subset)
        self.subset, self.reddit_only, self.dedup, self.revision = subset, reddit_only, dedup, revision

    # --- raw rows ---------------------------------------------------------------------------------
    @property
    def label(self) -> str:
        return f"TL;DR ({self.subset})"

    def hub_splits(self) -> dict[str, str]:
        return HUB[self.subset][2]

    def load_hub(self, hub_split: str) -> datasets.Dataset:
        hub_id, config, _ = HUB[self.subset]
        return datasets.load_dataset(hub_id, config, split=hub_split, revision=self.revision)

    def hub_name(self, hub_split: str) -> str:
        hub_id, config, _ = HUB[self.subset]
        return f"{hub_id}[{config or 'default'}]/{hub_split}"

    def record_options(self) -> dict[str, Any]:
        return {"reddit_only": self.reddit_only}

    # --- rows -> records -------------------------------------------------------------------------
    @staticmethod
    def to_records(row: dict[str, Any], kind: str, reddit_only: bool = True) -> list[Record]:
        form = row_form(row)
        if kind not in FORM_KINDS[form]:
            raise RecordError(f"{form} rows yield {FORM_KINDS[form]} records, not {kind!r}", field=form)
        if form in ("sft", "carper_comparisons"):
            prompt = required_text(row["prompt"], "prompt")
            prompt = prompt if prompt.endswith(TLDR) else f"{prompt}\n{TLDR}"
            if kind == "prompt":
                return [PromptRecord(prompt=prompt)]
            if form == "sft":
                return [Demonstration(prompt=prompt, response=_summary(row["label"], "label"))]
            chosen, rejected = _summary(row["chosen"], "chosen"), _summary(row["rejected"], "rejected")
            if chosen == rejected:
                raise RecordError("chosen and rejected summaries are identical", field="rejected")
            return [PreferencePair(prompt=prompt, chosen=chosen, rejected=rejected)]

        prompt = post_prompt(row["info"], reddit_only)
        if prompt is None:
            return []
        source_id = row["info"].get("id")
        if kind == "prompt":
            return [PromptRecord(prompt=prompt, source_id=source_id)]
        if form == "axis":
            return _axis_records(row["summary"], prompt, source_id, kind)

        summaries = row["summaries"]
        if not isinstance(summaries, list) or len(summaries) != 2:
            raise RecordError("expected a list of two summaries", field="summaries")
        texts, policies = [], []
        for i, s in enumerate(summaries):
            if not isinstance(s, Mapping):
                raise RecordError("expected a mapping {text, policy, note}", field=f"summaries[{i}]")
            texts.append(_summary(s.get("text"), f"summaries[{i}].text"))
            policies.append(s.get("policy"))
        if kind == "demonstration":
            return [
                Demonstration(prompt=prompt, response=t, source_id=source_id)
                for t, p in zip(texts, policies)
                if p == "ref"
            ]
        choice = pair_index(row["choice"], "choice")  # the preferred summary
        if texts[0] == texts[1]:
            raise RecordError("the two summaries are identical", field="summaries[1].text")
        return [
            PreferencePair(
                prompt=prompt, chosen=texts[choice], rejected=texts[1 - choice], source_id=source_id
            )
        ]

    def records(self, split: str, kind: str) -> datasets.Dataset:
        recs = super().records(split, kind)
        if not self.dedup or kind not in ("prompt", "demonstration"):
            return recs
        return self.drop_repeats(split, recs, ("prompt",) if kind == "prompt" else ("prompt", "response"))


def _axis_records(summary: Any, prompt: str, source_id: str | None, kind: str) -> list[Record]:
    if not isinstance(summary, Mapping):
        raise RecordError("expected a mapping {text, policy, note, axes}", field="summary")
    text = _summary(summary.get("text"), "summary.text")
    if kind == "demonstration":
        return (
            [Demonstration(prompt=prompt, response=text, source_id=source_id)]
            if summary.get("policy") == "ref"
            else []
        )
    axes = summary.get("axes")
    if not isinstance(axes, Mapping):
        raise RecordError("expected a mapping of axis ratings", field="summary.axes")
    scores: dict[str, float] = {}
    scales: dict[str, tuple[float, float]] = {}
    for name in AXES:
        if axes.get(name) is not None:  # null: not rated on this axis
            scores[name] = number(axes[name], f"summary.axes.{name}", LIKERT, integer=True)
            scales[name] = LIKERT
    if axes.get("compatible") is not None:
        scores["compatible"] = float(boolean(axes["compatible"], "summary.axes.compatible"))
        scales["compatible"] = (0.0, 1.0)
    if not scores:
        return []
    return [ScoredResponse(prompt=prompt, response=text, scores=scores, scales=scales, source_id=source_id)]
