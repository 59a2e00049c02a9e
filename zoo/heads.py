"""Heads that read a trunk's hidden state.

``ValueHead`` maps the hidden state of a sequence's last token to ``k`` outputs: k = 1 is the
Bradley-Terry reward model's scalar; k > 1 is a multi-objective regression reward model (DPA) or one
score per attribute, with the output names kept beside the weights.
"""

from __future__ import annotations

import torch
from torch import nn


class ValueHead(nn.Module):
    """Linear map hidden -> k named outputs. Zero-initialised bias, small weights: rewards start near 0."""

    def __init__(self, hidden_size: int, names: list[str] | None = None, dropout: float = 0.0):
        super().__init__()
        self.names = list(names or ["reward"])
        if len(set(self.names)) != len(self.names):
            raise ValueError(f"ValueHead output names must be unique, got {self.names}")
        self.dropout = nn.Dropout(dropout)
        self.linear = nn.Linear(hidden_size, len(self.names))
        nn.init.normal_(self.linear.weight, std=1.0 / (hidden_size + 1))
        nn.init.zeros_(self.linear.bias)

    @property
    def k(self) -> int:
        return len(self.names)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """[N, H] -> [N, k] (fp32, whatever the trunk's precision)."""
        return self.linear(self.dropout(hidden).to(self.linear.weight.dtype)).float()
