"""Golden losses: a refactor changes no number.

The first 10 losses of the fixed fp32 debug config (tests.trainer_utils.BASE on the synthetic
shards) at 1 process and at FSDP2 x 2 were recorded in tests/golden_losses.json before the
training step moved into its TrainModule (the machine key later gained the core count and CPU
flags; the values are that first recording). On the machine kind that recorded them (same CPU
model and torch) they must match bitwise; on another CPU, whose kernels may order fp32 sums
differently, within 1e-5 relative: the parity tolerance between layouts (a changed computation
moves them by far more).

Re-record only for an intended change of the math: TORCHGPT_RECORD_GOLDEN=1 writes the losses
to tests/golden_losses.new.json (the test then skips, comparing nothing); review it and move it
over tests/golden_losses.json by hand. The normal mode only compares.
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
    check_or_record(losses, f"world_size={world_size}", GOLDEN)


def check_or_record(losses: list[float], key: str, golden: Path) -> None:
    """Compare `losses` with golden[key]; in record mode write them to the .new.json beside
    `golden` instead (golden itself untouched) and skip."""
    if os.environ.get("TORCHGPT_RECORD_GOLDEN") == "1":
        new = golden.with_suffix(".new.json")
        record = json.loads(new.read_text()) if new.exists() else {}
        record.update({"machine": _machine(), key: losses})
        new.write_text(json.dumps(record, indent=2) + "\n")
        pytest.skip(f"recorded {key} to {new}: review it, then move it over {golden.name}")
    record = json.loads(golden.read_text())
    if record["machine"] == _machine():
        assert losses == record[key]  # bitwise
    else:
        assert losses == pytest.approx(record[key], rel=1e-5, abs=0)


def test_record_mode_writes_a_new_file_and_compares_nothing(tmp_path, monkeypatch):
    golden = tmp_path / "golden_losses.json"
    golden.write_text(json.dumps({"machine": _machine(), "world_size=1": [1.0, 2.0]}))
    before = golden.read_text()
    monkeypatch.setenv("TORCHGPT_RECORD_GOLDEN", "1")
    with pytest.raises(pytest.skip.Exception, match="golden_losses.new.json"):
        check_or_record([3.0, 4.0], "world_size=1", golden)  # different: would fail to compare
    assert golden.read_text() == before
    new = json.loads((tmp_path / "golden_losses.new.json").read_text())
    assert new["world_size=1"] == [3.0, 4.0] and new["machine"] == _machine()
    monkeypatch.delenv("TORCHGPT_RECORD_GOLDEN")
    with pytest.raises(AssertionError):
        check_or_record([3.0, 4.0], "world_size=1", golden)
    check_or_record([1.0, 2.0], "world_size=1", golden)
