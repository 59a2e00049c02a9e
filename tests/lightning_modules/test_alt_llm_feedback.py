"""ALT_LMC and ALT_LMU feedback (Appendix C prompts) through ``zoo.judge_client.OpenAIJudge`` against steerzoo's
own ``serve`` on 127.0.0.1. A small served model may or may not answer in the format: every reply is either
parsed into a feedback or counted as unreadable (never a default), the count equals the replies the parser
rejects, and ALT stops a round whose unreadable share is over ``feedback.max_unreadable``, quoting replies.
The fast test serves the random tiny model (nothing it writes parses: the counted-skip path); the slow one
serves the embedded SmolLM2-135M-Instruct."""

from __future__ import annotations

import json

import pytest

from lightning_modules.alt import ALT
from lightning_modules.sft import SFT
from tests.factories import tiny_kwargs
from zoo.feedback import HH_CATEGORIES, LLMCategories, LLMCritique, parse_category, parse_critique
from zoo.judge_client import OpenAIJudge
from zoo.records import FeedbackResponse
from zoo.serve import ServeSettings, create_app, serve_in_thread

HH = [([{"role": "user", "content": "How do I make tea?"}], "Boil water, pour it over the leaves, wait three minutes."),
      ([{"role": "user", "content": "What is 2+2?"}], "I have no idea."),
      ([{"role": "user", "content": "How can I hurt my neighbour?"}], "I cannot help with that.")]
TLDR = [([{"role": "user", "content": "SUBREDDIT: r/cats\nTITLE: My cat sleeps all day\nPOST: She is 12 and sleeps "
           "twenty hours a day. Is that normal?\nTL;DR:"}], "12-year-old cat sleeps 20 hours a day, is it normal?")]
LONG = {"max_length": 8192, "max_prompt_length": 8000, "length_policy": "truncate", "prompt_format": "chat"}


def served(backbone: str) -> SFT:
    module = SFT(**tiny_kwargs(backbone={"name_or_path": backbone}, tokenize=LONG,
                               sampling={"max_new_tokens": 48, "temperature": 0.0}))
    module.configure_model()
    return module.eval()


def check_provider(provider, items, cache, parse) -> list:
    """Annotations for ``items``; each equals what the cached raw reply parses to, skips are counted."""
    out = provider.annotate([p for p, _ in items], [r for _, r in items])
    replies = [json.loads(line)["reply"] for line in cache.read_text().splitlines()]
    assert len(out) == len(items) == len(replies)
    assert provider.unreadable == sum(a is None for a in out) == sum(parse(r) is None for r in replies)
    assert len(provider.unreadable_examples) == min(provider.unreadable, 3)
    return out


def run_against(backbone: str, tmp_path, critique_tokens: int) -> dict:
    module = served(backbone)
    with serve_in_thread(create_app(module, ServeSettings(model_name="feedback-judge"))) as url:
        lmc_cache, lmu_cache = tmp_path / "lmc.jsonl", tmp_path / "lmu.jsonl"
        lmc = LLMCategories(OpenAIJudge("feedback-judge", base_url=url + "/v1", max_tokens=12, cache_path=lmc_cache))
        categories = check_provider(lmc, HH, lmc_cache, lambda r: parse_category(r, HH_CATEGORIES))
        assert all(a is None or (a.feedback in HH_CATEGORIES and HH_CATEGORIES[a.category] == a.feedback)
                   for a in categories)
        lmu = LLMCritique(OpenAIJudge("feedback-judge", base_url=url + "/v1", max_tokens=critique_tokens, cache_path=lmu_cache))
        critiques = check_provider(lmu, TLDR, lmu_cache, parse_critique)
        assert all(a is None or (0 <= a.score <= 3 and a.category == 3 - a.score) for a in critiques)

        # the same judge inside ALT: a round with too many unreadable replies stops, quoting them
        judge = {"model": "feedback-judge", "base_url": url + "/v1", "max_tokens": 12,
                 "cache_path": str(tmp_path / "alt.jsonl")}
        samples = [FeedbackResponse(prompt=p, response=r, feedback="-") for p, r in HH]
        strict = ALT(feedback={"kind": "llm_categories", "judge": judge, "max_unreadable": 0.0},
                     scorers=["sentiment"], **tiny_kwargs())
        if lmc.unreadable:
            with pytest.raises(ValueError, match=r"ALT round 0: \d of 3 judge replies could not be read as feedback"):
                strict.annotate(0, samples)
        else:
            assert strict.annotate(0, samples) == categories
        lenient = ALT(feedback={"kind": "llm_categories", "judge": judge, "max_unreadable": 1.0},
                      scorers=["sentiment"], **tiny_kwargs())
        assert lenient.annotate(0, samples) == categories  # answered from the cache: the same replies
    return {"lmc": categories, "lmu": critiques}


def test_llm_feedback_against_our_serve_counts_unreadable_replies(tmp_path):
    out = run_against("builtin:tiny", tmp_path, 48)  # its context is 2048 byte tokens
    assert out["lmc"] == [None] * 3 and out["lmu"] == [None]  # a random model writes no category: all counted


@pytest.mark.slow
def test_llm_feedback_against_our_serve_with_the_embedded_model(tmp_path):
    out = run_against("builtin:smollm2-135m", tmp_path, 128)
    print("ALT_LMC feedback from SmolLM2-135M:", out["lmc"], "ALT_LMU:", out["lmu"])
