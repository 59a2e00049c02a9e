"""Losses as pure functions: tensors in, tensors out, each with its equation.

Notation: ``logp_c`` / ``logp_r`` are sequence log-probs log π(y|x) of the chosen / rejected completion
(sums over completion tokens), under the policy θ or the reference; β is the KL strength.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

DPOLossType = Literal["sigmoid", "ipo"]


def dpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float = 0.1,
    loss_type: DPOLossType = "sigmoid",
    label_smoothing: float = 0.0,
    lengths: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-example direct-preference losses and implicit rewards, from summed sequence log-probs.

    h = [log π_θ(y_c|x) − log π_ref(y_c|x)] − [log π_θ(y_r|x) − log π_ref(y_r|x)]

    - ``sigmoid`` (direct preference optimisation, Rafailov et al. 2023, Eq. 7) with label smoothing ε (cDPO, Mitchell 2023):
      L = −(1−ε) log σ(βh) − ε log σ(−βh); ε = 0 is the plain sigmoid loss.
    - ``ipo`` (Azar et al. 2023, Eq. 17): L = (h − 1/(2β))². With ``lengths`` = (|y_c|, |y_r|) each
      log-ratio in h is divided by its completion length first (the usual practice, TRL's too).

    Rewards: r(x, y) = β [log π_θ(y|x) − log π_ref(y|x)] on summed log-probs for every loss type
    (detached). Returns (losses, r_c, r_r), each [B].
    """
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing must lie in [0, 0.5), got {label_smoothing}")
    chosen_ratio = policy_chosen - ref_chosen
    rejected_ratio = policy_rejected - ref_rejected
    if loss_type == "sigmoid":
        h = chosen_ratio - rejected_ratio
        losses = -(1 - label_smoothing) * F.logsigmoid(beta * h) - label_smoothing * F.logsigmoid(-beta * h)
    elif loss_type == "ipo":
        if label_smoothing:
            raise ValueError("label_smoothing applies to the sigmoid loss only")
        if lengths is not None:
            h = chosen_ratio / lengths[0].clamp(min=1) - rejected_ratio / lengths[1].clamp(min=1)
        else:
            h = chosen_ratio - rejected_ratio
        losses = (h - 1 / (2 * beta)) ** 2
    else:
        raise ValueError(f"unknown preference loss_type {loss_type!r} (expected sigmoid or ipo)")
    return losses, beta * chosen_ratio.detach(), beta * rejected_ratio.detach()


def nll_loss(token_logp_sum: torch.Tensor, token_count: torch.Tensor) -> torch.Tensor:
    """Token-mean negative log-likelihood over completion tokens of the batch:
    L = −Σ_i Σ_t log π(y_it | x_i, y_i<t) / Σ_i |y_i|  (prompt tokens never count)."""
    return -token_logp_sum.sum() / token_count.sum().clamp(min=1)


def bradley_terry_loss(
    reward_chosen: torch.Tensor, reward_rejected: torch.Tensor, margin: torch.Tensor | None = None
) -> torch.Tensor:
    """Pairwise reward-model loss (Bradley-Terry): L = −log σ(r(x,y_c) − r(x,y_r) − m), per example.

    ``m`` is an optional per-pair margin (Llama-2 style); 0 when None."""
    diff = reward_chosen - reward_rejected
    if margin is not None:
        diff = diff - margin
    return -F.logsigmoid(diff)


def regression_loss(predicted: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Multi-objective reward regression (a regression reward model, Wang et al. 2024): mean squared error over labelled entries,
    L = Σ_(i,j) m_ij (r̂_ij − r_ij)² / Σ m_ij, with m the mask of attributes that carry a label."""
    err = (predicted - target) ** 2
    if mask is None:
        return err.mean()
    mask = mask.to(err.dtype)
    return (err * mask).sum() / mask.sum().clamp(min=1)


def conditional_sft_terms(
    logits: torch.Tensor, targets: torch.Tensor, ref_logits: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-token terms of feedback-conditioned SFT (Abadal Lloret et al. 2024, Eq. 1), at completion positions.

    ``logits`` [M, V] are the policy's at each position, conditioned on the feedback: p_θ(· | f, x, y_<t);
    ``ref_logits`` [M, V] the reference's at the same positions, which sees the prompt *without* feedback:
    p_0(· | x, y_<t). For each position t, over the vocabulary v (fp32):

        nll_t = −log p_θ(y_t | f, x, y_<t)
        kl_t  = Σ_v p_0(v | x, y_<t) [log p_0(v | x, y_<t) − log p_θ(v | f, x, y_<t)]    KL(p_0 ‖ p_θ)
        H_t   = −Σ_v p_θ(v | f, x, y_<t) log p_θ(v | f, x, y_<t)

    Returns (nll, kl, H), each [M]; kl is zero without ``ref_logits``."""
    logp = logits.float().log_softmax(-1)
    nll = -logp.gather(-1, targets[:, None]).squeeze(-1)
    entropy = -(logp.exp() * logp).sum(-1)
    if ref_logits is None:
        return nll, torch.zeros_like(nll), entropy
    ref_logp = ref_logits.float().log_softmax(-1)
    kl = (ref_logp.exp() * (ref_logp - logp)).sum(-1)
    return nll, kl, entropy


def conditional_sft_loss(
    nll: torch.Tensor, kl: torch.Tensor, entropy: torch.Tensor, beta: float, alpha: float
) -> torch.Tensor:
    """Eq. 1 of Abadal Lloret et al. 2024, L = L_NLL + β L_ref + α L_H with L_H = −H, from the per-token terms of
    ``conditional_sft_terms`` over the batch's M completion tokens, as a token mean (the paper writes
    expectations over (x, y, f); its code averages the per-token sum under the completion mask, as we do):

        L = (1/M) Σ_t [ nll_t + β kl_t − α H_t ]"""
    return (nll + beta * kl - alpha * entropy).mean() if nll.numel() else nll.sum()
