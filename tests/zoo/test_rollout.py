"""The rollout engine on builtin:tiny: greedy equals ``model.generate``; shared prefill equals independent
per-sample generation; per-row heads equal fused heads; the prefill hook sees the prefill only; stop
strings, the length cap, finish reasons; log-probs equal a teacher-forced recomputation; seeded results do
not depend on the batch; bad input is refused before anything runs."""

import copy

import pytest
import torch

from zoo.plural import PluralHead
from zoo.rollout import SamplingSettings, decode_batches, generate, next_tokens, prefill_buckets, sample_seed
from zoo.sampling import sample
from zoo.tiny import tiny_model, tiny_tokenizer

LENGTHS = (3, 17, 8, 30, 1, 12)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """builtin:tiny's ops are too small to split: on shared cores a second thread only waits at barriers."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def model():
    return tiny_model().eval()


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


def prompts(lengths=LENGTHS):
    g = torch.Generator().manual_seed(0)
    return [torch.randint(0, 256, (n,), generator=g).tolist() for n in lengths]


def hf_greedy(model, tok, prompt_ids, max_new_tokens):
    """Plain ``model.generate`` on one left-padded batch: each row up to and including its EOS."""
    width = max(map(len, prompt_ids))
    ids = torch.full((len(prompt_ids), width), tok.pad_token_id)
    mask = torch.zeros_like(ids)
    for i, p in enumerate(prompt_ids):
        ids[i, width - len(p) :], mask[i, width - len(p) :] = torch.tensor(p), 1
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=max_new_tokens,
                             eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    rows = out[:, width:].tolist()
    return [row[: row.index(tok.eos_token_id) + 1] if tok.eos_token_id in row else row for row in rows]


def teacher_forced(model, prompt, tokens, temperature):
    """log_softmax(logits / T) of each completion token, from one full forward without a cache."""
    ids = torch.tensor([prompt + tokens])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, len(prompt) - 1 : -1].float()
    return torch.log_softmax(logits / temperature, -1).gather(-1, torch.tensor(tokens)[:, None])[:, 0]


def test_greedy_equals_generate_at_n1(model, tok):
    ps = prompts()
    got = generate(model, tok, ps, SamplingSettings(max_new_tokens=10, temperature=0.0, batch_size=4))
    assert [c.token_ids for c in got.completions] == hf_greedy(model, tok, ps, 10)
    assert [c.prompt_index for c in got.completions] == list(range(len(ps)))
    t = got.timing
    assert t.prefill_s > 0 and t.decode_s > 0 and t.generated_tokens == sum(len(c.token_ids) for c in got.completions)


def test_shared_prefill_equals_independent_generation_per_sample(model, tok):
    # groups of 3 prompts, prefilled in buckets [5, 6], [9] and [13, 14]; stop strings and the cap end rows at
    # different steps, so rows leave the batch and later rows move into their slots
    ps = prompts((5, 14, 9, 13, 6))
    s = SamplingSettings(n=4, max_new_tokens=8, temperature=0.9, top_k=50, top_p=0.95, seed=3, batch_size=3,
                         max_total_length=19, stop=list("aeiou0123456789"))
    got = generate(model, tok, ps, s)
    assert {c.finish_reason for c in got.completions} == {"stop", "length"}
    assert len({len(c.token_ids) for c in got.completions}) > 3
    for i, p in enumerate(ps):
        for j, c in enumerate(got.for_prompt(i)):
            # sample j of prompt i on its own: full forward each step, no cache, no batch, its own generator
            g = torch.Generator().manual_seed(sample_seed(3, i, j))
            ids = list(p)
            for _ in range(len(c.token_ids)):
                with torch.no_grad():
                    logits = model(input_ids=torch.tensor([ids])).logits[:, -1].float()
                token, _ = next_tokens(logits, s, torch.rand(1, generator=g))
                ids.append(int(token))
            assert c.token_ids == ids[len(p) :], (i, j)
    assert len({tuple(c.token_ids) for c in got.completions}) == len(got.completions)  # samples differ


def test_inverse_cdf_sampling_by_hand():
    logits = torch.log(torch.tensor([[0.1, 0.4, 0.2, 0.3]]))
    s = SamplingSettings(temperature=1.0)
    # cumulative 0.1 0.5 0.7 1.0: u = 0.05 -> 0, 0.45 -> 1, 0.65 -> 2, 0.95 -> 3
    for u, want in ((0.05, 0), (0.45, 1), (0.65, 2), (0.95, 3)):
        token, logp = next_tokens(logits, s, torch.tensor([u]))
        assert int(token) == want and torch.allclose(logp, logits[0, want])
    # top_k 2 keeps {1: 0.4, 3: 0.3}, renormalised 4/7, 3/7; top_p 0.5 keeps {1, 3} (0.4 < 0.5 before 3)
    for u, want in ((0.5, 1), (0.6, 3)):
        assert int(next_tokens(logits, SamplingSettings(top_k=2), torch.tensor([u]))[0]) == want
        assert int(next_tokens(logits, SamplingSettings(top_p=0.5), torch.tensor([u]))[0]) == want
    # at T = 2 the probabilities are 0.163 0.325 0.230 0.282 (truncation applies at T): top_p 0.3 keeps token
    # 1 alone, and the log-prob is still that of the untruncated distribution at T
    token, logp = next_tokens(logits, SamplingSettings(top_p=0.3, temperature=2.0), torch.tensor([0.99]))
    assert int(token) == 1 and torch.allclose(logp, torch.log_softmax(logits / 2, -1)[0, 1])


def test_logprobs_equal_teacher_forced_recomputation(model, tok):
    ps = prompts((4, 11, 7))
    for s in (SamplingSettings(n=3, max_new_tokens=9, temperature=0.7, top_p=0.8, top_k=30, seed=1, batch_size=2),
              SamplingSettings(max_new_tokens=9, temperature=0.0)):
        got = generate(model, tok, ps, s)
        for c in got.completions:
            ref = teacher_forced(model, ps[c.prompt_index], c.token_ids, s.temperature or 1.0)
            torch.testing.assert_close(torch.tensor(c.logprobs), ref, rtol=0, atol=1e-4)


def test_per_row_heads_equal_each_weight_vector_alone_with_fused_heads(model, tok):
    plural = PluralHead(model.lm_head, ["a", "b", "c"], init="lowrank", rank=4)
    with torch.no_grad():
        plural.B.normal_(std=0.5, generator=torch.Generator().manual_seed(1))  # heads that really differ
    p = prompts((6, 6, 8, 22))  # prefilled in two buckets: [6, 6, 8] and [22]
    p[1] = p[0]  # one prompt under two weight vectors
    lams = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.2, 0.3, 0.5], [0.0, 0.0, 1.0]])
    fused = []
    for lam in lams:
        fused.append(copy.deepcopy(model))
        with torch.no_grad():
            fused[-1].lm_head.weight.copy_(plural.mixed_weight(lam))
    # row 0 stops early at a character of its own output (a later row and its weights move into its slot); the
    # cap gives the last row 6 new tokens
    text = tok.decode(hf_greedy(fused[0], tok, [p[0]], 8)[0])
    stop = next(ch for ch in text[1:] if ch.isascii() and ch.isprintable())
    s = SamplingSettings(max_new_tokens=8, temperature=0.0, max_total_length=28, stop=[stop])
    got = generate(model, tok, p, s, head=plural, head_args=(lams,)).completions
    assert got[0].finish_reason == "stop" and len(got[0].token_ids) < len(got[1].token_ids)
    for i in range(4):  # reference: plain model.generate with the fused head, one prompt at a time
        want = generate(fused[i], tok, [p[i]], SamplingSettings(**{**vars(s), "engine": "hf"})).completions[0]
        assert got[i].token_ids == want.token_ids, i
    assert got[0].token_ids != got[1].token_ids[: len(got[0].token_ids)]  # the weights steer


def test_prefill_hook_wraps_the_prefill_forward_only(model, tok):
    ps = prompts((5, 40, 6, 41))
    seen, calls = [], []
    embed = model.get_input_embeddings()
    handle = embed.register_forward_hook(lambda m, a, out: calls.append((len(seen) > 0 and seen[-1]["open"],
                                                                         tuple(a[0].shape))))

    class Hook:
        def __init__(self, index, ids, mask):
            self.record = {"index": index.tolist(), "ids": ids, "mask": mask, "open": False}
            seen.append(self.record)

        def __enter__(self):
            self.record["open"] = True

        def __exit__(self, *exc):
            self.record["open"] = False

    try:
        generate(model, tok, ps, SamplingSettings(n=2, max_new_tokens=4, seed=0), prefill_hook=Hook)
    finally:
        handle.remove()
    assert sorted(i for r in seen for i in r["index"]) == [0, 1, 2, 3]
    for r in seen:  # each row the hook sees is its prompt, left-padded
        for row, i in enumerate(r["index"]):
            real = r["mask"][row].bool()
            assert r["ids"][row][real].tolist() == ps[i] and not real[: (~real).sum()].any()
    assert all(inside == (width > 1) for inside, (_, width) in calls)  # hook open exactly for prefill forwards
    assert sum(width > 1 for _, (_, width) in calls) == len(seen)


def test_soft_prompt_hook_gives_the_same_samples_on_both_engines(model, tok):
    from zoo.control import GOOD, Control, ControlSettings, SoftPrompts, generate_with_control

    torch.manual_seed(1)
    soft = SoftPrompts(torch.randn(2, 3, model.config.hidden_size))
    control = Control(ControlSettings(kind="prompt", length=3), pad_id=tok.pad_token_id, soft_prompts=soft)
    ps = prompts((4, 9, 6))
    s = SamplingSettings(max_new_tokens=6, temperature=0.0)
    lean = generate_with_control(model, tok, control, ps, s, GOOD)
    hf = generate_with_control(model, tok, control, ps, SamplingSettings(**{**vars(s), "engine": "hf"}), GOOD)
    plain = sample(model, tok, None, s, prompt_ids=ps)
    assert lean.token_ids == hf.token_ids and lean.token_ids != plain.token_ids  # the soft prompt acts


def test_stop_string_cuts_the_text_and_ends_the_sample(model, tok):
    p = tok("Hello there", add_special_tokens=False)["input_ids"]
    ref = generate(model, tok, [p], SamplingSettings(max_new_tokens=16, temperature=0.0)).completions[0]
    stop = next(ch for ch in ref.text[1:] if ch.isascii() and ch.isprintable())
    cut = ref.text.find(stop)
    got = generate(model, tok, [p], SamplingSettings(max_new_tokens=16, temperature=0.0, stop=["never", stop]))
    c = got.completions[0]
    assert c.finish_reason == "stop" and c.text == ref.text[:cut]
    k = len(c.token_ids)  # the sample ends at the token that completed the stop string
    assert c.token_ids == ref.token_ids[:k] and k < 16
    assert stop in tok.decode(c.token_ids) and stop not in tok.decode(c.token_ids[:-1])
    hf = generate(model, tok, [p], SamplingSettings(max_new_tokens=16, temperature=0.0, stop=[stop], engine="hf"))
    assert (hf.completions[0].token_ids, hf.completions[0].text) == (c.token_ids, c.text)


def test_max_total_length_caps_prompt_plus_completion(model, tok):
    ps = prompts((5, 9, 12))
    free = generate(model, tok, ps, SamplingSettings(max_new_tokens=8, temperature=0.0)).completions
    got = generate(model, tok, ps, SamplingSettings(max_new_tokens=8, temperature=0.0, max_total_length=12))
    for c, ref, room in zip(got.completions, free, (7, 3, 0)):
        assert c.token_ids == ref.token_ids[:room] and c.finish_reason == "length"
    with pytest.raises(ValueError, match=r"prompt 1 has 13 tokens, more than sampling.max_total_length 12"):
        generate(model, tok, prompts((5, 13)), SamplingSettings(max_total_length=12))


def test_finish_reasons_eos_and_length(model, tok):
    ps = prompts((6, 10))
    ref = generate(model, tok, ps, SamplingSettings(max_new_tokens=12, temperature=0.0)).completions
    eos_tok = copy.deepcopy(tok)
    stop_id = ref[0].token_ids[3]  # make row 0's fourth greedy token the EOS
    eos_tok.eos_token = eos_tok.convert_ids_to_tokens(stop_id)
    assert eos_tok.eos_token_id == stop_id
    got = generate(model, eos_tok, ps, SamplingSettings(max_new_tokens=12, temperature=0.0)).completions
    first = ref[0].token_ids.index(stop_id) + 1
    assert got[0].finish_reason == "eos" and got[0].token_ids == ref[0].token_ids[:first]
    assert got[0].logprobs == pytest.approx(ref[0].logprobs[:first], abs=1e-5)
    if stop_id not in ref[1].token_ids:
        assert got[1].finish_reason == "length" and got[1].token_ids == ref[1].token_ids
    view = sample(model, eos_tok, None, SamplingSettings(max_new_tokens=12, temperature=0.0), prompt_ids=ps)
    assert view.token_ids[0] == ref[0].token_ids[: first - 1]  # the Samples view drops the EOS, as before
    assert len(view.logprobs[0]) == first - 1 and view.finish_reasons[0] == "eos" and not view.truncated[0]


def test_hf_engine_agrees_with_the_lean_engine(model, tok):
    ps = prompts()
    s = SamplingSettings(max_new_tokens=10, temperature=0.0, max_total_length=34, batch_size=4)  # 4 new tokens for the 30-token prompt
    lean = generate(model, tok, ps, s).completions
    hf = generate(model, tok, ps, SamplingSettings(**{**vars(s), "engine": "hf"})).completions
    for a, b in zip(lean, hf):
        assert (a.token_ids, a.finish_reason, a.text) == (b.token_ids, b.finish_reason, b.text)
        torch.testing.assert_close(torch.tensor(a.logprobs), torch.tensor(b.logprobs), rtol=0, atol=1e-5)


def test_seeded_rollouts_are_reproducible_and_independent_of_the_batch(model, tok):
    ps = prompts()
    s = SamplingSettings(n=3, max_new_tokens=6, temperature=1.0, seed=7, batch_size=4)
    state = torch.get_rng_state()
    first = [c.token_ids for c in generate(model, tok, ps, s).completions]
    assert torch.equal(torch.get_rng_state(), state)  # the caller's RNG stream is untouched
    assert first == [c.token_ids for c in generate(model, tok, ps, s).completions]
    one_by_one = generate(model, tok, ps, SamplingSettings(**{**vars(s), "batch_size": 1}))
    assert first == [c.token_ids for c in one_by_one.completions]
    alone = generate(model, tok, [ps[3]], s, prompt_index=[3])
    assert [c.token_ids for c in alone.completions] == first[9:12]
    other = generate(model, tok, ps, SamplingSettings(**{**vars(s), "seed": 8}))
    assert first != [c.token_ids for c in other.completions]


def test_decode_batches_split_where_padding_outweighs_a_weight_pass():
    lengths = [36, 40, 44, 52, 57, 69, 82, 96, 590]
    weights, kv = 538_000_000, 46_080  # SmolLM2-135M fp32: weight bytes, K/V bytes per cached token
    assert decode_batches(lengths, 1, 64, weights, kv) == [range(0, 9)]  # 9 rows: padding is cheap
    # 8 samples each: padding the 64 short rows to 590 would add K/V reads of ~2.7 weight passes per step
    assert decode_batches(lengths, 8, 64, weights, kv) == [range(0, 8), range(8, 9)]


def test_prefill_buckets_bound_the_padding():
    lengths = [36, 38, 40, 47, 52, 82, 91, 270, 290, 590]
    buckets = prefill_buckets(lengths)
    assert [list(b) for b in buckets][-1] == [9] and sum(len(b) for b in buckets) == len(lengths)
    for b in buckets:
        part = lengths[b.start : b.stop]
        assert max(part) * len(part) <= 1.25 * sum(part)


@pytest.mark.parametrize(
    "prompt_ids, settings, message",
    [
        ([[1, 2]], SamplingSettings(n=0), r"sampling.n must be >= 1"),
        ([], SamplingSettings(), r"no prompts to generate for"),
        ([[1, 2], []], SamplingSettings(), r"prompt 1 is empty"),
        ([[1] * 4, [1] * 9], SamplingSettings(max_total_length=8), r"prompt 1 has 9 tokens, more than .*max_total_length 8"),
        ([[1, 2]], SamplingSettings(top_p=0.0), r"sampling.top_p must be in \(0, 1\], got 0.0"),
        ([[1, 2]], SamplingSettings(top_p=1.5), r"sampling.top_p must be in \(0, 1\], got 1.5"),
        ([[1, 2]], SamplingSettings(temperature=-0.5), r"sampling.temperature must be >= 0"),
        ([[1, 2]], SamplingSettings(temperature=0.0, n=2), r"greedy decoding .* sampling.n is 2"),
        ([[1, 2]], SamplingSettings(stop="x"), r"sampling.stop must be a list"),
        ([[1, 2]], SamplingSettings(engine="vllm"), r"sampling.engine must be lean or hf"),
    ],
)
def test_bad_input_is_refused_before_generation(model, tok, prompt_ids, settings, message):
    calls = []
    handle = model.register_forward_hook(lambda *a: calls.append(1))
    try:
        with pytest.raises(ValueError, match=message):
            generate(model, tok, prompt_ids, settings)
    finally:
        handle.remove()
    assert not calls


def test_prompt_tuning_needs_the_hf_engine(tok):
    from zoo.backbone import BackboneConfig, PromptTuningSettings, load_backbone

    peft = load_backbone(BackboneConfig(name_or_path="builtin:tiny", prompt_tuning=PromptTuningSettings(4)))
    with pytest.raises(ValueError, match=r"PEFT prompt tuning .* set sampling.engine: hf"):
        generate(peft, tok, [[1, 2, 3]], SamplingSettings(max_new_tokens=3, temperature=0.0))
    out = generate(peft, tok, [[1, 2, 3]], SamplingSettings(max_new_tokens=3, temperature=0.0, engine="hf"))
    assert len(out.completions[0].token_ids) == 3 and peft.training  # train mode restored


def test_head_args_need_one_row_per_prompt(model, tok):
    plural = PluralHead(model.lm_head, ["a", "b"])
    with pytest.raises(ValueError, match=r"head_args\[0\] has 3 rows; it needs one per prompt \(2\)"):
        generate(model, tok, [[1, 2], [3]], SamplingSettings(), head=plural, head_args=(torch.ones(3, 2),))


def test_vllm_sync_weights_matches_policy(tmp_path, tok):
    """After an optimizer step and ``sync_weights``, vLLM's log-probs of a fixed sequence equal the policy's."""
    try:
        import vllm  # noqa: F401
    except ImportError:
        pytest.skip("vllm is not installed (optional extra [vllm], GPU only): VLLMEngine is untested here")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device: VLLMEngine is untested here")
    from zoo.rollout_vllm import VLLMEngine

    policy = tiny_model().cuda()
    policy.save_pretrained(tmp_path / "policy")
    tok.save_pretrained(tmp_path / "policy")
    engine = VLLMEngine(str(tmp_path / "policy"), tok, dtype="float32", enforce_eager=True)
    seq = prompts((24,))[0]
    opt = torch.optim.SGD(policy.parameters(), lr=0.5)
    ids = torch.tensor([seq], device="cuda")
    policy(input_ids=ids, labels=ids).loss.backward()
    opt.step()
    engine.sync_weights(policy)
    with torch.no_grad():
        logits = policy(input_ids=ids).logits[0, :-1].float()
    want = torch.log_softmax(logits, -1).gather(-1, ids[0, 1:, None])[:, 0].cpu()
    torch.testing.assert_close(torch.tensor(engine.score(seq)), want, rtol=0, atol=1e-3)
