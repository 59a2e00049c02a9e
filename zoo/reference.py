"""Cached reference log-probs: computed once per (data, reference), kept in memory, on disk and in checkpoints.

Preference losses of the direct-preference family compare the policy with a fixed reference π_ref on every example. Running π_ref every
step costs a second forward (and, without LoRA, a second model in memory); its log-probs never change,
so ``ReferenceCache`` computes them once for every example of a split, before they are needed, and looks
them up by example index afterwards.

The cache knows nothing about methods or datasets: a method gives it a batch iterator over *all* examples
of a split (the DataModule's public ``loader(split, all_examples=True)``), a key naming the data and the
reference (the DataModule's ``fingerprint(split)`` plus the reference's identity), and a function that
computes a batch's reference log-probs. Which model that function runs is the method's responsibility and
must always be the reference, never a policy that has trained (``lightning_modules.dpo``).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

Batch = dict[str, torch.Tensor]


def default_cache_dir() -> Path:
    """``$STEERZOO_REF_CACHE``, else ``~/.cache/steerzoo/ref_logps``: a cache shared by runs, like the datasets cache."""
    return Path(os.environ.get("STEERZOO_REF_CACHE", Path.home() / ".cache" / "steerzoo" / "ref_logps"))


def cache_key(*parts: str) -> str:
    return hashlib.sha1("|".join(parts).encode()).hexdigest()[:16]


class ReferenceCache:
    """Per-split tensors [N, C]: the reference's summed completion log-probs of example ``idx``'s C completions.

    Args:
        cache_dir: where finished tables are also written as ``ref-<key>.pt`` (atomically), so a second run on
            the same data and reference pays nothing; ``None`` keeps them in memory and checkpoints only.
    """

    def __init__(self, cache_dir: str | Path | None = None):
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.logps: dict[str, torch.Tensor] = {}
        self.keys: dict[str, str] = {}

    def has(self, split: str, key: str, num_examples: int) -> bool:
        """True when ``split`` is cached for exactly this data and reference (memory, then disk)."""
        if self.keys.get(split) == key and self.logps[split].shape[0] == num_examples:
            return True
        path = self._path(key)
        if path is not None and path.exists():
            table = torch.load(path, weights_only=True)
            if table.shape[0] == num_examples:
                self.logps[split], self.keys[split] = table, key
                return True
        return False

    def fill(
        self,
        split: str,
        key: str,
        num_examples: int,
        batches: Iterable[Batch],
        compute: Callable[[Batch], torch.Tensor],
        completions: int = 2,
        show_progress: bool = True,
        write: bool = True,
    ) -> torch.Tensor:
        """Compute the table from ``batches`` (every example once; ``compute(batch)`` -> [C*B] completion-major
        log-probs) and keep it under ``key``. ``write``: also store it on disk (rank zero only)."""
        table = torch.full((num_examples, completions), float("nan"))
        for batch in tqdm(batches, desc=f"reference log-probs ({split})", disable=not show_progress):
            logps = compute(batch).detach().float().cpu()
            idx = batch["idx"].cpu()
            table[idx] = logps.view(completions, -1).T
        missing = torch.isnan(table).any(-1).nonzero().flatten()
        if len(missing):
            raise RuntimeError(f"reference log-probs ({split}): examples {missing[:5].tolist()} were never computed "
                               f"(the loader must yield every example of the split once)")
        self.logps[split], self.keys[split] = table, key
        path = self._path(key)
        if write and path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            torch.save(table, tmp)
            tmp.replace(path)  # atomic: a crash never leaves a half-written cache
        return table

    def lookup(self, split: str, idx: torch.Tensor) -> torch.Tensor:
        """[B, C] reference log-probs of examples ``idx``."""
        if split not in self.logps:
            raise KeyError(f"reference log-probs for '{split}' were never computed")
        return self.logps[split][idx.cpu()]

    def state_dict(self) -> dict[str, Any]:
        return {split: (self.keys[split], table) for split, table in self.logps.items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for split, (key, table) in state.items():
            self.logps[split], self.keys[split] = table, key

    def _path(self, key: str) -> Path | None:
        return self.cache_dir / f"ref-{key}.pt" if self.cache_dir is not None else None
