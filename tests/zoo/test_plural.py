"""PluralHead (CMPO Eq. 3.1): mixing on logits, one-hot selection, fused weights equal the naive sum."""

import pytest
import torch
from torch import nn

from zoo.plural import PluralHead


def _base(vocab=50, hidden=16):
    torch.manual_seed(0)
    return nn.Linear(hidden, vocab, bias=False)


def _perturbed(init):
    heads = PluralHead(_base(), ["a", "b", "c"], init=init, rank=4)
    with torch.no_grad():  # make the heads differ, as after training
        for p in heads.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return heads


@pytest.mark.parametrize("init", ["copy", "lowrank"])
def test_identical_heads_make_output_independent_of_lambda(init):
    base = _base()
    heads = PluralHead(base, ["a", "b", "c"], init=init)
    h = torch.randn(7, 16)
    for lam in ([1, 0, 0], [0.2, 0.3, 0.5], [0, 0, 1]):
        out = heads(h, torch.tensor([lam] * 7, dtype=torch.float))
        torch.testing.assert_close(out, base(h), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("init", ["copy", "lowrank"])
def test_one_hot_selects_exactly_that_head_and_mixing_is_on_logits(init):
    heads = _perturbed(init)
    h = torch.randn(5, 16)
    per_head = [heads.mixed_weight(torch.eye(3)[j]) for j in range(3)]
    for j in range(3):
        torch.testing.assert_close(heads.head_logits(h, j), h @ per_head[j].T, rtol=1e-5, atol=1e-6)
    lam = torch.tensor([0.5, 0.25, 0.25])
    naive = sum(lam[j] * (h @ per_head[j].T) for j in range(3))  # Σ_j λ_j h W_jᵀ, before any softmax
    torch.testing.assert_close(heads(h, lam.expand(5, 3)), naive, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(heads.head_logits(h, 0), heads.head_logits(h, 1))  # the heads really differ


@pytest.mark.parametrize("init", ["copy", "lowrank"])
def test_fused_weight_equals_naive_sum(init):
    heads = _perturbed(init)
    h = torch.randn(9, 16, dtype=torch.float64)
    heads = heads.double()
    if init == "lowrank":
        heads._base[0].double()
    lam = torch.tensor([0.7, 0.0, 0.3], dtype=torch.float64)
    fused = h @ heads.mixed_weight(lam).T
    naive = sum(lam[j] * heads.head_logits(h, j) for j in range(3))
    torch.testing.assert_close(fused, naive, rtol=0, atol=1e-6)
    torch.testing.assert_close(heads(h, lam.expand(9, 3)), naive, rtol=0, atol=1e-6)


def test_per_row_weights():
    heads = _perturbed("copy")
    h = torch.randn(2, 16)
    lam = torch.tensor([[1.0, 0, 0], [0, 0, 1.0]])
    out = heads(h, lam)
    torch.testing.assert_close(out[0], heads.head_logits(h, 0)[0])
    torch.testing.assert_close(out[1], heads.head_logits(h, 2)[1])
    with pytest.raises(ValueError, match="head weights must have shape"):
        heads(h, torch.ones(2, 2))


@pytest.mark.parametrize("init", ["copy", "lowrank"])
def test_untrained_heads_equal_the_base_only_when_weights_sum_to_one(init):
    """Identical (untrained) heads give the base logits times Σλ: the untrained plural model is the reference for
    Eq. 3.2 and one-hot weights (Σλ = 1), but not for the A.1 and A.2 weightings, whose weights the pair builder
    really produces with Σλ = 0 (all logits 0: a uniform distribution) and Σλ ≠ 1 (a temperature)."""
    from lightning_modules.cmpo_pairs import conditioned_pairs

    base = _base()
    heads = PluralHead(base, ["a", "b"], init=init)
    h = torch.randn(7, 16)
    for lam, scale in (([1.0, 0.0], 1.0), ([0.5, 0.5], 1.0), ([1.0, -1.0], 0.0), ([0.75, 0.0], 0.75)):
        out = heads(h, torch.tensor([lam] * 7))
        torch.testing.assert_close(out, scale * base(h), rtol=1e-5, atol=1e-6)
        assert torch.allclose(out, base(h), atol=1e-4) == (scale == 1.0)
    scores = [{"a": 3.0, "b": 1.0}, {"a": 1.0, "b": 2.0}]  # a trade-off: each reply wins one attribute
    negative = conditioned_pairs(["x", "y"], scores, ["a", "b"], "negative")
    assert sorted(p.weights for p in negative) == [(-1.0, 1.0), (1.0, -1.0)]  # Σλ = 0
    ratio = conditioned_pairs(["x", "y"], scores, ["a", "b"], "rating_ratio", scales={"a": (0, 4), "b": (0, 4)})
    assert all(abs(sum(p.weights) - 1) > 0.1 for p in ratio)
