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
from lightning_modules.cli import main
from lightning_modules.meet import MEET
from tests.factories import TINY_CLI, hh_sample, tiny_kwargs, trainer
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


SHORT = {"max_length": 96, "max_prompt_length": 64, "length_policy": "truncate", "prompt_format": "chat"}  # fast rows


def meet(kind: str = "prompt", first: int = 1, second: int = 1, lr: float = 1e-2, **control: Any) -> MEET:
    control = {"kind": kind, "length": 4, "lora_r": 4, **control}
    kw = tiny_kwargs(optim={"lr": lr}, sampling={"max_new_tokens": 8, "temperature": 0.0}, tokenize=SHORT)
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
        with module.steer({module.attributes[c]: 1.0}):
            texts = module.generate(prompts).texts
        rate[c] = sum("!!!" in t for t in texts) / len(texts)
        print(kind, c, texts)
    assert rate[GOOD] >= 0.75 and rate[BAD] <= 0.25, rate


class Snapshot(L.Callback):
    """Copies every parameter at the start of training and at the end of each epoch."""

    def __init__(self) -> None:
        self.states: list[dict[str, torch.Tensor]] = []

    def _take(self, pl_module) -> None:
        self.states.append({n: p.detach().clone() for n, p in pl_module.named_parameters()})

    def on_train_start(self, trainer, pl_module) -> None:
        self._take(pl_module)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._take(pl_module)


@pytest.mark.parametrize("kind", ["prompt", "lora"])
def test_step_one_freezes_the_lm_and_step_two_trains_both(tmp_cwd, kind):
    module = meet(kind, first=1, second=1)
    snap = Snapshot()
    # 8 pairs, batch 4: two optimizer steps per phase (LoRA's A needs a second step: B starts at zero)
    trainer(tmp_cwd, max_steps=-1, max_epochs=2, callbacks=[snap]).fit(module, datamodule=hh_sample(train=8))
    start, after_one, after_two = snap.states
    control = {n for n in start if "soft_prompts" in n or ".lora_" in n}
    lm = set(start) - control
    assert control and lm and all(n.startswith("model.") for n in lm)
    moved = [n for n in lm if not torch.equal(start[n], after_one[n])]
    assert not moved, f"step 1 changed LM weights: {moved[:5]}"
    still = [n for n in control if torch.equal(start[n], after_one[n])]
    assert not still, f"step 1 left control parameters unchanged: {still}"
    lm_still = [n for n in lm if torch.equal(after_one[n], after_two[n])]
    assert not lm_still, f"step 2 left LM weights unchanged: {lm_still[:5]}"
    ctrl_still = [n for n in control if torch.equal(after_one[n], after_two[n])]
    assert not ctrl_still, f"step 2 left control parameters unchanged: {ctrl_still}"


def test_soft_prompts_start_as_the_repeated_word_embedding():
    module = meet("prompt", length=5)
    module.configure_model()
    emb = module.model.get_input_embeddings().weight.detach()
    # the tiny byte tokenizer: printable ASCII c is id ord(c) - 33, the space byte (shown as "Ġ") is 220
    good_ids = [220, ord("g") - 33, ord("o") - 33, ord("o") - 33, ord("d") - 33]
    bad_ids = [220, ord("b") - 33, ord("a") - 33, ord("d") - 33]
    for c, ids in ((GOOD, good_ids), (BAD, bad_ids)):
        expected = sum(emb[i] for i in ids) / len(ids)
        for position in range(5):
            torch.testing.assert_close(module.soft_prompts.prompts[c, position].detach(), expected, rtol=0, atol=1e-6)
    assert not torch.equal(module.soft_prompts.prompts[GOOD], module.soft_prompts.prompts[BAD])


MEET_CLI = [
    *TINY_CLI,
    "--model.init_args.sampling.max_new_tokens", "8",
    "--data.init_args.max_samples", '{"train": 8, "validation": 4, "predict": 3}',
]


@pytest.mark.parametrize("method,kind", [("meet", "prompt"), ("meet", "lora"), ("coh", "text")])
def test_fit_then_predict_through_the_cli(tmp_cwd, method, kind):
    config = str(ROOT / "configs" / f"{method}.yaml")
    args = [*MEET_CLI, "--model.init_args.control.kind", kind]
    # 2 steps per epoch: step 3 runs after the switch to step 2 (meet.yaml: one epoch per step)
    main(["fit", "--config", config, *args, "--trainer.max_steps", "3", "--trainer.max_epochs", "2"])
    ckpt = tmp_cwd / "runs" / method / "checkpoints" / "last.ckpt"
    state = torch.load(ckpt, weights_only=True)  # plain contents only
    # 2 steps per epoch, phases.first_epochs 1 (CoH: 0): step 3 runs in step 2 of the method
    assert state["global_step"] == 3 and state["meet"]["phase"] == 2
    main(["predict", "--config", config, *args, "--ckpt_path", str(ckpt)])
    (out,) = (tmp_cwd / "runs" / method / "predictions").glob("predict-*.jsonl")
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 3 and all(r["control"] == "good" and r["control_kind"] == kind for r in rows)
    assert {"prompt", "completion", "truncated"} <= set(rows[0])
    hf = sorted((tmp_cwd / "runs" / method / "csv").glob("version_*/hf"))[-1]
    assert (hf / "meet_control.json").exists()
    if kind == "prompt":
        assert (hf / "meet_soft_prompts.safetensors").exists() and (hf / "model.safetensors").exists()
    if kind == "lora":  # the fine-tuned LM under plain names, one PEFT directory per control
        from peft import PeftModel
        from transformers import AutoModelForCausalLM

        lm = AutoModelForCausalLM.from_pretrained(hf)
        key = "model.base_model.model.model.layers.0.self_attn.q_proj.base_layer.weight"
        assert torch.equal(lm.model.layers[0].self_attn.q_proj.weight, state["state_dict"][key])
        good = PeftModel.from_pretrained(lm, hf / "good")
        name = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight"
        torch.testing.assert_close(dict(good.named_parameters())[name],
                                   state["state_dict"][key.replace("base_layer", "lora_A.good")])


def test_soft_prompt_controls_mix_and_other_controls_refuse():
    """{good: 0.25, bad: 0.75} samples under the soft prompt 0.25·θ_w + 0.75·θ_l: the same tokens as a model
    whose good prompt is that mix, sampled under good alone; LoRA and text controls take one at a time."""
    from zoo.preference import PreferenceError

    module = meet("prompt", length=3)
    module.configure_model()
    with torch.no_grad():
        module.soft_prompts.prompts.normal_()  # two clearly different prompts
    prompts = module.encode_prompts(["say cat", "say dog", "say sun"])
    with module.steer({"good": 0.25, "bad": 0.75}):
        mixed = module.generate(prompts).token_ids
    with module.steer({"good": 1.0}):
        good = module.generate(prompts).token_ids
    original = module.soft_prompts.prompts.detach().clone()
    with torch.no_grad():
        module.soft_prompts.prompts[GOOD] = 0.25 * original[GOOD] + 0.75 * original[BAD]
    with module.steer({"good": 1.0}):
        by_hand = module.generate(prompts).token_ids
    assert mixed == by_hand and mixed != good
    lora = meet("lora")
    with pytest.raises(PreferenceError, match="one control at a time"):
        with lora.steer({"good": 0.5, "bad": 0.5}):
            pass
