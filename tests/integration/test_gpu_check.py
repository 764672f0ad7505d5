"""bench/gpu_check.py --smoke: the GPU check's code path on CPU (the recipe's auto sizing,
compile, checkpoint save, figures), so the command is known to run before GPU time is spent."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]


def test_gpu_check_smoke_runs_the_recipe_path(tmp_path):
    out = tmp_path / "gpu_check.json"
    proc = subprocess.run(
        [sys.executable, "bench/gpu_check.py", "--smoke", "--json", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(out.read_text())
    assert r["flavor"] == "debug" and r["device"] == "cpu" and r["steps"] == 12
    assert r["auto_sizing"].startswith("auto sizing (training.micro_batch_size, ")
    assert r["grad_accum"] * r["micro_batch_size"] * 128 == 4096
    assert r["tokens_per_s"] > 0 and r["steady_steps"] == [6, 12]
    # Compile health: per-block compile with no graph break and no recompilation after step 1.
    assert r["compile"]["graphs"] >= 1 and r["compile"]["graph_breaks"] == 0
    assert r["compile"]["graphs_after_first_step"] == 0
    assert r["checkpoint_save_s"] > 0 and r["memory"]["estimated_peak_gib"] > 0
    assert r["hours_per_1b_tokens"] == 1e9 / r["tokens_per_s"] / 3600
    for line in ("throughput ", "memory ", "compile ", "checkpoint ", "1B tokens "):
        assert line in proc.stdout, line


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is here: the real check would run")
def test_gpu_check_without_a_gpu_points_to_smoke():
    proc = subprocess.run(
        [sys.executable, "bench/gpu_check.py"], cwd=REPO, capture_output=True, text=True
    )
    assert proc.returncode == 2 and "--smoke runs the same code on CPU" in proc.stderr
