"""Step records: memory (allocated and reserved on CUDA, RSS on CPU) and the console line."""

from __future__ import annotations

import torch

from torchgpt.metrics import console_line, peak_memory, step_record


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
    from torchgpt import metrics

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
