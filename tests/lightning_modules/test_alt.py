"""ALT on the online loop (tiny model, HH prompts, VADER sentiment as the reward):

- the training step is Eq. 1 computed from plain full-vocabulary logits: the policy sees the feedback, the
  reference the same rows without it; β = 0 never builds or runs a reference;
- each of the paper's conditioning formats puts exactly the expected tokens before the prompt, in training rows
  and in sampling rows alike (toxicity's separator and Quark's quantile tokens are single new tokens);
- a run killed while sampling iteration 2 (round 1), and one killed while training on it, continue with
  ``--ckpt_path last`` exactly as the uninterrupted run: the same pool, losses and held-out metrics;
- the feedback is the steering knob: ``predict --steer`` conditions on the named feedback; mixing is refused.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch

import lightning_modules.alt as alt_module
from lightning_modules.alt import ALT
from lightning_modules.cli import main
from tests.factories import TINY_CLI, kill_online_run, tiny_kwargs
from zoo.collate import tokenize_examples
from zoo.feedback import QUANTILE_LABELS, SEPARATOR, quark_tokens
from zoo.preference import PreferenceError
from zoo.records import FeedbackResponse

ROOT = Path(__file__).resolve().parents[2]
PROMPT = [{"role": "user", "content": "Tell me about tea."}]


def alt(**kwargs) -> ALT:
    kw = {"scorers": ["sentiment"], **tiny_kwargs(), **kwargs}
    module = ALT(**kw)
    module.configure_model()
    return module


def batch_of(module: ALT, records: list[FeedbackResponse]) -> dict[str, torch.Tensor]:
    """Records -> the collated training batch, as the DataModule builds it."""
    examples = [ex for r in records for ex in module.example_fn(r, **module.example_kwargs("train"))]
    columns = {k: [e[k] for e in examples] for k in examples[0]}
    tok = tokenize_examples(columns, module.tokenizer, module.tokenize_settings)
    rows = [{k: tok[k][i] for k in ("prompt_ids", "completion_ids", "prefix_ids")} for i in range(len(examples))]
    return module.example_builder().collator()(rows)


def records(labels=("Excellent", "Horrible")) -> list[FeedbackResponse]:
    return [FeedbackResponse(prompt=PROMPT, response="Green tea is lovely.", feedback=labels[0]),
            FeedbackResponse(prompt=[{"role": "user", "content": "Hi?"}], response="Go away", feedback=labels[1])]


# ---- Eq. 1 in the training step ---------------------------------------------------------------------------------


def eq1_by_full_logits(module: ALT, batch, beta: float, alpha: float) -> tuple[float, float]:
    """(loss, mean KL) from whole-sequence logits: feedback spliced in by hand for the policy, none for p_0."""
    nll, kl, ent = [], [], []
    for i in range(batch["input_ids"].shape[0]):
        n = int(batch["attention_mask"][i].sum())
        ids, labels = batch["input_ids"][i, :n].tolist(), batch["labels"][i, :n]
        prefix = batch["prefix_ids"][i, : int(batch["prefix_lengths"][i])].tolist()
        first = int((labels != -100).nonzero()[0])
        cond = torch.tensor([prefix + ids])  # chat prompts have no BOS: the feedback goes first
        plain = torch.tensor([ids])
        with torch.no_grad():
            lp = module.model(cond).logits[0, len(prefix) + first - 1 : len(prefix) + n - 1].log_softmax(-1)
            lq = module.model(plain).logits[0, first - 1 : n - 1].log_softmax(-1)  # the initial weights = p_0
        y = torch.tensor(ids[first:n])
        nll += (-lp.gather(-1, y[:, None]).squeeze(-1)).tolist()
        kl += (lq.exp() * (lq - lp)).sum(-1).tolist()
        ent += (-(lp.exp() * lp).sum(-1)).tolist()
    loss = sum(a + beta * b - alpha * c for a, b, c in zip(nll, kl, ent)) / len(nll)
    return loss, sum(kl) / len(kl)


def test_training_step_is_eq1_with_a_reference_that_sees_no_feedback():
    module = alt(beta=0.5, alpha=0.06, condition={"format": "input"})
    assert len(module._reference) == 1  # a frozen copy of the initial weights
    batch = batch_of(module, records())
    loss = module.training_step(batch, 0)
    hand, mean_kl = eq1_by_full_logits(module, batch, 0.5, 0.06)
    assert mean_kl > 1e-4  # p_θ(·|f, x) and p_0(·|x) differ even at the initial weights: the feedback is seen
    assert math.isclose(loss.item(), hand, rel_tol=1e-4), (loss.item(), hand)


def test_beta_zero_never_builds_or_runs_a_reference(monkeypatch):
    module = alt(beta=0.0, condition={"format": "input"})
    assert module._reference == []
    n_params = sum(p.numel() for p in module.parameters())
    assert n_params == sum(p.numel() for p in module.model.parameters())  # nothing else held

    def refuse(*args, **kwargs):
        raise AssertionError("the reference ran with beta = 0")

    monkeypatch.setattr(module, "reference_hidden", refuse)
    batch = batch_of(module, records())
    loss = module.training_step(batch, 0)
    hand, _ = eq1_by_full_logits(module, batch, 0.0, 0.06)
    assert math.isclose(loss.item(), hand, rel_tol=1e-4)


# ---- conditioning formats ---------------------------------------------------------------------------------------

FORMATS = [
    ("separator", list(QUANTILE_LABELS["toxicity"]), "Lowest Toxicity" + SEPARATOR),
    ("input", list(QUANTILE_LABELS["summary"]), "Excellent. input: "),
    ("feedback_input", ["Harmless and very helpful", "Harmful"], "feedback: Harmless and very helpful input: "),
    ("token", quark_tokens(5), "_QUANTILE_TOKEN_0_"),
]


@pytest.mark.parametrize("fmt,labels,expected", FORMATS, ids=[f[0] for f in FORMATS])
def test_conditioning_formats_put_the_feedback_before_the_prompt(monkeypatch, fmt, labels, expected):
    kwargs = {"feedback": {"labels": labels}, "condition": {"format": fmt}}
    if fmt == "feedback_input":
        kwargs["feedback"] = {"kind": "llm_categories", "labels": labels, "judge": {"model": "m", "base_url": "x"}}
    module = alt(**kwargs)
    tok = module.tokenizer
    batch = batch_of(module, records((labels[0], labels[-1])))
    ids, mask, lab = module.conditioned_rows(batch)
    plain = tok.decode(batch["input_ids"][0][batch["attention_mask"][0].bool()])
    assert tok.decode(ids[0][mask[0].bool()]) == expected + plain  # the prompt (chat) and y follow the feedback
    assert torch.equal(lab[0][lab[0] != -100], batch["labels"][0][batch["labels"][0] != -100])  # y unchanged
    prefix = module.prefix_ids(labels[0])
    if fmt == "separator":  # the feedback's own tokens, then one new token
        assert prefix[-1] == tok.convert_tokens_to_ids(SEPARATOR) >= 260 and len(prefix) > 2
    if fmt == "token":  # one new token per quantile
        assert [module.prefix_ids(t) for t in labels] == [[tok.convert_tokens_to_ids(t)] for t in labels]
        assert len({tok.convert_tokens_to_ids(t) for t in labels}) == 5
        assert module.model.get_input_embeddings().num_embeddings >= len(tok)
    # sampling under that feedback writes the same prefix before the same prompt
    prompt_ids = module.encode_prompts([PROMPT])
    seen = []
    real = alt_module.generate

    def spy(model, tokenizer, rows, settings, **kw):
        seen.extend(rows)
        return real(model, tokenizer, rows, settings, **kw)

    monkeypatch.setattr(alt_module, "generate", spy)
    module.conditioned_samples(prompt_ids, [labels[0]], module.sampling)
    module.conditioned_samples(prompt_ids, [None], module.sampling)
    assert seen[0] == prefix + prompt_ids[0] and seen[1] == prompt_ids[0]


def test_steerlm_texts_rewrite_the_category():
    from zoo.feedback import HH_CATEGORIES, STEERLM_HH

    module = alt(feedback={"kind": "llm_categories", "judge": {"model": "m", "base_url": "x"}},
                 condition={"format": "feedback_input", "texts": STEERLM_HH})
    assert module.labels == list(HH_CATEGORIES)
    batch = batch_of(module, records(("Harmless and very helpful", "Harmful")))
    ids, mask, _ = module.conditioned_rows(batch)
    assert module.tokenizer.decode(ids[1][mask[1].bool()]).startswith("feedback: harmful:1, helpful:0 input: ")


# ---- steering ---------------------------------------------------------------------------------------------------


def test_feedback_is_the_steering_knob(tmp_path):
    module = alt()
    info = json.loads((module.save_pretrained(tmp_path / "hf") / "alt_feedback.json").read_text())
    assert info["labels"] == list(QUANTILE_LABELS["summary"]) and info["exemplar"] == "Excellent"
    assert module.attributes == list(QUANTILE_LABELS["summary"])
    assert module.prediction_info()["feedback"] == "Excellent"  # the exemplar by default
    with module.steer({"Horrible": 1}):
        assert module.prediction_info() == {"feedback": "Horrible", "conditioning": "Horrible. input: "}
    with pytest.raises(PreferenceError, match="one feedback at a time"):
        with module.steer({"Good": 1, "Bad": 1}):
            pass
    with pytest.raises(PreferenceError):
        module.preference({"Splendid": 1})


def test_bad_settings_fail_at_start_up():
    base = {"scorers": ["sentiment"], **tiny_kwargs()}
    with pytest.raises(ValueError, match="exemplar 'Great' is not one of the feedback labels"):
        ALT(exemplar="Great", **base)
    with pytest.raises(ValueError, match="needs feedback.judge"):
        ALT(feedback={"kind": "llm_categories"}, **base)
    with pytest.raises(ValueError, match="pool must be accumulate or flush"):
        ALT(pool="reset", **base)
    with pytest.raises(ValueError, match="feedback.kind must be"):
        ALT(feedback={"kind": "stars"}, **base)


# ---- resume: killed during iteration 2 ---------------------------------------------------------------------------

RUN = [
    "--config", str(ROOT / "configs" / "alt.yaml"), *TINY_CLI,
    "--model.init_args.prompts_per_round", "6", "--model.init_args.samples_per_prompt", "2",
    "--model.init_args.epochs_per_round", "1", "--model.init_args.beta", "0.05",
    "--model.init_args.round_sampling", "{max_new_tokens: 6, temperature: 1.0}",
    "--model.init_args.eval_sampling", "{n: 2, max_new_tokens: 6, temperature: 1.0, seed: 7}",
    "--model.init_args.optim.lr", "1e-3",
    "--data.init_args.max_samples", '{"train": 16, "validation": 4, "predict": 2}',
    "--data.init_args.batch_size", "4",  # round 0: 12 records, 3 steps; round 1 (accumulated): 24, 6 steps
    "--trainer.max_epochs", "2", "--trainer.log_every_n_steps", "1", "--trainer.check_val_every_n_epoch", "1",
    "--trainer.callbacks", "[{class_path: callbacks.checkpoint_io.LastCheckpoint, init_args: {save_top_k: 0, "
    "save_last: true, every_n_train_steps: 1, save_on_train_epoch_end: true}}]",
]


def args(root: Path) -> list[str]:
    return [*RUN, "--trainer.default_root_dir", str(root), "--trainer.logger",
            f"[{{class_path: lightning.pytorch.loggers.CSVLogger, init_args: {{save_dir: {root}, name: csv}}}}]"]


def logged(root: Path, key: str) -> dict[int, float]:
    out = {}
    for path in sorted((root / "csv").glob("version_*/metrics.csv")):
        for row in csv.DictReader(path.open()):
            if row.get(key):
                out[int(row["step"])] = float(row[key])
    return out


def state(root: Path) -> dict:
    ckpt = torch.load(root / "checkpoints" / "last.ckpt", weights_only=True)
    return {"pool": ckpt["online"]["pool"]["rounds"], **ckpt["alt"]}


def killed(root: Path, *, during: str) -> None:
    kill_online_run(main(args(root), run=False), during=during, step=5)  # round 1 trains steps 3-8


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("alt_straight")
    main(["fit", *args(root)])
    return root


@pytest.mark.parametrize("during", ["sampling", "training"])
def test_killed_in_iteration_2_resumes_as_if_uninterrupted(tmp_path, straight, during):
    root = tmp_path / "run"
    killed(root, during=during)
    main(["fit", *args(root), "--ckpt_path", "last"])
    want, got = state(straight), state(root)
    assert len(want["pool"]) == 2 and len(want["pool"][1]["samples"]) == 12
    assert got["pool"] == want["pool"]  # every sample, score and feedback
    assert got["round_stats"] == want["round_stats"] and got["eval_history"] == want["eval_history"]
    assert len(want["eval_history"]) == 2  # held-out metrics after each iteration
    for key in ("train/loss", "train/kl", "val/objective"):
        w, g = logged(straight, key), logged(root, key)
        assert sorted(g) == sorted(w) and w, key
        for step in w:
            assert math.isclose(g[step], w[step], abs_tol=1e-6), (key, step, g[step], w[step])
    assert sorted(logged(straight, "train/loss")) == list(range(9))
    assert len({round(v, 6) for v in logged(straight, "train/loss").values()}) > 3  # the loss really moves


def test_pool_feedback_and_artifacts(straight):
    pool = state(straight)["pool"]
    round1 = [FeedbackResponse.from_row(r) for r in pool[1]["samples"]]
    assert {r.feedback for r in round1} <= set(QUANTILE_LABELS["summary"])
    lines = (straight / "rounds" / "round-1.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == pool[1]["samples"]
    log_dirs = sorted((straight / "csv").glob("version_*"))
    assert (log_dirs[-1] / "alt" / "eval.png").stat().st_size > 0
    history = [json.loads(line) for line in (log_dirs[-1] / "alt" / "eval.jsonl").read_text().splitlines()]
    assert [h["iteration"] for h in history] == [1.0, 2.0] and {"dist-1", "dist-3", "objective"} <= set(history[0])


def test_predict_steers_by_feedback(straight, tmp_path):
    ckpt = straight / "checkpoints" / "last.ckpt"
    rows = {}
    for name in ("Excellent", "Horrible"):
        out = tmp_path / f"{name}.jsonl"
        main(["predict", *args(tmp_path / name), "--ckpt_path", str(ckpt), "--steer", json.dumps({name: 1}),
              "--model.init_args.sampling", "{max_new_tokens: 8, temperature: 0.0}",
              "--trainer.callbacks+", "callbacks.artifacts.JsonlPredictionWriter",
              "--trainer.callbacks.output_path", str(out)])
        rows[name] = [json.loads(line) for line in out.read_text().splitlines()]
    assert {r["feedback"] for r in rows["Excellent"]} == {"Excellent"}
    assert {r["conditioning"] for r in rows["Horrible"]} == {"Horrible. input: "}
    assert [r["steer"] for r in rows["Horrible"]][0] == {label: float(label == "Horrible")
                                                         for label in QUANTILE_LABELS["summary"]}


def test_serve_steers_by_feedback_and_refuses_a_mix():
    import openai

    from zoo.serve import ServeSettings, create_app, serve_in_thread

    module = alt(sampling={"max_new_tokens": 8, "temperature": 0.0}).eval()
    with torch.no_grad():  # a random model: make the feedback matter for greedy replies
        module.model.get_input_embeddings().weight.mul_(4.0)
    with serve_in_thread(create_app(module, ServeSettings(model_name="alt"))) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="EMPTY")
        card = client.models.list().data[0]
        assert card.model_extra.get("attributes") == list(QUANTILE_LABELS["summary"])
        replies = {}
        for label in ("Excellent", "Horrible"):
            reply = client.chat.completions.create(model="alt", messages=PROMPT, max_tokens=8, temperature=0,
                                                   extra_body={"steer": {label: 1}})
            ids = module.encode_prompts([PROMPT])
            want = module.conditioned_samples(ids, [label], dataclasses.replace(module.sampling, max_new_tokens=8))
            assert reply.choices[0].message.content == want.texts[0]  # the reply under that feedback
            replies[label] = want.texts[0]
        assert replies["Excellent"] != replies["Horrible"]
        with pytest.raises(openai.BadRequestError, match="one feedback at a time"):
            client.chat.completions.create(model="alt", messages=PROMPT, max_tokens=4,
                                           extra_body={"steer": {"Excellent": 1, "Horrible": 1}})


def test_steering_sweep_runs_between_best_and_worst_feedback(tmp_path):
    from types import SimpleNamespace

    from callbacks.steering import SteeringSweep

    module = alt(sampling={"max_new_tokens": 6, "temperature": 0.0}).eval()
    prompt_ids = module.encode_prompts([PROMPT, [{"role": "user", "content": "Hi?"}]])
    loader = SimpleNamespace(dataset={"prompt_ids": prompt_ids})
    trainer = SimpleNamespace(log_dir=str(tmp_path), default_root_dir=str(tmp_path), is_global_zero=True,
                              datamodule=SimpleNamespace(loader=lambda split: loader))
    sweep = SteeringSweep(scorers=["sentiment"], between=["Excellent", "Horrible"], points=3)
    sweep.on_fit_end(trainer, module)
    assert [p.as_dict() for p in sweep.result.grid][0]["Excellent"] == 1.0 and len(sweep.result.grid) == 2
    assert (tmp_path / "steering" / "sweep.png").stat().st_size > 0
