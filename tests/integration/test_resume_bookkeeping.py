"""Checkpoint bookkeeping of the real Trainer (one process): best by validation loss, latest,
retention that never deletes the best, async saves with their blocked time, bf16 export."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import pytest
import torch

from tests.trainer_utils import BASE, train_in_process
from torchgpt.checkpoint import load_full_model_state_dict, load_model_from_checkpoint
from torchgpt.checkpoint.layout import read_best
from torchgpt.config.job_config import ConfigError


def train(data_dir: Path, dump: Path, overrides: list[str]) -> Path:
    """Run the Trainer in this process. Returns RUN_DIR."""
    args = BASE + ["--data.dataset_path", str(data_dir), "--job.dump_folder", str(dump)]
    return train_in_process(None, args + overrides)


def val_losses(run_dir: Path) -> dict[int, float]:
    records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["val_loss"] for r in records if "val_loss" in r}


def steps_on_disk(run_dir: Path) -> list[int]:
    return sorted(int(p.name[5:]) for p in (run_dir / "checkpoints").glob("step-*"))


# A constant, too-high lr (no clipping) makes the validation loss jump after step 2 and
# recover slowly, so the best checkpoint is an old one that retention must keep.
UNSTABLE = [
    *("--optimizer.lr", "0.1", "--training.max_norm", "0", "--lr_scheduler.decay_type"),
    *("constant", "--training.micro_batch_size", "4", "--training.global_batch_tokens", "256"),
    *("--validation.enable", "true", "--validation.interval", "2", "--validation.tokens", "2048"),
    *("--checkpoint.enable", "true", "--checkpoint.interval", "2", "--checkpoint.keep_latest_k"),
    "1",
]


def test_best_latest_and_retention_at_the_trainer_level(token_shards, tmp_path):
    run_dir = train(token_shards, tmp_path, UNSTABLE + ["--training.steps", "6"])
    val = val_losses(run_dir)
    assert sorted(val) == [2, 4, 6]
    best = min(val, key=val.get)
    assert best == 2 and val[4] > val[2] and val[6] > val[2], val  # the premise of this test
    # keep_latest_k=1: the newest checkpoint, plus the best, which retention never deletes.
    assert steps_on_disk(run_dir) == [2, 6]
    assert read_best(run_dir / "checkpoints") == (2, val[2])
    best_model, meta = load_model_from_checkpoint(run_dir, "best")
    assert (meta["kind"], meta["step"], meta["val_loss"]) == ("dcp", 2, val[2])
    latest_model, meta = load_model_from_checkpoint(run_dir, "latest")
    # step-6 and model.pt (written after step 6) are the same step: the full-precision DCP wins.
    assert (meta["kind"], meta["step"]) == ("dcp", 6)
    assert load_model_from_checkpoint(run_dir, "export")[1]["step"] == 6
    tokens = torch.arange(64).view(1, 64) * 101
    with torch.no_grad():
        assert not torch.equal(best_model(tokens), latest_model(tokens))

    # Extend the run to step 8: it resumes from the newest checkpoint (6), not the best, and the
    # best carried over in best.json competes with the new validation losses.
    # Extending a run changes the math: the Trainer refuses it as preflight does, unless named.
    with pytest.raises(ConfigError, match=r"training.steps: 6 -> 8.*allow_change training.steps"):
        train(token_shards, tmp_path, UNSTABLE + ["--training.steps", "8"])
    extend = ["--training.steps", "8", "--checkpoint.allow_change", "training.steps"]
    run_dir = train(token_shards, tmp_path, UNSTABLE + extend)
    val = val_losses(run_dir)
    assert sorted(val) == [2, 4, 6, 8]  # no step re-run: the resume started after step 6
    best = 8 if val[8] < val[2] else 2
    assert read_best(run_dir / "checkpoints") == (best, val[best])
    assert steps_on_disk(run_dir) == sorted({best, 8})
    assert load_model_from_checkpoint(run_dir)[1]["step"] == 8


def test_async_checkpoints_report_blocked_time_and_bf16_export(token_shards, tmp_path, caplog):
    overrides = [
        *("--training.steps", "4", "--checkpoint.enable", "true", "--checkpoint.interval", "2"),
        *("--checkpoint.async_mode", "async", "--checkpoint.export_dtype", "bfloat16"),
    ]
    with caplog.at_level(logging.INFO, logger="torchgpt"):
        run_dir = train(token_shards, tmp_path, overrides)
    saves = [
        re.search(
            r"checkpoint step (\d+) -> .*writing in the background, training blocked ([\d.]+) s", m
        )
        for m in caplog.messages
    ]
    saves = [(int(m.group(1)), float(m.group(2))) for m in saves if m]
    assert [step for step, _ in saves] == [2, 4] and all(s >= 0 for _, s in saves)
    assert steps_on_disk(run_dir) == [2, 4]
    assert all((run_dir / "checkpoints" / f"step-{s}" / "COMPLETE").is_file() for s in (2, 4))

    # The async checkpoint of the last step holds the final weights; the export is them in bf16.
    final = load_full_model_state_dict(run_dir / "checkpoints" / "step-4")
    exported = torch.load(run_dir / "model.pt", weights_only=True)["model"]
    assert set(exported) == set(final)
    for key, value in final.items():
        assert exported[key].dtype == torch.bfloat16, key
        assert torch.equal(exported[key], value.to(torch.bfloat16)), key
    model_bf16, meta = load_model_from_checkpoint(run_dir, "export", dtype=None)
    assert meta["kind"] == "export" and next(model_bf16.parameters()).dtype == torch.bfloat16
    model_fp32, _ = load_model_from_checkpoint(run_dir / "checkpoints" / "step-4")
    tokens = torch.arange(64).view(1, 64) * 101
    with torch.no_grad():
        ours, ref = model_bf16(tokens).float(), model_fp32(tokens)
    assert (ours - ref).abs().max() < 0.1 * ref.abs().max()  # bf16 rounding, not other weights
    assert not torch.equal(ours, ref)
