"""Conversion and tokenization are cached by the datasets fingerprint: a second run reuses the cache
files instead of re-tokenizing, and a changed tokenize setting invalidates them."""

from lightning_modules import DPO
from tests.factories import hh_sample, tiny_kwargs


def _cache_files(dm):
    return sorted(f["filename"] for f in dm.datasets["train"].cache_files)


def test_second_setup_reuses_tokenized_cache(tmp_cwd, monkeypatch):
    from pathlib import Path

    import datasets

    # a fresh datasets cache, so earlier tests' cache files do not count
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", Path(tmp_cwd / "hf_cache"))
    calls = []
    import zoo.collate

    real = zoo.collate._tokenize_one

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(zoo.collate, "_tokenize_one", counting)
    first = hh_sample(train=8).attach(DPO(**tiny_kwargs()).example_builder())
    first.setup("fit")
    n_first = len(calls)
    assert n_first > 0
    second = hh_sample(train=8).attach(DPO(**tiny_kwargs()).example_builder())
    second.setup("fit")
    assert len(calls) == n_first  # nothing tokenized again
    assert _cache_files(first) == _cache_files(second)
    third = hh_sample(train=8).attach(DPO(**tiny_kwargs(tokenize={"max_length": 300, "length_policy": "truncate"})).example_builder())
    third.setup("fit")
    assert len(calls) > n_first  # other settings: tokenized anew
