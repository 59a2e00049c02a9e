"""The pairwise judges: reward-model outcomes with the tie band, rates and Δ by hand; the paper's both-order
rule for every pair of verdicts; verdict parsing; ROUGE by hand; ``scripts/compare_predictions.py`` end to end
on a tiny reward model and a tiny chat judge."""

import json
import math
import sys
from pathlib import Path

import pytest

from zoo.judge import (
    combine_orders,
    judge_both_orders,
    parse_verdict,
    reward_outcomes,
    rouge,
    win_rates,
)

ROOT = Path(__file__).resolve().parents[2]
EDGE = math.log(0.55 / 0.45)  # σ(EDGE) = 0.55: the upper end of the tie band


def test_reward_outcomes_rates_and_delta_by_hand():
    # reward differences: 1 (win), 0 (tie), -3 (lose), 5 (win), just outside the band on both sides
    # (win, lose), just inside on both sides (tie, tie)
    diffs = [1.0, 0.0, -3.0, 5.0, EDGE + 1e-4, -EDGE - 1e-4, EDGE - 1e-4, -EDGE + 1e-4]
    theirs = [0.5] * len(diffs)
    ours = [t + d for t, d in zip(theirs, diffs)]
    outcomes = reward_outcomes(ours, theirs)
    assert outcomes == ["win", "tie", "lose", "win", "win", "lose", "tie", "tie"]
    rates = win_rates(outcomes)
    assert (rates.win, rates.lose, rates.tie, rates.n) == (100 * 3 / 8, 100 * 2 / 8, 100 * 3 / 8, 8)
    assert math.isclose(rates.delta, 100 * (3 - 2) / 8)
    # a wider band turns the near-edge cases into ties
    assert reward_outcomes(ours, theirs, tie_band=(0.4, 0.6))[4:] == ["tie"] * 4


@pytest.mark.parametrize(
    "first,second,expected",
    [
        ("win", "win", "win"), ("win", "tie", "win"), ("tie", "win", "win"),  # wins twice / wins once, draws once
        ("lose", "lose", "lose"), ("lose", "tie", "lose"), ("tie", "lose", "lose"),
        ("tie", "tie", "tie"), ("win", "lose", "tie"), ("lose", "win", "tie"),  # draws twice / wins once, loses once
    ],
)
def test_both_order_rule_matches_the_papers_table(first, second, expected):
    assert combine_orders(first, second) == expected


def test_judge_both_orders_cancels_position_bias():
    ours, theirs = "a long and careful answer", "short"

    def by_length(system, user):  # prefers the longer answer wherever it stands
        a = user.split("[The Start of Assistant A's Answer]\n")[1].split("\n")[0]
        b = user.split("[The Start of Assistant B's Answer]\n")[1].split("\n")[0]
        return "explanation... [[A]]" if len(a) > len(b) else "[[B]]"

    assert judge_both_orders(by_length, "dialogue", "q", ours, theirs) == ("win", ["A", "B"])
    always_a = lambda system, user: "Both fine. [[A]]"  # noqa: E731  (pure position bias)
    assert judge_both_orders(always_a, "dialogue", "q", ours, theirs) == ("tie", ["A", "A"])
    draws = iter(["[[C]]", "[[A]]"])  # draw, then ours (now B) loses
    assert judge_both_orders(lambda s, u: next(draws), "dialogue", "q", ours, theirs)[0] == "lose"
    summary = iter(["Comparison: A is precise.\nPreferred: A", "garbled"])  # win, unreadable (a draw) -> win
    out, verdicts = judge_both_orders(lambda s, u: next(summary), "summary", "post", ours, theirs)
    assert (out, verdicts) == ("win", ["A", None])


def test_parse_verdict():
    assert parse_verdict("summary", 'Comparison: x\nPreferred: "B"') == "B"
    assert parse_verdict("dialogue", "maybe [[A]]... final: [[C]]") == "C"
    assert parse_verdict("dialogue", "I cannot decide") is None


def test_rouge_by_hand():
    scores = rouge(["the cat sat on the mat"], ["the cat is on the mat"])
    # unigrams: 5 of 6 shared; bigrams: 3 of 5 (the cat, on the, the mat); LCS "the cat on the mat" = 5 of 6
    assert math.isclose(scores["rouge1"], 100 * 5 / 6, rel_tol=1e-5)
    assert math.isclose(scores["rouge2"], 100 * 3 / 5, rel_tol=1e-5)
    assert math.isclose(scores["rougeL"], 100 * 5 / 6, rel_tol=1e-5)
    assert math.isclose(scores["rouge_avg"], (2 * 100 * 5 / 6 + 60) / 3, rel_tol=1e-5)


def test_compare_predictions_script(tmp_path):
    import torch
    from transformers import LlamaForCausalLM, LlamaForSequenceClassification

    from zoo.tiny import tiny_config, tiny_tokenizer

    tok = tiny_tokenizer()
    rm_dir, judge_dir = tmp_path / "rm", tmp_path / "judge"
    torch.manual_seed(0)
    LlamaForSequenceClassification(tiny_config(len(tok), num_labels=1)).save_pretrained(rm_dir)
    LlamaForCausalLM(tiny_config(len(tok))).save_pretrained(judge_dir)
    for d in (rm_dir, judge_dir):
        tok.save_pretrained(d)
    rows = lambda texts: "".join(  # noqa: E731
        json.dumps({"idx": i, "sample": 0, "prompt": f"q{i}", "completion": t}) + "\n" for i, t in enumerate(texts))
    ours, theirs, refs = tmp_path / "ours.jsonl", tmp_path / "theirs.jsonl", tmp_path / "refs.jsonl"
    ours.write_text(rows(["the cat sat", "hello there", "yes"]))
    theirs.write_text(rows(["a dog ran", "hello", "no way"]))
    refs.write_text("".join(json.dumps({"idx": i, "reference": r}) + "\n" for i, r in enumerate(["the cat", "hi", "yes"])))
    sys.path.insert(0, str(ROOT / "scripts"))
    from compare_predictions import main

    report = main([str(ours), str(theirs), "--reward-model", str(rm_dir), "--references", str(refs),
                   "--llm-judge", str(judge_dir), "--out", str(tmp_path / "report.json")])
    # the reward model's outcomes, recomputed here: σ(r_ours − r_theirs) inside [0.45, 0.55] is a tie
    from transformers import AutoModelForSequenceClassification

    rm_model = AutoModelForSequenceClassification.from_pretrained(rm_dir).eval()

    def reward(q: str, a: str) -> float:
        enc = tok(q, a, return_tensors="pt")
        with torch.no_grad():
            return float(rm_model(**enc).logits[0, 0])

    pairs = [(f"q{i}", a, b) for i, (a, b) in enumerate(zip(["the cat sat", "hello there", "yes"],
                                                            ["a dog ran", "hello", "no way"]))]
    sig = [1 / (1 + math.exp(-(reward(q, a) - reward(q, b)))) for q, a, b in pairs]
    by_hand = ["win" if x > 0.55 else "lose" if x < 0.45 else "tie" for x in sig]
    rm = report["reward_model"]
    assert rm["n"] == 3
    for outcome in ("win", "lose", "tie"):
        assert math.isclose(rm[outcome], 100 * by_hand.count(outcome) / 3, abs_tol=1e-9), (outcome, by_hand, rm)
    # the chat judge's verdicts, recomputed with the same greedy judge: unreadable ones are counted, and read
    # as ties (never as a win or a loss)
    from zoo.judge import hf_chat_judge

    judge = hf_chat_judge(str(judge_dir))
    results = [judge_both_orders(judge, "dialogue", q, a, b) for q, a, b in pairs]
    unreadable = sum(v is None for _, verdicts in results for v in verdicts)
    llm = report["llm_judge"]
    assert llm["n"] == 3 and llm["unreadable_verdicts"] == unreadable
    assert [llm["win"], llm["lose"], llm["tie"]] == [100 * sum(o == k for o, _ in results) / 3
                                                    for k in ("win", "lose", "tie")]
    assert report["rouge_ours"]["rougeL"] > report["rouge_theirs"]["rougeL"]
    assert json.loads((tmp_path / "report.json").read_text())["pairs"] == 3
    # a file against itself: every reward difference is 0, σ = 0.5, all ties
    same = main([str(ours), str(ours), "--reward-model", str(rm_dir)])["reward_model"]
    assert (same["tie"], same["delta"]) == (100.0, 0.0)
