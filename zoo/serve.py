"""An OpenAI-compatible HTTP server for any steerable model, with one extension: the ``steer`` field.

    python train.py serve --config configs/cmpo.yaml --ckpt_path runs/cmpo/checkpoints/last.ckpt

``create_app(module, settings)`` builds the FastAPI app: ``GET /v1/models`` (each model lists its steering
``attributes``), ``POST /v1/chat/completions`` and ``POST /v1/completions`` (plain JSON or streamed as
server-sent events), and the steering page at ``/`` (``zoo/web/index.html``). A request steers with
``"steer": {"attribute": weight, ...}``, validated by ``module.preference`` and applied through
``generate_steered``, the one steering interface every method implements (``zoo.preference``). Chat messages
are rendered by ``module.encode_prompts``, so a served prompt is tokenized exactly as ``predict`` tokenizes it;
sampling fields the request leaves out take the run config's ``model.sampling`` values.

Batching: requests are queued; the batcher takes the first, waits ``batch_window_ms`` for more (up to
``max_batch``), and hands them to ``generate_batch`` in the one generation thread (torch is not re-entrant
on one model; the event loop never waits on it). ``generate_batch`` makes one ``module.generate_steered`` call
per group of requests sharing sampling settings (and preference, unless the module mixes preferences in one batch:
plural heads applied row by row); it is the one function a faster engine
replaces (``create_app(..., generate=...)``), e.g. one that mixes a plural model's Λ per row inside one batch. While a
batch generates, new requests queue up and form the next batch.

Streaming: a streamed reply's text is sent as it is generated, batched requests included: ``generate_batch``
hands each decoding step to the batcher (``zoo.rollout.listen_to_tokens``), which decodes each reply token by
token (``TextStream``: incomplete characters and possible starts of stop strings are held back) and sends the
new text as an SSE chunk. A replacement ``generate_batch`` that does not report steps still streams, its text
coming whole at the end.

Errors are OpenAI-shaped (``{"error": {"message", "type", "param", "code"}}``): 400 for malformed JSON,
bad fields, a refused ``steer`` (the module's ``PreferenceError`` message, naming the attribute and the
model's list), ``max_tokens`` above the limit, prompts over the prompt limit or, with ``max_tokens``, over the
context length; 401 for a missing or wrong API key;
404 for an unknown model or route; 413 for a body over ``max_body_bytes``; 503 when the queue is full.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hmac
import json
import socket
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, asynccontextmanager, contextmanager, nullcontext
from functools import partial
from importlib import resources
from typing import Any, Protocol

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from zoo.preference import Preference, PreferenceError, Steerable
from zoo.records import RecordError
from zoo.rollout import check_settings, listen_to_tokens
from zoo.sampling import Samples, SamplingSettings

MAX_N = 16  # samples per request
MAX_STOP = 4  # stop strings per request (OpenAI's limit)
DRAIN_FACTOR = 16  # an over-long request body up to this many times the limit is read and dropped before the 413


class Servable(Steerable, Protocol):
    """What the server needs of a module: the steering interface plus its tokenizer, its sampling defaults,
    ``encode_prompts`` (conversations rendered as ``predict`` renders them) and ``generate_steered``."""

    tokenizer: Any
    sampling: SamplingSettings

    def encode_prompts(self, prompts: Sequence[Any], truncate: bool = True) -> list[list[int]]: ...

    def generate_steered(self, prompt_ids: Sequence[Sequence[int]], preferences: Sequence[Any],
                         settings: SamplingSettings | None = None) -> list[Samples]: ...


@dataclasses.dataclass
class ServeSettings:
    model_name: str
    api_key: str | None = None  # required as ``Authorization: Bearer <key>`` on /v1 routes when set
    max_batch: int = 32  # requests generated together at most
    batch_window_ms: float = 5.0  # after the first request of a batch, wait this long for more
    max_pending: int = 1024  # queued requests beyond this are refused (503)
    max_body_bytes: int = 1 << 20  # larger request bodies are refused (413) before they are parsed
    max_prompt_tokens: int | None = None  # None: the module's prompt limit (``default_limits``)
    context_length: int | None = None  # prompt + max_tokens must fit; None: the backbone's (``default_limits``)
    default_steer: Preference | None = None  # used when a request has no ``steer`` (predict's ``--steer``)


def default_limits(module: Any) -> tuple[int, int]:
    """(prompt token limit, context length) of a steerzoo module: prompts as long as ``predict`` takes them
    whole (``tokenize.max_prompt_length``, at most ``tokenize.max_length - 1``), and the backbone's context
    (``max_position_embeddings``), which prompt and reply share."""
    tok = getattr(module, "tokenize_settings", None)
    prompt_limit = 4096
    if tok is not None:
        prompt_limit = tok.max_length - 1
        if tok.max_prompt_length is not None:
            prompt_limit = min(prompt_limit, tok.max_prompt_length)
    config = getattr(getattr(module, "model", None), "config", None)
    context = getattr(config, "max_position_embeddings", None) or 2 * prompt_limit
    return prompt_limit, context


# ---- generation -------------------------------------------------------------------------------------
@dataclasses.dataclass(eq=False)
class GenerationRequest:
    """One prompt to sample under ``preference`` (None: the method's default) with ``settings``."""

    prompt_ids: list[int]
    preference: Preference | None
    settings: SamplingSettings

    def batch_key(self) -> tuple:
        """Requests with equal keys may generate in one batch. A seeded sampled request generates alone,
        so its output depends only on its own prompt and seed (as ``predict`` of one prompt)."""
        s = self.settings
        alone = id(self) if s.temperature > 0 and s.seed is not None else None
        return (s.n, s.max_new_tokens, s.temperature, s.top_p, s.top_k, s.seed, alone)


OnTokens = Callable[[int, int, int], None]  # (request index, sample index, token id) at each decoding step


def generate_batch(module: Servable, requests: Sequence[GenerationRequest],
                   on_tokens: OnTokens | None = None) -> list[Samples | Exception]:
    """One ``Samples`` (one prompt, ``settings.n`` samples) per request, or the exception that request raised.

    Requests sharing sampling settings and preference form one ``generate_steered`` call (the grouping every
    method does today); ``on_tokens``, if given, hears each decoding step as it happens (``zoo.rollout.
    listen_to_tokens``), for streaming. A group that fails is retried request by request, so one bad request
    fails alone. A rollout engine that mixes a plural model's Λ per row in one batch replaces this function."""
    mixes = getattr(module, "mixes_preferences", False)  # e.g. plural heads applied row by row
    groups: dict[tuple, list[int]] = {}
    for i, r in enumerate(requests):
        groups.setdefault((r.batch_key(), None if mixes else r.preference), []).append(i)
    out: list[Samples | Exception | None] = [None] * len(requests)
    for _, rows in groups.items():
        settings = dataclasses.replace(requests[rows[0]].settings, batch_size=len(rows))

        def listener(position: int, sample: int, token: int, rows: list[int] = rows) -> None:
            on_tokens(rows[position], sample, token)

        try:
            with listen_to_tokens(listener) if on_tokens is not None else nullcontext():
                samples = module.generate_steered([requests[i].prompt_ids for i in rows],
                                                  [requests[i].preference for i in rows], settings)
            for i, s in zip(rows, samples):
                out[i] = s
        except Exception as e:  # noqa: BLE001  (reported per request)
            if len(rows) == 1:
                out[rows[0]] = e
                continue
            for i in rows:  # not streamed again: the final text completes what was sent
                out[i] = generate_batch(module, [requests[i]])[0]
    return out


GenerateBatch = Callable[[Servable, Sequence[GenerationRequest], OnTokens | None], list[Samples | Exception]]


@dataclasses.dataclass
class Choice:
    text: str
    completion_tokens: int
    finish_reason: str  # "stop" (EOS or a stop string) or "length" (max_tokens)


def tokens_until(tokenizer: Any, ids: Sequence[int], text_prefix: str) -> int:
    """The fewest leading tokens of ``ids`` whose text covers ``text_prefix`` (a stop string's end)."""
    lo, hi = 0, len(ids)
    while lo < hi:
        mid = (lo + hi) // 2
        if tokenizer.decode(list(ids[:mid]), skip_special_tokens=True).startswith(text_prefix):
            hi = mid
        else:
            lo = mid + 1
    return lo


def finish_choices(tokenizer: Any, samples: Samples, stop: Sequence[str]) -> list[Choice]:
    """Texts cut at the first stop string, with token counts and finish reasons."""
    choices = []
    for text, ids, truncated in zip(samples.texts, samples.token_ids, samples.truncated):
        cut = min((text.find(s) for s in stop if s in text), default=-1)
        if cut >= 0:
            end = min(text.find(s) + len(s) for s in stop if text.find(s) == cut)
            choices.append(Choice(text[:cut], tokens_until(tokenizer, ids, text[:end]), "stop"))
        else:
            choices.append(Choice(text, len(ids), "length" if truncated else "stop"))
    return choices


class TextStream:
    """One reply decoded token by token as it is generated: returns the new text of each token, holding back
    an incomplete character (a multi-byte character spread over byte tokens) and any end that may be the
    start of a stop string; stops at EOS or at a stop string."""

    def __init__(self, tokenizer: Any, stop: Sequence[str]):
        self.tokenizer, self.stop = tokenizer, list(stop)
        self.ids: list[int] = []
        self.prefix = self.read = 0  # ids[prefix:read] is decoded already; decoding from `prefix` keeps spacing
        self.text, self.sent, self.done = "", 0, False

    def push(self, token: int) -> str:
        if self.done:
            return ""
        if token == self.tokenizer.eos_token_id:
            self.done = True
            return self._release()
        self.ids.append(token)
        decode = partial(self.tokenizer.decode, skip_special_tokens=True)
        before, now = decode(self.ids[self.prefix:self.read]), decode(self.ids[self.prefix:])
        if len(now) > len(before) and not now.endswith("\ufffd"):
            self.text += now[len(before):]
            self.prefix, self.read = self.read, len(self.ids)
        return self._release()

    def _release(self) -> str:
        cut = min((self.text.find(s) for s in self.stop if s in self.text), default=-1)
        if cut >= 0:
            self.text, self.done = self.text[:cut], True
        end = len(self.text)
        if not self.done:  # keep back an end that may grow into a stop string
            end -= max((k for s in self.stop for k in range(1, len(s)) if self.text.endswith(s[:k])), default=0)
        piece, self.sent = self.text[self.sent:end], max(self.sent, end)
        return piece


@dataclasses.dataclass(eq=False)
class Pending:
    request: GenerationRequest
    stop: list[str]
    future: asyncio.Future
    events: asyncio.Queue | None = None  # streaming: (choice index, text) as generated, then None when done
    first_choice: int = 0  # index of this request's first choice in its response


class Batcher:
    """Collects queued requests into batches and generates each batch in the one generation thread."""

    def __init__(self, module: Servable, settings: ServeSettings, generate: GenerateBatch,
                 context: Callable[[], AbstractContextManager] | None):
        self.module, self.settings, self.generate, self.context = module, settings, generate, context
        self.queue: asyncio.Queue[Pending] = asyncio.Queue()
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="steerzoo-generate")
        self.batches = 0  # generate_batch calls so far (tests read it)

    def submit(self, pending: Pending) -> asyncio.Future:
        if self.queue.qsize() >= self.settings.max_pending:
            raise ApiError(503, f"the server has {self.queue.qsize()} requests queued; retry later",
                           "server_error", code="overloaded")
        self.queue.put_nowait(pending)
        return pending.future

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self.queue.get()]
            if self.queue.qsize() < self.settings.max_batch - 1:
                await asyncio.sleep(self.settings.batch_window_ms / 1000)  # let requests sent together arrive
            while len(batch) < self.settings.max_batch and not self.queue.empty():
                batch.append(self.queue.get_nowait())
            batch = [p for p in batch if not p.future.done()]  # callers that gave up (disconnected)
            if not batch:
                continue
            results = await loop.run_in_executor(self.executor, self._generate, batch, loop)
            self.batches += 1
            for p, r in zip(batch, results):
                if not p.future.done():
                    p.future.set_exception(r) if isinstance(r, Exception) else p.future.set_result(r)
                if p.events is not None:
                    p.events.put_nowait(None)

    def _generate(self, batch: list[Pending], loop: asyncio.AbstractEventLoop) -> list[list[Choice] | Exception]:
        """Runs in the generation thread: generate (streamed replies' text goes to their queues as it comes),
        then cut stop strings."""
        tokenizer = self.module.tokenizer
        streams = {(i, j): TextStream(tokenizer, p.stop) for i, p in enumerate(batch) if p.events is not None
                   for j in range(p.request.settings.n)}

        def on_tokens(i: int, j: int, token: int) -> None:
            stream = streams.get((i, j))
            piece = stream.push(token) if stream is not None else ""
            if piece:
                loop.call_soon_threadsafe(batch[i].events.put_nowait, (batch[i].first_choice + j, piece))

        try:
            with self.context() if self.context is not None else nullcontext():
                results = self.generate(self.module, [p.request for p in batch], on_tokens if streams else None)
        except Exception as e:  # noqa: BLE001
            return [e] * len(batch)
        return [r if isinstance(r, Exception) else finish_choices(tokenizer, r, p.stop) for p, r in zip(batch, results)]

    def close(self) -> None:
        self.executor.shutdown(wait=True, cancel_futures=True)


# ---- requests ---------------------------------------------------------------------------------------
class ApiError(Exception):
    def __init__(self, status: int, message: str, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def response(self) -> JSONResponse:
        return error_response(self.status, self.message, self.type, self.param, self.code)


def error_response(status: int, message: str, type: str = "invalid_request_error", param: str | None = None,
                   code: str | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": type, "param": param, "code": code}}, status)


UNSUPPORTED = {  # fields that would change the reply's meaning if ignored
    "tools": lambda v: bool(v), "functions": lambda v: bool(v), "logprobs": lambda v: bool(v),
    "top_logprobs": lambda v: bool(v), "echo": lambda v: bool(v), "suffix": lambda v: v is not None,
    "best_of": lambda v: v not in (None, 1), "logit_bias": lambda v: bool(v),
    "frequency_penalty": lambda v: v not in (None, 0), "presence_penalty": lambda v: v not in (None, 0),
}


def number_field(name: str, value: Any, kind: type, lo: float, hi: float, default: Any, lo_open: bool = False) -> Any:
    """A numeric request field checked against its range (``default`` when absent or null)."""
    if value is None:
        return default
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and (kind is float or float(value).is_integer())
    if not ok or not (lo < value if lo_open else lo <= value) or value > hi:
        bounds = f"{'(' if lo_open else '['}{lo:g}, {hi:g}]"
        raise ApiError(400, f"{name} must be {'an integer' if kind is int else 'a number'} in {bounds}, got "
                            f"{value!r}", param=name, code="invalid_value")
    return kind(value)


def message_text(content: Any, i: int) -> str:
    """A message's content: a string or a list of text parts (images and audio are not supported)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(p, Mapping) and p.get("type") == "text" for p in content):
        return "".join(str(p.get("text", "")) for p in content)
    raise ApiError(400, f"messages[{i}].content must be a string or a list of text parts", param="messages")


class Server:
    """The app's state: the module, its limits, the batcher."""

    def __init__(self, module: Servable, settings: ServeSettings, generate: GenerateBatch,
                 context: Callable[[], AbstractContextManager] | None):
        self.module, self.settings = module, settings
        prompt_limit, context = default_limits(module)
        self.max_prompt_tokens = settings.max_prompt_tokens or prompt_limit
        self.context_length = settings.context_length or context
        self.max_tokens_limit = self.context_length - 1  # and prompt + max_tokens <= context_length
        self.generate, self.context = generate, context
        self.batcher: Batcher | None = None

    def model_card(self) -> dict[str, Any]:
        default = self.settings.default_steer
        return {"id": self.settings.model_name, "object": "model", "created": 0, "owned_by": "steerzoo",
                "attributes": list(self.module.attributes),
                "default_steer": default.as_dict() if default is not None else None,
                "max_prompt_tokens": self.max_prompt_tokens, "max_tokens_limit": self.max_tokens_limit,
                "context_length": self.context_length}

    def check_key(self, request: Request) -> None:
        key = self.settings.api_key
        if not key:
            return
        given = request.headers.get("authorization", "")
        if not given.lower().startswith("bearer "):
            raise ApiError(401, "missing API key: send 'Authorization: Bearer <key>'", code="invalid_api_key")
        if not hmac.compare_digest(given[7:].strip().encode(), key.encode()):
            raise ApiError(401, "incorrect API key provided", code="invalid_api_key")

    async def read_json(self, request: Request) -> dict[str, Any]:
        limit = self.settings.max_body_bytes
        declared = request.headers.get("content-length", "")
        too_large = ApiError(413, f"request body over {limit} bytes", param=None, code="request_too_large")
        if declared.isdigit() and int(declared) > limit and (
                "100-continue" in request.headers.get("expect", "").lower() or int(declared) > DRAIN_FACTOR * limit):
            raise too_large  # the client waits for our answer before sending, or the body is absurd
        # an over-long body is read to its end (up to DRAIN_FACTOR x the limit) and dropped, so the client,
        # still sending, reads the 413 instead of a reset connection
        body, size = bytearray(), 0
        async for chunk in request.stream():
            size += len(chunk)
            if size <= limit:
                body += chunk
            elif size > DRAIN_FACTOR * limit:
                break
        if size > limit:
            raise too_large
        try:
            value = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ApiError(400, f"the request body is not valid JSON ({e})", code="invalid_json") from None
        if not isinstance(value, dict):
            raise ApiError(400, "the request body must be a JSON object", code="invalid_json")
        return value

    def check_model(self, body: Mapping[str, Any]) -> None:
        name = body.get("model")
        if not isinstance(name, str):
            raise ApiError(400, "model: required, the served model's name (GET /v1/models)", param="model")
        if name != self.settings.model_name:
            raise ApiError(404, f"the model {name!r} does not exist; this server serves "
                                f"{self.settings.model_name!r}", param="model", code="model_not_found")

    def parse_common(self, body: Mapping[str, Any]) -> tuple[SamplingSettings, Preference | None, list[str]]:
        """Sampling settings (the config's ``model.sampling`` for fields left out), the steering, the stops."""
        for name, refused in UNSUPPORTED.items():
            if refused(body.get(name)):
                raise ApiError(400, f"{name} is not supported by this server", param=name, code="unsupported")
        base = self.module.sampling
        max_tokens = number_field("max_tokens", body.get("max_completion_tokens", body.get("max_tokens")), int, 1,
                                  sys.maxsize, min(base.max_new_tokens, self.max_tokens_limit))
        if max_tokens > self.max_tokens_limit:
            raise ApiError(400, f"max_tokens is {max_tokens}, above this model's limit of {self.max_tokens_limit}",
                           param="max_tokens", code="max_tokens_exceeded")
        temperature = number_field("temperature", body.get("temperature"), float, 0, 2, base.temperature)
        settings = SamplingSettings(
            n=number_field("n", body.get("n"), int, 1, MAX_N, 1),
            max_new_tokens=max_tokens,
            temperature=temperature,
            top_p=number_field("top_p", body.get("top_p"), float, 0, 1, base.top_p, lo_open=True) if temperature > 0
            else 1.0,
            top_k=base.top_k if temperature > 0 else 0,
            seed=number_field("seed", body.get("seed"), int, -(2**63), 2**63 - 1, base.seed) if temperature > 0
            else None,
        )
        try:
            check_settings(settings)
        except ValueError as e:
            raise ApiError(400, str(e), param="n" if settings.n > 1 else None) from None
        stop = body.get("stop")
        stop = [stop] if isinstance(stop, str) else stop
        if stop is None:
            stop = []
        if not isinstance(stop, list) or len(stop) > MAX_STOP or not all(isinstance(s, str) and s for s in stop):
            raise ApiError(400, f"stop must be a non-empty string or a list of at most {MAX_STOP} of them",
                           param="stop")
        preference = self.settings.default_steer
        if body.get("steer") is not None:
            try:
                preference = self.module.preference(body["steer"])
            except PreferenceError as e:
                raise ApiError(400, str(e), param="steer", code="invalid_steer") from None
        return settings, preference, stop

    def check_length(self, ids: Sequence[int], max_tokens: int, param: str) -> None:
        if len(ids) > self.max_prompt_tokens:
            raise ApiError(400, f"the prompt has {len(ids)} tokens, over this model's limit of "
                                f"{self.max_prompt_tokens}", param=param, code="context_length_exceeded")
        if len(ids) + max_tokens > self.context_length:
            raise ApiError(400, f"the prompt's {len(ids)} tokens and max_tokens {max_tokens} exceed this model's "
                                f"context length of {self.context_length}", param="max_tokens",
                           code="context_length_exceeded")

    async def encode_chat(self, messages: Any, max_tokens: int) -> list[int]:
        if not isinstance(messages, list) or not messages:
            raise ApiError(400, "messages: required, a non-empty list of {role, content}", param="messages")
        conversation = []
        for i, m in enumerate(messages):
            if not isinstance(m, Mapping) or "role" not in m:
                raise ApiError(400, f"messages[{i}] needs a role and a content", param="messages")
            conversation.append({"role": m["role"], "content": message_text(m.get("content"), i)})
        try:  # the tokenizer is safe to share read-only; the generation thread stays free for torch
            (ids,) = await asyncio.to_thread(self.module.encode_prompts, [conversation], truncate=False)
        except RecordError as e:
            raise ApiError(400, f"messages: {e}".replace("field 'prompt", "field 'messages"),
                           param="messages") from None
        self.check_length(ids, max_tokens, "messages")
        return ids

    async def encode_text(self, prompt: str, max_tokens: int) -> list[int]:
        """A completions prompt is continued as written: no chat template."""
        ids = await asyncio.to_thread(lambda: self.module.tokenizer(prompt)["input_ids"])
        if not ids:
            raise ApiError(400, "prompt is empty", param="prompt")
        self.check_length(ids, max_tokens, "prompt")
        return ids

    async def run(self, requests: list[GenerationRequest], stop: list[str],
                  events: asyncio.Queue | None = None) -> list[list[Choice]]:
        """Queue the requests (one per prompt) and wait for their choices; with ``events``, their text also goes
        there as it is generated, as (choice index, text), and None as each request ends."""
        loop, futures, first = asyncio.get_running_loop(), [], 0
        for r in requests:
            futures.append(self.batcher.submit(Pending(r, stop, loop.create_future(), events, first)))
            first += r.settings.n
        try:
            return list(await asyncio.gather(*futures))
        except ApiError:
            raise
        except (PreferenceError, RecordError, ValueError) as e:  # refused by the method while generating
            raise ApiError(400, str(e), param="steer" if isinstance(e, PreferenceError) else None) from None
        except Exception as e:  # noqa: BLE001
            raise ApiError(500, f"generation failed: {type(e).__name__}: {e}", "server_error") from None

    async def stream(self, requests: list[GenerationRequest], stop: list[str], opening: list[str],
                     delta: Callable[[int, str], str], closing: Callable[[list[Choice]], list[str]]) -> Response:
        """Server-sent events: ``opening``, then ``delta(choice, text)`` as text is generated, then
        ``closing(choices)`` and ``[DONE]``. A request refused before any text is sent gets its error status;
        a failure later arrives as an ``error`` event (the status line is gone by then)."""
        events: asyncio.Queue = asyncio.Queue()
        done = asyncio.ensure_future(self.run(requests, stop, events))
        first = await events.get()
        if first is None:  # a request ended before any text: an error, or an empty reply
            await asyncio.wait({done})
            if done.exception() is not None:
                raise done.exception()

        async def body() -> AsyncIterator[str]:
            sent: dict[int, str] = {}
            for line in opening:
                yield line
            item, ended = first, 0
            while True:
                if item is None:
                    ended += 1
                    if ended == len(requests):
                        break
                else:
                    k, piece = item
                    sent[k] = sent.get(k, "") + piece
                    yield delta(k, piece)
                item = await events.get()
            try:
                choices = [c for cs in await done for c in cs]
            except ApiError as e:
                yield sse({"error": {"message": e.message, "type": e.type, "param": e.param, "code": e.code}})
                yield sse("[DONE]")
                return
            for k, c in enumerate(choices):  # what was not streamed (a generate_batch without on_tokens)
                already = sent.get(k, "")
                if len(c.text) > len(already) and c.text.startswith(already):
                    yield delta(k, c.text[len(already):])
            for line in closing(choices):
                yield line
            yield sse("[DONE]")

        return StreamingResponse(body(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def usage(prompt_tokens: int, choices: Sequence[Choice]) -> dict[str, int]:
    completion = sum(c.completion_tokens for c in choices)
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion, "total_tokens": prompt_tokens + completion}


def sse(payload: Mapping[str, Any] | str) -> str:
    return f"data: {payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False)}\n\n"


def create_app(module: Servable, settings: ServeSettings, generate: GenerateBatch = generate_batch,
               context: Callable[[], AbstractContextManager] | None = None) -> FastAPI:
    """The FastAPI app serving ``module`` (weights loaded, in eval mode). ``context``: entered around each
    batch in the generation thread (e.g. the trainer's precision autocast, as ``predict`` runs under it)."""
    server = Server(module, settings, generate, context)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        server.batcher = Batcher(module, settings, generate, context)
        task = asyncio.create_task(server.batcher.run())
        try:
            yield
        finally:
            task.cancel()
            await asyncio.to_thread(server.batcher.close)

    app = FastAPI(title="steerzoo", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.server = server

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        return error_response(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}", code=kind)

    @app.exception_handler(Exception)
    async def server_error(request: Request, exc: Exception) -> JSONResponse:
        return error_response(500, f"{type(exc).__name__}: {exc}", "server_error")

    @app.get("/", include_in_schema=False)
    async def page() -> HTMLResponse:
        return HTMLResponse(resources.files("zoo").joinpath("web/index.html").read_text(encoding="utf-8"))

    @app.get("/v1/models")
    async def models(request: Request) -> dict[str, Any]:
        server.check_key(request)
        return {"object": "list", "data": [server.model_card()]}

    @app.get("/v1/models/{name}")
    async def model(name: str, request: Request) -> dict[str, Any]:
        server.check_key(request)
        server.check_model({"model": name})
        return server.model_card()

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        server.check_key(request)
        body = await server.read_json(request)
        server.check_model(body)
        sampling, preference, stop = server.parse_common(body)
        ids = await server.encode_chat(body.get("messages"), sampling.max_new_tokens)
        generation = GenerationRequest(ids, preference, sampling)
        head = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": settings.model_name}
        steer = preference.as_dict() if preference is not None else None
        if body.get("stream") is not True:
            (choices,) = await server.run([generation], stop)
            return JSONResponse({
                **head, "object": "chat.completion",
                "choices": [{"index": i, "message": {"role": "assistant", "content": c.text}, "logprobs": None,
                             "finish_reason": c.finish_reason} for i, c in enumerate(choices)],
                "usage": usage(len(ids), choices), "steer": steer,
            })

        def chunk(choice_list: list[dict[str, Any]], **extra: Any) -> str:
            return sse({**head, "object": "chat.completion.chunk", "choices": choice_list, **extra})

        def closing(choices: list[Choice]) -> list[str]:
            lines = [chunk([{"index": i, "delta": {}, "finish_reason": c.finish_reason}]) for i, c in enumerate(choices)]
            if (body.get("stream_options") or {}).get("include_usage"):
                lines.append(chunk([], usage=usage(len(ids), choices)))
            return lines

        opening = [chunk([{"index": i, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}],
                         steer=steer) for i in range(sampling.n)]
        return await server.stream(
            [generation], stop, opening,
            lambda k, piece: chunk([{"index": k, "delta": {"content": piece}, "finish_reason": None}]), closing)

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        server.check_key(request)
        body = await server.read_json(request)
        server.check_model(body)
        sampling, preference, stop = server.parse_common(body)
        prompts = body.get("prompt")
        prompts = [prompts] if isinstance(prompts, str) else prompts
        if not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) for p in prompts):
            raise ApiError(400, "prompt: required, a string or a non-empty list of strings", param="prompt")
        if len(prompts) > settings.max_batch:
            raise ApiError(400, f"at most {settings.max_batch} prompts per request", param="prompt")
        ids = [await server.encode_text(p, sampling.max_new_tokens) for p in prompts]
        requests = [GenerationRequest(p, preference, sampling) for p in ids]
        head = {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()),
                "model": settings.model_name}
        steer = preference.as_dict() if preference is not None else None
        prompt_tokens = sum(len(p) for p in ids)
        if body.get("stream") is not True:
            choices = [c for cs in await server.run(requests, stop) for c in cs]  # prompt-major, n per prompt
            return JSONResponse({**head, "choices": [{"index": k, "text": c.text, "logprobs": None,
                                                      "finish_reason": c.finish_reason} for k, c in enumerate(choices)],
                                 "usage": usage(prompt_tokens, choices), "steer": steer})

        def chunk(k: int, text: str, finish_reason: str | None = None) -> str:
            return sse({**head, "choices": [{"index": k, "text": text, "logprobs": None,
                                             "finish_reason": finish_reason}]})

        def closing(choices: list[Choice]) -> list[str]:
            lines = [chunk(k, "", c.finish_reason) for k, c in enumerate(choices)]
            if (body.get("stream_options") or {}).get("include_usage"):
                lines.append(sse({**head, "choices": [], "usage": usage(prompt_tokens, choices)}))
            return lines

        return await server.stream(requests, stop, [], chunk, closing)

    return app


# ---- running it -------------------------------------------------------------------------------------
def bind(host: str, port: int) -> socket.socket:
    """A listening socket (``port`` 0: a free port, read back from ``getsockname``)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def base_url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://{f'[{host}]' if ':' in host else host}:{port}"


def run(app: FastAPI, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info") -> None:
    """Serve ``app`` until interrupted; prints the address first (``port`` 0: a free one)."""
    import uvicorn

    sock = bind(host, port)
    print(f"steerzoo: serving {app.state.server.settings.model_name!r} on {base_url(sock)} "
          f"(OpenAI API under /v1, steering page at /)", flush=True)
    uvicorn.Server(uvicorn.Config(app, log_level=log_level, timeout_graceful_shutdown=5)).run(sockets=[sock])


@contextmanager
def serve_in_thread(app: FastAPI, host: str = "127.0.0.1", log_level: str = "warning") -> Iterator[str]:
    """Serve ``app`` from a background thread on a free port; yields its base URL (``http://host:port``) and
    stops the server on exit. For tests, notebooks and evaluation scripts."""
    import uvicorn

    sock = bind(host, 0)
    server = uvicorn.Server(uvicorn.Config(app, log_level=log_level, timeout_graceful_shutdown=5))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="steerzoo-serve", daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the server did not start (see the log above)")
        time.sleep(0.01)
    try:
        yield base_url(sock)
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()
