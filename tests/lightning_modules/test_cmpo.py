"""CMPO behaviour and loss: steering weights really steer; cDPO on mixed heads matches a hand computation."""

import math
import random
from typing import Any, ClassVar

import datasets
import lightning as L
import pytest
import torch

from datamodules.base import RecordDataModule
from lightning_modules import CMPO, SFT
from tests.factories import tiny_kwargs, trainer
from zoo.logprobs import batch_completion_hidden
from zoo.losses import dpo_loss
from zoo.records import Demonstration, ScoredResponse
from zoo.sampling import SamplingSettings

A_CHARS, B_CHARS = "ae", "12"


class SyntheticSteering(RecordDataModule):
    """Each prompt has three replies: all A-class chars, all B-class chars, mixed; attribute ``a`` scores
    the share of A chars (0-4), ``b`` the share of B chars."""

    record_kinds: ClassVar[tuple[str, ...]] = ("scored", "demonstration")

    def load_split(self, split: str) -> datasets.Dataset:
        rng = random.Random({"train": 0, "validation": 1, "predict": 2}[split])
        rows = []
        for i in range({"train": 48, "validation": 8, "predict": 6}[split]):
            prompt = "".join(rng.choice("xyz") for _ in range(4))
            for kind in ("a", "b", "m"):
                chars = {"a": A_CHARS, "b": B_CHARS, "m": A_CHARS + B_CHARS}[kind]
                rows.append({"prompt": prompt, "reply": "".join(rng.choice(chars) for _ in range(8)), "i": i})
        return datasets.Dataset.from_list(rows)

    @staticmethod
    def to_records(row: dict[str, Any], kind: str, **options: Any):
        reply = row["reply"]
        if kind == "demonstration":
            return [Demonstration(prompt=row["prompt"], response=reply)]
        share = lambda cs: 4 * sum(c in cs for c in reply) / len(reply)  # noqa: E731
        return [ScoredResponse(prompt=row["prompt"], response=reply, scores={"a": share(A_CHARS), "b": share(B_CHARS)},
                               scales={"a": (0, 4), "b": (0, 4)})]


def cmpo(**kwargs):
    base = tiny_kwargs(optim={"lr": 3e-3})
    base["tokenize"] = {"max_length": 64, "prompt_format": "plain"}
    base.update(kwargs)
    return CMPO(attributes=["a", "b"], beta=0.5, label_smoothing=0.1, ref_cache_dir=None, **base)


def class_shares(module, steer, prompts):
    """Share of A-class and B-class characters among sampled completions under ``steer``."""
    from zoo.sampling import sample

    settings = SamplingSettings(n=8, max_new_tokens=8, temperature=1.0, seed=0)
    with module.steer(steer):
        joined = "".join(sample(module.model, module.tokenizer, prompts, settings).texts)
    return sum(c in A_CHARS for c in joined) / len(joined), sum(c in B_CHARS for c in joined) / len(joined)


def test_cmpo_weights_steer_output(tmp_cwd):
    """SFT on all replies (both classes), then CMPO with the SFT model as reference: λ = (1, 0) must
    produce clearly more of A's characters than λ = (0, 1), and the reverse for B's."""
    L.seed_everything(0)
    sft = SFT(**{**tiny_kwargs(optim={"lr": 3e-3}), "tokenize": {"max_length": 64, "prompt_format": "plain"}})
    trainer(tmp_cwd / "sft", max_steps=80).fit(sft, datamodule=SyntheticSteering(batch_size=8))
    sft_dir = sft.save_pretrained(tmp_cwd / "sft_model")
    module = cmpo(backbone={"name_or_path": str(sft_dir)})
    trainer(tmp_cwd / "cmpo", max_steps=60).fit(module, datamodule=SyntheticSteering(batch_size=8))
    prompts = ["xyzx", "zzyx", "yxzy", "xxzy"]
    a_under_a, b_under_a = class_shares(module, {"a": 1.0, "b": 0.0}, prompts)
    a_under_b, b_under_b = class_shares(module, {"a": 0.0, "b": 1.0}, prompts)
    assert a_under_a > a_under_b + 0.25, (a_under_a, a_under_b)
    assert b_under_b > b_under_a + 0.25, (b_under_b, b_under_a)


def mixed_head_logps_by_hand(module, example, lam):
    """log π(y | x, Λ) computed independently of CMPO's code path: one unpacked row prompt + completion, the
    final hidden states from the plain HF forward, each head's logits h W_jᵀ, mixed Σ λ_j, full log-softmax."""
    ids = torch.tensor([example["prompt_ids"] + example["completion"]])
    with torch.no_grad():
        h = module.model(input_ids=ids, output_hidden_states=True).hidden_states[-1][0]  # [T, H], after the final norm
        logits = sum(lam[j] * (h @ module.heads.weight[j].T) for j in range(len(lam)))
        logp = torch.log_softmax(logits.double(), -1)
    p = len(example["prompt_ids"])
    return sum(logp[t - 1, ids[0, t]].item() for t in range(p, ids.shape[1]))


def test_policy_logps_are_mixed_head_logps_and_loss_matches_hand_computation(tmp_cwd):
    module = cmpo()
    module.configure_model()
    dm = SyntheticSteering(batch_size=4).attach(module.example_builder())
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    # the data's Λ are one-hot, where mixing logits and mixing probabilities agree: one row gets a mixed Λ
    batch["weights"][0] = torch.tensor([0.3, 0.7], dtype=batch["weights"].dtype)
    with torch.no_grad():  # make the heads differ, as after training
        module.heads.weight[0].add_(torch.randn_like(module.heads.weight[0]) * 0.5)
        pol, _ = module.policy_logps(batch)
        ref = module.reference_logps(batch)  # the single base head
    b = batch["idx"].shape[0]
    rows = dm.datasets["train"].select(batch["idx"].tolist())
    for i, row in enumerate(rows):
        lam = batch["weights"][i].tolist()
        for j, completion in enumerate(row["completion_ids"]):  # chosen (block 0), rejected (block 1)
            by_hand = mixed_head_logps_by_hand(module, {"prompt_ids": row["prompt_ids"], "completion": completion}, lam)
            assert pol[j * b + i].item() == pytest.approx(by_hand, abs=1e-3)
    losses, _, _ = dpo_loss(pol[:b], pol[b:], ref[:b], ref[b:], beta=0.5, label_smoothing=0.1)
    def softplus(z: float) -> float:  # log(1 + e^z), stable for large |z|
        return max(z, 0.0) + math.log1p(math.exp(-abs(z)))

    for i in range(b):
        h = float((pol[i] - ref[i]) - (pol[b + i] - ref[b + i]))
        # −0.9 log σ(βh) − 0.1 log σ(−βh), β = 0.5, ε = 0.1
        assert losses[i].item() == pytest.approx(0.9 * softplus(-0.5 * h) + 0.1 * softplus(0.5 * h), rel=1e-5)
    conditions = set(dm.datasets["train"]["condition"])
    assert conditions == {"a", "b"}  # pure-A vs pure-B replies never win on both attributes


def test_untrained_plural_model_equals_reference_when_weights_sum_to_one():
    module = cmpo()
    module.configure_model()
    dm = SyntheticSteering(batch_size=4).attach(module.example_builder())
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    with torch.no_grad():
        pol, _ = module.policy_logps(batch)
        ref = module.reference_logps(batch)
    assert torch.allclose(batch["weights"].sum(-1), torch.ones(batch["weights"].shape[0]))
    torch.testing.assert_close(pol, ref, rtol=1e-5, atol=1e-5)  # copies of the base head, Σλ = 1


def test_steer_validation():
    with pytest.raises(ValueError, match=r"unknown attribute\(s\) \['c'\]; this model steers \['a', 'b'\]"):
        cmpo(steer={"c": 1.0})
    with pytest.raises(ValueError, match="negative weights"):
        cmpo(steer={"a": -1.0})
    with pytest.raises(ValueError, match="all weights are zero"):
        cmpo(steer={"a": 0.0, "b": 0.0})
    with pytest.raises(ValueError, match=r"model.min_margin .*unknown: \['c'\]"):
        cmpo(min_margin={"c": 0.1})
    with pytest.raises(ValueError, match=r"model.min_margin .*margins >= 0"):
        cmpo(min_margin={"a": -0.1})
    module = cmpo(steer={"a": -1.0, "b": 1.0}, allow_negative_weights=True)
    assert module.steer_preference.vector().tolist() == [-1.0, 1.0]
    assert module.default_preference().as_dict() == {"a": 0.5, "b": 0.5}


def test_heads_only_training_keeps_the_trunk_and_shares_its_forward_with_the_reference(tmp_cwd):
    """``train_trunk: false``: after training every trunk weight is bit-identical and every head weight changed;
    with ``reference: live`` the reference log-probs come from the base head on the same trunk pass and equal
    the separately computed reference (so the loss starts at exactly (1-ε)·log 2 + ε·log 2 = log 2)."""
    module = cmpo(head_init="lowrank", train_trunk=False, reference="live", optim={"lr": 1e-2})
    module.configure_model()
    trunk_before = {k: v.clone() for k, v in module.model.state_dict().items()}
    heads_before = {k: v.clone() for k, v in module.heads.state_dict().items()}
    dm = SyntheticSteering(batch_size=4).attach(module.example_builder())
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    with torch.no_grad():
        losses, _, _ = module.pair_losses(batch, "train")  # shared trunk pass
        base_ref = CMPO.reference_logps(module, batch)  # a separate forward through the single-head base model
        parts = batch_completion_hidden(module.model, batch)
    torch.testing.assert_close(module.base_head_logps(parts), base_ref, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(losses, torch.full_like(losses, math.log(2)), rtol=1e-5, atol=1e-5)
    trainer(tmp_cwd, max_steps=3).fit(module, datamodule=dm)
    for k, v in module.model.state_dict().items():
        assert torch.equal(v, trunk_before[k]), k
    for k, v in module.heads.state_dict().items():
        assert not torch.equal(v, heads_before[k]), k


def test_mixed_preferences_in_one_batch_give_each_rows_own_output():
    """generate_steered with a different Λ per prompt (plural heads row by row, one engine call) gives, row by
    row, the greedy tokens each Λ gives alone (fused heads, as predict): no mix-up between rows."""
    from tests.factories import steered_cmpo
    from zoo.sampling import SamplingSettings

    module = steered_cmpo(max_new_tokens=8, noise=0.5)
    prompts = module.encode_prompts(["hello there", "tell me a story", "hello there", "what is two plus two"])
    prefs = [{"verbosity": 1.0}, {"sentiment": 1.0}, {"verbosity": 0.3, "sentiment": 0.7}, {"sentiment": 1.0}]
    settings = SamplingSettings(max_new_tokens=8, temperature=0.0)
    mixed = module.generate_steered(prompts, prefs, settings)
    alone = [module.generate_steered([p], [w], settings)[0] for p, w in zip(prompts, prefs)]
    assert [m.token_ids for m in mixed] == [a.token_ids for a in alone]
    assert mixed[0].token_ids != mixed[2].token_ids  # same prompt, other Λ: another reply (the check can fail)
