"""bench/gpu_window.sh --smoke: the prepared GPU window runs end to end on CPU with the
project's optional packages unimportable (as on the GPU machine's bare python)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


def test_the_gpu_window_smoke_runs_every_step(tmp_path):
    out = tmp_path / "window"
    env = {**os.environ, "OUT": str(out), "PYTHON": sys.executable, "SKIP": "gpu_check"}
    proc = subprocess.run(
        ["bash", "bench/gpu_window.sh", "--smoke"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    summary = (out / "summary.txt").read_text()
    assert proc.returncode == 0, summary + proc.stdout[-3000:]
    for name in ("env", "probe", "train_4", "resume_6", "profile"):
        assert f"{name}: exit 0" in summary, summary
    assert "gpu_check: skipped (SKIP)" in summary
    env_log = (out / "env.log").read_text()
    for pkg in ("wandb", "lm_eval", "datasets", "transformers", "tensorboard"):
        assert f"absent {pkg}" in env_log, env_log
    assert "mixed_precision auto -> PrecisionChoice(value=" in env_log
    assert "compiled vs eager max abs diff" in (out / "probe.log").read_text()
    assert "resumed from step 4" in summary
    train_log = (out / "train_4.log").read_text()
    assert "profiling.memory_snapshot: the CUDA caching allocator" in train_log  # CPU: no-op
    assert "flight recorder: the last" in train_log
    run = out / "runs" / "window"
    assert json.loads((run / "last_exit.json").read_text())["step"] == 6
    assert "aten::" in (out / "profile.txt").read_text()
    assert (out / "profile_trace.json").stat().st_size > 0
