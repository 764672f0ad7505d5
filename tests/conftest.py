"""Shared fixtures: where ../shared lives, the offline GPT-2 BPE files, a quiet tiktoken cache."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def shared_path() -> Path:
    return Path(os.environ.get("TORCHGPT_SHARED_DIR", REPO_ROOT.parent / "shared"))


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
def astro_shards(
    shared_dir: Path, gpt2_bpe_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """Token shards of the shared astronomy textbook (~630K train tokens), built once per session."""
    import subprocess
    import sys

    out = tmp_path_factory.mktemp("astro_shards")
    subprocess.run(
        [
            sys.executable,
            str(REPO_ROOT / "tools" / "prepare_data.py"),
            "--out",
            str(out),
            "--input",
            str(shared_dir / "data" / "text" / "openstax_jsonl" / "astronomy.jsonl"),
            "--val-tokens",
            "40000",
            "--workers",
            "0",
            "--no-progress",
            "--tokenizer-dir",
            str(gpt2_bpe_dir),
        ],
        check=True,
        capture_output=True,
    )
    return out
