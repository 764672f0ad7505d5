"""Memory snapshots, the out-of-memory exit and the NCCL flight recorder switch (issue #25).

On CPU the snapshot switch is a no-op said once; its CUDA side (record, dump at step N, dump on
an OOM, stop) is driven here with the two allocator calls replaced, and really runs in
bench/gpu_window.sh on a GPU. An OOM exits 1 with the error line and a one-line hint."""

from __future__ import annotations

import logging
import os
from types import SimpleNamespace

import pytest
import torch

from tests.trainer_utils import BASE, train_in_process
from torchgpt import train
from torchgpt.run.flight_recorder import enable_flight_recorder
from torchgpt.step.train_module import TrainModule
from torchgpt.training.memory import MemorySnapshot

FR_VARS = (
    "TORCH_FR_BUFFER_SIZE",
    "TORCH_NCCL_TRACE_BUFFER_SIZE",
    "TORCH_NCCL_DUMP_ON_TIMEOUT",
    "TORCH_FR_DUMP_TEMP_FILE",
    "TORCH_NCCL_DEBUG_INFO_TEMP_FILE",
)


def test_on_cpu_the_snapshot_is_a_no_op_said_once(token_shards, tmp_path, caplog):
    args = ["--data.dataset_path", str(token_shards), "--job.dump_folder", str(tmp_path)]
    args += ["--training.steps", "3", "--profiling.memory_snapshot", "true"]
    with caplog.at_level(logging.INFO, logger="torchgpt"):
        run_dir = train_in_process(None, BASE + args)
    assert caplog.text.count("profiling.memory_snapshot: the CUDA caching allocator") == 1
    assert "no-op" in caplog.text and not (run_dir / "memory_snapshot").exists()


def test_on_cuda_it_records_from_the_start_dumps_at_step_n_and_on_oom(tmp_path, monkeypatch):
    calls = []

    def record(enabled="all", max_entries=0, **kwargs):
        calls.append(("record", enabled, max_entries))

    def dump(path):
        calls.append(("dump", os.path.basename(path)))
        with open(path, "wb") as f:
            f.write(b"snapshot")

    monkeypatch.setattr(torch.cuda.memory, "_record_memory_history", record)
    monkeypatch.setattr(torch.cuda.memory, "_dump_snapshot", dump)
    cfg = SimpleNamespace(memory_snapshot=True, memory_snapshot_steps=2, memory_snapshot_entries=7)
    snap = MemorySnapshot(cfg, tmp_path, rank=1, device=torch.device("cuda"))
    assert calls == [("record", "all", 7)]
    snap.step(1)
    snap.step(2)  # the second step done: dump (through a temporary name), then stop recording
    assert calls[1:] == [("dump", "rank1.step2.pickle.tmp"), ("record", None, 0)]
    assert snap.dumped == [tmp_path / "memory_snapshot" / "rank1.step2.pickle"]
    assert snap.dumped[0].read_bytes() == b"snapshot" and snap.on_out_of_memory() is None
    oom = MemorySnapshot(cfg, tmp_path, rank=0, device=torch.device("cuda"))
    assert oom.on_out_of_memory() == tmp_path / "memory_snapshot" / "rank0.oom.pickle"
    assert not oom.recording and not list((tmp_path / "memory_snapshot").glob("*.tmp"))


class OutOfMemoryAtStep2(TrainModule):
    def forward_backward(self, micro_batches, **kwargs):
        if self.lr_scheduler.last_epoch == 1:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return super().forward_backward(micro_batches, **kwargs)


def test_an_oom_exits_1_with_a_hint_and_the_flight_recorder_is_set_first(
    token_shards, tmp_path, monkeypatch, capsys
):
    for name in FR_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr("torchgpt.step.build.TrainModule", OutOfMemoryAtStep2)
    args = ["--data.dataset_path", str(token_shards), "--job.dump_folder", str(tmp_path)]
    args += ["--training.steps", "3", "--profiling.memory_snapshot", "true"]
    args += ["--profiling.flight_recorder", "true", "--profiling.flight_recorder_entries", "64"]
    assert train.main(BASE + args) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-2].startswith("error: rank 0 at step 2: OutOfMemoryError: CUDA out of memory")
    assert err[-1].startswith("hint: out of memory (OutOfMemoryError): lower ")
    assert "python tools/memory_estimate.py CONFIG.toml" in err[-1]
    assert "profiling.memory_snapshot = true records" in err[-1]  # CPU: nothing was recorded
    assert "OutOfMemoryError" in (tmp_path / "torchgpt" / "train.log").read_text()  # traceback
    assert os.environ["TORCH_FR_BUFFER_SIZE"] == os.environ["TORCH_NCCL_TRACE_BUFFER_SIZE"] == "64"
    prefix = str(tmp_path / "torchgpt" / "flight_recorder" / "rank_")
    assert os.environ["TORCH_FR_DUMP_TEMP_FILE"] == prefix
    assert not (tmp_path / "torchgpt" / "flight_recorder").exists()  # gloo: nothing to write


def test_the_flight_recorder_keeps_a_users_variable(tmp_path, monkeypatch, caplog):
    for name in FR_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("TORCH_FR_BUFFER_SIZE", "5")
    with caplog.at_level(logging.INFO, logger="torchgpt"):
        applied = enable_flight_recorder(tmp_path, 100, nccl=True)
    assert "TORCH_FR_BUFFER_SIZE" not in applied and os.environ["TORCH_FR_BUFFER_SIZE"] == "5"
    assert applied["TORCH_NCCL_DUMP_ON_TIMEOUT"] == "1" and (tmp_path / "flight_recorder").is_dir()
    assert "keeping TORCH_FR_BUFFER_SIZE=5" in caplog.text


@pytest.mark.parametrize("key", ["memory_snapshot_steps", "flight_recorder_entries"])
def test_counts_below_one_are_refused(key):
    from torchgpt.config.job_config import ConfigError
    from torchgpt.config.manager import load_config

    with pytest.raises(ConfigError, match=f"profiling: .*{key}"):
        load_config(None, [f"--profiling.{key}", "0"])
