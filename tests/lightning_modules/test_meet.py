"""MEET / CoH: step 1 trains only the control tokens (every LM weight bit-identical), step 2 trains both;
the "good" control steers generation towards what chosen responses had; fit then predict through train.py."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any, ClassVar

import datasets
import lightning as L
import pytest
import torch

from datamodules.base import RecordDataModule
from lightning_modules.meet import MEET
from tests.factories import hh_sample, tiny_kwargs, trainer
from train import main
from zoo.control import BAD, GOOD
from zoo.records import PreferencePair, PromptRecord

ROOT = Path(__file__).resolve().parents[2]
WORDS = ["cat", "dog", "sun", "sky", "red", "big", "hat", "cup", "pen", "box", "map", "egg"]


class PropertyPairs(RecordDataModule):
    """Synthetic pairs: the chosen reply is the word followed by "!!!", the rejected one by "."."""

    record_kinds: ClassVar[tuple[str, ...]] = ("preference", "prompt")

    def __init__(self, n: int = 48, **kwargs: Any):
        super().__init__(**kwargs)
        self.n = n

    def load_split(self, split: str) -> datasets.Dataset:
        rng = random.Random({"train": 0, "validation": 1, "predict": 2}[split])
        n = self.n if split == "train" else 8
        words = [rng.choice(WORDS) for _ in range(n)]
        return datasets.Dataset.from_list([{"word": w, "i": i} for i, w in enumerate(words)])

    @staticmethod
    def to_records(row: dict[str, Any], kind: str, **options: Any) -> list:
        prompt = [{"role": "user", "content": f"say {row['word']}"}]
        if kind == "prompt":
            return [PromptRecord(prompt=prompt)]
        return [PreferencePair(prompt=prompt, chosen=row["word"] + "!!!", rejected=row["word"] + ".")]


def meet(kind: str = "prompt", first: int = 1, second: int = 1, lr: float = 1e-2, **control: Any) -> MEET:
    control = {"kind": kind, "length": 4, "lora_r": 4, **control}
    kw = tiny_kwargs(optim={"lr": lr}, sampling={"max_new_tokens": 8, "temperature": 0.0})
    return MEET(control=control, phases={"first_epochs": first, "second_epochs": second, "control_lr": lr}, **kw)


@pytest.mark.parametrize("kind", ["prompt", "lora", "text"])
def test_meet_good_control_produces_the_property(tmp_cwd, kind):
    L.seed_everything(0)
    first = 0 if kind == "text" else 1
    module = meet(kind, first=first, second=5, lr=3e-3)
    dm = PropertyPairs(n=48, batch_size=8)
    trainer(tmp_cwd, max_steps=-1, max_epochs=first + 5).fit(module, datamodule=dm)
    dm.setup("predict")
    prompts = dm.datasets["predict"]["prompt_ids"]
    rate = {}
    for c in (GOOD, BAD):
        texts = module.generate(prompts, control_id=c).texts
        rate[c] = sum("!!!" in t for t in texts) / len(texts)
        print(kind, c, texts)
    assert rate[GOOD] >= 0.75 and rate[BAD] <= 0.25, rate
