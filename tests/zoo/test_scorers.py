"""Offline scorers on fixed texts."""

import pytest

from zoo.scorers import CallableScorer, LengthScorer, SentimentScorer, build_scorers, score_all


def test_length_scorer_words_and_chars():
    s = LengthScorer()
    assert s.score(["q", "q"], ["one two three", ""]) == {"verbosity": [3.0, 0.0]}
    assert LengthScorer(unit="chars", max_length=5).score(["q"], ["abcdefgh"]) == {"verbosity": [5.0]}
    with pytest.raises(ValueError, match="unit"):
        LengthScorer(unit="tokens")


def test_sentiment_scorer_orders_texts():
    s = SentimentScorer()
    good, bad, neutral = s.score(["q"] * 3, ["I love this, it is wonderful!", "This is terrible and awful.",
                                             "The table has four legs."])["sentiment"]
    assert good > 0.5 and bad < -0.5 and abs(neutral) < 0.1
    assert s.scales == {"sentiment": (-1.0, 1.0)}


def test_build_and_merge():
    scores = score_all(build_scorers(["verbosity", "sentiment"]), ["q"], ["Great answer here"])
    assert set(scores) == {"verbosity", "sentiment"} and scores["verbosity"] == [3.0]
    with pytest.raises(ValueError, match="unknown offline scorer"):
        build_scorers(["humour"])
    judge = CallableScorer(lambda p, r: float("!" in r), "excitement", (0, 1))
    assert judge.score(["q", "q"], ["yes!", "no"]) == {"excitement": [1.0, 0.0]}
    with pytest.raises(ValueError, match="two scorers produce"):
        score_all([LengthScorer(), LengthScorer()], ["q"], ["a"])


def test_sentiment_is_the_mean_over_sentences_unless_asked_whole():
    text = "I love this. The table has four legs.\nIt is terrible!"
    s, whole = SentimentScorer(), SentimentScorer(per_sentence=False)
    parts = [s.compound(t) for t in ("I love this.", "The table has four legs.", "It is terrible!")]
    assert s.score(["q"], [text])["sentiment"][0] == pytest.approx(sum(parts) / 3)
    assert whole.score(["q"], [text])["sentiment"][0] == pytest.approx(whole._analyzer.polarity_scores(text)["compound"])
    # repeating a mildly positive sentence drives the whole-text score towards 1, not the per-sentence mean
    one, many = "That is a good idea.", " ".join(["That is a good idea."] * 6)
    assert s.compound(many) == pytest.approx(s.compound(one))
    assert whole.compound(many) > whole.compound(one) + 0.2


def test_reward_model_scorer_from_a_saved_steerzoo_reward_model(tmp_path):
    """``reward_model:<dir>`` scores (prompt, reply) pairs with the saved head: the trained module's own rewards."""
    import torch

    from lightning_modules import RewardModel
    from tests.factories import tiny_kwargs
    from zoo.collate import PadCollator, tokenize_examples

    module = RewardModel(**tiny_kwargs())
    module.configure_model()
    with torch.no_grad():
        module.value_head.linear.weight.normal_()  # a head that separates replies
    saved = module.save_pretrained(tmp_path / "rm")
    (scorer,) = build_scorers([f"reward_model:{saved}"])
    prompts, replies = ["Say hi", "Name a colour"], ["Hello there!", "Blue."]
    got = scorer.score(prompts, replies)["reward"]
    tok = tokenize_examples({"prompt": [[{"role": "user", "content": p}] for p in prompts],
                             "completions": [[r] for r in replies]}, module.tokenizer, module.tokenize_settings)
    batch = PadCollator(module.tokenizer.pad_token_id)(
        [{"prompt_ids": p, "completion_ids": c} for p, c in zip(tok["prompt_ids"], tok["completion_ids"])])
    with torch.no_grad():
        want = module.rewards(batch)[:, 0].tolist()
    assert got == pytest.approx(want, abs=1e-4) and abs(got[0] - got[1]) > 1e-3
    with pytest.raises(ValueError, match="reward_model:<dir>"):
        build_scorers(["reward_model"])
