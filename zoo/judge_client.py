"""A judge on any OpenAI-compatible chat endpoint (OpenAI, vLLM, steerzoo's own ``serve``): the pairwise
judge (the ``zoo.judge.Judge`` callable, ``(system | None, user) -> text``), textual feedback, preference evaluation.

    judge = OpenAIJudge("gpt-4o-2024-08-06", parser=partial(parse_verdict, "dialogue"),
                        cache_path="outputs/judge_cache.jsonl")
    results = judge_pairs(judge, "dialogue", [(question, ours, theirs), ...])  # both orders, concurrently
    print(judge.summary())  # requests, retries, cache hits, unparseable replies (with examples)

- the key comes from ``api_key`` or the environment (``OPENAI_API_KEY``, or ``api_key_env``); none at all is
  sent as ``EMPTY`` (local servers without a key accept it);
- ``judge_many`` judges many prompts on ``concurrency`` threads; ``__call__`` is safe from any thread, and a
  prompt asked twice at once is requested once;
- retries: 408/409/429/5xx, timeouts and connection errors, after min(``max_backoff_s``, ``backoff_s`` · 2^i)
  seconds with jitter (or the server's ``Retry-After``); other errors (400, 401, 404) raise at once;
- cache: every judgment is appended to ``cache_path`` (JSON Lines, one ``os.write`` per line, so a crash leaves
  at most a torn last line, skipped on load) keyed by (model, messages, settings) — the endpoint's URL is not
  part of the key. A re-run of an evaluation makes zero requests. The cache assumes a reply is a function of its
  key: judge greedily (temperature 0, the default);
- ``parser``: replies it cannot read (returns None) are counted and listed in ``summary()``; they are never
  turned into a verdict here (``zoo.judge`` decides what an unreadable verdict means, and says how many).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from zoo.judge import JudgeKind, Outcome, Verdict, judge_both_orders, judge_prompt

RETRY_STATUS = (408, 409, 429)  # and every 5xx


class JudgeError(RuntimeError):
    """A judgment that failed after every retry."""


@dataclass
class JudgeStats:
    requests: int = 0  # HTTP requests sent, retries included
    retries: int = 0
    cache_hits: int = 0  # answers from the cache (memory or disk)
    judged: int = 0  # replies received from the endpoint
    unparseable: int = 0  # distinct prompts answered (or found in the cache) whose reply ``parser`` could not read
    cache_lines_skipped: int = 0  # torn or foreign lines in the cache file


class OpenAIJudge:
    """``judge(system, user) -> text`` through ``chat.completions`` of an OpenAI-compatible endpoint."""

    def __init__(
        self,
        model: str,
        base_url: str | None = None,
        api_key: str | None = None,
        api_key_env: str = "OPENAI_API_KEY",
        *,
        temperature: float = 0.0,
        max_tokens: int = 512,
        seed: int | None = None,
        extra_body: Mapping[str, Any] | None = None,  # e.g. {"steer": {...}} for a steerzoo server
        concurrency: int = 8,
        max_retries: int = 6,
        backoff_s: float = 1.0,
        max_backoff_s: float = 60.0,
        timeout_s: float = 120.0,
        cache_path: str | Path | None = None,
        parser: Callable[[str], Any] | None = None,
    ):
        import openai

        self.model, self.parser = model, parser
        self.settings = {"temperature": temperature, "max_tokens": max_tokens, "seed": seed,
                         "extra_body": dict(extra_body) if extra_body else None}
        self.max_retries, self.backoff_s, self.max_backoff_s = max_retries, backoff_s, max_backoff_s
        self.concurrency = concurrency
        key = api_key or os.environ.get(api_key_env) or "EMPTY"
        self.client = openai.OpenAI(base_url=base_url, api_key=key, timeout=timeout_s, max_retries=0)
        self.stats = JudgeStats()
        self.unreadable: dict[str, str] = {}  # cache key -> reply the parser could not read
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(concurrency)
        self._memory: dict[str, str] = {}
        self._inflight: dict[str, Future] = {}
        self.cache_path = Path(cache_path) if cache_path is not None else None
        if self.cache_path is not None:
            self._load_cache()

    # ---- the Judge interface --------------------------------------------------------------------------
    def __call__(self, system: str | None, user: str) -> str:
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]
        key = self.cache_key(messages)
        with self._lock:
            if key in self._memory:
                self.stats.cache_hits += 1
                self._check_parse(key, self._memory[key])
                return self._memory[key]
            future, owner = self._inflight.get(key), False
            if future is None:
                future, owner = Future(), True
                self._inflight[key] = future
        if not owner:  # the same prompt is being requested by another thread
            return future.result()
        try:
            text = self._request(messages)
            self._store(key, messages, text)
            future.set_result(text)
            return text
        except BaseException as e:
            future.set_exception(e)
            raise
        finally:
            with self._lock:
                self._inflight.pop(key, None)

    def judge_many(self, prompts: Sequence[tuple[str | None, str]]) -> list[str]:
        """Replies to (system, user) prompts, in order, ``concurrency`` requests at a time."""
        with ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="judge") as pool:
            return list(pool.map(lambda p: self(*p), prompts))

    def summary(self) -> dict[str, Any]:
        examples = [text[:200] for text in list(self.unreadable.values())[:3]]
        return {"model": self.model, **asdict(self.stats), "unparseable_examples": examples}

    # ---- requests -------------------------------------------------------------------------------------
    def cache_key(self, messages: list[dict[str, str]]) -> str:
        blob = json.dumps({"model": self.model, "messages": messages, "settings": self.settings}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()

    def _request(self, messages: list[dict[str, str]]) -> str:
        import openai

        for attempt in range(self.max_retries + 1):
            with self._slots:
                with self._lock:
                    self.stats.requests += 1
                try:
                    reply = self.client.chat.completions.create(
                        model=self.model, messages=messages, temperature=self.settings["temperature"],
                        max_tokens=self.settings["max_tokens"],
                        **({"seed": self.settings["seed"]} if self.settings["seed"] is not None else {}),
                        extra_body=self.settings["extra_body"])
                    return reply.choices[0].message.content or ""
                except openai.APIStatusError as e:
                    if e.status_code not in RETRY_STATUS and e.status_code < 500:
                        raise
                    error, wait = e, retry_after(e.response.headers.get("retry-after"))
                except openai.APIConnectionError as e:  # timeouts included
                    error, wait = e, None
            if attempt == self.max_retries:
                raise JudgeError(f"{self.model}: no reply after {attempt + 1} attempts: {error}") from error
            with self._lock:
                self.stats.retries += 1
            delay = min(self.max_backoff_s, self.backoff_s * 2**attempt)
            time.sleep(wait if wait is not None else delay * (0.5 + random.random() / 2))
        raise AssertionError("unreachable")

    # ---- the cache ------------------------------------------------------------------------------------
    def _load_cache(self) -> None:
        if not self.cache_path.exists():
            return
        raw = self.cache_path.read_bytes()
        for line in raw.splitlines():
            try:
                row = json.loads(line)
                self._memory[row["key"]] = row["reply"]
            except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError):
                self.stats.cache_lines_skipped += 1
        if raw and not raw.endswith(b"\n"):  # a torn last line: new lines must not continue it
            self._append(b"\n")

    def _store(self, key: str, messages: list[dict[str, str]], text: str) -> None:
        with self._lock:
            self._memory[key] = text
            self.stats.judged += 1
            self._check_parse(key, text)
            if self.cache_path is not None:
                row = {"key": key, "model": self.model, "settings": self.settings, "messages": messages, "reply": text}
                self._append((json.dumps(row, ensure_ascii=False) + "\n").encode())

    def _check_parse(self, key: str, text: str) -> None:
        """Count a reply ``parser`` cannot read, once per prompt (called under the lock)."""
        if self.parser is not None and key not in self.unreadable and self.parser(text) is None:
            self.unreadable[key] = text
            self.stats.unparseable += 1

    def _append(self, data: bytes) -> None:
        self.cache_path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.cache_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)


def retry_after(value: str | None) -> float | None:
    try:
        return min(float(value), 300.0) if value is not None else None
    except ValueError:
        return None


def judge_pairs(judge: OpenAIJudge, kind: JudgeKind, items: Sequence[tuple[str, str, str]]
                ) -> list[tuple[Outcome, list[Verdict | None]]]:
    """``zoo.judge.judge_both_orders`` for every (question, ours, theirs): both orders of every item are
    requested concurrently first, then combined by the paper's rule (from the cache)."""
    prompts = [judge_prompt(kind, q, a, b) for q, a, b in items] + [judge_prompt(kind, q, b, a) for q, a, b in items]
    judge.judge_many(prompts)
    return [judge_both_orders(judge, kind, q, a, b) for q, a, b in items]
