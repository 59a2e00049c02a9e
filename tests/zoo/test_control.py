"""Control tokens: MEET's loss by hand, splicing controls into rows, soft prompts equal to ``inputs_embeds``
(log-probs and greedy generation), LoRA routing (a mixed batch equals its halves run apart; a "good" row
gives no gradient to the "bad" adapter and vice versa)."""

import math

import torch
import torch.nn.functional as F

from zoo.collate import IGNORE_INDEX
from zoo.control import (
    BAD,
    GOOD,
    Control,
    ControlSettings,
    SoftPrompts,
    add_control_adapters,
    controlled_logprobs,
    generate_with_control,
    meet_loss,
    repeated_word_embedding,
    splice,
    word_ids,
)
from zoo.sampling import SamplingSettings
from zoo.tiny import tiny_model, tiny_tokenizer

PAD = 259


def test_meet_loss_hand_computation():
    # two pairs: y_w log-probs -3 (2 tokens), -5 (3 tokens); y_l log-probs -4 (1 token), -6 (4 tokens)
    loss, nll_good, nll_bad = meet_loss(torch.tensor([-3.0, -5.0]), torch.tensor([2, 3]),
                                        torch.tensor([-4.0, -6.0]), torch.tensor([1, 4]))
    assert math.isclose(loss.item(), (3 + 5 + 4 + 6) / (2 + 3 + 1 + 4), rel_tol=1e-6)
    assert math.isclose(nll_good.item(), 8 / 5, rel_tol=1e-6) and math.isclose(nll_bad.item(), 10 / 5, rel_tol=1e-6)


def _batch():
    # row 0: prompt [1, 2, 3], completion [4, 5]; row 1: prompt [6], completion [7, 8, 9]
    ids = torch.tensor([[1, 2, 3, 4, 5], [6, 7, 8, 9, PAD]])
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 1, 0]])
    labels = torch.tensor([[-100, -100, -100, 4, 5], [-100, 7, 8, 9, -100]])
    return ids, mask, labels


def test_splice_before_and_between():
    ids, mask, labels = _batch()
    x = IGNORE_INDEX
    out, m, lab, is_ctrl = splice(ids, mask, labels, [[50, 51], [60]], "before", 0, PAD)
    assert out.tolist() == [[50, 51, 1, 2, 3, 4, 5], [60, 6, 7, 8, 9, PAD, PAD]]
    assert m.tolist() == [[1] * 7, [1] * 5 + [0, 0]]
    assert lab.tolist() == [[x, x, x, x, x, 4, 5], [x, x, 7, 8, 9, x, x]]
    assert is_ctrl.long().tolist() == [[1, 1, 0, 0, 0, 0, 0], [1, 0, 0, 0, 0, 0, 0]]
    out, m, lab, is_ctrl = splice(ids, mask, labels, [[50, 51], [60]], "between", 0, PAD)
    assert out.tolist() == [[1, 2, 3, 50, 51, 4, 5], [6, 60, 7, 8, 9, PAD, PAD]]
    assert lab.tolist() == [[x, x, x, x, x, 4, 5], [x, x, 7, 8, 9, x, x]]
    # a tokenizer-added BOS stays first
    out, *_ = splice(ids, mask, labels, [[50], [60]], "before", 1, PAD)
    assert out[:, :2].tolist() == [[1, 50], [6, 60]]


def test_soft_prompt_init_repeats_the_word_embedding():
    tok = tiny_tokenizer()
    emb = torch.arange(260, dtype=torch.float).unsqueeze(1).repeat(1, 8)  # row i is i everywhere
    ids = word_ids(tok, "good")
    assert ids == [220, 70, 78, 78, 67]  # " good" as bytes: space (220), then ord(c) - 33
    init = repeated_word_embedding(emb, ids, 3)
    assert init.shape == (3, 8) and torch.all(init == (220 + 70 + 78 + 78 + 67) / 5)
    soft = SoftPrompts.from_words(emb, tok, ["good", "bad"], 3)
    assert torch.equal(soft.prompts[GOOD], init) and soft(torch.tensor([BAD, GOOD])).shape == (2, 3, 8)


def _soft_control(model, placement="before", length=3):
    torch.manual_seed(1)
    soft = SoftPrompts(torch.randn(2, length, model.config.hidden_size))
    return Control(ControlSettings(kind="prompt", placement=placement, length=length), pad_id=PAD, soft_prompts=soft)


def test_soft_prompt_logprobs_equal_an_inputs_embeds_forward():
    model = tiny_model()
    ids, mask, labels = _batch()
    for placement in ("before", "between"):
        control = _soft_control(model, placement)
        controls = torch.tensor([GOOD, BAD])
        got, counts = controlled_logprobs(model, control, ids, mask, labels, controls)
        # reference: build inputs_embeds by hand and score with the full logits
        rows, ref = [], []
        for i in range(2):
            n = int(mask[i].sum())
            k = 0 if placement == "before" else int((labels[i] != -100).nonzero()[0])
            e = model.get_input_embeddings()(ids[i, :n])
            emb = torch.cat([e[:k], control.soft_prompts.prompts[controls[i]], e[k:]])
            lab = torch.cat([labels[i, :k], torch.full((3,), -100), labels[i, k:n]])
            logits = model(inputs_embeds=emb[None]).logits[0, :-1]
            t = lab[1:]
            keep = t != -100
            ref.append(F.log_softmax(logits[keep], -1).gather(-1, t[keep][:, None]).sum())
            rows.append(int(keep.sum()))
        torch.testing.assert_close(got, torch.stack(ref), rtol=1e-5, atol=1e-5)
        assert counts.tolist() == rows == [2, 3]
    got.sum().backward()  # gradients reach the soft prompts
    assert control.soft_prompts.prompts.grad.abs().sum() > 0


def test_soft_prompt_generation_matches_generate_from_inputs_embeds():
    model, tok = tiny_model(), tiny_tokenizer()
    control = _soft_control(model)
    prompts = [[10, 11, 12, 13], [20, 21]]
    settings = SamplingSettings(max_new_tokens=5, temperature=0.0)
    got = generate_with_control(model, tok, control, prompts, settings, control_id=GOOD)
    # reference: transformers' own inputs_embeds generation, same left padding
    vec = control.soft_prompts.prompts[GOOD].detach()
    emb = model.get_input_embeddings()
    width = 3 + 4
    embeds = torch.zeros(2, width, vec.shape[-1])
    attention = torch.zeros(2, width, dtype=torch.long)
    for i, p in enumerate(prompts):
        row = torch.cat([vec, emb(torch.tensor(p)).detach()])
        embeds[i, width - len(row):], attention[i, width - len(row):] = row, 1
    with torch.no_grad():
        ref = model.generate(inputs_embeds=embeds, attention_mask=attention, max_new_tokens=5, do_sample=False,
                             eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    for i in range(2):
        expected = ref[i].tolist()
        expected = expected[: expected.index(tok.eos_token_id)] if tok.eos_token_id in expected else expected
        assert got.token_ids[i] == expected
    assert got.prompts == [tok.decode(p) for p in prompts]


def _lora_model():
    model = add_control_adapters(tiny_model(), ControlSettings(kind="lora", lora_r=2, lora_target_modules=["q_proj",
                                                                                                          "v_proj"]))
    torch.manual_seed(2)
    for n, p in model.named_parameters():
        if "lora_B" in n:  # B starts at zero (no gradient to A, identical adapters): give both adapters an effect
            torch.nn.init.normal_(p, std=0.1)
    model.requires_grad_(True)
    return model


def test_lora_mixed_batch_equals_the_halves_run_apart():
    model = _lora_model()
    control = Control(ControlSettings(kind="lora"), pad_id=PAD)
    ids, mask, labels = _batch()
    ids, mask, labels = (torch.cat([t, t]) for t in (ids, mask, labels))
    mixed = torch.tensor([GOOD, BAD, BAD, GOOD])
    got, _ = controlled_logprobs(model, control, ids, mask, labels, mixed)
    for c in (GOOD, BAD):
        rows = (mixed == c).nonzero().squeeze(1)
        alone, _ = controlled_logprobs(model, control, ids[rows], mask[rows], labels[rows], torch.full((2,), c))
        torch.testing.assert_close(got[rows], alone, rtol=1e-5, atol=1e-6)
    # the same text under the two adapters scores differently: routing is real
    assert not torch.allclose(got[0], got[2])


def test_lora_routing_sends_each_rows_gradient_to_its_own_adapter():
    control = Control(ControlSettings(kind="lora"), pad_id=PAD)
    ids, mask, labels = _batch()
    for c, other in ((GOOD, "bad"), (BAD, "good")):
        model = _lora_model()
        logps, _ = controlled_logprobs(model, control, ids, mask, labels, torch.full((2,), c))
        logps.sum().backward()
        mine = "good" if c == GOOD else "bad"
        grads = {n: p.grad for n, p in model.named_parameters() if "lora_" in n}
        assert all(g is None or not g.any() for n, g in grads.items() if f".{other}." in n)
        assert all(g is not None and g.any() for n, g in grads.items() if f".{mine}." in n)
        # requires_grad survives PEFT's set_adapter (which would freeze the inactive adapter)
        assert all(p.requires_grad for p in model.parameters())
