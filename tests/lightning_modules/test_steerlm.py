"""SteerLM baselines: the APM's loss and what it learns; the ACM's labels, ratings line and steering."""

import json
import math
import random
from typing import Any, ClassVar

import datasets
import lightning as L
import pytest
import torch

from callbacks.artifacts import JsonlPredictionWriter
from datamodules.base import RecordDataModule
from lightning_modules.steerlm import (
    SteerLMAttributeModel,
    SteerLMConditionedSFT,
    attribute_cross_entropy,
    likert_class,
    render,
)
from tests.factories import trainer
from zoo.collate import IGNORE_INDEX, PadCollator, tokenize_examples
from zoo.records import PromptRecord, ScoredResponse
from zoo.sampling import SamplingSettings

P_CHARS, OTHER_CHARS = "ae", "12"
PLAIN = {"max_length": 64, "prompt_format": "plain"}


def _marks(rng: random.Random) -> str:
    """Six letters with 0-4 '!' and 0-4 '?' shuffled in."""
    chars = [rng.choice("abc") for _ in range(6)] + ["!"] * rng.randint(0, 4) + ["?"] * rng.randint(0, 4)
    rng.shuffle(chars)
    return "".join(chars)


class Marks(RecordDataModule):
    """APM data: attribute ``bang`` = number of '!' in the reply (clipped to 4), ``ques`` = number of '?'."""

    record_kinds: ClassVar[tuple[str, ...]] = ("scored", "prompt")

    def load_split(self, split: str) -> datasets.Dataset:
        rng = random.Random({"train": 0, "validation": 1, "predict": 2}[split])
        n = {"train": 256, "validation": 64, "predict": 2}[split]
        return datasets.Dataset.from_list(
            [{"prompt": "".join(rng.choice("xyz") for _ in range(4)), "reply": _marks(rng)} for _ in range(n)]
        )

    @staticmethod
    def to_records(row: dict[str, Any], kind: str, **options: Any):
        if kind == "prompt":
            return [PromptRecord(prompt=row["prompt"])]
        r = row["reply"]
        return [ScoredResponse(prompt=row["prompt"], response=r,
                               scores={"bang": min(r.count("!"), 4), "ques": min(r.count("?"), 4)},
                               scales={"bang": (0, 4), "ques": (0, 4)})]


class Property(RecordDataModule):
    """ACM data: each prompt has a reply made of P's characters (``p`` = 4) and one of others (``p`` = 0)."""

    record_kinds: ClassVar[tuple[str, ...]] = ("scored", "prompt")

    def load_split(self, split: str) -> datasets.Dataset:
        rng = random.Random({"train": 0, "validation": 1, "predict": 2}[split])
        rows = []
        for _ in range({"train": 64, "validation": 4, "predict": 2}[split]):
            prompt = "".join(rng.choice("xyz") for _ in range(4))
            rows += [{"prompt": prompt, "reply": "".join(rng.choice(cs) for _ in range(8))}
                     for cs in (P_CHARS, OTHER_CHARS)]
        return datasets.Dataset.from_list(rows)

    @staticmethod
    def to_records(row: dict[str, Any], kind: str, **options: Any):
        if kind == "prompt":
            return [PromptRecord(prompt=row["prompt"])]
        r = row["reply"]
        return [ScoredResponse(prompt=row["prompt"], response=r, scores={"p": 4 if r[0] in P_CHARS else 0},
                               scales={"p": (0, 4)})]


def tiny(cls, **kwargs):
    return cls(backbone={"name_or_path": "builtin:tiny"}, tokenize=dict(PLAIN), system_prompt=None, **kwargs)


def test_likert_classes_round_like_nemo():
    assert [likert_class(s, (0, 4)) for s in range(5)] == [0, 1, 2, 3, 4]  # HelpSteer stays as it is
    assert likert_class(0.25, (0, 1)) == 1 and likert_class(11 / 12, (0, 1)) == 4  # OASST: round(4v)
    assert likert_class(0.625, (0, 1)) == 2 and likert_class(0.875, (0, 1)) == 4  # halves to even, as Python
    assert likert_class(4, (1, 7)) == 2  # any declared scale: normalised first


def test_apm_loss_equals_hand_cross_entropy():
    logits = torch.tensor([[[0.5, 1.0, -1.0, 0.0, 2.0], [1.0, 1.0, 1.0, 1.0, 1.0]],
                           [[0.0, 0.0, 3.0, -2.0, 1.0], [-1.0, 0.5, 0.0, 0.25, 0.0]]])
    targets = torch.tensor([[1, IGNORE_INDEX], [4, 0]])

    def ce(row, c):
        return math.log(sum(math.exp(v) for v in row)) - row[c]

    hand = (ce(logits[0, 0].tolist(), 1) + ce(logits[1, 0].tolist(), 4) + ce(logits[1, 1].tolist(), 0)) / 3
    assert attribute_cross_entropy(logits, targets).item() == pytest.approx(hand, rel=1e-6)
    nothing = attribute_cross_entropy(logits.requires_grad_(), torch.full_like(targets, IGNORE_INDEX))
    assert nothing.item() == 0.0 and nothing.requires_grad


def test_apm_learns_mark_counts(tmp_cwd):
    """bang / ques = number of '!' / '?' (0-4, uniform): far above the 0.2 of chance after training, and
    the per-attribute accuracies are logged."""
    L.seed_everything(0)
    apm = tiny(SteerLMAttributeModel, attributes=["bang", "ques"], optim={"lr": 3e-3})
    dm = Marks(batch_size=16)
    trainer(tmp_cwd, max_steps=100).fit(apm, datamodule=dm)
    rng = random.Random(5)
    replies = [_marks(rng) for _ in range(200)]
    predicted = apm.predict_attributes(["xyzx"] * len(replies), replies)
    for name, mark in (("bang", "!"), ("ques", "?")):
        accuracy = sum(p[name] == min(r.count(mark), 4) for p, r in zip(predicted, replies)) / len(replies)
        assert accuracy > 0.35, (name, accuracy)
    metrics = trainer(tmp_cwd, max_steps=1, limit_val_batches=None).validate(apm, datamodule=dm, verbose=False)[0]
    assert {"val/loss", "val/accuracy", "val/accuracy/bang", "val/accuracy/ques"} <= set(metrics)

    saved = apm.save_pretrained(tmp_cwd / "apm")  # the head travels with the trunk
    again = SteerLMAttributeModel(attributes=["bang", "ques"], backbone={"name_or_path": str(saved)},
                                  tokenize=dict(PLAIN), system_prompt=None)
    again.configure_model()
    assert again.predict_attributes(["xyzx"] * 20, replies[:20]) == predicted[:20]
    labelled = again.label_records([ScoredResponse(prompt="xyzx", response=replies[0], scores={"bang": 0},
                                                   scales={"bang": (0, 4)})])
    assert labelled[0].scores == {"bang": predicted[0]["bang"], "ques": predicted[0]["ques"]}


def test_acm_labels_cover_only_the_response_and_ratings_read_a4_b0():
    acm = tiny(SteerLMConditionedSFT, attributes=["a", "b"])
    # scores given out of order and on two scales: the line follows the configured order, b = round(0.1*4) = 0
    record = ScoredResponse(prompt="Say hi", response="Hello there!", scores={"b": 0.1, "a": 4},
                            scales={"a": (0, 4), "b": (0, 1)})
    (example,) = acm.example_fn(record, **acm.example_kwargs("train"))
    assert example["condition"] == "a:4,b:0"
    assert example["prompt"][0]["content"] == "<extra_id_0>User\nSay hi\n<extra_id_1>Assistant\na:4,b:0\n"
    only_b = ScoredResponse(prompt="Say hi", response="Hi.", scores={"b": 1.0}, scales={"b": (0, 1)})
    assert next(acm.example_fn(only_b, **acm.example_kwargs("train")))["condition"] == "b:4"  # own attributes only
    unrated = ScoredResponse(prompt="Say hi", response="Hi.", scores={"c": 1.0}, scales={"c": (0, 1)})
    assert list(acm.example_fn(unrated, **acm.example_kwargs("train"))) == []

    tok = tokenize_examples({"prompt": [example["prompt"]], "completions": [example["completions"]]},
                            acm.tokenizer, acm.tokenize_settings)
    batch = PadCollator(acm.tokenizer.pad_token_id)([{"prompt_ids": tok["prompt_ids"][0],
                                                      "completion_ids": tok["completion_ids"][0]}])
    labelled = batch["labels"][0][batch["labels"][0] != IGNORE_INDEX].tolist()
    assert labelled == acm.tokenizer("Hello there!", add_special_tokens=False)["input_ids"] + [acm.tokenizer.eos_token_id]
    assert acm.tokenizer.decode(batch["input_ids"][0][: len(tok["prompt_ids"][0])]).endswith("Assistant\na:4,b:0\n")


def test_acm_predict_writes_the_conditioning(tmp_cwd):
    acm = tiny(SteerLMConditionedSFT, attributes=["a", "p"], steer={"p": 1},
               sampling={"max_new_tokens": 3, "temperature": 0.0})
    out = tmp_cwd / "predictions.jsonl"
    trainer(tmp_cwd, max_steps=1, callbacks=[JsonlPredictionWriter(str(out))]).predict(
        acm, datamodule=Property(batch_size=2))
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 4  # two prompts, each under two replies (prompt records are not deduplicated here)
    for row in rows:
        assert row["conditioning"] == "a:0,p:4"  # the steered attribute at 4, every other at 0
        assert row["steer"] == {"a": 0.0, "p": 1.0}
        assert row["prompt"].endswith("<extra_id_1>Assistant\n")
    assert acm.ratings_for(acm.preference({"a": 0.5})) == "a:2,p:0"  # w -> round(4w)
    assert acm.ratings_for(acm.preference({"a": 0.0})) == "a:0,p:0"  # all-zero ratings are a valid steer


def test_steer_and_template_settings_are_checked(tmp_cwd):
    with pytest.raises(ValueError, match=r"unknown attribute\(s\) \['q'\]; this model steers \['a', 'p'\]"):
        tiny(SteerLMConditionedSFT, attributes=["a", "p"], steer={"q": 1})
    with pytest.raises(ValueError, match="weights above 1 are not allowed"):
        tiny(SteerLMConditionedSFT, attributes=["a", "p"], steer={"p": 1.5})
    with pytest.raises(ValueError, match="predict needs a steer"):  # before any generation
        trainer(tmp_cwd, max_steps=1).predict(tiny(SteerLMConditionedSFT, attributes=["a"]),
                                              datamodule=Property(batch_size=2))
    with pytest.raises(ValueError, match="prompt_format: plain"):
        SteerLMConditionedSFT(attributes=["a"], backbone={"name_or_path": "builtin:tiny"},
                              tokenize={"prompt_format": "chat"})
    special = SteerLMAttributeModel(attributes=["a"], backbone={"name_or_path": "builtin:tiny"},
                                    marker_tokens="special", template="nemo")
    special.configure_model()
    assert special.tokenizer.tokenize("<extra_id_1>User")[0] == "<extra_id_1>"  # one token, not 12 bytes
    assert special.model.get_input_embeddings().num_embeddings == len(special.tokenizer) == 263


def test_acm_conditioning_steers_output(tmp_cwd):
    """Replies with property P (all characters from 'ae') carry p:4, the others p:0; after training,
    conditioning on p:4 yields P's characters far more often than conditioning on p:0."""
    L.seed_everything(0)
    acm = tiny(SteerLMConditionedSFT, attributes=["p"], optim={"lr": 3e-3})
    trainer(tmp_cwd, max_steps=80).fit(acm, datamodule=Property(batch_size=8))
    settings = SamplingSettings(n=8, max_new_tokens=8, temperature=1.0, seed=0)
    prompts = ["xyzx", "zzyx", "yxzy", "xxzy"]

    ids = [acm.tokenizer(render([{"role": "user", "content": p}], acm.template, acm.system_prompt))["input_ids"]
           for p in prompts]

    def p_share(weight: float) -> float:
        with acm.steer({"p": weight}):  # the steering interface writes the ratings line
            joined = "".join(acm.generate(ids, settings).texts)
        return sum(c in P_CHARS for c in joined) / max(len(joined), 1)

    high, low = p_share(1.0), p_share(0.0)
    assert high > low + 0.5, (high, low)
