"""OASST1: message trees -> conversations, sibling ranks -> pairs, labels -> scores on (0, 1)."""

import gzip
import json

from datamodules.oasst import LABELLED_SAMPLE, OASST1DataModule
from zoo.records import PreferencePair, ScoredResponse

ROOT = "054e1df3-35e0-4bb8-a585-607dbdcd24e0"  # the first tree of the shipped sample


def _messages() -> dict[str, dict]:
    with gzip.open(OASST1DataModule(data_files="sample").data_files["train"][0], "rt", encoding="utf-8") as f:
        return {m["message_id"]: m for m in map(json.loads, f)}


def test_rank_pairs_of_the_first_tree(tmp_cwd):
    messages = _messages()
    pairs = OASST1DataModule(data_files="sample").records("train", "preference")
    assert len(pairs) == 308
    first = [
        PreferencePair.from_row(p)
        for p in pairs
        if p["prompt"] == [{"role": "user", "content": messages[ROOT]["text"]}]
    ]
    replies = sorted((m for m in messages.values() if m["parent_id"] == ROOT), key=lambda m: m["rank"])
    assert [m["rank"] for m in replies] == [0, 1, 2]
    ids = [r["message_id"] for r in replies]
    assert [p.source_id for p in first] == [f"{ids[0]}>{ids[1]}", f"{ids[0]}>{ids[2]}", f"{ids[1]}>{ids[2]}"]
    assert first[0].chosen == replies[0]["text"].strip() and first[0].rejected == replies[1]["text"].strip()
    assert first[0].prompt[0]["content"] == "How can I find the best 401k plan for my needs?"


def test_conversations_follow_the_tree(tmp_cwd):
    messages = _messages()
    demos = OASST1DataModule(data_files="sample").records("train", "demonstration")
    assert len(demos) == 257  # every live assistant message
    deep = next(d for d in demos if len(d["prompt"]) >= 3)
    path, m = [], messages[deep["source_id"]]
    while m["parent_id"] is not None:
        m = messages[m["parent_id"]]
        path.append(m)
    assert [t["content"] for t in deep["prompt"]] == [p["text"].strip() for p in reversed(path)]
    assert [t["role"] for t in deep["prompt"]] == [
        {"prompter": "user", "assistant": "assistant"}[p["role"]] for p in reversed(path)
    ]
    assert deep["prompt"][-1]["role"] == "user"
    assert len(OASST1DataModule(data_files="sample", branch="best").records("train", "demonstration")) == 55
    assert len(OASST1DataModule(data_files="sample").records("train", "prompt")) == 191


def test_labels_become_unit_scale_scores(tmp_cwd):
    dm = OASST1DataModule(
        data_files={"train": [str(LABELLED_SAMPLE)]},
        label_names=["quality", "humor", "toxicity", "creativity"],
    )
    scored = {r["source_id"]: ScoredResponse.from_row(r) for r in dm.records("train", "scored")}
    assert set(scored) == {
        "hand-a1",
        "hand-a2",
        "hand-a3",
        "hand-a4",
    }  # hand-a5 has no labels; hand-a6 is deleted
    a2 = scored["hand-a2"]
    assert a2.scores == {"quality": 0.25, "humor": 0.125, "toxicity": 0.0, "creativity": 0.0}
    assert a2.scales == {name: (0.0, 1.0) for name in a2.scores}
    assert a2.normalized(0, 4)["quality"] == 1.0  # NeMo's Likert grid is value * 4
    pairs = dm.records("train", "preference")
    assert [p["source_id"] for p in pairs] == [
        "hand-a1>hand-a3",
        "hand-a1>hand-a2",
        "hand-a3>hand-a2",
        "hand-a4>hand-a5",
    ]


def test_whole_trees_are_held_out(tmp_cwd):
    dm = OASST1DataModule(data_files="sample", validation_fraction=0.1)
    train, validation = dm.records("train", "prompt"), dm.records("validation", "prompt")
    assert len(train) + len(validation) == 191
    roots = lambda recs: {r["prompt"][0]["content"] for r in recs}  # noqa: E731
    assert not roots(train) & roots(validation)
