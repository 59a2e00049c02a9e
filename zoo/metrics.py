"""Metrics that survive a resume."""

from __future__ import annotations

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
