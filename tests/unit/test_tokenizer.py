"""GPT-2 tokenizer offline: seeded from local BPE files, hash-checked, clear offline error."""

from __future__ import annotations

import hashlib
import shutil

import numpy as np
import pytest
import requests
import tiktoken
import tiktoken.load
import tiktoken.registry

from torchgpt.data import tokenizer as tok
from torchgpt.data.prepare import _init_worker, tokenize_documents


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch):
    """An empty tiktoken cache, no env-provided BPE folder, and no in-process encoding cache."""
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv(tok.BPE_DIR_ENV, raising=False)
    monkeypatch.delenv(tok.SHARED_DIR_ENV, raising=False)
    monkeypatch.setattr(tiktoken.registry, "ENCODINGS", {})
    monkeypatch.setattr(tok, "_ENCODING", None)
    return tmp_path / "cache"


def test_hello_world_offline_from_local_files(gpt2_bpe_dir, fresh_cache, monkeypatch):
    def no_network(url):
        raise AssertionError(f"tiktoken tried to download {url}")

    monkeypatch.setattr(tiktoken.load, "read_file", no_network)
    enc = tok.get_tokenizer(gpt2_bpe_dir)
    assert enc.encode_ordinary("Hello world") == [15496, 995]
    assert enc.eot_token == tok.EOT_ID == 50256 and enc.n_vocab == tok.VOCAB_SIZE
    # The cache now holds both files under tiktoken's names (sha1 of the download URL), and
    # torchgpt's faster-loading copy of the rank table.
    names = {p.name for p in fresh_cache.iterdir()}
    url = "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/vocab.bpe"
    assert hashlib.sha1(url.encode()).hexdigest() in names
    assert len(names) == 3 and tok._RANKS_FILE in names


def test_env_var_names_the_bpe_folder(gpt2_bpe_dir, fresh_cache, monkeypatch):
    monkeypatch.setenv(tok.BPE_DIR_ENV, str(gpt2_bpe_dir))
    assert tok.get_tokenizer().encode_ordinary("Hello world") == [15496, 995]
    assert len(list(fresh_cache.iterdir())) == 3


def test_cached_rank_table_loads_the_same_encoding(gpt2_bpe_dir, fresh_cache, monkeypatch):
    official = tok.get_tokenizer(gpt2_bpe_dir)  # tiktoken's own loader; writes the rank table
    assert official is tiktoken.get_encoding("gpt2")
    monkeypatch.setattr(tok, "_ENCODING", None)
    monkeypatch.setattr(tiktoken.load, "read_file", None)  # any use of tiktoken's loader fails
    fast = tok.get_tokenizer()
    assert fast is not official and fast._mergeable_ranks == official._mergeable_ranks
    assert fast._pat_str == official._pat_str and fast._special_tokens == official._special_tokens
    text = "Hello world <|endoftext|> caf\u00e9\n\n  x"
    assert fast.encode_ordinary(text) == official.encode_ordinary(text)
    # A damaged table is ignored (tiktoken's loader is used again, and rewrites it).
    table = fresh_cache / tok._RANKS_FILE
    table.write_bytes(b"AAA= 0\n")
    monkeypatch.setattr(tok, "_ENCODING", None)
    monkeypatch.setattr(tiktoken.registry, "ENCODINGS", {})
    assert tok.get_tokenizer() is tiktoken.get_encoding("gpt2")
    assert hashlib.sha256(table.read_bytes()).hexdigest() == tok._RANKS_SHA256


def test_file_with_wrong_hash_is_refused(gpt2_bpe_dir, fresh_cache, tmp_path):
    bad = tmp_path / "bpe"
    shutil.copytree(gpt2_bpe_dir, bad)
    with open(bad / "vocab.bpe", "ab") as f:
        f.write(b"tampered\n")
    actual = hashlib.sha256((bad / "vocab.bpe").read_bytes()).hexdigest()
    with pytest.raises(ValueError) as err:
        tok.get_tokenizer(bad)
    message = str(err.value)
    assert str(bad / "vocab.bpe") in message
    assert actual in message and tok.GPT2_FILES["vocab.bpe"] in message
    assert not fresh_cache.exists() or not any(fresh_cache.iterdir())  # nothing was seeded


def test_missing_bpe_file_is_named(gpt2_bpe_dir, fresh_cache, tmp_path):
    partial = tmp_path / "bpe"
    partial.mkdir()
    shutil.copy(gpt2_bpe_dir / "vocab.bpe", partial)
    with pytest.raises(ValueError, match="encoder.json does not exist"):
        tok.get_tokenizer(partial)


def test_offline_and_not_seeded_says_so(fresh_cache, monkeypatch):
    def offline(url):
        raise requests.exceptions.ConnectionError(f"Failed to resolve host for {url}")

    monkeypatch.setattr(tiktoken.load, "read_file", offline)
    with pytest.raises(tok.TokenizerUnavailable) as err:
        tok.get_tokenizer()
    message = str(err.value)
    assert "not in the tiktoken cache" in message and str(fresh_cache) in message
    assert "offline" in message and "\n" not in message
    assert tok.BPE_DIR_ENV in message and tok.SHARED_DIR_ENV in message
    assert "--tokenizer-dir" in message


def test_document_stream_matches_encode_ordinary(gpt2_bpe_dir):
    # The prepare workers use encode_to_numpy; it must equal encode_ordinary, including text
    # that spells the special token (which stays ordinary text, never id 50256).
    docs = [
        "Hello world",
        "",
        "a <|endoftext|> b\n\n  tabs\tand unicode: caf\u00e9 \u4e2d\u6587",
        "lone surrogate \ud800 from a JSON string",
    ]
    _init_worker(str(gpt2_bpe_dir), 0.0)
    tokens, lengths, flags = tokenize_documents(docs)
    enc = tiktoken.get_encoding("gpt2")
    expected = [t for d in docs for t in [tok.EOT_ID, *enc.encode_ordinary(d)]]
    assert tokens.dtype == np.uint16 and tokens.tolist() == expected
    assert lengths.tolist() == [len(enc.encode_ordinary(d)) + 1 for d in docs]
    assert flags is None
    assert int(np.count_nonzero(tokens == tok.EOT_ID)) == len(docs)
