"""Golden tests for CMPO's conditioned pairs (Eq. 3.2, A.1, A.2) on hand-made score tables."""

import pytest

from lightning_modules.cmpo_pairs import conditioned_pairs, count_conditions, prompt_pairs
from zoo.records import PreferencePair, ScoredResponse

ATTRS = ["help", "verb"]
#            help verb
# y0:         3    1
# y1:         1    4
# y2:         2    1      (ties y0 on verb)
SCORES = [{"help": 3, "verb": 1}, {"help": 1, "verb": 4}, {"help": 2, "verb": 1}]
RESP = ["y0", "y1", "y2"]


def by_condition(pairs):
    return {p.condition: p for p in pairs}


def test_power_set_ties_excluded_and_max_margin():
    pairs = by_condition(conditioned_pairs(RESP, SCORES, ATTRS, "power_set"))
    # help: y0 beats y1 (margin 2), y0 beats y2 (1), y2 beats y1 (1) -> (y0, y1)
    assert (pairs[("help",)].chosen, pairs[("help",)].rejected, pairs[("help",)].margin) == ("y0", "y1", 2)
    # verb: y1 beats y0 (3) and y2 (3): tie on margin -> first in response order (y1, y0); y0 vs y2 tie excluded
    assert (pairs[("verb",)].chosen, pairs[("verb",)].rejected) == ("y1", "y0")
    # no pair wins on both attributes -> no {help, verb} condition
    assert set(pairs) == {("help",), ("verb",)}
    assert pairs[("help",)].weights == (1.0, 0.0) and pairs[("verb",)].weights == (0.0, 1.0)


def test_power_set_includes_joint_condition_with_uniform_weights():
    scores = [{"help": 4, "verb": 3}, {"help": 1, "verb": 1}]
    pairs = by_condition(conditioned_pairs(["a", "b"], scores, ATTRS, "power_set"))
    assert set(pairs) == {("help",), ("verb",), ("help", "verb")}
    joint = pairs[("help", "verb")]
    assert joint.weights == (0.5, 0.5) and joint.margin == 5 and (joint.chosen, joint.rejected) == ("a", "b")
    assert count_conditions(pairs.values()) == {"help": 1, "verb": 1, "help+verb": 1}


def test_one_hot_keeps_singletons_only():
    scores = [{"help": 4, "verb": 3}, {"help": 1, "verb": 1}]
    pairs = conditioned_pairs(["a", "b"], scores, ATTRS, "one_hot")
    assert sorted(p.condition for p in pairs) == [("help",), ("verb",)]


def test_negative_weights_a1():
    pairs = by_condition(conditioned_pairs(RESP, SCORES, ATTRS, "negative"))
    # (y0 ≻ y1) on help; y1 beats y0 on verb (the opposite preference) -> λ_verb = -1
    assert pairs[("help",)].weights == (1.0, -1.0)
    assert pairs[("verb",)].weights == (-1.0, 1.0)


def test_rating_ratio_a2_and_zero_rating():
    scales = {"help": (0, 4), "verb": (0, 4)}
    scores = [{"help": 3, "verb": 2}, {"help": 0, "verb": 1}]
    pairs = by_condition(conditioned_pairs(["a", "b"], scores, ATTRS, "rating_ratio", scales, ratio_offset=0.25))
    # n = score / 4; λ = (n_c + δ) / (n_r + δ) / |S|
    assert pairs[("help",)].weights[0] == pytest.approx((0.75 + 0.25) / (0 + 0.25))
    assert pairs[("help", "verb")].weights == pytest.approx(((1.0 / 0.25) / 2, ((0.5 + 0.25) / (0.25 + 0.25)) / 2))
    with pytest.raises(ValueError, match="ratio_offset > 0"):
        conditioned_pairs(["a", "b"], scores, ATTRS, "rating_ratio", scales, ratio_offset=0.0)
    # δ = 0 is the printed ratio for 0-based scales
    p = by_condition(conditioned_pairs(["a", "b"], [{"help": 3, "verb": 2}, {"help": 1, "verb": 1}], ATTRS,
                                       "rating_ratio", scales, ratio_offset=0.0))
    assert p[("help",)].weights[0] == pytest.approx(3.0)


def test_pairwise_attribute_labels():
    x = [{"role": "user", "content": "q"}]
    recs = [PreferencePair(prompt=x, chosen="safe", rejected="helpful", attribute="safety"),
            PreferencePair(prompt=x, chosen="helpful", rejected="safe", attribute="helpfulness")]
    pairs = by_condition(prompt_pairs(recs, ["helpfulness", "safety"]))
    assert set(pairs) == {("helpfulness",), ("safety",)}
    assert (pairs[("safety",)].chosen, pairs[("safety",)].weights) == ("safe", (0.0, 1.0))
    assert (pairs[("helpfulness",)].chosen, pairs[("helpfulness",)].weights) == ("helpful", (1.0, 0.0))
    # both labels agree -> the joint condition too
    agree = [PreferencePair(prompt=x, chosen="good", rejected="bad", attribute=a) for a in ("safety", "helpfulness")]
    assert set(by_condition(prompt_pairs(agree, ["helpfulness", "safety"]))) == {
        ("helpfulness",), ("safety",), ("helpfulness", "safety")}


def test_scored_records():
    x = [{"role": "user", "content": "q"}]
    scales = {"help": (0, 4), "verb": (0, 4)}
    recs = [ScoredResponse(prompt=x, response=r, scores=s, scales=scales) for r, s in zip(RESP, SCORES)]
    assert {p.condition for p in prompt_pairs(recs, ATTRS)} == {("help",), ("verb",)}


def test_tradeoffs_only_keeps_pairs_that_trade_attributes_off():
    #       help verb
    # y0:    4    1     y0 vs y2: wins help, ties verb (one-sided, the largest help margin)
    # y1:    3    4     y1 vs y2: wins both (one-sided); y0 vs y1: a trade-off
    # y2:    0    1
    scores = [{"help": 4, "verb": 1}, {"help": 3, "verb": 4}, {"help": 0, "verb": 1}]
    every = by_condition(conditioned_pairs(RESP, scores, ATTRS, "power_set"))
    assert (every[("help",)].chosen, every[("help",)].rejected) == ("y0", "y2")
    assert ("help", "verb") in every
    kept = by_condition(conditioned_pairs(RESP, scores, ATTRS, "power_set", tradeoffs_only=True))
    assert set(kept) == {("help",), ("verb",)}  # a trade-off pair never wins on both attributes
    assert (kept[("help",)].chosen, kept[("help",)].rejected) == ("y0", "y1")
    assert (kept[("verb",)].chosen, kept[("verb",)].rejected) == ("y1", "y0")


def test_min_margin_makes_small_differences_ties():
    #       help  verb
    # a:    0.50   10
    # b:    0.45    2      help differs by 0.05 (noise under min_margin 0.1), verb by 8
    scores = [{"help": 0.5, "verb": 10}, {"help": 0.45, "verb": 2}]
    every = by_condition(conditioned_pairs(["a", "b"], scores, ATTRS, "one_hot"))
    assert set(every) == {("help",), ("verb",)}
    kept = by_condition(conditioned_pairs(["a", "b"], scores, ATTRS, "one_hot", min_margin={"help": 0.1}))
    assert set(kept) == {("verb",)} and (kept[("verb",)].chosen, kept[("verb",)].rejected) == ("a", "b")
    # the floor is exclusive of the margin itself and applies per attribute: verb 8 > 7.9 stays, > 8 goes
    assert {("verb",)} == set(by_condition(conditioned_pairs(["a", "b"], scores, ATTRS, "one_hot",
                                                               min_margin={"verb": 7.9, "help": 0.1})))
    assert conditioned_pairs(["a", "b"], scores, ATTRS, "one_hot", min_margin={"verb": 8, "help": 0.1}) == []
    # a within-margin loss is no loss: with help tied, (a, b) no longer trades off
    scores = [{"help": 0.45, "verb": 10}, {"help": 0.5, "verb": 2}]
    assert conditioned_pairs(["a", "b"], scores, ATTRS, "power_set", tradeoffs_only=True)
    assert not conditioned_pairs(["a", "b"], scores, ATTRS, "power_set", tradeoffs_only=True, min_margin={"help": 0.1})
