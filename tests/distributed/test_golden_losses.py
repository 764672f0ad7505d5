"""Golden losses: a refactor changes no number.

The first 10 losses of the fixed fp32 debug config (tests.trainer_utils.BASE on the synthetic
shards) at 1 process and at FSDP2 x 2 were recorded in tests/golden_losses.json before the
training step moved into torchgpt/train_module.py (the machine key later gained the core count
and CPU flags; the values are that first recording). On the machine kind that recorded them
(same CPU model and torch) they must match bitwise; on another CPU, whose kernels may order
fp32 sums differently, within 1e-5 relative: the parity tolerance between layouts (a changed
computation moves them by far more).
Re-record, only for an intended change of the math, with TORCHGPT_RECORD_GOLDEN=1.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
import torch

from tests.trainer_utils import read_metrics, run_trainer
from torchgpt.testing import run_distributed_test
from torchgpt.utils.provenance import cpu_name

GOLDEN = Path(__file__).resolve().parents[1] / "golden_losses.json"


def _machine() -> str:
    """The CPU model, its core count and feature flags (AVX-512, AMX...), and torch: what
    decides which kernels run. "AMD EPYC" alone names several chips."""
    flags = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            flags = " ".join(sorted(line.split(":", 1)[1].split()))
            break
    digest = hashlib.sha256(flags.encode()).hexdigest()[:12]
    return (
        f"{cpu_name()} x{os.cpu_count()} flags {digest} | torch {torch.__version__.split('+')[0]}"
    )


@pytest.mark.parametrize("world_size", [1, 2])
def test_first_ten_losses_are_the_recorded_ones(token_shards, tmp_path, world_size):
    args = (str(token_shards), str(tmp_path), ["--job.name", "golden"])
    if world_size == 1:
        run_trainer(*args)
    else:
        run_distributed_test(run_trainer, world_size=world_size, args=args)
    losses = read_metrics(tmp_path / "golden")
    assert len(losses) == 10
    key = f"world_size={world_size}"
    if os.environ.get("TORCHGPT_RECORD_GOLDEN") == "1":
        record = json.loads(GOLDEN.read_text()) if GOLDEN.exists() else {}
        record.update({"machine": _machine(), key: losses})
        GOLDEN.write_text(json.dumps(record, indent=2) + "\n")
    record = json.loads(GOLDEN.read_text())
    if record["machine"] == _machine():
        assert losses == record[key]  # bitwise
    else:
        assert losses == pytest.approx(record[key], rel=1e-5, abs=0)
