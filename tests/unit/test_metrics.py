"""Step records: memory (allocated and reserved on CUDA, RSS on CPU) and the console line."""

from __future__ import annotations

import subprocess
import sys
import types

import pytest
import torch

from torchgpt.training import metrics
from torchgpt.training.metrics import console_line, peak_memory, step_record


def _record(memory: dict[str, float]) -> dict:
    return step_record(
        step=10,
        loss=3.0,
        grad_norm=0.5,
        lr=1e-3,
        tokens_seen=40960,
        tokens=40960,
        seconds=2.0,
        steps=10,
        phases={"data": 0.2},
        world_size=2,
        flops_per_token=1e9,
        peak_tflops=100.0,
        memory=memory,
    )


def test_cpu_memory_is_peak_rss():
    memory = peak_memory(torch.device("cpu"))
    assert set(memory) == {"peak_memory_gib"} and 0.05 < memory["peak_memory_gib"] < 24
    line = console_line(_record(memory), 100)
    assert f"mem {memory['peak_memory_gib']:.2f}GiB  data 10%" in line and "reserved" not in line


def test_cuda_memory_has_allocated_and_reserved(monkeypatch):
    # The CUDA path, run here with the allocator's two readings stubbed.
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device: 30 * 2**30)
    monkeypatch.setattr(torch.cuda, "max_memory_reserved", lambda device: 34.5 * 2**30)
    memory = peak_memory(torch.device("cuda", 0))
    assert memory == {"peak_memory_gib": 30.0, "peak_memory_reserved_gib": 34.5}
    record = _record(memory)
    assert record["peak_memory_reserved_gib"] == 34.5 and record["mfu"] == 20480 / 2 * 1e9 / 1e14
    assert "mem 30.00GiB (34.50 reserved)" in console_line(record, 100)


def test_a_wandb_login_in_netrc_counts_as_a_key(monkeypatch, tmp_path):
    from torchgpt.training import metrics

    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert not metrics._wandb_key_known()
    netrc = tmp_path / ".netrc"
    netrc.write_text("machine api.wandb.ai\n  login user\n  password 0123456789abcdef\n")
    netrc.chmod(0o600)
    assert metrics._wandb_key_known()
    monkeypatch.setenv("WANDB_API_KEY", "x")
    netrc.unlink()
    assert metrics._wandb_key_known()


def test_the_cpu_peak_is_per_interval_once_reset():
    """A 400 MiB allocation freed before the reset is in this interval's peak, not the next.

    In a fresh process: one that tuned malloc (a Trainer ran in it) keeps freed memory resident,
    so the allocation would not raise its RSS at all."""
    code = """if True:
        import torch
        from torchgpt.training.metrics import peak_memory
        cpu = torch.device("cpu")
        peak_memory(cpu, reset=True)
        big = torch.ones(100 * 2**20)  # 400 MiB, touched
        del big
        first = peak_memory(cpu, reset=True)["peak_memory_gib"]
        print(first, peak_memory(cpu)["peak_memory_gib"])
    """
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    first, second = map(float, out.stdout.split())
    assert first - second > 0.3, (first, second)


def test_the_cuda_peak_is_reset_after_each_read(monkeypatch):
    calls = []
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device: 2**30)
    monkeypatch.setattr(torch.cuda, "max_memory_reserved", lambda device: 2**30)
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda device: calls.append(device))
    peak_memory(torch.device("cuda", 0))
    assert calls == []
    peak_memory(torch.device("cuda", 0), reset=True)
    assert calls == [torch.device("cuda", 0)]


def test_every_launch_of_a_run_folder_logs_into_one_wandb_run(tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb")
    seen = []
    fake_run = types.SimpleNamespace(dir=str(tmp_path / "wandb" / "offline-run-x" / "files"))
    monkeypatch.setattr(wandb, "init", lambda **kwargs: seen.append(kwargs) or fake_run)
    monkeypatch.setenv("WANDB_MODE", "offline")
    for _ in range(2):
        metrics._open_wandb(tmp_path, "proj", "run", {})
    assert seen[0]["id"] == seen[1]["id"] == (tmp_path / "wandb_id").read_text().strip()
    assert seen[0]["resume"] == "allow" and len(seen[0]["id"]) == 16
    (tmp_path / "other").mkdir()
    assert metrics._open_wandb(tmp_path / "other", "proj", "run", {}) is not None
    assert seen[2]["id"] != seen[0]["id"]
