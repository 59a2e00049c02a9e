"""One steering interface for every method: a ``Preference`` value and the ``Steerable`` protocol.

A user steers any steerable model the same way, by weights per attribute name::

    python train.py predict --config configs/cmpo.yaml --ckpt_path last --steer '{"verbosity": 1}'

and the server's ``steer`` request field, the steering sweep and the judge all go through the same two
pieces. What a weight *means* is the method's business: a plural model mixes its heads' logits with them, a
control-token model picks or interpolates its controls, a ratings-conditioned model writes them into its
ratings line (textual feedback, a direction in reward space and merge weights come next). Methods that cannot
be steered have no attributes and refuse any preference with a clear message.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch


class PreferenceError(ValueError):
    """A preference that does not fit the model: unknown attributes, bad weights, malformed input."""


@dataclass(frozen=True)
class Preference:
    """Weights by attribute name, validated against a model's attributes; missing attributes weigh 0.

    Build one with ``Preference.parse(value, attributes)``: ``value`` is a mapping, a JSON object string, or
    another ``Preference``. Negative weights and an all-zero vector are refused unless the method allows
    them (``allow_negative`` / ``allow_zero``); ``max_weight`` bounds weights from above (ratings on a fixed scale).
    """

    attributes: tuple[str, ...]
    weights: tuple[float, ...]

    @classmethod
    def parse(
        cls,
        value: Preference | Mapping[str, Any] | str,
        attributes: Sequence[str],
        *,
        allow_negative: bool = False,
        allow_zero: bool = False,
        max_weight: float | None = None,
    ) -> Preference:
        attributes = tuple(attributes)
        if not attributes:
            raise PreferenceError("this model is not steerable (it has no attributes); drop the steer setting")
        if isinstance(value, Preference):
            value = value.as_dict()
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError as e:
                raise PreferenceError(f"steer: not a JSON object of attribute weights: {value!r} ({e.msg})") from None
        if not isinstance(value, Mapping) or not value:
            raise PreferenceError(f"steer: expected a non-empty mapping attribute -> weight, got {value!r}; "
                                  f"attributes: {list(attributes)}")
        unknown = sorted(str(k) for k in value if k not in attributes)
        if unknown:
            raise PreferenceError(f"steer: unknown attribute(s) {unknown}; this model steers {list(attributes)}")
        weights = []
        for name in attributes:
            w = value.get(name, 0.0)
            if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w):
                raise PreferenceError(f"steer: the weight of {name!r} must be a finite number, got {w!r}")
            weights.append(float(w))
        if not allow_negative and any(w < 0 for w in weights):
            raise PreferenceError(f"steer: negative weights {dict(value)} are not allowed for this model")
        if max_weight is not None and any(w > max_weight for w in weights):
            raise PreferenceError(f"steer: weights above {max_weight:g} are not allowed for this model: {dict(value)}")
        if not allow_zero and not any(weights):
            raise PreferenceError(f"steer: all weights are zero ({dict(value)}); give at least one attribute a weight")
        return cls(attributes, tuple(weights))

    @classmethod
    def uniform(cls, attributes: Sequence[str]) -> Preference:
        return cls(tuple(attributes), tuple(1.0 / len(attributes) for _ in attributes))

    @classmethod
    def one_hot(cls, attributes: Sequence[str], name: str) -> Preference:
        return cls.parse({name: 1.0}, attributes)

    def as_dict(self) -> dict[str, float]:
        return dict(zip(self.attributes, self.weights))

    def vector(self) -> torch.Tensor:
        """The weights in attribute order, float32 [k]."""
        return torch.tensor(self.weights, dtype=torch.float32)

    def label(self) -> str:
        """Short name for tables and plots, e.g. ``verbosity=0.75,sentiment=0.25``."""
        return ",".join(f"{a}={w:g}" for a, w in zip(self.attributes, self.weights))


def interpolation_grid(attributes: Sequence[str], a: str, b: str, points: int) -> list[Preference]:
    """``points`` preferences from all weight on ``a`` to all on ``b`` (λ = 1 … 0 on ``a``), for sweeps."""
    if points < 2:
        raise ValueError(f"a steering grid needs at least 2 points, got {points}")
    grid = []
    for i in range(points):
        lam = 1.0 - i / (points - 1)
        grid.append(Preference.parse({a: lam, b: 1.0 - lam}, attributes))
    return grid


@runtime_checkable
class Steerable(Protocol):
    """A model whose output follows a user's ``Preference``.

    - ``attributes``: the names ``steer`` accepts (empty for an unsteerable model);
    - ``preference(value)``: ``value`` validated into a ``Preference`` (clear error otherwise);
    - ``steer(preference)``: a context manager; inside it, generation (``generate``) and log-probs
      (``sequence_logprobs``) follow ``preference``;
    - ``generate(prompt_ids, settings)``: samples under the current steering (``zoo.sampling.Samples``).
    """

    attributes: list[str]

    def preference(self, value: Preference | Mapping[str, Any] | str | None) -> Preference | None: ...

    def steer(self, preference: Preference | Mapping[str, Any] | str | None) -> AbstractContextManager: ...

    def generate(self, prompt_ids: Sequence[Sequence[int]], settings: Any = None) -> Any: ...
