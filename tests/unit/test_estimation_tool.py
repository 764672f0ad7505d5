"""tools/memory_estimate.py: output, verdicts with working suggestions, and errors (exit code 2)."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest

from torchgpt.config.manager import load_config
from torchgpt.estimation.memory import analytic_memory
from torchgpt.estimation.plan import TrainingPlan
from torchgpt.estimation.verdict import usable_bytes
from torchgpt.utils.hardware import get_gpu

ROOT = Path(__file__).resolve().parents[2]
RECIPE = str(ROOT / "train_configs" / "mini_gpt_100m.toml")
DEBUG = str(ROOT / "train_configs" / "debug_model.toml")


def _load_tool():
    spec = importlib.util.spec_from_file_location(
        "memory_estimate", ROOT / "tools" / "memory_estimate.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


tool = _load_tool()


def run_tool(argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    code = tool.main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_split_overrides() -> None:
    argv = [DEBUG, "--training.seq_len", "128", "--gpu", "h100", "--model.flavor=debug", "--json"]
    tool_args, overrides = tool.split_overrides(argv)
    assert tool_args == [DEBUG, "--gpu", "h100", "--json"]
    assert overrides == ["--training.seq_len", "128", "--model.flavor=debug"]


def test_text_report_with_trace(capsys: pytest.CaptureFixture) -> None:
    code, out, _ = run_tool([DEBUG, "--gpu", "rtx4090", "--nproc", "2"], capsys)
    assert code == 0
    assert "FSDP2 (shard 2)" in out and "FITS" in out
    assert "traced (FSDPMemTracker under FakeTensorMode, fake process group of 2" in out
    assert "peak-FLOPs table used" in out and "rtx4090    NVIDIA GeForce RTX 4090" in out
    assert "traced eagerly (no inductor under fake tensors)" in out
    assert "Chinchilla" in out and "this model" in out


def test_json_and_cost(capsys: pytest.CaptureFixture) -> None:
    argv = [RECIPE, "--gpu", "h100", "--no-trace", "--json", "--usd-per-gpu-hour", "3"]
    code, out, _ = run_tool(argv, capsys)
    assert code == 0
    data = json.loads(out)
    assert data["memory"]["traced"] is None and data["memory"]["trace_skipped"]
    assert data["verdict"]["basis"] == "analytic" and data["verdict"]["fits"] is True
    p = data["plan"]
    assert p["grad_accum"] == p["global_batch_tokens"] // (p["micro_batch_size"] * p["seq_len"])
    assert p["precision_mode"] == "autocast-bf16"  # one GPU: bf16 through autocast
    assert data["speed"]["usd"] == pytest.approx(3 * data["speed"]["gpu_hours"])


def test_does_not_fit_and_every_suggestion_fits(capsys: pytest.CaptureFixture) -> None:
    overrides = ["--model.flavor", "gpt2-1558m", "--activation_checkpoint.mode", "none"]
    overrides += ["--training.micro_batch_size", "16", "--training.seq_len", "1024"]
    overrides += ["--training.global_batch_tokens", "524288"]
    argv = [RECIPE, *overrides, "--gpu", "a100-40g", "--nproc", "2", "--no-trace", "--json"]
    code, out, _ = run_tool(argv, capsys)
    data = json.loads(out)
    assert code == 3 and data["verdict"]["fits"] is False  # exit 3: does not fit
    suggestions = data["verdict"]["suggestions"]
    assert suggestions, "a 1.5B model on 2 x 40 GB needs AC or a smaller micro-batch"
    budget = usable_bytes(get_gpu("a100-40g"))
    for s in suggestions:
        # Apply the suggested changes for real and re-estimate: it must fit.
        extra, nproc = [], 2
        for change in s["changes"]:
            key, value = change.split()[:2]
            if key == "--nproc":
                nproc = int(value)
            else:
                extra += [key, value]
        cfg = load_config(RECIPE, overrides + extra, world_size=nproc)
        assert analytic_memory(TrainingPlan.from_config(cfg, nproc)).peak_bytes <= budget, s


@pytest.mark.parametrize(
    "argv,message",
    [
        ([RECIPE, "--gpu", "h300"], "unknown GPU 'h300'; known: h100, h100-pcie, h100-nvl, h200"),
        ([RECIPE, "--gpu-memory-gib", "40"], "needs both --gpu-memory-gib and --gpu-tflops"),
        ([RECIPE], "--gpu is required; known: h100"),
        ([RECIPE, "--gpu", "h100", "--nproc", "3"], "is not divisible by micro_batch_size"),
        (
            [RECIPE, "--gpu", "h100", "--nproc", "4", "--parallelism.dp_shard", "3"],
            r"dp_replicate\(1\) x dp_shard\(3\) = 3 != world_size\(4\)",
        ),
        ([RECIPE, "--gpu", "h100", "--nproc", "0"], "--nproc: 0 must be >= 1"),
        ([RECIPE, "--gpu", "h100", "--mfu", "40"], "--mfu: 40.0 must be in"),
        ([RECIPE, "--gpu", "h100", "--training.seq_len", "4096"], "exceeds the context"),
    ],
)
def test_errors_exit_2_with_the_fix(argv: list[str], message: str, capsys) -> None:
    code, out, err = run_tool([*argv, "--no-trace"], capsys)
    assert code == 2 and out == ""
    assert err.startswith("error: ")
    assert re.search(message, err), err


def test_chinchilla_only(capsys: pytest.CaptureFixture) -> None:
    code, out, _ = run_tool(["--chinchilla-flops", "1e19"], capsys)
    assert code == 0
    assert "loss vs size at C = 1e+19 FLOPs" in out and "20 tokens/param optimum" in out


@pytest.mark.parametrize(
    "device_name,key",
    [
        ("NVIDIA H100 80GB HBM3", "h100"),
        ("NVIDIA H100 PCIe", "h100-pcie"),
        ("NVIDIA H100 NVL", "h100-nvl"),
        ("NVIDIA H200", "h200"),
        ("NVIDIA GH200 480GB", "gh200"),
        ("NVIDIA B200", "b200"),
        ("NVIDIA A100-SXM4-80GB", "a100-80g"),
        ("NVIDIA A100-SXM4-40GB", "a100-40g"),
        ("NVIDIA A100 80GB PCIe", "a100-80g"),
        ("NVIDIA L40S", "l40s"),
        ("NVIDIA A10G", "a10g"),
        ("NVIDIA GeForce RTX 4090", "rtx4090"),
        ("NVIDIA GeForce RTX 3090", "rtx3090"),
        ("NVIDIA RTX A6000", None),
        ("Tesla V100-SXM2-16GB", None),
    ],
)
def test_gpu_table_matches_full_device_names(device_name: str, key: str | None) -> None:
    from torchgpt.utils.hardware import match_gpu

    assert match_gpu(device_name) == key


def test_an_unknown_gpu_warns_once_and_reports_no_mfu(monkeypatch, caplog) -> None:
    import torch

    from torchgpt.utils import hardware

    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "NVIDIA RTX A6000")
    monkeypatch.setattr(hardware, "_warned", set())
    with caplog.at_level("WARNING"):
        assert hardware.detect_peak_tflops("cuda") is None
        assert hardware.detect_peak_tflops("cuda") is None
    assert caplog.text.count("'NVIDIA RTX A6000' is not in torchgpt.utils.hardware.GPUS") == 1
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "NVIDIA H100 PCIe")
    assert hardware.detect_peak_tflops("cuda") == 756.0


def test_any_other_gpu_by_memory_and_tflops(capsys: pytest.CaptureFixture) -> None:
    code, out, _ = run_tool([RECIPE, "--gpu", "h200", "--no-trace", "--json"], capsys)
    data = json.loads(out)
    assert code == 0 and data["gpu"] == "h200" and data["verdict"]["fits"] is True
    fixed = ["--training.micro_batch_size=16", "--activation_checkpoint.mode=selective"]
    argv = [RECIPE, *fixed, "--gpu-memory-gib", "8", "--gpu-tflops", "100", "--no-trace", "--json"]
    code, out, _ = run_tool(argv, capsys)
    data = json.loads(out)
    assert code == 3 and data["verdict"]["fits"] is False
    assert data["speed"]["spec"]["bf16_tflops"] == 100 and data["speed"]["spec"]["memory_gib"] == 8
