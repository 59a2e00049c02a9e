"""Shared test set-up: offline hub, tiny models, the shipped HH sample."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# cached reference log-probs go to a per-session folder, never the user's ~/.cache/steerzoo/ref_logps
os.environ.setdefault("STEERZOO_REF_CACHE", os.path.join(__import__("tempfile").mkdtemp(prefix="steerzoo-ref-"), "ref"))

import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


@pytest.fixture
def tmp_cwd(tmp_path, monkeypatch):
    """Run in a temporary folder so outputs/ and runs/ never land in the repo."""
    monkeypatch.chdir(tmp_path)
    return tmp_path
