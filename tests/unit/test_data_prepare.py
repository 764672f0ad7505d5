"""Text -> shards: round trip, splits, token cap, determinism, resume, and input errors."""

from __future__ import annotations

import io
import json
import random

import numpy as np
import pytest
import tiktoken

from torchgpt.data import prepare as prep
from torchgpt.data import sources
from torchgpt.data.progress import Progress
from torchgpt.data.shards import open_tokens, split_shards, verify_shards
from torchgpt.data.tokenizer import EOT_ID, get_tokenizer

WORDS = "the cell energy of a star moves through water and caf\u00e9 \u00fcber 42 , . \n".split(" ")


def make_docs(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 120))) for _ in range(n)]


@pytest.fixture
def enc(gpt2_bpe_dir) -> tiktoken.Encoding:
    return get_tokenizer(gpt2_bpe_dir)


@pytest.fixture
def docs_file(tmp_path):
    docs = make_docs(150)
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    return path, docs


def run(tmp_path, name, inputs, **kw):
    kw = {"shard_size": 500, "workers": 0, "progress": False, **kw}
    cfg = prep.PrepareConfig(out_dir=str(tmp_path / name), inputs=[str(i) for i in inputs], **kw)
    return prep.prepare(cfg), tmp_path / name


def split_tokens(out, split) -> np.ndarray:
    entries = split_shards(json.loads((out / "manifest.json").read_text()), split)
    return np.concatenate([np.asarray(open_tokens(out / e["file"])) for e in entries])


def decode_docs(enc, tokens: np.ndarray) -> list[str]:
    """Documents of a token stream in which every document starts with end-of-text."""
    starts = np.flatnonzero(tokens == EOT_ID)
    assert len(starts) and starts[0] == 0
    ends = [*starts[1:], len(tokens)]
    return [enc.decode(tokens[s + 1 : e].tolist()) for s, e in zip(starts, ends, strict=True)]


def test_round_trip_decodes_to_documents_joined_by_eot(tmp_path, docs_file, enc):
    path, docs = docs_file
    manifest, out = run(tmp_path, "out", [path], val_fraction=0.0, workers=2, batch_chars=700)
    tokens = split_tokens(out, "train")
    assert enc.decode(tokens.tolist()) == "".join("<|endoftext|>" + d for d in docs)
    sizes = [e["tokens"] for e in manifest["shards"]]
    assert len(sizes) > 3 and set(sizes[:-1]) == {500} and 0 < sizes[-1] <= 500
    assert manifest["documents"] == {"train": 150, "val": 0}
    assert sum(e["documents"] for e in manifest["shards"]) == 150
    assert manifest["tokens"]["train"] == len(tokens) and verify_shards(out) == []


def test_val_fraction_holds_out_whole_documents(tmp_path, docs_file, enc):
    path, docs = docs_file
    manifest, out = run(tmp_path, "out", [path], val_fraction=0.25)
    in_val = [prep.in_val_by_hash(d, 0.25) for d in docs]
    assert 20 < sum(in_val) < 60
    assert decode_docs(enc, split_tokens(out, "val")) == [
        d for d, v in zip(docs, in_val, strict=True) if v
    ]
    assert decode_docs(enc, split_tokens(out, "train")) == [
        d for d, v in zip(docs, in_val, strict=True) if not v
    ]
    assert manifest["documents"] == {"train": 150 - sum(in_val), "val": sum(in_val)}
    assert {e["file"][:3] for e in manifest["shards"]} == {"tra", "val"}


def test_val_tokens_takes_the_first_documents(tmp_path, docs_file, enc):
    path, docs = docs_file
    manifest, out = run(tmp_path, "out", [path], val_tokens=1000)
    val = decode_docs(enc, split_tokens(out, "val"))
    assert (
        val == docs[: len(val)] and decode_docs(enc, split_tokens(out, "train")) == docs[len(val) :]
    )
    # Whole documents, the last one crossing 1000 tokens.
    assert (
        manifest["tokens"]["val"]
        >= 1000
        > manifest["tokens"]["val"] - (len(enc.encode(val[-1])) + 1)
    )


def test_max_tokens_caps_the_total_exactly(tmp_path, docs_file):
    path, _ = docs_file
    full, out_full = run(tmp_path, "full", [path], val_fraction=0.0)
    capped, out_cap = run(tmp_path, "cap", [path], val_fraction=0.0, max_tokens=1234)
    assert capped["tokens"] == {"train": 1234, "val": 0}
    assert [e["tokens"] for e in capped["shards"]] == [500, 500, 234]
    np.testing.assert_array_equal(
        split_tokens(out_cap, "train"), split_tokens(out_full, "train")[:1234]
    )
    assert capped["truncated_last_document"] in (True, False)
    assert full["tokens"]["train"] > 1234


def test_output_is_byte_identical_across_runs_workers_and_batching(tmp_path, docs_file):
    path, _ = docs_file
    _, a = run(tmp_path, "a", [path], val_fraction=0.2, workers=2, batch_chars=300)
    _, b = run(tmp_path, "b", [path], val_fraction=0.2, workers=0)
    files = sorted(p.name for p in a.iterdir())
    assert files == sorted(p.name for p in b.iterdir()) and "manifest.json" in files
    for name in files:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


def test_interrupted_run_resumes_to_identical_output(tmp_path, docs_file, monkeypatch):
    path, _ = docs_file
    _, reference = run(tmp_path, "ref", [path], val_fraction=0.2)
    real = sources.iter_local_parts

    def dies_midway(*args, **kwargs):
        for i, part in enumerate(real(*args, **kwargs)):
            if i == 40:
                raise KeyboardInterrupt
            yield part

    monkeypatch.setattr(sources, "iter_local_parts", dies_midway)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, "out", [path], val_fraction=0.2, batch_chars=200)
    out = tmp_path / "out"
    state = json.loads((out / prep.STATE_FILE).read_text())
    assert 0 < state["next_doc"] < 150 and not (out / "manifest.json").exists()
    partial = out / f".train_{len(state['splits']['train']['shards']):06d}.bin.partial"
    assert partial.exists()
    # Also survive a kill between renaming a finished shard and recording it in the state.
    partial.rename(out / partial.name[1:].removesuffix(".partial"))
    monkeypatch.setattr(sources, "iter_local_parts", real)
    run(tmp_path, "out", [path], val_fraction=0.2, workers=2)
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in reference.iterdir())
    for p in reference.iterdir():
        assert (out / p.name).read_bytes() == p.read_bytes(), p.name


def test_rerun_of_a_finished_folder_is_a_no_op_but_other_settings_are_refused(tmp_path, docs_file):
    path, _ = docs_file
    first, out = run(tmp_path, "out", [path])
    mtime = (out / "train_000000.bin").stat().st_mtime_ns
    assert run(tmp_path, "out", [path])[0] == first
    assert (out / "train_000000.bin").stat().st_mtime_ns == mtime
    with pytest.raises(
        ValueError, match="manifest.json comes from a run with different shard_size"
    ):
        run(tmp_path, "out", [path], shard_size=600)


def test_input_errors(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        run(tmp_path, "out", [tmp_path / "missing.parquet"])
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(ValueError, match="empty.jsonl holds no documents"):
        run(tmp_path, "out", [tmp_path / "empty.jsonl"])
    with pytest.raises(ValueError, match="val_fraction or val_tokens, not both"):
        run(tmp_path, "out", [tmp_path / "empty.jsonl"], val_fraction=0.1, val_tokens=10)
    with pytest.raises(ValueError, match="shard_size=0"):
        run(tmp_path, "out", [tmp_path / "empty.jsonl"], shard_size=0)


def test_progress_line_shows_rates_and_eta():
    stream = io.StringIO()
    progress = Progress(total_docs=1000, total_tokens=10_000, stream=stream)
    progress.start(100, 1000)  # a resumed run: earlier work does not count in the rates
    progress.update(300, 3500)
    progress.close()
    line = stream.getvalue()
    assert line.startswith("300 docs (") and "/s) | 3.50k tokens (" in line
    assert "| 35.0% | ETA 0:" in line and line.endswith("\n")
