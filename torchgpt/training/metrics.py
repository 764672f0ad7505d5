"""Training metrics: throughput, MFU, memory, and their sinks (console, JSON lines, TensorBoard,
W&B).

Only rank 0 writes. W&B runs offline when there is no API key, and any W&B failure disables it
with a warning instead of stopping training.
"""

from __future__ import annotations

import json
import logging
import os
import resource
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from torchgpt.config.job_config import JobConfig

logger = logging.getLogger(__name__)


def peak_memory(device: torch.device, *, reset: bool = False) -> dict[str, float]:
    """Peak memory of this process since the last reset, for a step record; `reset` starts a
    new interval once read (reset_peak_memory).

    CUDA: the caching allocator's peaks, allocated (tensors) and reserved (what the process
    holds from the driver: allocated + cached blocks + fragmentation, the figure an OOM is
    about). CPU: peak RSS as "peak_memory_gib" (Linux's VmHWM; the run-long ru_maxrss where
    /proc cannot be read).
    """
    if device.type == "cuda":
        peak = {
            "peak_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30,
            "peak_memory_reserved_gib": torch.cuda.max_memory_reserved(device) / 2**30,
        }
    else:
        peak = {"peak_memory_gib": _peak_rss_kib() / 2**20}
    if reset:
        reset_peak_memory(device)
    return peak


def _peak_rss_kib() -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux


def reset_peak_memory(device: torch.device) -> None:
    """Start a new peak-memory interval (after each log line): CUDA's peak stats; on Linux
    the process's peak RSS (writing 5 to /proc/self/clear_refs), where that is permitted."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


class StepTimer:
    """Wall time per phase (data, forward_backward, optimizer) between log steps.

    On CUDA each mark is a CUDA event, read only by `pop()` at a log step (one synchronize
    there); marking never waits for the device, so a non-log step issues no host sync here.
    Elsewhere the marks are perf_counter readings.
    """

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self._start: Any = None
        self._laps: list[tuple[str, Any, Any]] = []

    def _mark(self) -> Any:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def start(self) -> None:
        self._start = self._mark()

    def lap(self, phase: str) -> None:
        now = self._mark()
        if self._start is not None:
            self._laps.append((phase, self._start, now))
        self._start = now

    def pop(self) -> dict[str, float]:
        """Seconds per phase since the last pop (synchronizes once on CUDA)."""
        if self.cuda and self._laps:
            self._laps[-1][2].synchronize()
        totals: dict[str, float] = {}
        for phase, begin, end in self._laps:
            seconds = begin.elapsed_time(end) / 1e3 if self.cuda else end - begin
            totals[phase] = totals.get(phase, 0.0) + seconds
        self._laps = []
        return totals


def step_record(
    *,
    step: int,
    loss: float,
    grad_norm: float,
    lr: float,
    tokens_seen: int,
    tokens: int,
    seconds: float,
    steps: int,
    phases: dict[str, float],
    world_size: int,
    flops_per_token: float,
    peak_tflops: float | None,
    memory: dict[str, float],
) -> dict[str, Any]:
    """The metrics.jsonl record of a log step: `tokens` trained over `steps` steps in `seconds`.

    MFU (PaLM, appendix B: achieved model FLOP/s over the device's peak) is included only when
    the peak is known.
    """
    seconds = max(seconds, 1e-9)
    tps = tokens / seconds
    tps_dev = tps / world_size
    record: dict[str, Any] = {
        "step": step,
        "loss": loss,
        "grad_norm": grad_norm,
        "lr": lr,
        "tokens_seen": tokens_seen,
        "tokens_per_s": tps,
        "tokens_per_s_per_device": tps_dev,
        "tflops_per_device": tps_dev * flops_per_token / 1e12,
        "step_time_s": seconds / steps,
        "data_share": phases.get("data", 0.0) / seconds,
        **memory,
    }
    for k, v in phases.items():
        record[f"time_{k}_s"] = v / steps
    if peak_tflops:
        record["mfu"] = record["tflops_per_device"] / peak_tflops
    return record


def console_line(record: dict[str, Any], total_steps: int) -> str:
    """The terminal line of a step record: progress, loss, rate, MFU, memory, ETA."""
    mfu = f"  mfu {100 * record['mfu']:.1f}%" if "mfu" in record else ""
    reserved = record.get("peak_memory_reserved_gib")
    held = f" ({reserved:.2f} reserved)" if reserved is not None else ""
    remaining = (total_steps - record["step"]) * record["step_time_s"]
    return (
        f"step {record['step']:>6}/{total_steps}  loss {record['loss']:.4f}  "
        f"gnorm {record['grad_norm']:.3f}  lr {record['lr']:.2e}  "
        f"tok/s {record['tokens_per_s']:,.0f}{mfu}  mem {record['peak_memory_gib']:.2f}GiB{held}  "
        f"data {100 * record['data_share']:.0f}%  eta {remaining / 60:.1f}min"
    )


# Bookkeeping fields of a record, not curves (a Unix time is no chart; a resume is a mark).
_NOT_SCALARS = {"step", "time", "resumed_from"}


class MetricsLogger:
    """Writes one record per log step to the console, metrics.jsonl, TensorBoard and W&B."""

    def __init__(
        self,
        run_dir: Path,
        *,
        rank: int,
        enable_tensorboard: bool,
        enable_wandb: bool,
        wandb_project: str,
        run_name: str,
        config: dict[str, Any],
    ):
        self.rank = rank
        self.jsonl = None
        self.tb = None
        self.wandb = None
        if rank != 0:
            return
        run_dir.mkdir(parents=True, exist_ok=True)
        self.jsonl = open(run_dir / "metrics.jsonl", "a", buffering=1)
        if enable_tensorboard:
            self.tb = _open_tensorboard(run_dir / "tb")
        if enable_wandb:
            self.wandb = _open_wandb(run_dir, wandb_project, run_name, config)

    @classmethod
    def from_config(cls, cfg: JobConfig, *, rank: int) -> MetricsLogger:
        """The sinks metrics.* asks for, in cfg.run_dir."""
        m = cfg.metrics
        return cls(
            cfg.run_dir,
            rank=rank,
            enable_tensorboard=m.enable_tensorboard,
            enable_wandb=m.enable_wandb,
            wandb_project=m.wandb_project,
            run_name=cfg.job.name,
            config=cfg.to_dict(),
        )

    def log(self, record: dict[str, Any], *, console: str | None = None) -> None:
        if self.rank != 0:
            return
        record = {"time": time.time(), **record}
        self.jsonl.write(json.dumps(record) + "\n")
        step = int(record.get("step", 0))
        scalars = {
            k: v for k, v in record.items() if isinstance(v, int | float) and k not in _NOT_SCALARS
        }
        if self.tb is not None:
            for k, v in scalars.items():
                self.tb.add_scalar(k, v, step)
        if self.wandb is not None:
            try:
                self.wandb.log(scalars, step=step)
            except Exception as e:  # W&B must never stop training
                logger.warning("W&B logging failed, disabling it: %s", e)
                self.wandb = None
        if console:
            logger.info(console)

    def close(self) -> None:
        if self.jsonl is not None:
            self.jsonl.close()
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            offline = os.environ.get("WANDB_MODE") == "offline"
            hint = wandb_sync_hint(self.wandb) if offline else None
            try:
                self.wandb.finish()
            except Exception as e:
                logger.warning("W&B finish failed: %s", e)
            if hint:
                logger.info("%s", hint)


def _open_tensorboard(path: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        logger.warning("tensorboard is not installed (pip install torchgpt[logging]); skipping it")
        return None
    return SummaryWriter(str(path))


def _open_wandb(run_dir: Path, project: str, name: str, config: dict[str, Any]):
    try:
        import wandb
    except ImportError:
        logger.warning("wandb is not installed (pip install torchgpt[logging]); skipping it")
        return None
    if not _wandb_key_known() and "WANDB_MODE" not in os.environ:
        # No key: log offline (sync later with `wandb sync`), never block on a login prompt.
        os.environ["WANDB_MODE"] = "offline"
    try:
        run = wandb.init(
            project=project,
            name=name,
            dir=str(run_dir),
            config=config,
            id=wandb_run_id(run_dir),
            resume="allow",
        )
    except Exception as e:
        logger.warning("W&B init failed, continuing without it: %s", e)
        return None
    if os.environ.get("WANDB_MODE") == "offline":
        logger.info("%s", wandb_sync_hint(run))
    return run


def wandb_run_id(run_dir: Path) -> str:
    """The W&B run id of this run folder, kept in RUN_DIR/wandb_id: every launch of a resumed
    run logs into the same W&B run (resume="allow") instead of starting a new one."""
    path = run_dir / "wandb_id"
    if path.is_file() and path.read_text().strip():
        return path.read_text().strip()
    import uuid

    run_id = uuid.uuid4().hex[:16]
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(run_id + "\n")
    os.replace(tmp, path)
    return run_id


def _wandb_key_known() -> bool:
    """WANDB_API_KEY is set, or `wandb login` stored a key in ~/.netrc."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    import netrc

    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (OSError, netrc.NetrcParseError):
        return False


def wandb_sync_hint(run: Any) -> str:
    folder = Path(run.dir).parent  # .../wandb/offline-run-DATE-ID (run.dir is its files/)
    return (
        f"W&B is offline (no API key; `wandb login` or WANDB_API_KEY to log online): the run is "
        f"in {folder}; upload it with `wandb sync {folder}`"
    )
