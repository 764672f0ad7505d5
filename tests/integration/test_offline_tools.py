"""tools/dcp_to_torch.py --hf as a new user runs it offline (issue #27): with no BPE folder the
hub failure is one stderr line, exit 2, no traceback, nothing written, no retries; with only
TORCHGPT_SHARED_DIR set it works offline."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest

from torchgpt.checkpoint import CheckpointManager, ModelState
from torchgpt.data.tokenizer import BPE_DIR_ENV, GPT2_FILES, SHARED_DIR_ENV
from torchgpt.model import GPT, get_model_args

pytest.importorskip("transformers")
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """RUN_DIR/checkpoints/step-1 of a tiny GPT, saved by one process."""
    run = tmp_path_factory.mktemp("offline_tools") / "run"
    model = GPT(get_model_args("debug", dim=32, n_layers=1, n_heads=2, max_seq_len=64))
    model.init_weights(seed=0)
    extra = {"model_args": asdict(model.args), "config": {"data": {"tokenizer_dir": ""}}}
    manager = CheckpointManager(
        run, states={"model": ModelState(model)}, interval=1, extra_metadata=extra
    )
    return manager.save(1)


def offline_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """A fresh user's environment: empty caches, no BPE variable, every download refused."""
    env = {k: v for k, v in os.environ.items() if k not in (BPE_DIR_ENV, SHARED_DIR_ENV)}
    env.update(
        HF_HOME=str(tmp_path / "hf_home"),
        TIKTOKEN_CACHE_DIR=str(tmp_path / "tiktoken"),
        # A proxy nobody listens on: every request (tiktoken's, the hub's) is refused at once.
        HTTPS_PROXY="http://127.0.0.1:9",
        HTTP_PROXY="http://127.0.0.1:9",
        NO_PROXY="",
    )
    env.pop("HF_HUB_OFFLINE", None)
    env.update(extra)
    return env


def run_tool(checkpoint: Path, out: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(REPO / "tools" / "dcp_to_torch.py"), str(checkpoint)]
    cmd += [str(out / "model.pt"), "--hf", str(out / "hf")]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env, timeout=120)


@pytest.mark.parametrize("mode", ["HF_HUB_OFFLINE", "connection refused"])
def test_hub_failure_is_one_line_exit_2_and_writes_nothing(checkpoint, tmp_path, mode):
    out = tmp_path / "out"
    out.mkdir()
    extra = {"HF_HUB_OFFLINE": "1"} if mode == "HF_HUB_OFFLINE" else {}
    proc = run_tool(checkpoint, out, offline_env(tmp_path, **extra))
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr[-3000:]  # no retry warnings, no log lines, no traceback
    line = lines[0]
    assert line.startswith("error: cannot fetch the GPT-2 tokenizer")
    reason = "HF_HUB_OFFLINE is set" if mode == "HF_HUB_OFFLINE" else "cannot reach"
    assert reason in line
    for option in (BPE_DIR_ENV, SHARED_DIR_ENV, "--tokenizer-dir"):
        assert option in line
    assert proc.stdout == "" and list(out.iterdir()) == []  # no model.pt, no hf/, no hf.tmp


def test_shared_dir_alone_serves_it_offline(checkpoint, tmp_path, gpt2_bpe_dir):
    shared = tmp_path / "shared"
    (shared / "tokenizers" / "gpt2").mkdir(parents=True)
    for name in GPT2_FILES:
        (shared / "tokenizers" / "gpt2" / name).symlink_to(gpt2_bpe_dir / name)
    out = tmp_path / "out"
    env = offline_env(tmp_path, HF_HUB_OFFLINE="1", **{SHARED_DIR_ENV: str(shared)})
    proc = run_tool(checkpoint, out, env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == ["hf", "model.pt"]
    assert (out / "hf" / "tokenizer.json").is_file() and (out / "hf" / "config.json").is_file()
