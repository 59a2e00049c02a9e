"""Eq. 1 of ALT (Abadal Lloret et al. 2024) as per-token terms, against a hand computation on fixed logits, and
the chunked driver ``token_terms`` (logits recomputed in backward) against plain full-vocabulary logits."""

import math

import torch

from zoo.logprobs import token_terms
from zoo.losses import conditional_sft_loss, conditional_sft_terms


def softmax(row):
    z = [math.exp(v) for v in row]
    return [v / sum(z) for v in z]


def test_eq1_terms_by_hand_on_fixed_logits():
    # two completion tokens, a vocabulary of 3
    policy = [[2.0, 0.0, -1.0], [0.5, 0.5, 1.0]]  # p_θ(· | f, x, y_<t)
    ref = [[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]]  # p_0(· | x, y_<t): no feedback
    targets = [0, 2]
    nll, kl, entropy = conditional_sft_terms(torch.tensor(policy), torch.tensor(targets), torch.tensor(ref))
    for t in range(2):
        p, q = softmax(policy[t]), softmax(ref[t])
        assert math.isclose(nll[t].item(), -math.log(p[targets[t]]), rel_tol=1e-6)
        hand_kl = sum(q[v] * (math.log(q[v]) - math.log(p[v])) for v in range(3))  # KL(p_0 ‖ p_θ), not reversed
        assert math.isclose(kl[t].item(), hand_kl, rel_tol=1e-6)
        assert math.isclose(entropy[t].item(), -sum(pv * math.log(pv) for pv in p), rel_tol=1e-6)
    # the numbers themselves, worked out once: t = 0
    assert math.isclose(nll[0].item(), 0.1698460, rel_tol=1e-5)
    reverse = sum(pv * (math.log(pv) - math.log(qv)) for pv, qv in zip(softmax(policy[0]), softmax(ref[0])))
    assert not math.isclose(kl[0].item(), reverse, rel_tol=1e-3)  # the direction matters here
    # L = mean_t [nll_t + β kl_t − α H_t]
    beta, alpha = 0.05, 0.06
    loss = conditional_sft_loss(nll, kl, entropy, beta, alpha)
    hand = sum(nll[t].item() + beta * kl[t].item() - alpha * entropy[t].item() for t in range(2)) / 2
    assert math.isclose(loss.item(), hand, rel_tol=1e-6)
    # no reference: kl is zero, β has no effect
    nll0, kl0, h0 = conditional_sft_terms(torch.tensor(policy), torch.tensor(targets))
    assert kl0.tolist() == [0.0, 0.0] and torch.equal(nll0, nll) and torch.equal(h0, entropy)
    # a uniform policy over 3 has entropy log 3: α lowers the loss by α log 3
    u, _, hu = conditional_sft_terms(torch.zeros(1, 3), torch.tensor([1]))
    assert math.isclose(conditional_sft_loss(u, torch.zeros(1), hu, 0.0, 0.5).item(),
                        math.log(3) - 0.5 * math.log(3), rel_tol=1e-6)


def test_token_terms_chunked_equal_full_logits_with_gradients():
    torch.manual_seed(0)
    head = torch.nn.Linear(8, 11, bias=False)
    ref_head = torch.nn.Linear(8, 11, bias=False)
    hidden = torch.randn(7, 8, requires_grad=True)
    ref_hidden = torch.randn(7, 8)
    targets = torch.randint(0, 11, (7,))
    chunked = token_terms(hidden, head, targets, conditional_sft_terms, chunk_size=3, ref_hidden=ref_hidden,
                          ref_head=ref_head)
    conditional_sft_loss(*chunked, 0.3, 0.06).backward()
    g_chunk, g_hidden = head.weight.grad.clone(), hidden.grad.clone()
    assert ref_head.weight.grad is None  # the reference's logits carry no gradient
    head.weight.grad, hidden.grad = None, None
    full = conditional_sft_terms(head(hidden), targets, ref_head(ref_hidden))
    conditional_sft_loss(*full, 0.3, 0.06).backward()
    for a, b in zip(chunked, full):
        torch.testing.assert_close(a, b)
    torch.testing.assert_close(g_chunk, head.weight.grad)
    torch.testing.assert_close(g_hidden, hidden.grad)
