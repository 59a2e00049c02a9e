"""The steering verdict (``SweepResult.follows_weight``): it passes a sweep whose attributes follow their heads'
weights beyond noise, and fails the same sweep with the heads swapped, with the weights ignored, or with an
effect inside its interval."""

import numpy as np
import pytest

from zoo.preference import interpolation_grid
from zoo.steering import SweepResult, steering_sweep

ATTRS = ["verbosity", "sentiment"]
GRID = interpolation_grid(ATTRS, "verbosity", "sentiment", 5)  # λ on verbosity: 1, 0.75, ... 0


def sweep(verbosity_slope: float, sentiment_slope: float, noise: float = 1.0, prompts: int = 16) -> SweepResult:
    """Per-prompt scores = slope · λ + a prompt's own level + noise."""
    rng = np.random.default_rng(0)
    lam = np.array([p.weights[0] for p in GRID])[:, None]
    level = rng.normal(0, 5, size=(1, prompts))
    return SweepResult("verbosity", GRID, {
        "verbosity": 40 + verbosity_slope * lam + level + rng.normal(0, noise, (len(GRID), prompts)),
        "sentiment": sentiment_slope * (1 - lam) + 0.1 * level + rng.normal(0, noise / 10, (len(GRID), prompts)),
    })


def test_a_sweep_that_follows_its_weights_passes():
    good = sweep(verbosity_slope=20, sentiment_slope=0.5)
    assert good.follows_weight("verbosity") and good.follows_weight("sentiment")
    assert "follows its weight" in "\n".join(good.verdicts())


def test_swapped_heads_fail():
    good = sweep(verbosity_slope=20, sentiment_slope=0.5)
    swapped = SweepResult("verbosity", GRID, {a: v[::-1] for a, v in good.scores.items()})  # (1,0) acts as (0,1)
    assert not swapped.follows_weight("verbosity") and not swapped.follows_weight("sentiment")
    assert "does NOT follow its weight" in "\n".join(swapped.verdicts())


def test_ignored_weights_fail():
    constant = sweep(verbosity_slope=20, sentiment_slope=0.5)
    constant.scores = {a: np.repeat(v[:1], len(GRID), axis=0) for a, v in constant.scores.items()}
    assert np.isnan(constant.spearman("verbosity"))
    assert not constant.follows_weight("verbosity") and not constant.follows_weight("sentiment")


def test_a_monotone_effect_within_noise_fails():
    # a small steady trend (ρ = 1) under per-prompt noise of ±3 (mean 0 at every point, other signs at the end)
    lam = np.array([p.weights[0] for p in GRID])[:, None]
    flip = np.tile(3.0 * (-1.0) ** np.arange(16), (len(GRID), 1))
    flip[-1] = 3.0 * (-1.0) ** (np.arange(16) // 2)
    weak = SweepResult("verbosity", GRID, {"verbosity": 40 + 0.5 * lam + flip, "sentiment": 0.5 * (1 - lam) + flip})
    for attr in ATTRS:
        assert abs(weak.spearman(attr)) == pytest.approx(1.0)
        assert not weak.beyond_noise(attr) and not weak.follows_weight(attr)


def test_a_side_measure_has_no_verdict():
    with pytest.raises(ValueError, match="not one of the two swept attributes"):
        sweep(20, 0.5).follows_weight("words")


def test_steering_sweep_scores_each_point_and_writes_the_figure(tmp_path):
    texts = {p: [" ".join(["word"] * int(1 + 10 * p.weights[0]))] * 4 for p in GRID}
    result = steering_sweep(lambda p: texts[p], GRID, "verbosity", ["q"] * 4, [], n=1)
    np.testing.assert_array_equal(result.means("words"), [11, 8, 6, 3, 1])
    png = result.write(tmp_path)
    assert png.exists() and png.stat().st_size > 0
    assert {"sweep.md", "sweep.csv"} <= {p.name for p in tmp_path.iterdir()}
