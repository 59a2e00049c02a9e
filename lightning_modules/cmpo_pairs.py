"""CMPO's conditioned preference pairs D_{≻;A;Λ} (thesis §3.2.2, §5.1.1, Eq. 3.2; App. A.3).

From the scored responses of one prompt: for every ordered pair (y, y′), A_≻ is the set of attributes on
which y *strictly* beats y′ (ties are not preferences); every non-empty subset S ⊆ A_≻ is a condition
under which y ≻ y′ is valid. Per (prompt, S) the pair with the greatest net margin
Σ_{a∈S} (φ_a(y) − φ_a(y′)) is kept (ties broken by response order). Weights Λ per rule:

- ``power_set`` (Eq. 3.2, default): λ_a = 1/|S| for a ∈ S, 0 elsewhere.
- ``one_hot``: only singleton conditions S = {a}, λ_a = 1.
- ``negative`` (Eq. A.1): λ_a = 1/|S| on S and −1/|S̄| on S̄, the attributes on which y′ beats y (the
  "opposite pairwise preference"). The printed equation has no minus sign although the text calls these
  negative weights; we use the sign.
- ``rating_ratio`` (Eq. A.2): λ_a = ((n_a(y) + δ) / (n_a(y′) + δ)) / |S| on S, with n the score
  normalised to [0, 1] by its declared scale. δ (``ratio_offset``) keeps a zero rating from dividing
  by zero (the thesis leaves this open); δ = 0 gives the printed ratio for 0-based scales.

``min_margin`` (per attribute, default 0) makes a difference of at most that size a tie: with noisy scorers (VADER
moves by a few hundredths between two near-identical replies) a tiny difference is not a preference, and training a
head on it only adds noise (an option of ours; the thesis uses every strict difference of its integer ratings).

``tradeoffs_only`` keeps only the response pairs that trade attributes off (y beats y′ on some attribute and y′
beats y on another). Those are the pairs that tell the heads apart: a pair on which one response wins everything
trains every head of its conditions the same way (an option of ours, not the thesis's; the embedded demo uses it).

Pairwise data with per-attribute labels (PKU-SafeRLHF: helpfulness, safety) enters as pseudo-scores:
for each labelled attribute the preferred response scores 1 and the other 0, per response pair.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import combinations
from typing import Literal

from zoo.records import PreferencePair, Record, ScoredResponse

Weighting = Literal["power_set", "one_hot", "negative", "rating_ratio"]
WEIGHTINGS = ("power_set", "one_hot", "negative", "rating_ratio")


@dataclass(frozen=True)
class ConditionedPair:
    chosen: str
    rejected: str
    condition: tuple[str, ...]  # S, in attribute order
    weights: tuple[float, ...]  # Λ over all k attributes
    margin: float


def _subsets(wins: Sequence[str], one_hot: bool) -> Iterable[tuple[str, ...]]:
    sizes = [1] if one_hot else range(1, len(wins) + 1)
    for size in sizes:
        yield from combinations(wins, size)


def conditioned_pairs(
    responses: Sequence[str],
    scores: Sequence[dict[str, float]],
    attributes: Sequence[str],
    weighting: Weighting = "power_set",
    scales: dict[str, tuple[float, float]] | None = None,
    ratio_offset: float = 0.25,
    tradeoffs_only: bool = False,
    min_margin: dict[str, float] | None = None,
) -> list[ConditionedPair]:
    """D_{≻;A;Λ} for one prompt's responses and their per-attribute scores (see the module docstring)."""
    if weighting not in WEIGHTINGS:
        raise ValueError(f"unknown CMPO weighting {weighting!r}; expected one of {WEIGHTINGS}")
    floor = {a: float((min_margin or {}).get(a, 0.0)) for a in attributes}

    def beats(x: dict[str, float], y: dict[str, float], a: str) -> bool:
        return x[a] - y[a] > floor[a]
    best: dict[tuple[str, ...], tuple[float, int, int]] = {}
    for i, j in ((i, j) for i in range(len(responses)) for j in range(len(responses)) if i != j):
        if responses[i] == responses[j]:
            continue
        labelled = [a for a in attributes if a in scores[i] and a in scores[j]]
        wins = [a for a in labelled if beats(scores[i], scores[j], a)]
        if tradeoffs_only and not any(beats(scores[j], scores[i], a) for a in labelled):
            continue
        for s in _subsets(wins, one_hot=weighting == "one_hot"):
            margin = sum(scores[i][a] - scores[j][a] for a in s)
            if s not in best or margin > best[s][0]:
                best[s] = (margin, i, j)
    pairs = []
    for s, (margin, i, j) in best.items():
        weights = {a: 1.0 / len(s) for a in s}
        if weighting == "negative":
            losses = [a for a in attributes if a in scores[i] and a in scores[j] and beats(scores[j], scores[i], a)]
            weights.update({a: -1.0 / len(losses) for a in losses})
        elif weighting == "rating_ratio":
            if scales is None:
                raise ValueError("rating_ratio weighting needs the scores' declared scales")

            def norm(a: str, v: float) -> float:
                lo, hi = scales[a]
                return (v - lo) / (hi - lo)

            if any(norm(a, scores[j][a]) + ratio_offset <= 0 for a in s):
                raise ValueError(f"rating_ratio: the rejected rating is 0 on {s}: set ratio_offset > 0")
            weights = {a: (norm(a, scores[i][a]) + ratio_offset) / (norm(a, scores[j][a]) + ratio_offset) / len(s)
                       for a in s}
        pairs.append(ConditionedPair(responses[i], responses[j], s, tuple(weights.get(a, 0.0) for a in attributes),
                                     margin))
    return sorted(pairs, key=lambda p: [attributes.index(a) for a in p.condition])


def _pairwise_scores(pairs: Sequence[PreferencePair]) -> list[tuple[list[str], list[dict[str, float]]]]:
    """Per unordered response pair: both responses and pseudo-scores (winner 1, loser 0 per attribute)."""
    groups: dict[frozenset, tuple[list[str], list[dict[str, float]]]] = {}
    for p in pairs:
        if p.attribute is None:
            raise ValueError("CMPO on pairwise data needs each preference pair's 'attribute' (e.g. helpfulness)")
        key = frozenset((p.chosen, p.rejected))
        responses, scores = groups.setdefault(key, ([p.chosen, p.rejected], [{}, {}]))
        winner = responses.index(p.chosen)
        scores[winner][p.attribute], scores[1 - winner][p.attribute] = 1.0, 0.0
    return list(groups.values())


def prompt_pairs(
    records: Sequence[Record],
    attributes: Sequence[str],
    weighting: Weighting = "power_set",
    ratio_offset: float = 0.25,
    tradeoffs_only: bool = False,
    min_margin: dict[str, float] | None = None,
) -> list[ConditionedPair]:
    """Conditioned pairs of one prompt's records: scored responses, or attribute-labelled pairs."""
    if all(isinstance(r, ScoredResponse) for r in records):
        scales: dict[str, tuple[float, float]] = {}
        for r in records:
            scales.update(r.scales)
        if not set(attributes) & {a for r in records for a in r.scores}:
            return []  # e.g. an OASST prompt in a HelpSteer + OASST mixture (all-empty data still fails later)
        return conditioned_pairs([r.response for r in records], [r.scores for r in records], attributes, weighting,
                                 scales, ratio_offset, tradeoffs_only, min_margin)
    if all(isinstance(r, PreferencePair) for r in records):
        if weighting == "rating_ratio":
            raise ValueError("rating_ratio weighting needs scalar ratings; pairwise data has none")
        seen: dict[tuple[str, ...], ConditionedPair] = {}
        for responses, scores in _pairwise_scores(records):
            for p in conditioned_pairs(responses, scores, attributes, weighting, tradeoffs_only=tradeoffs_only):
                seen.setdefault(p.condition, p)  # binary labels: every margin ties, keep the first pair
        return list(seen.values())
    raise ValueError("CMPO needs scored responses or attribute-labelled preference pairs for each prompt")


def count_conditions(pairs: Iterable[ConditionedPair]) -> Counter:
    """How many conditioned samples each condition S produced (reported before training)."""
    return Counter("+".join(p.condition) for p in pairs)
