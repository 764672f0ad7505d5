"""scripts/install_torch.sh: which torch `make setup` asks pip for (issue #27), with pip and
nvidia-smi replaced by recorders; the real install is what `make setup` and CI run."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _install(tmp_path: Path, spec: str, index: str, *, gpu: bool, local_cpu_wheel: bool) -> list:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    log = tmp_path / "pip_calls"
    log.write_text("")
    fake_python = bin_dir / "python"
    # `python -m pip install -q ARGS`: record ARGS; fail a +cpu request that names no index
    # when no local wheel is configured (PyPI has no +cpu builds).
    no_local = 0 if local_cpu_wheel else 1
    fake_python.write_text(
        f'#!/bin/bash\nshift 4\necho "$*" >> {log}\n'
        f'if [[ "$*" == *+cpu* && "$*" != *--extra-index-url* && {no_local} == 1 ]]; then\n'
        "  exit 1\nfi\n"
    )
    fake_python.chmod(0o755)
    if gpu:
        smi = bin_dir / "nvidia-smi"
        smi.write_text("#!/bin/bash\necho 'GPU 0: NVIDIA H200 (UUID: GPU-0)'\n")
        smi.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:/usr/bin:/bin"}
    subprocess.run(
        ["bash", "scripts/install_torch.sh", str(fake_python), spec, index],
        cwd=REPO,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    return [line.split() for line in log.read_text().splitlines()]


def test_no_gpu_takes_the_cpu_build_from_a_local_wheel(tmp_path):
    calls = _install(tmp_path, "torch==2.13.0", "auto", gpu=False, local_cpu_wheel=True)
    assert calls == [["torch==2.13.0+cpu"]]


def test_no_gpu_and_no_local_wheel_falls_back_to_the_pytorch_cpu_index(tmp_path):
    calls = _install(tmp_path, "torch==2.13.0", "auto", gpu=False, local_cpu_wheel=False)
    assert calls[-1] == [
        "--extra-index-url",
        "https://download.pytorch.org/whl/cpu",
        "torch==2.13.0+cpu",
    ]


def test_a_gpu_takes_the_spec_as_given(tmp_path):
    assert _install(tmp_path, "torch==2.13.0", "auto", gpu=True, local_cpu_wheel=True) == [
        ["torch==2.13.0"]
    ]


@pytest.mark.parametrize(
    "spec, index, expected",
    [
        ("torch==2.11.0", "pypi", ["torch==2.11.0"]),
        (
            "torch==2.11.0",
            "https://example/whl/cu126",
            ["--index-url", "https://example/whl/cu126", "torch==2.11.0"],
        ),
        # TORCH_SPEC is split into words: it may carry pip options of its own.
        (
            "torch==2.11.0 --index-url https://example/whl/cu130",
            "pypi",
            ["torch==2.11.0", "--index-url", "https://example/whl/cu130"],
        ),
    ],
)
def test_an_explicit_index_or_options_are_passed_to_pip(tmp_path, spec, index, expected):
    assert _install(tmp_path, spec, index, gpu=False, local_cpu_wheel=True) == [expected]
