"""Heads that read a trunk's hidden state.

``ValueHead`` maps the hidden state of a sequence's last token to ``k`` outputs: k = 1 is the
Bradley-Terry reward model's scalar; k > 1 is a multi-objective regression reward model or one
score per attribute, with the output names kept beside the weights.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn


class ValueHead(nn.Module):
    """Linear map hidden -> k named outputs. Small weights and a zero bias: rewards start near 0.

    ``bias``: a pairwise (Bradley-Terry) loss sees only reward differences, in which a bias cancels: it
    would never receive a gradient, so the pairwise reward model has none. Regression targets need it."""

    def __init__(self, hidden_size: int, names: list[str] | None = None, dropout: float = 0.0, bias: bool = True):
        super().__init__()
        self.names = list(names or ["reward"])
        if len(set(self.names)) != len(self.names):
            raise ValueError(f"ValueHead output names must be unique, got {self.names}")
        self.dropout = nn.Dropout(dropout)
        self.linear = nn.Linear(hidden_size, len(self.names), bias=bias)
        nn.init.normal_(self.linear.weight, std=1.0 / (hidden_size + 1))
        if bias:
            nn.init.zeros_(self.linear.bias)

    @property
    def k(self) -> int:
        return len(self.names)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """[N, H] -> [N, k] (fp32, whatever the trunk's precision)."""
        return self.linear(self.dropout(hidden).to(self.linear.weight.dtype)).float()


class AttributeClassHead(nn.Module):
    """One ``num_classes``-way classifier per named attribute (an attribute prediction model with
    Likert classes, Manyika 2024 §5.3.1): hidden [N, H] -> logits [N, k, C].

    One linear map to k·C outputs, read as k independent blocks of C: the same thing as k separate
    heads, in one matmul. Small weights and zero bias, so every class starts near-uniform.
    """

    def __init__(self, hidden_size: int, names: list[str], num_classes: int = 5, dropout: float = 0.0):
        super().__init__()
        self.names, self.num_classes = list(names), num_classes
        if not self.names or len(set(self.names)) != len(self.names):
            raise ValueError(f"AttributeClassHead needs unique attribute names, got {self.names}")
        if num_classes < 2:
            raise ValueError(f"AttributeClassHead needs at least 2 classes, got {num_classes}")
        self.dropout = nn.Dropout(dropout)
        self.linear = nn.Linear(hidden_size, len(self.names) * num_classes)
        nn.init.normal_(self.linear.weight, std=1.0 / (hidden_size + 1))
        nn.init.zeros_(self.linear.bias)

    @property
    def k(self) -> int:
        return len(self.names)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """[N, H] -> [N, k, C] (fp32, whatever the trunk's precision)."""
        out = self.linear(self.dropout(hidden).to(self.linear.weight.dtype)).float()
        return out.view(hidden.shape[0], self.k, self.num_classes)


# ---- heads saved beside a save_pretrained directory ------------------------------------------------------
def save_head(head: nn.Module, directory: str | Path, weights_file: str, meta_file: str, meta: dict) -> None:
    """``head``'s weights as safetensors plus a JSON of what it is, next to the trunk's HF files."""
    directory = Path(directory)
    save_file({k: v.detach().cpu().contiguous() for k, v in head.state_dict().items()}, str(directory / weights_file))
    (directory / meta_file).write_text(json.dumps(meta, indent=2))


def load_saved_head(head: nn.Module, directory: str | Path, weights_file: str, meta_file: str,
                    expected: dict) -> bool:
    """Reload ``head`` from a directory written by ``save_head``, if it holds one (False if not); a head saved
    for other settings (``expected``'s keys differ from the saved JSON) is refused naming both."""
    directory = Path(directory)
    if not (directory / weights_file).exists():
        return False
    meta = json.loads((directory / meta_file).read_text())
    differs = {k: (meta.get(k), v) for k, v in expected.items() if meta.get(k) != v}
    if differs:
        raise ValueError(f"{directory} holds a {weights_file} saved for other settings: "
                         + ", ".join(f"{k} saved {a!r}, the config asks for {b!r}" for k, (a, b) in differs.items()))
    head.load_state_dict(load_file(str(directory / weights_file)))
    return True
