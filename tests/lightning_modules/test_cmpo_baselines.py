"""The thesis's single-attribute DPO baseline is CMPO with one attribute and one-hot weighting: one head
copy, trained with cDPO on the max-margin pair y_c ≻_a y_r of each prompt. Its loss is plain DPO's."""

from pathlib import Path

import pytest
import torch
import yaml

from lightning_modules import CMPO, DPO
from zoo.collate import PadCollator, TokenizeSettings, tokenize_examples
from zoo.records import PreferencePair, ScoredResponse

ROOT = Path(__file__).resolve().parents[2]
TINY = {"name_or_path": "builtin:tiny"}
SETTINGS = {"max_length": 64, "prompt_format": "plain"}


def _scored() -> list[list[ScoredResponse]]:
    """Two prompts, three scored replies each; ``b`` is scored too but is not the baseline's attribute."""
    rows = {"xyzx": [("aaa", 1, 4), ("eee", 4, 0), ("aea", 2, 2)], "zzyx": [("111", 0, 1), ("121", 3, 0), ("212", 3, 3)]}
    return [[ScoredResponse(prompt=p, response=r, scores={"a": a, "b": b}, scales={"a": (0, 4), "b": (0, 4)})
             for r, a, b in replies] for p, replies in rows.items()]


def _batch(examples: list[dict], tokenizer) -> dict[str, torch.Tensor]:
    tok = tokenize_examples({"prompt": [e["prompt"] for e in examples], "completions": [e["completions"] for e in examples]},
                            tokenizer, TokenizeSettings(**SETTINGS))
    rows = [{"prompt_ids": p, "completion_ids": c, "idx": i, **({"weights": e["weights"]} if "weights" in e else {})}
            for i, (p, c, e) in enumerate(zip(tok["prompt_ids"], tok["completion_ids"], examples))]
    return PadCollator(tokenizer.pad_token_id)(rows)


def _perturb(module: torch.nn.Module, head: torch.Tensor) -> None:
    """The same seeded change to every trunk weight and to the trained head, in either module."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in sorted(module.model.named_parameters()):
            if "lm_head" not in name:
                p.add_(torch.randn(p.shape, generator=g) * 0.02)
        head.add_(torch.randn(head.shape, generator=g) * 0.05)


@pytest.mark.filterwarnings("ignore:You are trying to `self.log")
def test_single_attribute_cmpo_loss_equals_dpo_loss():
    cmpo = CMPO(attributes=["a"], weighting="one_hot", beta=0.5, label_smoothing=0.1, reference="live",
                backbone=TINY, tokenize=SETTINGS, ref_cache_dir=None)
    dpo = DPO(beta=0.5, loss_type="sigmoid", label_smoothing=0.1, reference="live", backbone=TINY, tokenize=SETTINGS,
              ref_cache_dir=None)
    cmpo.configure_model()
    dpo.configure_model()
    assert torch.equal(cmpo.heads.weight[0], dpo.model.lm_head.weight)  # k = 1: one copy of the base head

    examples = [e for group in _scored() for e in CMPO.example_fn(group, **cmpo.example_kwargs("train"))]
    # one pair per prompt: the greatest margin on a (4 vs 1; 3 vs 0, the first of two ties), b plays no part
    assert [(e["completions"], e["weights"], e["condition"]) for e in examples] == [
        (["eee", "aaa"], [1.0], "a"), (["121", "111"], [1.0], "a")]
    pairs = [PreferencePair(prompt=e["prompt"], chosen=e["completions"][0], rejected=e["completions"][1])
             for e in examples]
    cmpo_batch = _batch(examples, cmpo.tokenizer)
    dpo_batch = _batch([e for p in pairs for e in DPO.example_fn(p)], dpo.tokenizer)
    assert torch.equal(cmpo_batch["input_ids"], dpo_batch["input_ids"])

    cmpo.reference_logps(cmpo_batch)  # frozen copies of the initial models are the references
    dpo.reference_logps(dpo_batch)
    _perturb(cmpo, cmpo.heads.weight[0])
    _perturb(dpo, dpo.model.lm_head.weight)
    cmpo_loss = cmpo.dpo_step(cmpo_batch, "train")  # no Trainer: the loss is returned, not logged
    dpo_loss = dpo.dpo_step(dpo_batch, "train")
    assert abs(dpo_loss.item() - torch.log(torch.tensor(2.0)).item()) > 1e-3  # the policy moved off the reference
    torch.testing.assert_close(cmpo_loss, dpo_loss, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("attribute", ["verbosity", "sentiment"])
def test_baseline_configs_are_single_head_one_hot_cmpo(attribute):
    cfg = yaml.safe_load((ROOT / "configs" / "cmpo_baselines" / f"dpo_{attribute}.yaml").read_text())
    args = cfg["model"]["init_args"]
    assert cfg["model"]["class_path"] == "lightning_modules.CMPO"
    assert args["attributes"] == [attribute] and args["weighting"] == "one_hot"
    assert (args["beta"], args["label_smoothing"]) == (0.5, 0.1)
    assert cfg["data"]["init_args"]["scorers"] == [attribute]
