"""``zoo.judge_client.OpenAIJudge`` against real servers on 127.0.0.1: steerzoo's own ``serve`` (MEET's both-order
verdicts equal those of the same model called in-process; a re-run answers from the cache with zero requests;
unreadable replies are counted), and small scripted endpoints for retries, back-off, give-up, timeouts,
the concurrency limit and a torn cache file."""

from __future__ import annotations

import asyncio
import json
import threading
from functools import partial

import openai
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from tests.factories import steered_cmpo
from zoo.judge import judge_both_orders, judge_prompt, parse_verdict
from zoo.judge_client import JudgeError, OpenAIJudge, judge_pairs
from zoo.sampling import SamplingSettings
from zoo.serve import ServeSettings, create_app, serve_in_thread

ITEMS = [  # (question, ours, theirs)
    ("What is the capital of France?", "Paris.", "It is Lyon, I think."),
    ("How do I boil an egg?", "Put it in boiling water for 8 minutes.", "Eggs are laid by hens."),
    ("Name a prime number.", "7", "8"),
]
MAX_TOKENS = 24


def test_judge_reproduces_in_process_both_order_verdicts_caches_and_counts_unreadable_replies(tmp_path):
    module = steered_cmpo(max_new_tokens=MAX_TOKENS, max_prompt_length=2048)  # judge prompts are long

    def in_process(system, user):  # the same model called directly, greedy, same settings
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]
        ids = module.encode_prompts([messages])
        return module.generate_steered(ids, [None], SamplingSettings(max_new_tokens=MAX_TOKENS, temperature=0))[0].texts[0]

    prompts = [judge_prompt("dialogue", q, a, b) for q, a, b in ITEMS] + [judge_prompt("dialogue", q, b, a)
                                                                         for q, a, b in ITEMS]
    want_texts = {p: in_process(*p) for p in prompts}
    want = [judge_both_orders(in_process, "dialogue", q, a, b) for q, a, b in ITEMS]
    unreadable = sum(parse_verdict("dialogue", t) is None for t in want_texts.values())
    assert unreadable > 0  # a random tiny model writes no verdict: the count below has something to count

    cache = tmp_path / "judge.jsonl"
    make = partial(OpenAIJudge, "tiny-judge", max_tokens=MAX_TOKENS, cache_path=cache, concurrency=4,
                   parser=partial(parse_verdict, "dialogue"))
    with serve_in_thread(create_app(module, ServeSettings(model_name="tiny-judge"))) as url:
        judge = make(base_url=url + "/v1")
        assert judge_pairs(judge, "dialogue", ITEMS) == want
        assert {p: judge(*p) for p in prompts} == want_texts
        assert judge.stats.requests == len(prompts) and judge.stats.retries == 0
        summary = judge.summary()
        assert summary["unparseable"] == unreadable and summary["unparseable_examples"]

        again = make(base_url=url + "/v1")  # a re-run of the evaluation: everything from the cache file
        assert judge_pairs(again, "dialogue", ITEMS) == want
        assert again.stats.requests == 0 and again.stats.cache_hits >= len(prompts)
        assert again.summary()["unparseable"] == unreadable
    rows = [json.loads(line) for line in cache.read_text().splitlines()]
    assert len(rows) == len(prompts) and {r["reply"] for r in rows} == set(want_texts.values())


class Scripted:
    """An OpenAI-compatible chat endpoint answering from a script of statuses (then 200s), optionally slowly;
    it records how many requests were in flight at once."""

    def __init__(self, statuses: list[int] = (), delay_s: float = 0.0, headers: dict | None = None):
        self.statuses, self.delay_s, self.headers = list(statuses), delay_s, headers or {}
        self.calls, self.inflight, self.max_inflight = 0, 0, 0
        self.app = FastAPI()
        self.app.post("/v1/chat/completions")(self.chat)

    async def chat(self, request: Request) -> JSONResponse:
        body = await request.json()
        self.calls += 1
        self.inflight += 1
        self.max_inflight = max(self.max_inflight, self.inflight)
        try:
            await asyncio.sleep(self.delay_s)
        finally:
            self.inflight -= 1
        status = self.statuses.pop(0) if self.statuses else 200
        if status != 200:
            return JSONResponse({"error": {"message": f"scripted {status}", "type": "x", "param": None, "code": None}},
                                status, headers=self.headers)
        text = "[[A]]" if "Paris" in body["messages"][-1]["content"] else "no verdict here"
        return JSONResponse({"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                             "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                          "finish_reason": "stop"}]})


def fast_judge(url: str, **kw) -> OpenAIJudge:
    return OpenAIJudge("m", base_url=url + "/v1", backoff_s=0.01, max_backoff_s=0.05, **kw)


def test_retries_429_and_5xx_with_backoff_then_succeeds():
    server = Scripted([429, 500, 503])
    with serve_in_thread(server.app) as url:
        judge = fast_judge(url)
        assert judge(None, "Paris?") == "[[A]]"
    assert (judge.stats.requests, judge.stats.retries, server.calls) == (4, 3, 4)


def test_gives_up_after_max_retries_and_does_not_retry_a_bad_request():
    with serve_in_thread(Scripted([503] * 10, headers={"Retry-After": "0"}).app) as url:
        judge = fast_judge(url, max_retries=2)
        with pytest.raises(JudgeError, match="no reply after 3 attempts"):
            judge(None, "q")
        assert judge.stats.requests == 3
    with serve_in_thread(Scripted([400]).app) as url:
        judge = fast_judge(url)
        with pytest.raises(openai.BadRequestError):
            judge(None, "q")
        assert judge.stats.requests == 1


def test_timeouts_and_refused_connections_are_retried():
    with serve_in_thread(Scripted(delay_s=1.0).app) as url:
        judge = fast_judge(url, max_retries=1, timeout_s=0.2)
        with pytest.raises(JudgeError, match="no reply after 2 attempts"):
            judge(None, "q")
    judge = fast_judge(url, max_retries=1)  # the server is gone: connection refused
    with pytest.raises(JudgeError):
        judge(None, "q")
    assert judge.stats.requests == 2


def test_judge_many_keeps_to_the_concurrency_limit_and_asks_a_repeated_prompt_once():
    server = Scripted(delay_s=0.15)
    with serve_in_thread(server.app) as url:
        judge = fast_judge(url, concurrency=3, parser=partial(parse_verdict, "dialogue"))
        prompts = [(None, f"question {i}") for i in range(9)] + [(None, "Paris")] * 6
        replies = judge.judge_many(prompts)
    assert replies[-1] == "[[A]]" and replies[0] == "no verdict here"
    assert server.calls == 10 and 1 < server.max_inflight <= 3
    assert judge.stats.unparseable == 9  # the distinct unreadable replies, each counted once


def test_a_torn_cache_line_is_skipped_and_the_cache_keeps_working(tmp_path):
    cache = tmp_path / "cache.jsonl"
    with serve_in_thread(Scripted().app) as url:
        fast_judge(url, cache_path=cache)(None, "Paris")
        with cache.open("a") as f:
            f.write('{"key": "abc", "reply": "half a li')  # a crash mid-write
        judge = fast_judge(url, cache_path=cache)
        assert judge.stats.cache_lines_skipped == 1
        assert judge(None, "Paris") == "[[A]]" and judge.stats.requests == 0
        judge(None, "another")
    lines = cache.read_text().splitlines()
    assert sum(1 for line in lines if _is_json(line)) == 2 and len(lines) == 3


def _is_json(line: str) -> bool:
    try:
        json.loads(line)
        return True
    except json.JSONDecodeError:
        return False


def test_the_judge_is_safe_to_call_from_many_threads(tmp_path):
    server = Scripted(delay_s=0.01)
    with serve_in_thread(server.app) as url:
        judge = fast_judge(url, cache_path=tmp_path / "c.jsonl", concurrency=4)
        threads = [threading.Thread(target=judge, args=(None, f"q{i % 5}")) for i in range(20)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert server.calls == 5 and len((tmp_path / "c.jsonl").read_text().splitlines()) == 5


def test_compare_predictions_judges_through_an_api_and_reruns_from_the_cache(tmp_path):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
    from compare_predictions import main

    rows = lambda texts: "".join(json.dumps({"idx": i, "sample": 0, "prompt": f"q{i}", "completion": t}) + "\n"  # noqa: E731
                                 for i, t in enumerate(texts))
    ours, theirs = tmp_path / "ours.jsonl", tmp_path / "theirs.jsonl"
    ours.write_text(rows(["Paris", "yes", "no"]))
    theirs.write_text(rows(["Lyon", "maybe", "never"]))
    server = Scripted()
    with serve_in_thread(server.app) as url:
        args = [str(ours), str(theirs), "--judge-api", "m", "--judge-base-url", url + "/v1",
                "--judge-cache", str(tmp_path / "cache.jsonl")]
        first = main(args)["llm_judge"]
        again = main(args)["llm_judge"]
    # the scripted judge says [[A]] whenever "Paris" is in the prompt (both orders of pair 0: a tie), else nothing
    assert first["n"] == 3 and first["tie"] == 100.0 and first["unreadable_verdicts"] == 4
    assert first["client"]["requests"] == 6 and first["client"]["unparseable"] == 4
    assert again["client"]["requests"] == 0 and {k: again[k] for k in ("win", "lose", "tie")} == \
        {k: first[k] for k in ("win", "lose", "tie")}
    assert server.calls == 6
