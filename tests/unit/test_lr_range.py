"""tools/lr_range_test.py: the suggestion rule on a known curve, and a real short sweep."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))
from lr_range_test import geometric_lrs, suggest_lr  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


def test_geometric_schedule_spans_the_range():
    lrs = geometric_lrs(1e-5, 1e-2, 4)
    assert lrs == pytest.approx([1e-5, 1e-4, 1e-3, 1e-2])


def test_suggestion_on_a_known_curve():
    lrs = geometric_lrs(1e-5, 1e-1, 200)
    # Flat, then a descent steepest near 1e-3, minimum near 1e-2, then divergence.
    losses = [
        6 - 3 / (1 + math.exp(-3 * (math.log10(lr) + 3))) + (50 * (lr - 1e-2) if lr > 1e-2 else 0)
        for lr in lrs
    ]
    result = suggest_lr(lrs, losses)
    assert 5e-3 < result["lr_min_loss"] < 3e-2
    assert 3e-4 < result["suggested_lr_max"] <= result["lr_min_loss"] / 10 * 1.0001


def test_short_real_sweep_writes_plot_and_json(token_shards, tmp_path):
    out = tmp_path / "lr"
    subprocess.run(
        [
            sys.executable,
            str(REPO / "tools" / "lr_range_test.py"),
            str(REPO / "train_configs" / "debug_model.toml"),
            "--steps",
            "8",
            "--out",
            str(out),
            "--data.dataset_path",
            str(token_shards),
            "--training.seq_len",
            "64",
            "--training.global_batch_tokens",
            "512",
            "--metrics.enable_tensorboard",
            "false",
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    result = json.loads((out / "lr_range_test.json").read_text())
    assert len(result["losses"]) == 8 and result["lrs"][0] == pytest.approx(1e-5)
    assert result["lrs"][-1] == pytest.approx(1e-2)
    assert (out / "lr_range_test.png").stat().st_size > 10_000
