"""Shared fixtures: where ../shared lives, the offline GPT-2 BPE files, a quiet tiktoken cache,
synthetic token shards."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from torchgpt.testing import write_synthetic_shards

REPO_ROOT = Path(__file__).resolve().parents[1]
if os.environ.get("TORCHGPT_SHARED_DIR"):
    # The README spells it relative (../shared): pin it to an absolute path once, so tests and
    # the processes they start (another cwd) all see the same folder.
    os.environ["TORCHGPT_SHARED_DIR"] = str(Path(os.environ["TORCHGPT_SHARED_DIR"]).resolve())


def shared_path() -> Path:
    """$TORCHGPT_SHARED_DIR (relative to the directory pytest started in) or ../shared, absolute."""
    return Path(os.environ.get("TORCHGPT_SHARED_DIR", REPO_ROOT.parent / "shared")).resolve()


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    path = shared_path()
    if not (path / "data" / "README.md").exists():
        pytest.skip(f"shared data not found at {path} (set TORCHGPT_SHARED_DIR to ../shared)")
    return path


@pytest.fixture(scope="session")
def gpt2_bpe_dir() -> Path:
    path = shared_path() / "tokenizers" / "gpt2"
    if not (path / "vocab.bpe").exists():
        pytest.skip(f"GPT-2 BPE files not found in {path} (needed offline for the tokenizer)")
    return path


@pytest.fixture(autouse=True, scope="session")
def _offline_tiktoken_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    # Tests never touch the user's tiktoken cache; the tokenizer seeds this one from the BPE files.
    os.environ.setdefault("TIKTOKEN_CACHE_DIR", str(tmp_path_factory.mktemp("tiktoken_cache")))
    bpe = shared_path() / "tokenizers" / "gpt2"
    if bpe.exists():
        os.environ.setdefault("TORCHGPT_GPT2_BPE_DIR", str(bpe))


@pytest.fixture(scope="session")
def token_shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Synthetic, learnable token shards (600K train / 40K val tokens), built once per session.

    Tests of the trainer, parity and resume run on these, so they need no ../shared.
    """
    return write_synthetic_shards(tmp_path_factory.mktemp("token_shards"))
