"""`"auto"` micro-batch and activation checkpointing: the rule, the tool, the device settings."""

from __future__ import annotations

import importlib.util
import json
import logging
from pathlib import Path

import pytest
import torch

from tests.trainer_utils import BASE, read_metrics, run_trainer
from torchgpt.config.job_config import ConfigError
from torchgpt.config.manager import load_config
from torchgpt.estimation.autosize import MIN_MICRO_TOKENS, _plan, resolve
from torchgpt.estimation.memory import analytic_memory
from torchgpt.estimation.verdict import usable_bytes
from torchgpt.utils import hardware
from torchgpt.utils.hardware import GPUSpec

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("memory_estimate", ROOT / "tools/memory_estimate.py")
_tool = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_tool)
estimate_main = _tool.main
RECIPE = ROOT / "train_configs" / "mini_gpt_100m.toml"
AUTO = ["--training.micro_batch_size=auto", "--activation_checkpoint.mode=auto"]


def _recipe(overrides: list[str] = (), nproc: int = 1):
    return load_config(RECIPE, [*AUTO, *overrides], world_size=nproc)


def _peak(cfg, nproc: int, micro: int, mode: str) -> int:
    return analytic_memory(_plan(cfg, nproc, micro, mode)).peak_bytes


def _budget(gib: float) -> int:
    return usable_bytes(GPUSpec("device", 0.0, gib, ""))


def test_the_recipe_uses_auto_sizing():
    cfg = load_config(RECIPE, [], world_size=1)
    assert cfg.training.micro_batch_size == "auto" and cfg.activation_checkpoint.mode == "auto"


def test_24_and_80_gib_pick_different_layouts():
    cfg = _recipe()
    small, large = resolve(cfg, 1, 24.0), resolve(cfg, 1, 80.0)
    assert (small.micro_batch_size, small.ac_mode) == (32, "none")
    assert (large.micro_batch_size, large.ac_mode) == (128, "none")
    for sizing, gib in ((small, 24.0), (large, 80.0)):
        # The choice fits, and the next larger micro-batch (2x: 524,288 splits in powers of
        # two) does not: the largest that fits.
        assert sizing.peak_bytes == _peak(cfg, 1, sizing.micro_batch_size, "none")
        assert sizing.peak_bytes <= _budget(gib) == sizing.usable_bytes
        assert _peak(cfg, 1, 2 * sizing.micro_batch_size, "none") > _budget(gib)
        assert sizing.grad_accum == 524288 // (sizing.micro_batch_size * 1024)


def test_world_size_shards_the_states_and_changes_accumulation():
    cfg = _recipe(nproc=8)
    sizing = resolve(cfg, 8, 80.0)
    assert sizing.micro_batch_size == 64 and sizing.grad_accum == 1
    # grad_accum 1 is the largest micro-batch the global batch allows on 8 ranks.
    assert 524288 // (8 * 1024) == 64


def test_heavier_checkpointing_only_when_the_lighter_would_starve_the_gpu():
    cfg = _recipe()
    sizing = resolve(cfg, 1, 7.0)
    # none fits only 4 x 1024 tokens (< the floor); selective reaches 8 x 1024.
    assert _peak(cfg, 1, 4, "none") <= _budget(7.0) < _peak(cfg, 1, 8, "none")
    assert (sizing.micro_batch_size, sizing.ac_mode) == (8, "selective")
    assert sizing.micro_batch_size * 1024 >= MIN_MICRO_TOKENS


def test_a_fixed_micro_batch_gets_the_lightest_checkpointing_that_fits():
    cfg = load_config(
        RECIPE, ["--training.micro_batch_size=16", "--activation_checkpoint.mode=auto"]
    )
    sizing = resolve(cfg, 1, 11.0)
    assert _peak(cfg, 1, 16, "none") > _budget(11.0) >= _peak(cfg, 1, 16, "selective")
    assert (sizing.micro_batch_size, sizing.ac_mode) == (16, "selective")
    assert sizing.auto_keys == ("activation_checkpoint.mode",)


def test_a_fixed_mode_gets_the_largest_micro_batch():
    cfg = load_config(
        RECIPE, ["--training.micro_batch_size=auto", "--activation_checkpoint.mode=full"]
    )
    sizing = resolve(cfg, 1, 24.0)
    assert sizing.ac_mode == "full" and sizing.auto_keys == ("training.micro_batch_size",)
    assert _peak(cfg, 1, sizing.micro_batch_size, "full") <= _budget(24.0)
    assert _peak(cfg, 1, 2 * sizing.micro_batch_size, "full") > _budget(24.0)


def test_nothing_auto_resolves_to_none():
    assert (
        resolve(
            load_config(
                RECIPE, ["--training.micro_batch_size=16", "--activation_checkpoint.mode=none"]
            ),
            1,
            80.0,
        )
        is None
    )


def test_nothing_fits_names_the_keys_and_the_budget():
    with pytest.raises(ValueError, match=r"activation_checkpoint.mode = auto: nothing fits 2 GiB"):
        resolve(_recipe(), 1, 2.0)


def test_config_accepts_auto_and_refuses_other_words():
    with pytest.raises(ConfigError, match="expected an integer or 'auto', got 'big'"):
        load_config(RECIPE, ["--training.micro_batch_size=big"])
    with pytest.raises(ConfigError, match="activation_checkpoint.mode: 'most' is not one of"):
        load_config(RECIPE, ["--activation_checkpoint.mode=most"])
    # A batch that even micro-batch 1 cannot split is refused before any worker starts.
    with pytest.raises(ConfigError, match="is not divisible by micro_batch_size x seq_len"):
        load_config(RECIPE, [*AUTO, "--training.global_batch_tokens=1000"], world_size=1)


@pytest.mark.parametrize(("gpu", "gib"), [("a10g", 24.0), ("h100", 80.0)])
def test_memory_estimate_shows_the_trainers_choice(gpu, gib, capsys):
    expected = resolve(_recipe(), 1, gib)
    code = estimate_main([str(RECIPE), "--gpu", gpu, "--no-trace", "--json"])
    data = json.loads(capsys.readouterr().out)
    assert code == 0 and data["auto_sizing"] == json.loads(json.dumps(expected.to_json()))
    assert data["plan"]["micro_batch_size"] == expected.micro_batch_size
    assert data["plan"]["ac_mode"] == expected.ac_mode
    code = estimate_main([str(RECIPE), "--gpu", gpu, "--no-trace"])
    assert code == 0 and f"auto       {expected.text()}" in capsys.readouterr().out


def test_memory_estimate_exits_3_when_auto_finds_nothing(capsys):
    code = estimate_main([str(RECIPE), "--gpu-memory-gib", "2", "--gpu-tflops", "10"])
    assert code == 3 and "DOES NOT FIT: " in capsys.readouterr().err


def test_device_memory_key_overrides_the_gpu_in_the_tool(capsys):
    code = estimate_main(
        [str(RECIPE), "--gpu", "h100", "--training.device_memory_gib=24", "--no-trace", "--json"]
    )
    data = json.loads(capsys.readouterr().out)
    assert code == 0 and data["auto_sizing"]["device_memory_gib"] == 24.0
    assert data["plan"]["micro_batch_size"] == 32


def test_cuda_settings_enable_tf32_and_skip_the_host_malloc_tuning(monkeypatch):
    calls = []
    monkeypatch.setattr(hardware, "tune_host_malloc", lambda: calls.append(1) or True)
    before = torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision
    try:
        assert hardware.configure_device("cuda", allow_tf32=True) == [
            "fp32 matmul/conv precision tf32"
        ]
        assert torch.backends.cuda.matmul.fp32_precision == "tf32"
        assert torch.backends.cudnn.conv.fp32_precision == "tf32"
        hardware.configure_device("cuda", allow_tf32=False)
        assert torch.backends.cuda.matmul.fp32_precision == "ieee"
        assert calls == []  # CPU-only tuning stays off on CUDA
        torch.backends.cuda.matmul.fp32_precision = "none"
        assert hardware.configure_device("cpu", allow_tf32=True) == ["host malloc tuned for reuse"]
        assert calls == [1] and torch.backends.cuda.matmul.fp32_precision == "none"
    finally:
        torch.backends.cuda.matmul.fp32_precision = before[0]
        torch.backends.cudnn.conv.fp32_precision = before[1]


def test_cpu_device_memory_is_shared_by_the_local_ranks(monkeypatch):
    monkeypatch.setattr(hardware, "_meminfo_bytes", lambda field: 12 * 2**30)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    assert hardware.device_memory_gib("cpu") == 12.0
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert hardware.device_memory_gib("cpu") == 3.0


@pytest.mark.parametrize(("gib", "micro"), [(1.2, 2), (1.5, 8)])
def test_the_trainer_resolves_auto_logs_it_and_writes_it(
    token_shards, tmp_path, caplog, gib, micro
):
    caplog.set_level(logging.INFO, logger="torchgpt")
    # The debug model at seq 64 (fp32): 1.2 GiB fits micro-batch 2, 1.5 GiB fits 8.
    overrides = [
        "--training.micro_batch_size=auto",
        "--activation_checkpoint.mode=auto",
        "--training.global_batch_tokens=2048",
        f"--training.device_memory_gib={gib}",
        "--training.steps=2",
    ]
    expected = resolve(load_config(None, [*BASE, *overrides], world_size=1), 1, gib)
    assert (expected.micro_batch_size, expected.ac_mode) == (micro, "none")
    run_trainer(str(token_shards), str(tmp_path), overrides)
    run_dir = tmp_path / "torchgpt"
    config = json.loads((run_dir / "config.json").read_text())
    assert config["training"]["micro_batch_size"] == micro
    assert config["activation_checkpoint"]["mode"] == "none"
    assert expected.text() in (run_dir / "train.log").read_text()
    (launch,) = json.loads((run_dir / "run_info.json").read_text())["launches"]
    assert launch["auto_sizing"] == json.loads(json.dumps(expected.to_json()))
    assert len(read_metrics(run_dir)) == 2


def test_the_trainer_refuses_auto_that_cannot_fit(token_shards, tmp_path):
    overrides = ["--training.micro_batch_size=auto", "--training.device_memory_gib=1.05"]
    with pytest.raises(ConfigError, match="nothing fits 1.05 GiB per device"):
        run_trainer(str(token_shards), str(tmp_path), overrides)
    assert not (tmp_path / "torchgpt").exists()
