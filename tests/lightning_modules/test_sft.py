"""SFT's loss counts completion tokens only."""

import torch
import torch.nn.functional as F

from lightning_modules import SFT
from tests.factories import tiny_kwargs
from zoo.collate import IGNORE_INDEX, PadCollator, TokenizeSettings, tokenize_examples
from zoo.logprobs import sequence_logprobs
from zoo.losses import nll_loss


def _batch(module):
    examples = {"prompt": [[{"role": "user", "content": "Name a colour."}], [{"role": "user", "content": "Hi?"}]],
                "completions": [["Blue."], ["Hello there, friend."]]}
    tok = tokenize_examples(examples, module.tokenizer, TokenizeSettings(max_length=256))
    rows = [{"prompt_ids": p, "completion_ids": c, "idx": i}
            for i, (p, c) in enumerate(zip(tok["prompt_ids"], tok["completion_ids"]))]
    return rows, PadCollator(module.tokenizer.pad_token_id)(rows)


def _loss(module, batch):
    return nll_loss(*sequence_logprobs(module.model, batch["input_ids"], batch["attention_mask"], batch["labels"]))


def test_sft_loss_ignores_prompt_tokens():
    module = SFT(**tiny_kwargs())
    module.configure_model()
    rows, batch = _batch(module)
    for i, row in enumerate(rows):  # labels: -100 on every prompt and pad position, the completion elsewhere
        n_p, n_c = len(row["prompt_ids"]), len(row["completion_ids"][0])
        assert (batch["labels"][i, :n_p] == IGNORE_INDEX).all()
        assert batch["labels"][i, n_p : n_p + n_c].tolist() == row["completion_ids"][0]
        assert (batch["labels"][i, n_p + n_c :] == IGNORE_INDEX).all()
    loss = _loss(module, batch)

    # the loss counts exactly the completion tokens (one per completion token, none for prompt or padding)...
    _, counts = sequence_logprobs(module.model, batch["input_ids"], batch["attention_mask"], batch["labels"])
    assert counts.tolist() == [len(row["completion_ids"][0]) for row in rows]

    # ...and the loss is the completion-only NLL of the full logits (independent computation)
    logits = module.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    ref = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(), batch["labels"][:, 1:].reshape(-1),
                          ignore_index=IGNORE_INDEX)
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-6)

    # counting prompt tokens would give a different loss (so the check above can fail)
    with_prompt = {**batch, "labels": torch.where(batch["attention_mask"].bool(), batch["input_ids"], IGNORE_INDEX)}
    assert abs(_loss(module, with_prompt).item() - loss.item()) > 1e-3
