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
