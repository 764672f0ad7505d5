"""The launcher's pieces in one process: node counts, refusals that write nothing, progress."""

from __future__ import annotations

import io
import json
import os
import time

import pytest

from tests.trainer_utils import BASE, train_in_process
from torchgpt import train
from torchgpt.run.launch import _nnodes
from torchgpt.utils.progress import Progress, quiet_bars_off_terminal


@pytest.mark.parametrize(
    "args,expected",
    [
        ([], 1),
        (["--nnodes", "2"], 2),
        (["--nnodes=3", "--rdzv_backend", "c10d"], 3),
        (["--nnodes", "1:4"], None),
        (["--nnodes", "2:2"], 2),
    ],
)
def test_nodes_from_torchrun_args(args, expected):
    assert _nnodes(args) == expected


def test_a_checkpoint_refused_by_the_workers_writes_nothing(token_shards, tmp_path):
    """The shape check at load time (here: an older checkpoint, no model args and no checksums,
    so preflight cannot tell) refuses with exit 2 and leaves the run folder as it was."""
    args = BASE + ["--data.dataset_path", str(token_shards), "--job.dump_folder", str(tmp_path)]
    args += ["--training.steps", "2", "--checkpoint.enable", "true", "--checkpoint.interval", "2"]
    run_dir = train_in_process(None, args)
    info_path = run_dir / "checkpoints" / "step-2" / "checkpoint_info.json"
    info = json.loads(info_path.read_text())
    del info["extra"]["model_args"]
    info_path.write_text(json.dumps(info))
    (info_path.parent / "checksums.json").unlink()  # as an older torchgpt wrote them
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    assert train.main(args + ["--model.flavor", "gpt2-d128-l4"]) == 2
    after = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    assert after == before


def test_progress_off_a_terminal_is_sparse_lines():
    stream = io.StringIO()  # not a terminal
    progress = Progress(1000, "requests", stream=stream, log_interval=0.2)
    start = time.perf_counter()
    for _ in range(1000):
        progress.update(1)
        time.sleep(0.0005)
    progress.close()
    elapsed = time.perf_counter() - start
    lines = stream.getvalue().splitlines()
    assert "\r" not in stream.getvalue()
    assert 1 <= len(lines) <= elapsed / 0.2 + 2
    assert lines[-1].startswith("requests: 1000/1000 (100%)") and "ETA" in lines[-1]


def test_third_party_bars_off_a_terminal(monkeypatch):
    from tqdm import std, tqdm

    # Undone after the test: the patch below is process-wide.
    monkeypatch.setattr(std.tqdm, "__init__", std.tqdm.__init__)
    monkeypatch.setattr(std.tqdm, "_torchgpt_quiet", False, raising=False)
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    monkeypatch.delenv("HF_DATASETS_DISABLE_PROGRESS_BARS", raising=False)
    monkeypatch.setattr("sys.stderr", io.StringIO())
    quiet_bars_off_terminal()
    assert os.environ["TQDM_DISABLE"] == "1"

    out = io.StringIO()
    for _ in tqdm(range(100), file=out):
        pass
    assert out.getvalue() == ""
    out = io.StringIO()
    for _ in tqdm(range(100), file=out, disable=False):  # an explicit choice still wins
        pass
    assert "100/100" in out.getvalue()
