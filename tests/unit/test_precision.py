"""training.mixed_precision = "auto" and the CUDA fp32 precision flags (issue #22's first and
sixth points): bf16 only where the device runs it fast, the choice recorded; TF32 set so that
every reader of either torch API agrees."""

from __future__ import annotations

import json
import logging
import os
import platform
import subprocess
import sys

import pytest
import torch

from tests.trainer_utils import BASE, train_in_process
from torchgpt.config.manager import load_config
from torchgpt.train import Trainer
from torchgpt.utils import hardware
from torchgpt.utils.hardware import resolve_mixed_precision, set_fp32_precision


@pytest.fixture
def cpu_kind(monkeypatch):
    """Pretend to be a CPU with the given bf16 flags and measured bf16/fp32 time ratio."""

    def make(flags: list[str], ratio: float) -> None:
        monkeypatch.setattr(hardware, "cpu_bf16_flags", lambda: flags)
        monkeypatch.setattr(hardware, "measure_bf16_slowdown", lambda: ratio)
        monkeypatch.setattr(hardware, "_precision_warned", set())

    return make


def test_auto_is_bf16_on_a_cpu_with_bf16_instructions(cpu_kind):
    cpu_kind(["amx_bf16", "avx512_bf16"], 0.25)
    choice = resolve_mixed_precision("auto", "cpu")
    assert choice.value == "bf16"
    assert "amx_bf16+avx512_bf16" in choice.reason and "0.25x" in choice.reason


def test_auto_is_fp32_on_an_avx2_only_cpu(cpu_kind):
    cpu_kind([], 65.0)
    choice = resolve_mixed_precision("auto", "cpu")
    assert choice.value == "fp32"
    assert "no bf16 matmul instructions" in choice.reason and "65x" in choice.reason


def test_auto_trusts_a_fast_measured_bf16_where_no_flag_is_seen(cpu_kind):
    cpu_kind([], 0.5)
    assert resolve_mixed_precision("auto", "cpu").value == "bf16"
    cpu_kind([], 1.1)
    assert resolve_mixed_precision("auto", "cpu").value == "fp32"


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="an x86 oneDNN cap")
def test_onednn_capped_at_avx2_resolves_auto_to_fp32_on_any_x86():
    """ONEDNN_MAX_CPU_ISA=AVX2 makes this CPU's bf16 matmul as slow as an AVX2-only CPU's: the
    flags are then not trusted, the probe measures the slowdown, and auto picks fp32 (the way
    `make test` is timed as an AVX2 machine runs it; README)."""
    code = (
        "from torchgpt.utils import hardware as h; c = h.resolve_mixed_precision('auto', 'cpu');"
        "print(h.cpu_bf16_flags(), c.value, h.measure_bf16_slowdown(), sep='|')"
    )
    env = {**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2"}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    flags, value, ratio = out.stdout.strip().split("|")
    assert (flags, value) == ("[]", "fp32") and float(ratio) > 2 * hardware.BF16_FAST_RATIO, out


def test_explicit_bf16_on_a_slow_cpu_is_kept_and_warns_once_with_the_ratio(cpu_kind, caplog):
    cpu_kind([], 65.0)
    with caplog.at_level(logging.WARNING, logger="torchgpt.utils.hardware"):
        first = resolve_mixed_precision("bf16", "cpu")
        second = resolve_mixed_precision("bf16", "cpu")
    assert first.value == second.value == "bf16"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "65.0x the time of fp32" in warnings[0], warnings
    cpu_kind(["avx512_bf16"], 0.5)
    with caplog.at_level(logging.WARNING, logger="torchgpt.utils.hardware"):
        caplog.clear()
        resolve_mixed_precision("bf16", "cpu")
    assert not caplog.records  # a CPU that accelerates bf16: nothing to warn about


def test_explicit_fp32_is_kept_everywhere(cpu_kind):
    cpu_kind(["amx_bf16"], 0.25)
    assert resolve_mixed_precision("fp32", "cpu").value == "fp32"


@pytest.mark.parametrize("supported, expected", [(True, "bf16"), (False, "fp32")])
def test_auto_on_cuda_follows_the_device_bf16_support(monkeypatch, supported, expected):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: supported)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a, **k: "NVIDIA H200")
    choice = resolve_mixed_precision("auto", "cuda")
    assert choice.value == expected and "NVIDIA H200" in choice.reason


def test_this_cpu_resolves_by_its_own_flags_and_a_real_measurement():
    """Unmocked: the probe runs and the decision matches this machine's /proc/cpuinfo."""
    ratio = hardware.measure_bf16_slowdown()
    assert 0 < ratio < 1e4
    choice = resolve_mixed_precision("auto", "cpu")
    if hardware.cpu_bf16_flags():
        assert choice.value == "bf16"
    elif ratio >= hardware.BF16_FAST_RATIO:
        assert choice.value == "fp32"


@pytest.mark.parametrize(
    "flags, ratio, expected", [([], 65.0, "fp32"), (["amx_bf16"], 0.3, "bf16")]
)
def test_the_trainer_records_the_resolved_precision_and_its_reason(
    token_shards, tmp_path, cpu_kind, flags, ratio, expected
):
    cpu_kind(flags, ratio)
    args = BASE + ["--data.dataset_path", str(token_shards), "--job.dump_folder", str(tmp_path)]
    cfg = load_config(None, args + ["--training.mixed_precision", "auto"], world_size=1)
    trainer = Trainer(cfg)
    try:
        assert trainer.module.bf16 is (expected == "bf16")
        trainer._open_run_files()
    finally:
        trainer.close()
    saved = json.loads((cfg.run_dir / "config.json").read_text())
    assert saved["training"]["mixed_precision"] == expected
    launch = json.loads((cfg.run_dir / "run_info.json").read_text())["launches"][-1]
    assert launch["mixed_precision"]["value"] == expected
    assert launch["mixed_precision"]["reason"].startswith("auto: CPU")


def test_a_resumed_auto_run_keeps_its_checkpoints_precision(
    token_shards, tmp_path, cpu_kind, caplog
):
    """auto never changes a run's math between launches: the resume keeps fp32 although this
    (pretended) CPU would now choose bf16, and says so."""
    args = BASE + ["--data.dataset_path", str(token_shards), "--job.dump_folder", str(tmp_path)]
    args += ["--training.mixed_precision", "auto", "--training.global_batch_tokens", "128"]
    args += ["--checkpoint.enable", "true", "--checkpoint.interval", "1"]
    cpu_kind([], 65.0)
    train_in_process(None, args + ["--training.steps", "2"])
    cpu_kind(["amx_bf16"], 0.3)
    more = ["--training.steps", "3", "--checkpoint.allow_change", "training.steps"]
    with caplog.at_level(logging.WARNING, logger="torchgpt"):
        run_dir = train_in_process(None, args + more)
    assert any("keeping the resumed checkpoint's fp32" in r.getMessage() for r in caplog.records)
    saved = json.loads((run_dir / "config.json").read_text())
    assert saved["training"]["mixed_precision"] == "fp32"
    launch = json.loads((run_dir / "run_info.json").read_text())["launches"][-1]
    assert launch["mixed_precision"] == {
        "value": "fp32",
        "reason": "auto: kept the resumed checkpoint's fp32",
    }
    steps = [
        json.loads(x).get("step") for x in (run_dir / "metrics.jsonl").read_text().splitlines()
    ]
    assert 3 in steps


def test_the_recipe_and_debug_configs_default_to_auto():
    from tests.conftest import REPO_ROOT as REPO

    for name in (
        "debug_model",
        "mini_gpt_100m",
        "modern_muon_100m",
        "speedrun_124m",
        "reference_cpu",
    ):
        cfg = load_config(REPO / "train_configs" / f"{name}.toml", [], world_size=None)
        assert cfg.training.mixed_precision == "auto", name


@pytest.fixture
def restore_fp32_flags():
    yield
    torch.backends.cuda.matmul.allow_tf32 = False  # torch's defaults, through the legacy
    torch.backends.cudnn.allow_tf32 = True  # setters, which keep both APIs in step


def _read_every_flag() -> tuple:
    b = torch.backends
    legacy = (b.cuda.matmul.allow_tf32, b.cudnn.allow_tf32, torch.get_float32_matmul_precision())
    if not hasattr(b.cuda.matmul, "fp32_precision"):
        return legacy
    return legacy + (b.cuda.matmul.fp32_precision, b.cudnn.conv.fp32_precision)


def test_only_the_new_api_leaves_the_legacy_getters_raising(restore_fp32_flags):
    """The failure set_fp32_precision avoids (pytorch issue 166387), shown on this torch."""
    if not hasattr(torch.backends.cuda.matmul, "fp32_precision"):
        pytest.skip("this torch has only the legacy TF32 API")
    torch.backends.cuda.matmul.fp32_precision = "tf32"
    with pytest.raises(RuntimeError, match="mix of the legacy and new APIs"):
        _ = torch.backends.cuda.matmul.allow_tf32


@pytest.mark.parametrize("allow", [True, False])
def test_tf32_is_set_so_that_both_apis_read_the_same(restore_fp32_flags, allow):
    set_fp32_precision(allow)
    flags = _read_every_flag()  # would raise on a mixed state
    assert flags[0] is allow and flags[1] is allow
    assert flags[2] == ("high" if allow else "highest")
    if len(flags) > 3:
        assert flags[3] == ("tf32" if allow else "ieee")
        assert flags[4] == ("tf32" if allow else "ieee")


def test_torch_compile_runs_after_tf32_is_set(restore_fp32_flags):
    set_fp32_precision(True)
    x, w = torch.randn(8, 16), torch.randn(16, 4)
    compiled = torch.compile(lambda a, b: torch.relu(a @ b), fullgraph=True)
    torch.testing.assert_close(compiled(x, w), torch.relu(x @ w))
