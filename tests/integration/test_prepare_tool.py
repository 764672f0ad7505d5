"""tools/prepare_data.py end to end: SIGKILL + resume, the shared corpora, datasets streaming,
--verify."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from torchgpt.data import prepare as prep
from torchgpt.data import sources
from torchgpt.data.shards import HEADER_BYTES, open_tokens, split_shards
from torchgpt.data.tokenizer import EOT_ID, get_tokenizer

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tools"))
import prepare_data  # noqa: E402  (the CLI under test)

pytestmark = pytest.mark.slow

# Runs prepare() with a source that stops (sleeps) before part (batch) BLOCK_AT, after writing a
# marker file, so the test can SIGKILL it at a known point mid-shard.
KILL_SCRIPT = """
import json, pathlib, sys, time
from torchgpt.data import prepare, sources
args = json.loads(sys.argv[1])
real = sources.iter_local_parts
def blocking(*a, **k):
    for i, part in enumerate(real(*a, **k)):
        if i == args["block_at"]:
            pathlib.Path(args["marker"]).write_text("blocked")
            time.sleep(600)
        yield part
sources.iter_local_parts = blocking
prepare.prepare(prepare.PrepareConfig(**args["cfg"]))
"""


def _docs(n: int) -> list[str]:
    rng = random.Random(1)
    words = "atoms light orbit cell market law the of and is , .".split()
    return [" ".join(rng.choice(words) for _ in range(rng.randint(10, 150))) for _ in range(n)]


def _shard_bytes(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir()) if p.name != "manifest.json"}


def _manifest(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text())


def test_sigkill_mid_run_then_rerun_equals_uninterrupted_run(tmp_path, gpt2_bpe_dir):
    src = tmp_path / "docs.jsonl"
    src.write_text("".join(json.dumps({"text": d}) + "\n" for d in _docs(400)))
    flags = ["--input", str(src), "--shard-size", "2000", "--val-fraction", "0.2", "--no-progress"]
    assert prepare_data.main(["--out", str(tmp_path / "ref"), "--workers", "1", *flags]) == 0

    out, marker = tmp_path / "out", tmp_path / "blocked"
    cfg = {
        "out_dir": str(out),
        "inputs": [str(src)],
        "shard_size": 2000,
        "val_fraction": 0.2,
        "workers": 1,
        "batch_chars": 1500,
        "progress": False,
    }
    args = json.dumps({"cfg": cfg, "block_at": 50, "marker": str(marker)})
    proc = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, args], cwd=REPO)
    try:
        deadline = time.monotonic() + 120
        while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert marker.exists(), f"prepare never reached the kill point (exit {proc.poll()})"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    names = {p.name for p in out.iterdir()}
    assert prep.STATE_FILE in names and "manifest.json" not in names
    assert "train_000000.bin" in names and any(n.endswith(".partial") for n in names)

    rerun = subprocess.run(
        [
            sys.executable,
            str(REPO / "tools" / "prepare_data.py"),
            "--out",
            str(out),
            "--workers",
            "2",
            *flags,
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert rerun.returncode == 0, rerun.stderr
    assert "resuming" in rerun.stderr
    assert _shard_bytes(out) == _shard_bytes(tmp_path / "ref")
    ours, ref = _manifest(out), _manifest(tmp_path / "ref")
    assert ours.pop("command") != ref.pop("command") and ours == ref
    assert "--workers 2" in _manifest(out)["command"]


def test_shared_corpora_parquet_jsonl_txt(tmp_path, shared_dir, gpt2_bpe_dir, capsys):
    text = shared_dir / "data" / "text"
    enc = get_tokenizer(gpt2_bpe_dir)
    cases = {
        "parquet": (text / "openstax" / "business-law.parquet", 30_000),
        "jsonl": (text / "openstax_jsonl" / "astronomy.jsonl", 20_000),
        "txt": (text / "tinyshakespeare" / "input.txt", 12_345),
    }
    for kind, (path, cap) in cases.items():
        # One .txt file is one document, and val holds out whole documents: keep it all train.
        val = ["--val-fraction", "0"] if kind == "txt" else ["--val-tokens", "2000"]
        out = tmp_path / kind
        argv = [
            "--out",
            str(out),
            "--input",
            str(path),
            "--max-tokens",
            str(cap),
            "--shard-size",
            "8000",
            *val,
            "--workers",
            "2",
        ]
        assert prepare_data.main(argv) == 0
        manifest = _manifest(out)
        assert sum(manifest["tokens"].values()) == cap
        assert manifest["source"]["files"][0]["path"] == str(path)
        assert (
            manifest["tokens"]["val"] >= 2000 if kind != "txt" else manifest["tokens"]["val"] == 0
        )
        first = split_shards(manifest, "val" if kind != "txt" else "train")[0]
        tokens = np.asarray(open_tokens(out / first["file"]))
        assert tokens[0] == EOT_ID and len(tokens) == first["tokens"] <= 8000
        assert prepare_data.main(["--verify", str(out)]) == 0
        if kind == "txt":  # one document: the whole file, its head intact
            head = path.read_text(encoding="utf-8")[:200]
            assert enc.decode(tokens[1:].tolist()).startswith(head)
    err = capsys.readouterr().err
    assert "docs (" in err and "tokens (" in err and "ETA" in err  # the progress line


def test_hub_code_path_streams_local_parquet_with_datasets(tmp_path, shared_dir, gpt2_bpe_dir):
    pytest.importorskip("datasets")
    parquet = shared_dir / "data" / "text" / "openstax" / "business-law.parquet"
    common = {"shard_size": 5000, "max_tokens": 40_000, "workers": 1, "progress": False}
    local = prep.prepare(
        prep.PrepareConfig(out_dir=str(tmp_path / "local"), inputs=[str(parquet)], **common)
    )
    hub = prep.prepare(
        prep.PrepareConfig(
            out_dir=str(tmp_path / "hub"),
            hf_dataset="parquet",
            hf_config=None,
            hf_data_files=[str(parquet)],
            **common,
        )
    )
    assert hub["source"]["kind"] == "hub" and local["shards"] == hub["shards"]
    docs, _ = sources.open_hub_documents("parquet", data_files=[str(parquet)], skip=5)
    assert list(docs) == list(sources.iter_local_documents([parquet]))[5:]  # resume skip
    assert _shard_bytes(tmp_path / "local") == _shard_bytes(tmp_path / "hub")


def test_verify_names_the_bad_shard_and_exits_non_zero(tmp_path, gpt2_bpe_dir, capsys):
    src = tmp_path / "a.txt"
    src.write_text(" ".join(_docs(30)))
    out = tmp_path / "out"
    argv = ["--out", str(out), "--input", str(src), "--shard-size", "300", "--no-progress"]
    assert prepare_data.main(argv) == 0
    bad = out / "train_000001.bin"
    with open(bad, "r+b") as f:
        f.seek(HEADER_BYTES + 10)
        f.write(b"\x01\x02")
    capsys.readouterr()
    assert prepare_data.main(["--verify", str(out)]) == 1
    err = capsys.readouterr().err
    assert f"BAD: {bad}: sha256" in err and "1 problem(s)" in err
    assert prepare_data.main(["--out", str(tmp_path / "x"), "--input", str(tmp_path / "no")]) == 2
    assert "does not exist" in capsys.readouterr().err
