"""Prefix-shared rows (``prompt | chosen | rejected``, 4-D mask) give the same sequence log-probs, the same
last-token hidden states and the same gradients as two padded rows per pair, for SDPA and eager attention;
DPO and the reward model train the same either way."""

import pytest
import torch

from lightning_modules import DPO, RewardModel
from tests.factories import LossRecorder, hh_sample, tiny_kwargs, trainer
from zoo.collate import IGNORE_INDEX, PadCollator, packed_rows
from zoo.logprobs import batch_last_hidden, batch_sequence_logprobs, full_logits_reference, last_token_hidden
from zoo.tiny import tiny_model


def _examples(seed: int = 0, n: int = 5, completions: int = 2) -> list[dict]:
    gen = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):  # prompts and completions of very different lengths, so rows pad differently
        p = torch.randint(3, 200, (int(torch.randint(1, 30, (1,), generator=gen)),), generator=gen).tolist()
        cs = [torch.randint(3, 200, (int(torch.randint(1, 25, (1,), generator=gen)),), generator=gen).tolist()
              for _ in range(completions)]
        out.append({"prompt_ids": p, "completion_ids": cs, "idx": i})
    return out


def test_packed_layout_by_hand():
    ex = [{"prompt_ids": [5, 6, 7], "completion_ids": [[8, 9], [10]], "idx": 0}]
    b = packed_rows(ex, pad_token_id=0)
    assert b["input_ids"].tolist() == [[5, 6, 7, 8, 9, 10]]
    assert b["position_ids"].tolist() == [[0, 1, 2, 3, 4, 3]]
    m = b["attention_mask"][0, 0].int().tolist()
    assert m[5] == [1, 1, 1, 0, 0, 1]  # the rejected token sees the prompt and itself, not the chosen tokens
    assert m[4] == [1, 1, 1, 1, 1, 0]
    x = IGNORE_INDEX
    assert b["pred_labels"].tolist() == [[x, x, 8, 9, x, x], [x, x, 10, x, x, x]]


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("completions", [2, 3])
def test_packed_equals_padded_logps_and_grads(attn, completions):
    torch.manual_seed(0)
    model = tiny_model(seed=0, attn_implementation=attn).train()
    examples = _examples(completions=completions)
    padded = PadCollator(pad_token_id=0)(examples)
    packed = PadCollator(pad_token_id=0, share_prompt=True)(examples)
    assert packed["input_ids"].shape[0] == len(examples) and padded["input_ids"].shape[0] == completions * len(examples)
    # fewer tokens through the trunk: the prompt runs once per example
    assert packed["input_ids"].numel() < padded["input_ids"].numel()

    def run(batch):
        model.zero_grad()
        logps, counts = batch_sequence_logprobs(model, batch, chunk_size=7)
        (logps * torch.linspace(0.5, 1.5, logps.shape[0])).sum().backward()
        return logps.detach(), counts, {n: p.grad.clone() for n, p in model.named_parameters()}

    lp_a, n_a, g_a = run(padded)
    lp_b, n_b, g_b = run(packed)
    assert torch.equal(n_a, n_b)
    torch.testing.assert_close(lp_b, lp_a, rtol=1e-6, atol=1e-5)
    for name in g_a:
        torch.testing.assert_close(g_b[name], g_a[name], rtol=1e-4, atol=1e-6, msg=name)
    # and both equal the textbook full-logits computation
    with torch.no_grad():
        ref, _ = full_logits_reference(model, padded["input_ids"], padded["attention_mask"], padded["labels"])
    torch.testing.assert_close(lp_b, ref, rtol=1e-6, atol=1e-5)  # sums of ~100: fp32 ulps


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_last_token_hidden_equals_padded(attn):
    """The reward model's input: each reply's last-token hidden state, packed or padded, and by hand."""
    model = tiny_model(seed=0, attn_implementation=attn).eval()
    examples = _examples(completions=2)
    padded = PadCollator(pad_token_id=0)(examples)
    packed = PadCollator(pad_token_id=0, share_prompt=True)(examples)
    with torch.no_grad():
        a, b = batch_last_hidden(model, padded), batch_last_hidden(model, packed)
        # by hand: each reply alone, unpadded, its last position
        for j in range(2):
            for i, e in enumerate(examples):
                ids = torch.tensor([e["prompt_ids"] + e["completion_ids"][j]])
                alone = last_token_hidden(model, ids, torch.ones_like(ids))[0]
                torch.testing.assert_close(b[j * len(examples) + i], alone, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)


def test_packed_rows_are_not_a_no_op():
    """Sanity check that the test above can fail: a mask letting rejected see chosen changes its log-prob."""
    model = tiny_model(seed=0).eval()
    examples = _examples()
    packed = PadCollator(pad_token_id=0, share_prompt=True)(examples)
    width = packed["input_ids"].shape[1]
    leaky = dict(packed, attention_mask=torch.ones_like(packed["attention_mask"]).tril(),
                 position_ids=torch.arange(width).expand_as(packed["input_ids"]))
    with torch.no_grad():
        good, _ = batch_sequence_logprobs(model, packed)
        bad, _ = batch_sequence_logprobs(model, leaky)
    b = len(examples)
    assert (good[b:] - bad[b:]).abs().max() > 1e-3


@pytest.mark.parametrize("method", ["dpo", "reward_model"])
def test_method_trains_the_same_with_and_without_prefix_sharing(tmp_cwd, method):
    def losses(share: bool) -> list[float]:
        import lightning as L

        L.seed_everything(0)
        rec = LossRecorder()
        if method == "dpo":
            module = DPO(**tiny_kwargs(), share_prompt=share, ref_cache_dir=None)
        else:
            module = RewardModel(**tiny_kwargs(), share_prompt=share)
        trainer(tmp_cwd / str(share), 4, callbacks=[rec]).fit(module, datamodule=hh_sample(train=16))
        return rec.losses

    shared, plain = losses(True), losses(False)
    assert len(shared) == 4
    torch.testing.assert_close(torch.tensor(shared), torch.tensor(plain), rtol=0, atol=1e-5)
    assert len({round(x, 5) for x in shared}) > 2  # the run really moved
