"""Metrics that survive a resume, and per-example held-out metrics (the run summary)."""

from __future__ import annotations

import torch
from torchmetrics.aggregation import MeanMetric


class ResumableMean(MeanMetric):
    """A weighted running mean whose state goes into checkpoints (torchmetrics keeps metric state out of the
    ``state_dict`` by default), so an epoch mean logged after a mid-epoch resume covers the whole epoch.
    A restored state counts as updated: computing it is not a "compute before update" mistake."""

    def __init__(self) -> None:
        super().__init__()
        self.persistent(True)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        if float(self.weight) > 0:
            self._update_count = max(self._update_count, 1)


def pairwise_accuracy(chosen: torch.Tensor, rejected: torch.Tensor, tie_tolerance: float = 1e-4) -> torch.Tensor:
    """Per pair: 1 when ``chosen`` scores above ``rejected``, 0 below, ½ for a tie (|difference| ≤
    ``tie_tolerance``). Ties count half, so a model that cannot tell the two apart (an untrained DPO
    policy, whose implicit rewards are both 0) scores 0.5, not 0."""
    diff = chosen.float() - rejected.float()
    return torch.where(diff.abs() <= tie_tolerance, torch.full_like(diff, 0.5), (diff > 0).float())
