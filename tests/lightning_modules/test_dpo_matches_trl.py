"""steerzoo's DPO equals TRL's DPOTrainer (trl 1.16) on the same tiny model and the same token ids.

Compared, per variant (sigmoid = DPO, cDPO = sigmoid with label smoothing 0.1, IPO), to atol 1e-5:
the batch-mean loss and the batch-mean chosen / rejected rewards (plus, to 1e-6 relative, the batch-mean
policy log-probs, sums of ~30 fp32 terms of size ~3), as
computed by (a) ``zoo.logprobs.sequence_logprobs`` + ``zoo.losses.dpo_loss`` and (b) the module path
``lightning_modules.dpo.DPO.dpo_step`` (live reference), against (c) a real ``trl.DPOTrainer`` whose
``compute_loss`` runs on a batch built by TRL's own collator from the very ids steerzoo tokenized.
The policy is the reference plus fixed seeded noise, so the loss is not log 2 and rewards are not 0.

TRL-1.16 quirks handled here:
- ``loss_type="sigmoid"`` ignores ``label_smoothing`` (it only feeds "robust", "exo_pair", "aot*"), so
  TRL has no cDPO loss type. Its loss terms combine into one: with A = -log σ(βh), B = -log σ(-βh) and
  robust = ((1-ε)A - εB)/(1-2ε), cDPO = (1-ε)A + εB = 2(1-ε)·sigmoid - (1-2ε)·robust, i.e.
  ``loss_type=["sigmoid", "robust"]`` with ``loss_weights=[2(1-ε), -(1-2ε)]``.
- IPO divides the log-ratios by the completion length inside the loss, but TRL's logged rewards stay
  β·(summed log-ratio) for every loss type.
- DPOConfig defaults to bf16=True and gradient_checkpointing=True: both are switched off (fp32 CPU;
  ``activation_checkpointing``, the transformers-5 name, avoids a deprecation warning).
- The trainer needs a train_dataset even to call compute_loss, and patches ``model.forward`` (fused LM
  head) and the pad token: it gets deep copies of the models.
"""

import copy
import math
from unittest import mock

import pytest
import torch
from datasets import Dataset
from trl import DPOConfig, DPOTrainer

from lightning_modules.dpo import DPO
from zoo.collate import PadCollator, TokenizeSettings, tokenize_examples
from zoo.logprobs import sequence_logprobs
from zoo.losses import dpo_loss
from zoo.tiny import tiny_model, tiny_tokenizer

EPS, ATOL = 0.1, 1e-5
# name -> (steerzoo kwargs, TRL DPOConfig kwargs). IPO uses beta 0.5: with 0.1 its loss is ~(1/(2*0.1))^2 = 25,
# where one fp32 ulp is ~2e-6, too close to ATOL for two differently ordered fp32 computations.
VARIANTS = {
    "sigmoid": (dict(beta=0.1, loss_type="sigmoid", label_smoothing=0.0), dict(beta=0.1, loss_type=["sigmoid"])),
    "cdpo": (
        dict(beta=0.1, loss_type="sigmoid", label_smoothing=EPS),
        dict(beta=0.1, loss_type=["sigmoid", "robust"], loss_weights=[2 * (1 - EPS), -(1 - 2 * EPS)],
             label_smoothing=EPS),
    ),
    "ipo": (dict(beta=0.5, loss_type="ipo", label_smoothing=0.0), dict(beta=0.5, loss_type=["ipo"])),
}
TRIPLES = [  # (prompt, chosen, rejected), all of different lengths
    ("What is 2+2?", "4.", "It is five, clearly."),
    ("Name a colour.", "Blue is a fine colour to name.", "No."),
    ("Say hi", "Hi!", "Hello there, how are you today?"),
    ("Write one word about the sea, please.", "Waves", "Sand"),
]


@pytest.fixture(scope="module")
def setup():
    tok = tiny_tokenizer()
    reference = tiny_model(seed=0).eval()
    policy = tiny_model(seed=0).eval()
    gen = torch.Generator().manual_seed(1234)
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    raw = {"prompt": [[{"role": "user", "content": p}] for p, _, _ in TRIPLES],
           "completions": [[c, r] for _, c, r in TRIPLES]}
    tokenized = tokenize_examples(raw, tok, TokenizeSettings(prompt_format="chat", max_length=2048))
    assert tokenized["length_status"] == ["ok"] * len(TRIPLES)
    examples = [{"prompt_ids": p, "completion_ids": c, "idx": i}
                for i, (p, c) in enumerate(zip(tokenized["prompt_ids"], tokenized["completion_ids"], strict=True))]
    batch = PadCollator(pad_token_id=tok.pad_token_id)(examples)
    return tok, policy, reference, examples, batch


def steerzoo_functional(setup, beta, loss_type, label_smoothing):
    """The loss exactly as DPO.dpo_step assembles it, from the pure functions."""
    _, policy, reference, _, batch = setup
    args = (batch["input_ids"], batch["attention_mask"], batch["labels"])
    logps, counts = sequence_logprobs(policy, *args)
    with torch.no_grad():
        ref, _ = sequence_logprobs(reference, *args)
    b = batch["idx"].shape[0]
    sums = logps.detach()
    lengths = (counts[:b], counts[b:]) if loss_type == "ipo" else None
    losses, r_c, r_r = dpo_loss(logps[:b], logps[b:], ref[:b], ref[b:], beta, loss_type, label_smoothing, lengths)
    return {"loss": losses.mean().item(), "rewards/chosen": r_c.mean().item(), "rewards/rejected": r_r.mean().item(),
            "logps/chosen": sums[:b].mean().item(), "logps/rejected": sums[b:].mean().item()}


def steerzoo_module(setup, beta, loss_type, label_smoothing, packed=False):
    """DPO.dpo_step itself (live reference), its logged metrics captured; ``packed``: on the prefix-shared
    batch the training loader gives by default (``share_prompt``), else on two padded rows per pair."""
    _, policy, reference, examples, batch = setup
    if packed:
        batch = PadCollator(pad_token_id=tiny_tokenizer().pad_token_id, share_prompt=True)(examples)
        assert "pred_labels" in batch
    module = DPO(backbone={"name_or_path": "builtin:tiny"}, reference="live", beta=beta, loss_type=loss_type,
                 label_smoothing=label_smoothing, ref_cache_dir=None)
    module.model = policy
    module._ref_model.append(reference)
    with mock.patch.object(module, "log_dict") as log_dict:
        loss = module.dpo_step(batch, "train")
    logged = log_dict.call_args.args[0]
    return {"loss": loss.item(), "logged_loss": logged["train/loss"].item(),
            "rewards/chosen": logged["train/rewards_chosen"].item(),
            "rewards/rejected": logged["train/rewards_rejected"].item()}


def trl_reference(setup, tmp_path, trl_kwargs):
    """A real DPOTrainer's compute_loss on TRL's collation of steerzoo's ids; returns its logged metrics."""
    _, policy, reference, examples, _ = setup
    config = DPOConfig(output_dir=str(tmp_path), report_to=[], max_length=None, bf16=False,
                       activation_checkpointing=False, use_cpu=True, per_device_train_batch_size=len(examples),
                       **trl_kwargs)
    train = Dataset.from_dict({"prompt": [p for p, _, _ in TRIPLES], "chosen": [c for _, c, _ in TRIPLES],
                               "rejected": [r for _, _, r in TRIPLES]})  # only to construct the trainer
    trainer = DPOTrainer(model=copy.deepcopy(policy), ref_model=copy.deepcopy(reference), args=config,
                         train_dataset=train, processing_class=tiny_tokenizer())
    trl_batch = trainer.data_collator(
        [{"prompt_ids": e["prompt_ids"], "chosen_ids": e["completion_ids"][0], "rejected_ids": e["completion_ids"][1]}
         for e in examples]
    )
    loss = trainer.compute_loss(trainer.model, trl_batch)
    mode = "train" if trainer.model.training else "eval"
    metrics = {k: v[-1] for k, v in trainer._metrics[mode].items()}
    return {"loss": loss.item(), **metrics}, trl_batch


@pytest.fixture(scope="module")
def results(setup, tmp_path_factory):
    out = {}
    for name, (zoo_kwargs, trl_kwargs) in VARIANTS.items():
        trl, trl_batch = trl_reference(setup, tmp_path_factory.mktemp(name), trl_kwargs)
        out[name] = {"zoo": steerzoo_functional(setup, **zoo_kwargs), "module": steerzoo_module(setup, **zoo_kwargs),
                     "packed": steerzoo_module(setup, **zoo_kwargs, packed=True), "trl": trl, "trl_batch": trl_batch}
    return out


def test_trl_sees_the_same_tokens(setup, results):
    batch = setup[-1]
    for r in results.values():
        trl_batch = r["trl_batch"]
        assert torch.equal(trl_batch["input_ids"], batch["input_ids"])
        assert torch.equal(trl_batch["attention_mask"], batch["attention_mask"])
        assert torch.equal(trl_batch["completion_mask"].bool(), batch["labels"] != -100)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_logprobs_and_loss_match_trl(results, variant):
    zoo, module, trl = results[variant]["zoo"], results[variant]["module"], results[variant]["trl"]
    for key in ("logps/chosen", "logps/rejected"):
        # summed fp32 log-probs (~-60..-90, one ulp ~8e-6): compared relatively
        assert zoo[key] == pytest.approx(trl[key], rel=1e-6, abs=ATOL), key
    assert zoo["loss"] == pytest.approx(trl["loss"], abs=ATOL)
    assert module["loss"] == pytest.approx(trl["loss"], abs=ATOL)
    assert module["logged_loss"] == pytest.approx(trl["loss"], abs=ATOL)
    assert results[variant]["packed"]["loss"] == pytest.approx(trl["loss"], abs=ATOL)  # prefix sharing
    # the comparison is not trivial: policy != reference
    at_reference = math.log(2) if variant != "ipo" else (1 / (2 * VARIANTS[variant][0]["beta"])) ** 2
    assert abs(trl["loss"] - at_reference) > 1e-3


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_rewards_match_trl(results, variant):
    zoo, module, trl = results[variant]["zoo"], results[variant]["module"], results[variant]["trl"]
    for key in ("rewards/chosen", "rewards/rejected"):
        assert abs(trl[key]) > 1e-3, f"{key} is ~0: the policy does not differ from the reference"
        assert zoo[key] == pytest.approx(trl[key], abs=ATOL), (key, zoo[key], trl[key])
        assert module[key] == pytest.approx(trl[key], abs=ATOL), (key, module[key], trl[key])
        assert results[variant]["packed"][key] == pytest.approx(trl[key], abs=ATOL), key


def test_trl_distinguishes_the_variants(results):
    """The three TRL set-ups really compute different losses (cDPO's combination is not a no-op)."""
    losses = [results[v]["trl"]["loss"] for v in VARIANTS]
    assert min(abs(a - b) for i, a in enumerate(losses) for b in losses[i + 1:]) > 1e-4
