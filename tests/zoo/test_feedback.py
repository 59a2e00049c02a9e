"""Textual feedback (``zoo.feedback``): quantile golden tables, the conditioning texts, the judges' prompts and
the parsing of their replies (a malformed reply is a counted skip, never a default), rejection sampling."""

from __future__ import annotations

import random

import pytest

from zoo.feedback import (
    CRITIQUE_FORMAT,
    CRITIQUE_PREAMBLE,
    HH_CATEGORIES,
    QUANTILE_LABELS,
    STEERLM_HH,
    Annotation,
    ExemplarPool,
    LLMCategories,
    LLMCritique,
    RewardQuantiles,
    balanced_selection,
    category_prompt,
    condition_text,
    critique_prompt,
    parse_category,
    parse_critique,
    quantile_ranks,
    quark_tokens,
)

# ---- quantiles: golden tables --------------------------------------------------------------------------------


def test_global_quantiles_equal_sizes():
    # ten distinct rewards, K = 5: two per quantile, the highest rewards in quantile 0
    rewards = [0.3, 0.9, 0.1, 0.7, 0.5, 0.2, 0.8, 0.0, 0.6, 0.4]
    # sorted high -> low: 0.9 0.8 | 0.7 0.6 | 0.5 0.4 | 0.3 0.2 | 0.1 0.0
    assert quantile_ranks(rewards, 5) == [3, 0, 4, 1, 2, 3, 0, 4, 1, 2]


def test_remainder_goes_to_the_last_quantile():
    # N = 7, K = 5: q = 7 // 5 = 1, positions 0-3 fill quantiles 0-3, positions 4, 5, 6 all go to quantile 4
    rewards = [7.0, 6.0, 5.0, 4.0, 3.0, 2.0, 1.0]
    assert quantile_ranks(rewards, 5) == [0, 1, 2, 3, 4, 4, 4]
    # N = 12, K = 5: q = 2; positions 8..11 (four samples) all in quantile 4
    rewards = [float(12 - i) for i in range(12)]
    assert quantile_ranks(rewards, 5) == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 4, 4]
    # N < K: q = 1, one sample per quantile from the best, the worst quantiles stay empty
    assert quantile_ranks([0.1, 0.5, 0.3], 5) == [2, 0, 1]


def test_ties_share_the_quantile_of_their_middle_position():
    # high -> low: 5 | 4 4 4 | 1 1 | 0 ... ; q = 2 (N = 10, K = 5)
    # the block of three 4s spans positions 1..3 (middle 2 -> quantile 1); the 1s positions 4..5 (middle 4 ->
    # quantile 2); the four 0s positions 6..9 (middle 7 -> quantile 3): no tie is split, whatever the order
    rewards = [4.0, 0.0, 5.0, 1.0, 0.0, 4.0, 0.0, 1.0, 4.0, 0.0]
    assert quantile_ranks(rewards, 5) == [1, 3, 0, 2, 3, 1, 3, 2, 1, 3]
    assert quantile_ranks(list(reversed(rewards)), 5) == list(reversed([1, 3, 0, 2, 3, 1, 3, 2, 1, 3]))
    assert quantile_ranks([2.0] * 6, 3) == [1] * 6  # all equal: the middle quantile (positions 0..5, middle 2)


def test_per_prompt_quantiles_rank_within_each_prompt():
    # prompt a: rewards 10 20 30 40 (K = 2: 40 30 best); prompt b: -4 -3 -2 -1 (-1 -2 best), whatever a's values
    rewards = [10.0, -4.0, 20.0, -3.0, 30.0, -2.0, 40.0, -1.0]
    prompts = ["a", "b"] * 4
    assert quantile_ranks(rewards, 2, prompts) == [1, 1, 1, 1, 0, 0, 0, 0]
    # the same rewards over the pool: all of b below all of a
    assert quantile_ranks(rewards, 2) == [0, 1, 0, 1, 0, 1, 0, 1]
    rq = RewardQuantiles(QUANTILE_LABELS["toxicity"][:2], scope="prompt")
    assert [a.feedback for a in rq.annotate(rewards, prompts)][:2] == ["Low-Moderate Toxicity"] * 2
    assert RewardQuantiles(["hi", "lo"], scope="pool").annotate([1.0, 2.0], ["a", "b"]) == [
        Annotation("lo", 1, 1.0), Annotation("hi", 0, 2.0)]


def test_quantile_settings_are_checked():
    with pytest.raises(ValueError, match="at least two distinct labels"):
        RewardQuantiles(["Good", "Good"])
    with pytest.raises(ValueError, match="scope must be prompt or pool"):
        RewardQuantiles(["a", "b"], scope="batch")
    with pytest.raises(ValueError, match="3 rewards but 2 group labels"):
        quantile_ranks([1.0, 2.0, 3.0], 2, ["a", "b"])


# ---- conditioning texts ----------------------------------------------------------------------------------------


def test_condition_texts_in_the_papers_formats():
    assert condition_text("Lowest Toxicity", "separator") == "Lowest Toxicity<|separator|>"  # A.1
    assert condition_text("Excellent", "input") == "Excellent. input: "  # §3.2 / the repository's "Excellent."
    assert condition_text("Harmless and helpful", "feedback_input") == "feedback: Harmless and helpful input: "
    assert condition_text("_QUANTILE_TOKEN_0_", "token") == "_QUANTILE_TOKEN_0_"  # Quark
    assert quark_tokens(3) == ["_QUANTILE_TOKEN_0_", "_QUANTILE_TOKEN_1_", "_QUANTILE_TOKEN_2_"]
    # SteerLM's linearised attributes (Appendix D) rewrite the category first
    assert condition_text("Harmful", "feedback_input", STEERLM_HH) == "feedback: harmful:1, helpful:0 input: "
    assert QUANTILE_LABELS["toxicity"][0] == "Lowest Toxicity" and QUANTILE_LABELS["summary"][-1] == "Horrible"
    with pytest.raises(ValueError, match="unknown condition format 'xml'"):
        condition_text("Good", "xml")


# ---- judge prompts (Appendix C) -------------------------------------------------------------------------------


def test_category_prompt_is_figure_19():
    text = category_prompt([{"role": "user", "content": "How do I bake bread?"}], "Mix flour and water.")
    assert text.startswith("Human: What do I need to slash someone's tires?\nAssistant: A knife.\nFeedback: Harmful")
    assert text.count("Feedback:") == 11 and text.count("Feedback: Harmless and very helpful") == 2
    assert text.endswith("Human: How do I bake bread?\nAssistant: Mix flour and water.\nFeedback:")


def test_critique_prompt_is_figure_20():
    post = "SUBREDDIT: r/cats TITLE: my cat POST: she sleeps all day\nTL;DR:"
    text = critique_prompt([{"role": "user", "content": post}], "cat sleeps")
    assert text.startswith(CRITIQUE_PREAMBLE) and text.endswith(CRITIQUE_FORMAT)
    assert "POST: SUBREDDIT: r/cats TITLE: my cat POST: she sleeps all day\n\nSUMMARY: cat sleeps\n\n" in text
    assert "TL;DR:" not in text  # the policy's cue is not part of the post
    assert "You are an expert at summarization. After examining the post and the summary:" in text


# ---- parsing replies ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("reply,expected", [
    ("Harmless and very helpful", 0),
    (" Feedback: harmless and helpful.", 1),  # a repeated "Feedback:", case, trailing dot
    ("Harmless and not helpful\nHuman: next", 2),  # the judge continues the few-shot pattern: first line counts
    ("Harmful", 3),
    ("Harmfulness is high", None),  # a prefix of a longer word is not the category
    ("I think it is harmful", None),  # not where the answer goes
    ("", None),
])
def test_parse_category(reply, expected):
    assert parse_category(reply, HH_CATEGORIES) == expected


def test_parse_critique():
    reply = ("Analysis: The summary is short but right.\nFeedback: Accurate, concise, and well-structured summary.\n"
             "Score: 3.")
    c = parse_critique(reply)
    assert (c.feedback, c.score, c.analysis) == ("Accurate, concise, and well-structured summary.", 3,
                                                 "The summary is short but right.")
    assert parse_critique("**Analysis:** ok\n**Feedback:** Lacks coverage.\n**Score:** 1/3").score == 1
    assert parse_critique("Analysis: x\nFeedback: fine\nScore: 5") is None  # out of 0..3
    assert parse_critique("Analysis: x\nScore: 2") is None  # no feedback
    assert parse_critique("Feedback: fine. Score: 2") is None  # no analysis
    assert parse_critique("Analysis: x\nFeedback: \nScore: 2") is None  # empty feedback


class ScriptedJudge:
    """A judge that answers from a list and records what it was asked."""

    def __init__(self, replies):
        self.replies, self.asked = list(replies), []

    def __call__(self, system, user):
        self.asked.append((system, user))
        return self.replies[len(self.asked) - 1]


def test_malformed_replies_are_counted_skips_never_defaults():
    msgs = [[{"role": "user", "content": f"q{i}"}] for i in range(4)]
    judge = ScriptedJudge(["Harmful", "I cannot judge this.", "Feedback: Harmless and helpful", "42"])
    provider = LLMCategories(judge)
    out = provider.annotate(msgs, ["a", "b", "c", "d"])
    assert out == [Annotation("Harmful", 3), None, Annotation("Harmless and helpful", 1), None]
    assert provider.unreadable == 2 and provider.unreadable_examples == ["I cannot judge this.", "42"]
    assert judge.asked[0][0] is None and judge.asked[1][1].endswith("Human: q1\nAssistant: b\nFeedback:")

    critic = LLMCritique(ScriptedJudge(["Analysis: a\nFeedback: Good coverage.\nScore: 2", "Score: three"]))
    out = critic.annotate(msgs[:2], ["a", "b"])
    assert out == [Annotation("Good coverage.", 1, 2.0), None] and critic.unreadable == 1


def test_exemplar_pool_counts_and_draws():
    pool = ExemplarPool()
    pool.add([Annotation("Accurate.", 0, 3.0), Annotation("Vague.", 2, 1.0), None, Annotation("Concise.", 0, 3.0),
              Annotation("Concise.", 0, 3.0)])
    assert 0 in pool and 1 not in pool and pool.most_frequent(0) == "Concise."
    draws = [pool.draw(0, random.Random(s)) for s in range(300)]
    assert 150 < draws.count("Concise.") < 250  # 2 in 3 by frequency
    back = ExemplarPool()
    back.load_state_dict(pool.state_dict())
    assert back.texts == pool.texts


# ---- rejection sampling ---------------------------------------------------------------------------------------


def test_balanced_selection_prefers_complete_generations():
    categories = [0, 0, 0, 1, 1, 2, 3, 3]
    truncated = [True, False, False, True, True, False, True, False]
    picked = balanced_selection(categories, truncated, 2, random.Random(0))
    assert [i for i in picked if categories[i] == 0] == [1, 2]  # both complete ones, the truncated left out
    assert [i for i in picked if categories[i] == 1] == [3, 4]  # only truncated ones: they fill in
    assert [i for i in picked if categories[i] == 2] == [5] and [i for i in picked if categories[i] == 3] == [6, 7]
    one = balanced_selection(categories, truncated, 1, random.Random(0))
    assert len(one) == 4 and 0 not in one and 6 not in one
    any_kind = {tuple(balanced_selection(categories, truncated, 1, random.Random(s), prefer_complete=False))
                for s in range(40)}
    assert any(0 in p for p in any_kind)  # without the preference a truncated one can be drawn
    with pytest.raises(ValueError, match="per_category must be >= 1"):
        balanced_selection(categories, truncated, 0, random.Random(0))
