"""Accelerator facts used for MFU and estimation: dense bf16 peak TFLOP/s and memory per GPU.

Figures are the vendors' dense (no sparsity) bf16 tensor-core peaks with fp32 accumulation.
"""

from __future__ import annotations

import ctypes
import logging
import os
import re
from dataclasses import dataclass

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class GPUSpec:
    name: str
    bf16_tflops: float
    memory_gib: float
    source: str


GPUS: dict[str, GPUSpec] = {
    "h100": GPUSpec("NVIDIA H100 SXM5 80GB", 989.4, 80, "H100 datasheet, dense BF16"),
    "h100-pcie": GPUSpec("NVIDIA H100 PCIe 80GB", 756.0, 80, "H100 datasheet, dense BF16"),
    "h100-nvl": GPUSpec("NVIDIA H100 NVL 94GB", 835.5, 94, "H100 datasheet, dense BF16"),
    "h200": GPUSpec("NVIDIA H200 SXM 141GB", 989.4, 141, "H200 datasheet, dense BF16"),
    "gh200": GPUSpec("NVIDIA GH200 96GB", 989.4, 96, "GH200 datasheet, dense BF16 (HBM3)"),
    "b200": GPUSpec("NVIDIA B200 180GB", 2250.0, 180, "DGX B200 datasheet, dense BF16"),
    "a100-80g": GPUSpec("NVIDIA A100 SXM4 80GB", 312.0, 80, "A100 datasheet, dense BF16"),
    "a100-40g": GPUSpec("NVIDIA A100 SXM4 40GB", 312.0, 40, "A100 datasheet, dense BF16"),
    "l40s": GPUSpec("NVIDIA L40S 48GB", 362.05, 48, "L40S datasheet, dense BF16"),
    "a10g": GPUSpec("NVIDIA A10G 24GB", 70.0, 24, "A10G datasheet, dense BF16 (approx.)"),
    "rtx4090": GPUSpec("NVIDIA GeForce RTX 4090 24GB", 165.2, 24, "Ada whitepaper, BF16 fp32-acc"),
    "rtx3090": GPUSpec("NVIDIA GeForce RTX 3090 24GB", 71.0, 24, "Ampere GA102 whitepaper, BF16"),
}

# torch.cuda.get_device_name() -> table key, first match wins: the full names tell the H100
# variants apart (SXM "NVIDIA H100 80GB HBM3", "NVIDIA H100 PCIe", "NVIDIA H100 NVL"), and
# GH200 must be tried before H200, which must be tried before H100.
_NAME_PATTERNS: tuple[tuple[str, str], ...] = (
    (r"\bgh200\b", "gh200"),
    (r"\bh200\b", "h200"),
    (r"\bh100\b.*\bnvl\b", "h100-nvl"),
    (r"\bh100\b.*\bpcie\b", "h100-pcie"),
    (r"\bh100\b", "h100"),
    (r"\bb200\b", "b200"),
    (r"\ba100\b.*\b40\s*gb\b", "a100-40g"),
    (r"\ba100\b", "a100-80g"),
    (r"\bl40s\b", "l40s"),
    (r"\ba10g\b", "a10g"),
    (r"\brtx 4090\b", "rtx4090"),
    (r"\brtx 3090\b", "rtx3090"),
)
_warned: set[str] = set()


def get_gpu(name: str) -> GPUSpec:
    key = name.lower()
    if key not in GPUS:
        raise ValueError(f"unknown GPU '{name}'; known: {', '.join(GPUS)}")
    return GPUS[key]


def match_gpu(device_name: str) -> str | None:
    """The table key of a CUDA device name (e.g. "NVIDIA H100 PCIe" -> "h100-pcie"), or None."""
    name = device_name.lower().replace("-", " ")
    for pattern, key in _NAME_PATTERNS:
        if re.search(pattern, name):
            return key
    return None


def detect_peak_tflops(device_type: str) -> float | None:
    """Peak bf16 TFLOP/s of the local CUDA device from the table, else None (MFU not logged).

    An unknown GPU is named in a warning once; metrics.peak_tflops sets the peak by hand.
    """
    if device_type != "cuda":
        return None
    import torch

    name = torch.cuda.get_device_name()
    key = match_gpu(name)
    if key is None:
        if name not in _warned:
            _warned.add(name)
            logger.warning(
                "GPU %r is not in torchgpt.hardware.GPUS: no MFU is reported; set "
                "metrics.peak_tflops to its dense bf16 TFLOP/s",
                name,
            )
        return None
    return GPUS[key].bf16_tflops


def tune_host_malloc() -> bool:
    """Keep freed large blocks in glibc's heap for reuse: no mmap for big blocks, no trimming.

    A CPU training step allocates and frees the same multi-megabyte activations every
    micro-step; with glibc's defaults each one is a fresh mmap and page-faults again. Measured
    by bench/train_throughput.py: +10% tokens/s in bf16, +27% in fp32, +0.2 GiB peak RSS.
    Returns False (and changes nothing) where libc is not glibc.
    """
    m_trim_threshold, m_mmap_max = -1, -4  # from glibc's malloc.h
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(m_mmap_max, 0)) and bool(mallopt(m_trim_threshold, 2**31 - 1))


def configure_device(device_type: str, *, allow_tf32: bool) -> list[str]:
    """Per-process settings for the training device; returns what was set (logged).

    CUDA: TF32 for fp32 matmuls and convolutions (torch's fp32_precision API; the legacy
    allow_tf32 flags must not be mixed with it), nothing host-side. CPU: glibc's heap tuned
    for reuse (tune_host_malloc), which would only cost memory next to a GPU.
    """
    import torch

    if device_type == "cuda":
        precision = "tf32" if allow_tf32 else "ieee"
        torch.backends.cuda.matmul.fp32_precision = precision
        torch.backends.cudnn.conv.fp32_precision = precision
        return [f"fp32 matmul/conv precision {precision}"]
    return ["host malloc tuned for reuse"] if tune_host_malloc() else []


def device_memory_gib(device_type: str, device_index: int = 0) -> float:
    """Memory one rank may size for: a GPU's total memory, or on CPU the host's available
    memory shared by the ranks of this node (LOCAL_WORLD_SIZE)."""
    if device_type == "cuda":
        import torch

        return round(torch.cuda.get_device_properties(device_index).total_memory / 2**30, 2)
    available = _meminfo_bytes("MemAvailable") or os.sysconf("SC_PAGE_SIZE") * os.sysconf(
        "SC_AVPHYS_PAGES"
    )
    share = available / 2**30 / max(int(os.environ.get("LOCAL_WORLD_SIZE", "1")), 1)
    return round(share, 2)


def _meminfo_bytes(field: str) -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None
