"""OpenAssistant OASST1 (``OpenAssistant/oasst1``): message trees -> conversations, rank pairs, label scores.

Hub rows are flat messages (train 84,437 / validation 4,401; test/predict map to validation):
``message_id``, ``parent_id`` (null for a tree's root), ``message_tree_id``, ``text``, ``role`` (``prompter`` or
``assistant``), ``rank`` (0 = best among ranked siblings; null if unranked), ``lang``, ``deleted``,
``review_result``, ``tree_state``, ``labels`` (``{name: [...], value: [...], count: [...]}``, values in 0-1),
and more that is not used.

A record needs the whole path from the root, so ``load_split`` first groups the messages into one row per
tree (a single batched ``datasets.map`` over the split, cached like every other step); each message keeps
its line in the source, and errors name that line as the row. A tree must have exactly one root, which is a
prompter message; every ``parent_id`` must be in the tree; roles alternate; ids are unique; texts are
non-empty; ranks are null or non-negative integers. Deleted messages and messages whose review failed
are pruned with their replies (not errors). By default only ``ready_for_export`` trees are kept
(``ready_only``), in every language unless ``langs`` is given (the root's ``lang``).

Record kinds (roles map prompter -> user, assistant -> assistant; a conversation is the path from the root):

- ``prompt``: one per prompter message: the path ending at it (multi-turn prompts included).
- ``demonstration``: one per assistant message: the path to its parent as prompt, its text as response.
  ``branch="best"`` keeps only paths whose every assistant turn is its siblings' best (rank 0, or the sole
  reply where none is ranked), the usual way to read one conversation per tree.
- ``preference``: for each prompter message, every pair of ranked assistant replies with different ranks,
  the lower rank chosen (n ranked replies give n(n-1)/2 pairs). Pairs carry ``source_id``
  ``"{chosen id}>{rejected id}"``.
- ``scored``: one per assistant message carrying labels: each label value is a score on its declared scale
  (0, 1), as OASST publishes it (no rounding to a Likert grid: ``ScoredResponse.normalized(0, 4)`` gives
  value*4, the grid NeMo/SteerLM rounds). ``label_names`` keeps a subset (CMPO uses quality, humor,
  toxicity, creativity); labels with ``count`` 0 are dropped.

Shipped sample (``data_files="sample"``): the messages of the first 40 complete English trees of a real
export (``labels`` are null there, so it yields no ``scored`` records); a hand-written tree with labels in
the hub schema is shipped beside it for ``scored`` (see ``datamodules/samples/PROVENANCE.md``).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Mapping
from typing import Any, ClassVar, Literal

import datasets

from datamodules.base import SAMPLES, HubOrFilesDataModule
from zoo.records import Demonstration, PreferencePair, PromptRecord, Record, RecordError, ScoredResponse

HUB_ID = "OpenAssistant/oasst1"
HUB_SPLITS = {"train": "train", "validation": "validation", "test": "validation", "predict": "validation"}
LABELLED_SAMPLE = SAMPLES / "oasst1" / "labelled-tree.handwritten.jsonl"
MESSAGE_FIELDS = (
    "message_id",
    "parent_id",
    "text",
    "role",
    "rank",
    "lang",
    "deleted",
    "review_result",
    "tree_state",
    "labels",
)
ROLES = {"prompter": "user", "assistant": "assistant"}
LABEL_SCALE = (0.0, 1.0)


def group_trees(batch: dict[str, list], indices: list[int]) -> dict[str, list]:
    """Batched ``datasets.map`` over a whole split at once: flat messages -> one row per message tree."""
    trees: dict[Any, list[dict[str, Any]]] = {}
    tree_ids = batch.get("message_tree_id", [None] * len(indices))
    for j, line in enumerate(indices):
        message = {k: batch[k][j] for k in MESSAGE_FIELDS if k in batch}
        message["line"] = line  # the message's row in its source, for error messages
        trees.setdefault(tree_ids[j], []).append(message)
    return {"message_tree_id": list(trees), "messages": list(trees.values())}


def _error(reason: str, field: str, message: Mapping[str, Any]) -> RecordError:
    return RecordError(reason, field=field, row=message["line"])


class Tree:
    """One validated message tree: ``children`` of each message id, pruned of deleted/failed messages."""

    def __init__(self, tree_id: Any, messages: list[dict[str, Any]]):
        if not messages:
            raise RecordError("a tree with no messages", field="messages")
        if tree_id is None:
            raise _error("missing", "message_tree_id", messages[0])
        self.by_id: dict[str, dict[str, Any]] = {}
        for m in messages:
            mid = m.get("message_id")
            if not isinstance(mid, str) or not mid:
                raise _error(f"expected a non-empty id, got {mid!r}", "message_id", m)
            if mid in self.by_id:
                raise _error(f"duplicate message_id {mid!r}", "message_id", m)
            if m.get("role") not in ROLES:
                raise _error(f"expected 'prompter' or 'assistant', got {m.get('role')!r}", "role", m)
            text = m.get("text")
            if not isinstance(text, str) or not text.strip():
                raise _error("missing or empty", "text", m)
            rank = m.get("rank")
            if rank is not None and (isinstance(rank, bool) or not isinstance(rank, int) or rank < 0):
                raise _error(f"expected a non-negative integer or null, got {rank!r}", "rank", m)
            self.by_id[mid] = m
        roots = [m for m in messages if m.get("parent_id") is None]
        if len(roots) != 1:
            where = roots[1] if roots else messages[0]
            raise _error(
                f"tree {tree_id!r} needs exactly one root (parent_id null), found {len(roots)}",
                "parent_id",
                where,
            )
        self.root = roots[0]
        if self.root["role"] != "prompter":
            raise _error("the root message must be the prompter's", "role", self.root)
        self.children: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for m in messages:
            parent_id = m.get("parent_id")
            if parent_id is None:
                continue
            parent = self.by_id.get(parent_id)
            if parent is None:
                raise _error(f"parent {parent_id!r} is not in tree {tree_id!r}", "parent_id", m)
            if parent["role"] == m["role"]:
                raise _error(f"a {m['role']} message replies to a message of the same role", "role", m)
            self.children[parent_id].append(m)
        reached = {mid for mid, _ in self._walk(prune=False)}
        for m in messages:
            if m["message_id"] not in reached:  # one root and known parents, so this is a parent cycle
                raise _error("message is not connected to the root (a parent_id cycle)", "parent_id", m)

    def _walk(self, prune: bool = True) -> Iterator[tuple[str, list[dict[str, Any]]]]:
        """(message id, path from the root to it), depth first; ``prune`` skips deleted/failed subtrees."""
        stack = [[self.root]]
        while stack:
            path = stack.pop()
            yield path[-1]["message_id"], path
            for child in reversed(self.children[path[-1]["message_id"]]):
                if not prune or _alive(child):
                    stack.append([*path, child])

    def paths(self) -> Iterator[list[dict[str, Any]]]:
        for _, path in self._walk():
            yield path

    def replies(self, message: Mapping[str, Any]) -> list[dict[str, Any]]:
        return [c for c in self.children[message["message_id"]] if _alive(c)]

    def is_best(self, message: Mapping[str, Any]) -> bool:
        """Top-ranked among its live siblings, or the sole reply where none is ranked."""
        siblings = self.replies(self.by_id[message["parent_id"]])
        ranked = [s for s in siblings if s.get("rank") is not None]
        if ranked:
            return message.get("rank") is not None and message["rank"] == min(s["rank"] for s in ranked)
        return len(siblings) == 1


def _alive(m: Mapping[str, Any]) -> bool:
    return not m.get("deleted") and m.get("review_result") is not False


def _conversation(path: list[dict[str, Any]]) -> list[dict[str, str]]:
    return [{"role": ROLES[m["role"]], "content": m["text"].strip()} for m in path]


def _label_scores(m: Mapping[str, Any], keep: list[str] | None) -> dict[str, float]:
    labels = m.get("labels")
    if labels is None:
        return {}
    if not isinstance(labels, Mapping):
        raise _error("expected {name: [...], value: [...], count: [...]}", "labels", m)
    names, values, counts = labels.get("name"), labels.get("value"), labels.get("count")
    if not (isinstance(names, list) and isinstance(values, list) and len(names) == len(values)):
        raise _error("name and value must be lists of the same length", "labels", m)
    counts = counts if isinstance(counts, list) and len(counts) == len(names) else [None] * len(names)
    scores = {}
    for name, value, count in zip(names, values, counts):
        if (keep is not None and name not in keep) or count == 0:
            continue
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not LABEL_SCALE[0] <= value <= LABEL_SCALE[1]
        ):
            raise _error(f"expected a number in [0, 1], got {value!r}", f"labels.{name}", m)
        scores[name] = value
    return scores


class OASST1DataModule(HubOrFilesDataModule):
    """OASST1 trees: ``prompt``, ``demonstration``, ``preference`` (sibling ranks), ``scored`` (labels).

    Args:
        data_files: local JSON/JSONL(.gz) files of hub message rows per split; overrides the hub.
            ``"sample"`` uses the shipped 40 real trees.
        langs: keep trees whose root is in these languages (default: all).
        ready_only: keep only ``ready_for_export`` trees.
        branch: ``all`` assistant messages as demonstrations, or only the ``best`` path.
        label_names: the labels kept as scores (default: every label a message carries).
        revision: hub revision.
        (see ``RecordDataModule`` for the shared arguments)
    """

    record_kinds: ClassVar[tuple[str, ...]] = ("preference", "demonstration", "scored", "prompt")
    sample_files: ClassVar[dict[str, Any]] = {"train": ["oasst1/messages.first40trees.jsonl.gz"]}

    def __init__(
        self,
        data_files: dict[str, list[str] | str] | str | None = None,
        langs: list[str] | None = None,
        ready_only: bool = True,
        branch: Literal["all", "best"] = "all",
        label_names: list[str] | None = None,
        revision: str | None = None,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        if branch not in ("all", "best"):
            raise ValueError(f"data.branch must be 'all' or 'best', got {branch!r}")
        self.data_files = self.local_files(data_files)
        self.langs, self.ready_only, self.branch, self.revision = langs, ready_only, branch, revision
        self.label_names = label_names

    # --- raw rows: messages grouped into trees ---------------------------------------------------
    label = "OASST1"

    def hub_splits(self) -> dict[str, str]:
        return HUB_SPLITS

    def load_hub(self, hub_split: str) -> datasets.Dataset:
        return datasets.load_dataset(HUB_ID, split=hub_split, revision=self.revision)

    def hub_name(self, hub_split: str) -> str:
        return f"{HUB_ID}/{hub_split}"

    def _load(self, split: str) -> datasets.Dataset:
        messages = super()._load(split)  # grouped before any held-out split, so whole trees are held out
        return messages.map(
            group_trees,
            batched=True,
            batch_size=None,  # the whole split in one batch: a tree's messages may lie anywhere in it
            with_indices=True,
            remove_columns=messages.column_names,
            desc="OASST1: messages -> trees",
        )

    def record_options(self) -> dict[str, Any]:
        return {
            "langs": self.langs,
            "ready_only": self.ready_only,
            "branch": self.branch,
            "label_names": self.label_names,
        }

    # --- trees -> records ------------------------------------------------------------------------
    @staticmethod
    def to_records(
        row: dict[str, Any],
        kind: str,
        langs: list[str] | None = None,
        ready_only: bool = True,
        branch: str = "all",
        label_names: list[str] | None = None,
    ) -> list[Record]:
        tree = Tree(row.get("message_tree_id"), row.get("messages") or [])
        if (
            ready_only
            and tree.root.get("tree_state") not in (None, "ready_for_export")
            or not _alive(tree.root)
        ):
            return []
        if langs and tree.root.get("lang") not in langs:
            return []
        out: list[Record] = []
        for path in tree.paths():
            m = path[-1]
            if kind == "prompt" and m["role"] == "prompter":
                out.append(PromptRecord(prompt=_conversation(path), source_id=m["message_id"]))
            elif kind == "demonstration" and m["role"] == "assistant":
                if branch == "best" and not all(tree.is_best(a) for a in path if a["role"] == "assistant"):
                    continue
                out.append(
                    Demonstration(
                        prompt=_conversation(path[:-1]), response=m["text"].strip(), source_id=m["message_id"]
                    )
                )
            elif kind == "preference" and m["role"] == "prompter":
                ranked = sorted(
                    (r for r in tree.replies(m) if r.get("rank") is not None), key=lambda r: r["rank"]
                )
                for i, better in enumerate(ranked):
                    for worse in ranked[i + 1 :]:
                        if better["rank"] == worse["rank"]:
                            continue
                        if better["text"].strip() == worse["text"].strip():
                            raise _error(
                                f"same text as its ranked sibling {better['message_id']!r}", "text", worse
                            )
                        out.append(
                            PreferencePair(
                                prompt=_conversation(path),
                                chosen=better["text"].strip(),
                                rejected=worse["text"].strip(),
                                source_id=f"{better['message_id']}>{worse['message_id']}",
                            )
                        )
            elif kind == "scored" and m["role"] == "assistant":
                scores = _label_scores(m, label_names)
                if scores:
                    out.append(
                        ScoredResponse(
                            prompt=_conversation(path[:-1]),
                            response=m["text"].strip(),
                            scores=scores,
                            scales={name: LABEL_SCALE for name in scores},
                            source_id=m["message_id"],
                        )
                    )
        return out
