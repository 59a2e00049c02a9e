"""The fast completion-only log-probs equal the textbook full-logits computation; losses match hand
computations on fixed tensors."""

import math

import torch

from zoo.logprobs import full_logits_reference, sequence_logprobs
from zoo.losses import bradley_terry_loss, dpo_loss, nll_loss, regression_loss
from zoo.tiny import tiny_model


def test_chunked_logprobs_equal_full_logits_and_gradients():
    torch.manual_seed(0)
    model = tiny_model()
    ids = torch.randint(0, 256, (3, 20))
    mask = torch.ones_like(ids)
    mask[2, 15:] = 0
    labels = ids.clone()
    labels[:, :8] = -100
    labels[2, 15:] = -100
    fast, n_fast = sequence_logprobs(model, ids, mask, labels, chunk_size=5)
    fast.sum().backward()
    g_fast = model.lm_head.weight.grad.clone()
    model.zero_grad()
    slow, n_slow = full_logits_reference(model, ids, mask, labels)
    slow.sum().backward()
    torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-5)
    assert n_fast.tolist() == n_slow.tolist() == [12, 12, 7]
    torch.testing.assert_close(g_fast, model.lm_head.weight.grad, rtol=1e-4, atol=1e-6)


def test_dpo_loss_hand_computation():
    pc, pr, rc, rr = (torch.tensor([v]) for v in (-10.0, -12.0, -11.0, -11.5))
    beta, eps = 0.5, 0.1
    h = (-10 + 11) - (-12 + 11.5)  # 1.5
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    losses, r_c, r_r = dpo_loss(pc, pr, rc, rr, beta=beta, loss_type="sigmoid", label_smoothing=eps)
    expected = -(1 - eps) * math.log(sig(beta * h)) - eps * math.log(sig(-beta * h))
    assert math.isclose(losses.item(), expected, rel_tol=1e-6)
    assert math.isclose(r_c.item(), 0.5 * 1.0) and math.isclose(r_r.item(), 0.5 * -0.5)
    # cDPO with eps = 0 is DPO
    plain, _, _ = dpo_loss(pc, pr, rc, rr, beta=beta)
    assert math.isclose(plain.item(), -math.log(sig(beta * h)), rel_tol=1e-6)
    # IPO, length-averaged
    ipo, _, _ = dpo_loss(pc, pr, rc, rr, beta=beta, loss_type="ipo", lengths=(torch.tensor([2]), torch.tensor([4])))
    assert math.isclose(ipo.item(), (1.0 / 2 - (-0.5) / 4 - 1 / (2 * beta)) ** 2, rel_tol=1e-6)


def test_nll_bt_and_regression_losses():
    assert math.isclose(nll_loss(torch.tensor([-3.0, -5.0]), torch.tensor([2, 2])).item(), 2.0)
    bt = bradley_terry_loss(torch.tensor([2.0]), torch.tensor([0.5]))
    assert math.isclose(bt.item(), math.log(1 + math.exp(-1.5)), rel_tol=1e-6)
    pred, target = torch.tensor([[1.0, 2.0]]), torch.tensor([[0.0, 0.0]])
    assert math.isclose(regression_loss(pred, target, torch.tensor([[1, 0]])).item(), 1.0)
