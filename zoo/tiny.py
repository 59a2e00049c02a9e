"""``builtin:tiny`` — a random tiny Llama and a byte-level tokenizer that needs no files, for tests.

The vocabulary is the 256 bytes plus four special tokens, so the LM head is tiny (with 49k tokens the
logits would dominate the cost of every test). Weights are seeded, so every test sees the same model.
"""

from __future__ import annotations

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>")

# ChatML, the same layout SmolLM2-Instruct uses, so chat-formatted code paths are exercised in tests.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """Byte-level BPE with no merges: every UTF-8 byte is one token; ids 256.. are the special tokens."""
    byte_to_unicode = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(byte_to_unicode))}
    for tok in SPECIAL_TOKENS:
        vocab[tok] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(list(SPECIAL_TOKENS))
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|pad|>",
        unk_token=None,
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.name_or_path = "builtin:tiny"
    return fast


def tiny_config(vocab_size: int, **overrides) -> LlamaConfig:
    cfg = dict(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=False,
        eos_token_id=SPECIAL_TOKENS.index("<|im_end|>") + 256,
        pad_token_id=SPECIAL_TOKENS.index("<|pad|>") + 256,
        bos_token_id=None,
    )
    cfg.update(overrides)
    return LlamaConfig(**cfg)


def tiny_model(seed: int = 0, **overrides) -> LlamaForCausalLM:
    vocab = 256 + len(SPECIAL_TOKENS)
    with torch.random.fork_rng(devices=[]):  # do not disturb the caller's RNG stream
        torch.manual_seed(seed)
        model = LlamaForCausalLM(tiny_config(vocab, **overrides))
    model.name_or_path = "builtin:tiny"
    return model
