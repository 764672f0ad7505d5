"""Device facts: GPU bf16 peaks and memory (MFU, estimation), the precision a device runs fast.

GPU figures are the vendors' dense (no sparsity) bf16 tensor-core peaks with fp32 accumulation.
"""

from __future__ import annotations

import ctypes
import logging
import os
import re
import time
from dataclasses import dataclass
from typing import Literal

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
                "GPU %r is not in torchgpt.utils.hardware.GPUS: no MFU is reported; set "
                "metrics.peak_tflops to its dense bf16 TFLOP/s",
                name,
            )
        return None
    return GPUS[key].bf16_tflops


@dataclass(frozen=True)
class PrecisionChoice:
    """What training.mixed_precision resolved to on this device, and why (logged, recorded)."""

    value: Literal["bf16", "fp32"]
    reason: str


# ONEDNN_MAX_CPU_ISA values below AVX512_CORE_BF16: oneDNN then uses no bf16 dot instruction.
_ISA_WITHOUT_BF16 = {"SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE"}
_ISA_WITHOUT_BF16 |= {"AVX512_CORE_VNNI"}


def cpu_bf16_flags() -> list[str]:
    """The CPU's bf16 matmul instructions that oneDNN uses (x86: avx512_bf16, amx_bf16; Arm:
    bf16), from /proc/cpuinfo; empty where there are none, where the file cannot be read, or
    where ONEDNN_MAX_CPU_ISA caps oneDNN below them (e.g. AVX2: bf16 matmul is then as slow as
    on an AVX2-only CPU, the way to run an AVX2 machine's precision and timings on any x86)."""
    if os.environ.get("ONEDNN_MAX_CPU_ISA", "").upper() in _ISA_WITHOUT_BF16:
        return []
    wanted = {"avx512_bf16", "amx_bf16", "bf16"}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key = line.split(":", 1)[0].strip()
                if key in ("flags", "Features"):
                    return sorted(wanted.intersection(line.split(":", 1)[1].split()))
    except OSError:
        pass
    return []


_ratio_cache: list[float] = []


def measure_bf16_slowdown(n: int = 256, reps: int = 5) -> float:
    """Seconds of an n x n bf16 matmul over those of the fp32 one on this CPU: ~0.25-0.5 where
    AMX / AVX512-BF16 accelerate bf16, ~65 on an AVX2-only CPU. Measured once per process
    (about 0.2 s on AVX2, a few ms elsewhere).

    One thread, the two dtypes interleaved, the best of `reps` each: a busy machine (other jobs,
    other ranks) only slows single runs down, and a run of ~1 ms (fp32) almost surely gets one
    clean repetition, so load can make bf16 look slower but not faster than it is. With the
    process's threads, one preempted thread stalled a whole matmul, and a loaded AVX2 machine
    once measured bf16 "fast" (and trained in bf16 at 55 tokens/s)."""
    if _ratio_cache:
        return _ratio_cache[0]
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        dtypes = {"bf16": torch.bfloat16, "fp32": torch.float32}
        pairs = {k: (torch.randn(n, n).to(d), torch.randn(n, n).to(d)) for k, d in dtypes.items()}
        best = dict.fromkeys(pairs, float("inf"))
        for a, b in pairs.values():
            torch.mm(a, b)  # warm-up: oneDNN primitive creation
        for _ in range(reps):
            for k, (a, b) in pairs.items():
                t0 = time.perf_counter()
                torch.mm(a, b)
                best[k] = min(best[k], time.perf_counter() - t0)
    finally:
        torch.set_num_threads(threads)
    _ratio_cache.append(best["bf16"] / max(best["fp32"], 1e-9))
    return _ratio_cache[0]


_precision_warned: set[str] = set()
BF16_FAST_RATIO = 0.8  # bf16 / fp32 matmul time below which an unflagged CPU counts as fast


def resolve_mixed_precision(requested: str, device_type: str) -> PrecisionChoice:
    """training.mixed_precision for this device: "auto" is bf16 on a CUDA device that supports
    it and on a CPU with bf16 matmul instructions (cpu_bf16_flags), else fp32. An explicit bf16
    on a CPU without them is kept, with one warning giving the measured slowdown."""
    import torch

    if device_type == "cuda":
        ok = torch.cuda.is_bf16_supported()
        if requested != "auto":
            return PrecisionChoice(requested, f"set in the config ({requested})")  # type: ignore[arg-type]
        name = torch.cuda.get_device_name()
        if ok:
            return PrecisionChoice("bf16", f"auto: {name} supports bf16")
        return PrecisionChoice("fp32", f"auto: {name} has no bf16 support")
    flags = cpu_bf16_flags()
    capability = torch.backends.cpu.get_cpu_capability()
    if requested == "fp32":
        return PrecisionChoice("fp32", "set in the config (fp32)")
    if requested == "bf16":
        if not flags:
            ratio = measure_bf16_slowdown()
            if capability not in _precision_warned:
                _precision_warned.add(capability)
                logger.warning(
                    "training.mixed_precision = bf16 on a CPU without bf16 matmul instructions "
                    "(%s; no avx512_bf16 / amx_bf16): a bf16 matmul measured %.1fx the time of "
                    "fp32 here; set it to auto (or fp32) to train in fp32",
                    capability,
                    ratio,
                )
        return PrecisionChoice("bf16", "set in the config (bf16)")
    ratio = measure_bf16_slowdown()
    if flags:
        return PrecisionChoice(
            "bf16",
            f"auto: CPU {capability} with {'+'.join(flags)} (bf16 matmul {ratio:.2g}x fp32's time)",
        )
    if ratio < BF16_FAST_RATIO:  # no flags seen (an unknown CPU), but bf16 measured fast
        return PrecisionChoice(
            "bf16", f"auto: CPU {capability}: bf16 matmul measured {ratio:.2g}x fp32's time"
        )
    return PrecisionChoice(
        "fp32",
        f"auto: CPU {capability} has no bf16 matmul instructions (bf16 matmul measured "
        f"{ratio:.2g}x fp32's time)",
    )


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


def set_fp32_precision(allow_tf32: bool) -> str:
    """TF32 (or exact fp32) for CUDA fp32 matmuls and convolutions, through both of torch's
    APIs so that every reader agrees.

    torch >= 2.9 has `fp32_precision`; torch's own inductor (2.11 and 2.13 alike) still reads the
    legacy `allow_tf32` getters, which raise "mix of the legacy and new APIs" when only the new
    one was set (pytorch issue 166387). The legacy flags first, then the new ones, leaves both
    consistent; on torch without the new API only the legacy flags exist. Process-global flags:
    settable and readable on a machine without a GPU.
    """
    import torch

    precision = "tf32" if allow_tf32 else "ieee"
    cuda_matmul, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    cuda_matmul.allow_tf32 = allow_tf32
    cudnn.allow_tf32 = allow_tf32
    if hasattr(cuda_matmul, "fp32_precision"):
        cuda_matmul.fp32_precision = precision
        if hasattr(cudnn, "conv"):
            cudnn.conv.fp32_precision = precision
    return precision


def configure_device(device_type: str, *, allow_tf32: bool) -> list[str]:
    """Per-process settings for the training device; returns what was set (logged).

    CUDA: TF32 for fp32 matmuls and convolutions (set_fp32_precision), nothing host-side. CPU:
    glibc's heap tuned for reuse (tune_host_malloc), which would only cost memory next to a GPU.
    """
    if device_type == "cuda":
        return [f"fp32 matmul/conv precision {set_fp32_precision(allow_tf32)}"]
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
