"""Shard format: header round trip, atomic writer, and one clear error per kind of bad file."""

from __future__ import annotations

import json

import numpy as np
import pytest

from torchgpt.data import shards
from torchgpt.data.shards import HEADER_BYTES, ShardHeader, ShardWriter

TOK = {"name": "gpt2", "vocab_size": 50257, "eot_id": 50256}


def write_dir(path, train_sizes, val_sizes=(), shard_size=None):
    """A shard folder with a minimal manifest; shard i of a split holds i*10000 + arange(n)."""
    path.mkdir(parents=True, exist_ok=True)
    entries = []
    for split, sizes in (("train", train_sizes), ("val", val_sizes)):
        writer = ShardWriter(path, split, shard_size or max(sizes or [1]), TOK)
        for i, n in enumerate(sizes):
            writer.write(np.arange(i * 10000, i * 10000 + n, dtype=np.uint16))
            writer.finish()
        entries += writer.shards
    manifest = {"tokenizer": TOK, "shards": entries}
    (path / "manifest.json").write_text(json.dumps(manifest))
    return path


def test_header_round_trip_and_llm_c_layout(tmp_path):
    path = write_dir(tmp_path / "d", [300])
    header = shards.read_header(path / "train_000000.bin")
    assert header == ShardHeader(300, "gpt2", 50257, 50256)
    ints = np.fromfile(path / "train_000000.bin", dtype="<i4", count=3)
    assert ints.tolist() == [20240520, 1, 300]  # what llm.c's _peek_data_shard reads
    assert shards.open_tokens(path / "train_000000.bin").tolist() == list(range(300))
    assert (path / "train_000000.bin").stat().st_size == HEADER_BYTES + 2 * 300


def test_writer_splits_into_full_shards_and_hides_partial_ones(tmp_path):
    writer = ShardWriter(tmp_path, "train", 100, TOK)
    completed = writer.write(np.arange(250, dtype=np.uint16))
    assert completed and [e["tokens"] for e in writer.shards] == [100, 100]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        ".train_000002.bin.partial",
        "train_000000.bin",
        "train_000001.bin",
    ]
    writer.finish()
    assert [e["tokens"] for e in writer.shards] == [100, 100, 50]
    tokens = np.concatenate([shards.open_tokens(tmp_path / e["file"]) for e in writer.shards])
    assert tokens.tolist() == list(range(250))
    assert writer.shards[0]["sha256"] == shards.file_sha256(tmp_path / "train_000000.bin")


def _corrupt(path, offset, values):
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(np.asarray(values, dtype="<i4").tobytes())


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda p: p.write_bytes(p.read_bytes()[:100]), "shorter than the 1024-byte header"),
        (lambda p: p.write_bytes(p.read_bytes()[:-10]), "truncated or corrupt"),
        (lambda p: _corrupt(p, 0, [12345]), "has magic 12345, expected 20240520"),
        (lambda p: _corrupt(p, 4, [7]), "format version 7"),
        (lambda p: _corrupt(p, 8, [10**6]), "header promises 1000000 tokens"),
        (lambda p: _corrupt(p, 12, [0]), "names no usable tokenizer"),
    ],
    ids=["short-header", "truncated-tokens", "magic", "version", "count", "tokenizer"],
)
def test_bad_header_errors_name_the_file(tmp_path, damage, message):
    path = write_dir(tmp_path / "d", [300]) / "train_000000.bin"
    damage(path)
    with pytest.raises(ValueError, match=message) as err:
        shards.read_header(path)
    assert str(path) in str(err.value)


def test_verify_names_every_bad_file(tmp_path):
    data = write_dir(tmp_path / "d", [300, 300, 300], [200])
    assert shards.verify_shards(data) == []
    _corrupt(data / "train_000001.bin", HEADER_BYTES + 20, [7])  # flip tokens: hash differs
    (data / "val_000000.bin").unlink()
    (data / "train_000009.bin").write_bytes(b"stray")
    problems = shards.verify_shards(data)
    assert len(problems) == 3
    assert "train_000001.bin: sha256" in problems[0]
    assert "val_000000.bin does not exist" in problems[1]
    assert "train_000009.bin: shard file not listed" in problems[2]


def test_verify_reports_out_of_range_token_ids(tmp_path):
    data = write_dir(tmp_path / "d", [300])
    path = data / "train_000000.bin"
    tokens = np.fromfile(path, dtype="<u2", offset=HEADER_BYTES)
    tokens[5] = 60000
    path.write_bytes(path.read_bytes()[:HEADER_BYTES] + tokens.tobytes())
    manifest = json.loads((data / "manifest.json").read_text())
    manifest["shards"][0]["sha256"] = shards.file_sha256(path)  # consistent hash, bad content
    (data / "manifest.json").write_text(json.dumps(manifest))
    (problem,) = shards.verify_shards(data)
    assert str(path) in problem and "token id 60000 is out of range" in problem


def test_manifest_errors_and_fingerprint(tmp_path):
    with pytest.raises(ValueError, match="does not exist; create it"):
        shards.read_manifest(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="manifest.json does not exist"):
        shards.read_manifest(tmp_path / "empty")
    a = write_dir(tmp_path / "a", [300, 200], [100])
    b = write_dir(tmp_path / "b", [300, 200], [150])
    c = write_dir(tmp_path / "c", [300, 201], [100])
    # Val shards do not enter the training stream, so they do not change the fingerprint.
    assert shards.data_fingerprint(a) == shards.data_fingerprint(b) != shards.data_fingerprint(c)
