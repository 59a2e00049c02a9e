"""``zoo.serve`` on a real socket, through the official ``openai`` client: a served reply is the module's own
steered generation (chat, streamed, completions, n, seed, stop, usage); each malformed request gets its 4xx and
the server answers the next good one; API keys; requests sent together generate together without mix-ups; a
method that refuses a preference while generating fails only that request."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request

import openai
import pytest

from tests.factories import steered_cmpo, tiny_kwargs
from zoo.sampling import Samples, SamplingSettings
from zoo.serve import ServeSettings, TextStream, create_app, finish_choices, generate_batch, serve_in_thread

NAME = "tiny-cmpo"
HELLO = [{"role": "user", "content": "hello"}]
STEERS = [{"verbosity": 1.0}, {"sentiment": 1.0}, {"verbosity": 0.5, "sentiment": 0.5}]


@pytest.fixture(scope="module")
def module():
    return steered_cmpo()


@pytest.fixture(scope="module")
def url(module):
    with serve_in_thread(create_app(module, ServeSettings(model_name=NAME))) as base:
        yield base


@pytest.fixture(scope="module")
def client(url):
    return openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)


def direct(module, messages, steer, **sampling) -> Samples:
    """The module's own steered generation, in-process (the server is idle between these tests' requests)."""
    settings = SamplingSettings(**{"max_new_tokens": module.sampling.max_new_tokens, "temperature": 0.0, **sampling})
    ids = module.encode_prompts([messages])
    return module.generate_steered(ids, [steer], settings)[0]


def http(url: str, path: str, body: bytes | dict | None = None, headers: dict | None = None) -> tuple[int, dict]:
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    req = urllib.request.Request(url + path, data=data, headers={"Content-Type": "application/json", **(headers or {})},
                                 method="POST" if data is not None else "GET")
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_models_list_the_attributes(client):
    (card,) = client.models.list().data
    assert card.id == NAME and card.attributes == ["verbosity", "sentiment"]


def test_a_served_reply_is_the_modules_own_steered_generation(client, module):
    texts = []
    for steer in STEERS:
        reply = client.chat.completions.create(model=NAME, messages=HELLO, extra_body={"steer": steer})
        want = direct(module, HELLO, steer)
        assert reply.choices[0].message.content == want.texts[0]
        assert reply.choices[0].finish_reason == ("length" if want.truncated[0] else "stop")
        prompt_tokens = len(module.encode_prompts([HELLO])[0])
        assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (prompt_tokens, len(want.token_ids[0]))
        assert reply.usage.total_tokens == prompt_tokens + len(want.token_ids[0])
        assert reply.model_extra["steer"] == {"verbosity": 0.0, "sentiment": 0.0, **steer}
        texts.append(want.texts[0])
    assert len(set(texts)) == len(STEERS)  # the weights really steer this model


def test_a_streamed_reply_joins_to_the_same_text(client):
    steer = {"sentiment": 1.0}
    whole = client.chat.completions.create(model=NAME, messages=HELLO, extra_body={"steer": steer})
    chunks = list(client.chat.completions.create(model=NAME, messages=HELLO, extra_body={"steer": steer}, stream=True,
                                                 stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 1  # more than one piece
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == whole.choices[0].finish_reason
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    streamed = list(client.completions.create(model=NAME, prompt="abc", stream=True, extra_body={"steer": steer}))
    plain = client.completions.create(model=NAME, prompt="abc", extra_body={"steer": steer})
    assert "".join(c.choices[0].text for c in streamed) == plain.choices[0].text


def test_completions_take_prompts_n_and_seed(client, module):
    kw = dict(model=NAME, prompt=["abc", "hello world"], n=2, temperature=0.9, max_tokens=6)
    first = client.completions.create(seed=3, **kw)
    assert [c.index for c in first.choices] == [0, 1, 2, 3]
    assert first.usage.prompt_tokens == len("abc") + len("hello world")  # byte tokens, no chat template
    assert [c.text for c in client.completions.create(seed=3, **kw).choices] == [c.text for c in first.choices]
    assert [c.text for c in client.completions.create(seed=4, **kw).choices] != [c.text for c in first.choices]
    greedy = client.completions.create(model=NAME, prompt="abc", max_tokens=6)
    ids = module.tokenizer("abc")["input_ids"]
    settings = SamplingSettings(max_new_tokens=6, temperature=0.0)
    assert greedy.choices[0].text == module.generate_steered([ids], [None], settings)[0].texts[0]


def test_stop_strings_cut_the_reply_and_its_token_count(client, module):
    full = direct(module, HELLO, STEERS[0])
    stop = full.texts[0][4:6]
    cut = full.texts[0].index(stop)
    reply = client.chat.completions.create(model=NAME, messages=HELLO, stop=[stop, "never"],
                                           extra_body={"steer": STEERS[0]})
    assert reply.choices[0].message.content == full.texts[0][:cut]
    assert reply.choices[0].finish_reason == "stop"
    assert 0 < reply.usage.completion_tokens < len(full.token_ids[0])


def test_text_stream_decodes_token_by_token_and_holds_back_stop_strings(module):
    tok = module.tokenizer
    ids = tok("héllo wörld")["input_ids"]  # multi-byte characters over several byte tokens
    stream = TextStream(tok, [])
    pieces = [stream.push(t) for t in ids] + [stream.push(tok.eos_token_id)]
    assert "".join(pieces) == "héllo wörld" and "é" in pieces and stream.done
    assert pieces[1] == ""  # the first byte of é alone is no text yet
    stream = TextStream(tok, ["wö", "xyz"])
    pieces = [stream.push(t) for t in ids]
    assert "".join(pieces) == "héllo " and stream.done  # " w" waited until "wö" showed it was the stop string
    stream = TextStream(tok, ["lo!"])
    pieces = [stream.push(t) for t in tok("hello world")["input_ids"]]
    assert "".join(pieces) == "hello world" and pieces[4] == "" and pieces[5] == "lo "  # "lo" held back, then not a stop


def test_stop_strings_count_tokens_up_to_their_end(module):
    tok = module.tokenizer
    ids = tok("héllo wörld")["input_ids"]
    samples = Samples(prompts=["p"], texts=["héllo wörld"], token_ids=[ids], truncated=[True], n=1)
    (choice,) = finish_choices(tok, samples, ["wö"])
    assert (choice.text, choice.finish_reason) == ("héllo ", "stop")
    assert choice.completion_tokens == len(tok("héllo wö")["input_ids"])
    (choice,) = finish_choices(tok, samples, ["absent"])
    assert (choice.text, choice.finish_reason, choice.completion_tokens) == ("héllo wörld", "length", len(ids))


def test_streamed_text_arrives_while_its_batch_is_still_generating(module):
    release = threading.Event()

    def held_generate(module, requests, on_tokens=None):  # every token is out; the batch is not done yet
        out = generate_batch(module, requests, on_tokens)
        release.wait(timeout=60)
        return out

    with serve_in_thread(create_app(module, ServeSettings(model_name=NAME), generate=held_generate)) as base:
        client = openai.OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0)
        chunks = iter(client.chat.completions.create(model=NAME, messages=HELLO, stream=True,
                                                     extra_body={"steer": STEERS[0]}))
        head = [next(chunks), next(chunks)]  # the role, then text
        assert head[1].choices[0].delta.content and not release.is_set()
        release.set()
        text = "".join(c.choices[0].delta.content or "" for c in [*head, *chunks])
    assert text == direct(module, HELLO, STEERS[0]).texts[0]


def test_a_generate_batch_that_reports_no_steps_still_streams_the_whole_text(module):
    def quiet_generate(module, requests, on_tokens=None):
        return generate_batch(module, requests)

    with serve_in_thread(create_app(module, ServeSettings(model_name=NAME), generate=quiet_generate)) as base:
        client = openai.OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0)
        chunks = list(client.chat.completions.create(model=NAME, messages=HELLO, stream=True,
                                                     extra_body={"steer": STEERS[1]}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == direct(module, HELLO, STEERS[1]).texts[0]


def good(url: str) -> None:
    status, body = http(url, "/v1/chat/completions", {"model": NAME, "messages": HELLO, "steer": {"verbosity": 1}})
    assert status == 200 and body["choices"][0]["message"]["content"]


MALFORMED = [  # (what, body, status, words in the message)
    ("malformed JSON", b'{"model": "tiny-cmpo", "messages": [', 400, ["not valid JSON"]),
    ("a JSON array", b"[1, 2]", 400, ["JSON object"]),
    ("unknown attribute", {"steer": {"helpfulness": 1}}, 400, ["'helpfulness'", "['verbosity', 'sentiment']"]),
    ("negative weight", {"steer": {"verbosity": -1}}, 400, ["negative"]),
    ("all-zero weights", {"steer": {"verbosity": 0, "sentiment": 0}}, 400, ["all weights are zero"]),
    ("steer not a mapping", {"steer": [1, 2]}, 400, ["steer"]),
    ("max_tokens over the limit", {"max_tokens": 10**6}, 400, ["max_tokens", "limit of 2047"]),
    ("prompt + max_tokens over the context", {"max_tokens": 2040}, 400, ["24 tokens", "context length of 2048"]),
    ("max_tokens not a number", {"max_tokens": "many"}, 400, ["max_tokens"]),
    ("temperature out of range", {"temperature": 3}, 400, ["temperature"]),
    ("n > 1 when greedy", {"n": 2, "temperature": 0}, 400, ["greedy"]),
    ("no messages", {"messages": []}, 400, ["messages"]),
    ("an unknown role", {"messages": [{"role": "wizard", "content": "hi"}]}, 400, ["unknown role"]),
    ("a prompt over the token limit", {"messages": [{"role": "user", "content": "x" * 300}]}, 400,
     ["319 tokens", "limit of 256"]),  # byte tokens: 300 characters + 19 of the chat template
    ("a body over max_body_bytes", {"messages": [{"role": "user", "content": "x" * (1 << 20)}]}, 413, ["bytes"]),
    ("an unknown model", {"model": "gpt-5"}, 404, ["'gpt-5'", "tiny-cmpo"]),
    ("tools", {"tools": [{"type": "function"}]}, 400, ["not supported"]),
]


@pytest.mark.parametrize("what,body,status,words", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_a_malformed_request_gets_its_4xx_and_the_server_keeps_serving(url, what, body, status, words):
    if isinstance(body, dict):
        body = {"model": NAME, "messages": HELLO, **body}
    got, reply = http(url, "/v1/chat/completions", body)
    assert got == status, reply
    error = reply["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["type"] == "invalid_request_error"
    assert all(w in error["message"] for w in words), error["message"]
    good(url)


def test_unknown_routes_and_models_are_404(url):
    assert http(url, "/v1/nothing")[0] == 404
    status, reply = http(url, "/v1/models/gpt-5")
    assert status == 404 and reply["error"]["code"] == "model_not_found"
    good(url)


def test_an_api_key_guards_the_api_but_not_the_page(module):
    app = create_app(module, ServeSettings(model_name=NAME, api_key="s3cret"))
    with serve_in_thread(app) as base:
        body = {"model": NAME, "messages": HELLO}
        assert http(base, "/v1/models")[0] == 401
        status, reply = http(base, "/v1/chat/completions", body)
        assert status == 401 and "missing API key" in reply["error"]["message"]
        status, reply = http(base, "/v1/chat/completions", body, {"Authorization": "Bearer wrong"})
        assert status == 401 and "incorrect API key" in reply["error"]["message"]
        keyed = openai.OpenAI(base_url=base + "/v1", api_key="s3cret", max_retries=0)
        assert keyed.chat.completions.create(model=NAME, messages=HELLO).choices[0].message.content
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=base + "/v1", api_key="wrong", max_retries=0).models.list()
        with urllib.request.urlopen(base + "/", timeout=30) as r:
            assert r.status == 200 and b"/v1/chat/completions" in r.read()


def test_requests_sent_together_generate_together_without_mix_ups(module):
    prompts = ["hello", "tell me a story", "why?"]
    jobs = [(p, s) for p in prompts for s in STEERS]
    want = {(p, json.dumps(s)): direct(module, [{"role": "user", "content": p}], s).texts[0] for p, s in jobs}
    app = create_app(module, ServeSettings(model_name=NAME, batch_window_ms=200))
    got, barrier = {}, threading.Barrier(len(jobs))
    with serve_in_thread(app) as base:
        client = openai.OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0)

        def ask(p, s):
            barrier.wait()
            r = client.chat.completions.create(model=NAME, messages=[{"role": "user", "content": p}],
                                               extra_body={"steer": s})
            got[(p, json.dumps(s))] = r.choices[0].message.content

        threads = [threading.Thread(target=ask, args=job) for job in jobs]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert got == want
    assert app.state.server.batcher.batches < len(jobs) / 2  # 9 requests in a few batches, not one by one


def test_a_preference_refused_while_generating_fails_only_its_request():
    """MEET accepts two weights as a preference but samples under one control: the refusal comes from inside
    generation; the request is a 400 naming the rule, and the requests batched with it still succeed."""
    from lightning_modules.meet import MEET

    meet = MEET(attributes=["verbosity", "brevity"], control={"kind": "text"}, phases={"first_epochs": 0},
                **tiny_kwargs(sampling={"max_new_tokens": 6, "temperature": 0.0}))
    meet.configure_model()
    app = create_app(meet.eval(), ServeSettings(model_name="meet", batch_window_ms=300))
    results = {}
    with serve_in_thread(app) as base:
        def ask(name, steer):
            results[name] = http(base, "/v1/chat/completions", {"model": "meet", "messages": HELLO, "steer": steer})

        threads = [threading.Thread(target=ask, args=(n, s)) for n, s in
                   [("good", {"verbosity": 1}), ("bad", {"brevity": 1}), ("both", {"verbosity": 0.5, "brevity": 0.5})]]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        streamed = http(base, "/v1/chat/completions", {"model": "meet", "messages": HELLO, "stream": True,
                                                       "steer": {"verbosity": 0.5, "brevity": 0.5}})
    assert results["good"][0] == 200 and results["bad"][0] == 200
    status, reply = results["both"]
    assert status == 400 and "one control at a time" in reply["error"]["message"]
    assert app.state.server.batcher.batches == 2  # the three together, then the streamed one
    assert streamed[0] == 400 and "one control at a time" in streamed[1]["error"]["message"]  # before any text


def test_an_unsteerable_model_serves_but_refuses_a_steer():
    from lightning_modules.dpo import DPO

    dpo = DPO(ref_cache_dir=None, **tiny_kwargs(sampling={"max_new_tokens": 4, "temperature": 0.0}))
    dpo.configure_model()
    with serve_in_thread(create_app(dpo.eval(), ServeSettings(model_name="dpo"))) as base:
        assert http(base, "/v1/models")[1]["data"][0]["attributes"] == []
        status, reply = http(base, "/v1/chat/completions", {"model": "dpo", "messages": HELLO, "steer": {"x": 1}})
        assert status == 400 and "not steerable" in reply["error"]["message"]
        status, reply = http(base, "/v1/chat/completions", {"model": "dpo", "messages": HELLO})
        assert status == 200 and reply["usage"]["completion_tokens"] <= 4


def test_the_precision_context_wraps_generation(module):
    """``create_app(context=...)`` is entered in the generation thread around every batch (the CLI passes the
    trainer's autocast there, as ``predict`` runs under it)."""
    entered = []

    class Context:
        def __enter__(self):
            entered.append(threading.current_thread().name)

        def __exit__(self, *exc):
            return False

    with serve_in_thread(create_app(module, ServeSettings(model_name=NAME), context=Context)) as base:
        good(base)
    assert entered and all(name.startswith("steerzoo-generate") for name in entered)


def steerable_modules():
    """MEET with soft prompts (its own generate loop) and SteerLM's ACM (re-tokenizes with the ratings line)."""
    from lightning_modules.meet import MEET
    from lightning_modules.steerlm import SteerLMConditionedSFT

    meet = MEET(attributes=["verbosity", "brevity"], control={"kind": "prompt", "length": 2},
                **tiny_kwargs(sampling={"max_new_tokens": 10, "temperature": 0.0}))
    acm = SteerLMConditionedSFT(attributes=["verbosity", "sentiment"], system_prompt=None,
                                backbone={"name_or_path": "builtin:tiny"},
                                tokenize={"prompt_format": "plain", "max_length": 384, "max_prompt_length": 256},
                                sampling={"max_new_tokens": 10, "temperature": 0.0})
    return {"meet": (meet, {"brevity": 1}), "acm": (acm, {"verbosity": 1, "sentiment": 0.5})}


@pytest.mark.parametrize("method", ["meet", "acm"])
def test_other_methods_stream_the_same_reply_they_give_whole(method):
    module, steer = steerable_modules()[method]
    module.configure_model()
    with serve_in_thread(create_app(module.eval(), ServeSettings(model_name=method))) as base:
        client = openai.OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0)
        kw = dict(model=method, messages=HELLO, extra_body={"steer": steer})
        whole = client.chat.completions.create(**kw).choices[0].message.content
        chunks = [c.choices[0].delta.content or "" for c in client.chat.completions.create(stream=True, **kw)]
    assert whole == direct(module, HELLO, steer).texts[0]
    assert "".join(chunks) == whole and sum(1 for c in chunks if c) > 1
