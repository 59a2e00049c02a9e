"""The plural model's k LM heads, mixed on logits by a weight vector Λ (Manyika 2024, Eq. 3.1):

    P(y | x) = softmax( Σ_j λ_j · h W_jᵀ )

All heads read the trunk's last hidden state h; the mix happens before the softmax. Two
parameterisations of W_j:
- ``copy``: k full copies of the base head, W_j ← W (with Σλ = 1 the untrained plural model equals
  the single-head model exactly);
- ``lowrank``: W_j = W + B_j A_j with B_j = 0 at start (same property), so k heads on a 7B model cost
  k·r·(V + H) parameters instead of k vocabulary matrices; W stays the frozen base head.

When one Λ serves a whole batch or a generation, ``mixed_weight`` fuses the heads once,
W_Λ = Σ_j λ_j W_j, so decoding costs one head.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

HeadInit = Literal["copy", "lowrank"]


class PluralHead(nn.Module):
    def __init__(self, base_head: nn.Linear, names: list[str], init: HeadInit = "copy", rank: int = 8):
        super().__init__()
        if not names or len(set(names)) != len(names):
            raise ValueError(f"plural heads need unique attribute names, got {names}")
        if getattr(base_head, "bias", None) is not None:
            raise ValueError("PluralHead supports LM heads without bias (all current causal LMs)")
        self.names, self.init = list(names), init
        weight = base_head.weight.detach()
        k, (vocab, hidden) = len(names), weight.shape
        if init == "copy":
            self.weight = nn.Parameter(weight.clone().float().unsqueeze(0).repeat(k, 1, 1))  # [k, V, H]
        elif init == "lowrank":
            self._base = [base_head]  # the model's own head (frozen reference); a list: not registered twice
            self.A = nn.Parameter(torch.randn(k, rank, hidden, generator=torch.Generator().manual_seed(0)) / hidden**0.5)
            self.B = nn.Parameter(torch.zeros(k, vocab, rank))
        else:
            raise ValueError(f"unknown head init {init!r} (expected copy or lowrank)")

    @property
    def k(self) -> int:
        return len(self.names)

    def _base_weight(self) -> torch.Tensor:
        return self._base[0].weight

    def mixed_weight(self, lam: torch.Tensor) -> torch.Tensor:
        """W_Λ = Σ_j λ_j W_j for one weight vector ``lam`` [k] -> [V, H]."""
        lam = lam.to(self.A.dtype if self.init == "lowrank" else self.weight.dtype)
        if self.init == "copy":
            return torch.einsum("k,kvh->vh", lam, self.weight)
        delta = torch.einsum("k,kvr,krh->vh", lam, self.B, self.A)
        return lam.sum() * self._base_weight().to(delta.dtype) + delta

    def forward(self, hidden: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
        """Logits Σ_j λ_mj h_m W_jᵀ for hidden [M, H] and per-row weights ``lam`` [M, k] -> [M, V].

        Computed as one matmul over the stacked heads, (λ ⊗ h) [M, k·H] @ [k·H, V], never k logit tensors.
        """
        if lam.shape != (hidden.shape[0], self.k):
            raise ValueError(f"head weights must have shape [{hidden.shape[0]}, {self.k}], got {list(lam.shape)}")
        lam = lam.to(hidden.dtype)
        if self.init == "copy":
            k, vocab, h = self.weight.shape
            stacked = self.weight.to(hidden.dtype).permute(0, 2, 1).reshape(k * h, vocab)
            return (lam[:, :, None] * hidden[:, None, :]).reshape(hidden.shape[0], -1) @ stacked
        base = (hidden @ self._base_weight().to(hidden.dtype).T) * lam.sum(-1, keepdim=True)
        low = torch.einsum("mh,krh->mkr", hidden, self.A.to(hidden.dtype)) * lam[:, :, None]  # [M, k, r]
        k, vocab, r = self.B.shape
        return base + low.reshape(hidden.shape[0], k * r) @ self.B.to(hidden.dtype).permute(0, 2, 1).reshape(k * r, vocab)

    def head_logits(self, hidden: torch.Tensor, j: int) -> torch.Tensor:
        """Head j alone, h W_jᵀ (for tests and one-hot evaluation)."""
        lam = torch.zeros(hidden.shape[0], self.k, dtype=hidden.dtype, device=hidden.device)
        lam[:, j] = 1
        return self(hidden, lam)
