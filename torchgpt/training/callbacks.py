"""The Trainer's components around the step, each owning one concern of the loop.

The loop (torchgpt/training/trainer.py) calls them in a fixed order after every optimizer
step: `GarbageCollection.step`, `Profiler.step`, `StepLogging.after_step` (a record at log
steps), `Validation.maybe_run`, the harness eval (torchgpt/training/train_eval.py), then the
checkpoint (torchgpt/checkpoint/manager.py). Each reads its own config section and keeps its
own state, so the loop reads as the loop and a new concern is a new component here.
"""

from __future__ import annotations

import gc
import logging
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from torchgpt.checkpoint.states import TrainState
from torchgpt.data.tokenizer import TokenizerUnavailable, get_tokenizer, token_byte_lengths
from torchgpt.step.train_module import Batch, TrainModule, perplexity
from torchgpt.training.metrics import (
    MetricsLogger,
    StepTimer,
    console_line,
    peak_memory,
    step_record,
)

logger = logging.getLogger("torchgpt")


class GarbageCollection:
    """Python's collector on a schedule (TorchTitan's): automatic collection off, generation 1
    collected every `freq` steps on every rank at the same point, so no rank pauses for it in
    the middle of a step while the others wait at a collective. freq 0 leaves Python's own."""

    def __init__(self, freq: int) -> None:
        self.freq = freq
        if freq > 0:
            gc.disable()
            gc.collect(1)

    def step(self, step: int) -> None:
        if self.freq > 0 and step % self.freq == 0:
            t0 = time.perf_counter()
            gc.collect(1)
            logger.debug("gc at step %d: %.3f s", step, time.perf_counter() - t0)

    def close(self) -> None:
        if self.freq > 0:
            gc.enable()


class Profiler:
    """torch.profiler over a wait / warmup / active schedule ([profiling]); each finished cycle
    writes RUN_DIR/profile/rank{R}.*.pt.trace.json (TensorBoard's profiler plugin, Perfetto)
    and names it in the log. Off: every call is a no-op."""

    def __init__(self, cfg: Any, run_dir: Path, rank: int, device: torch.device) -> None:
        self.folder = run_dir / "profile"
        self.rank = rank
        self.traces: list[Path] = []
        self._prof: torch.profiler.profile | None = None
        if not cfg.enable:
            return
        activities = [torch.profiler.ProfilerActivity.CPU]
        if device.type == "cuda":
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        self._prof = torch.profiler.profile(
            activities=activities,
            schedule=torch.profiler.schedule(
                wait=cfg.wait, warmup=cfg.warmup, active=cfg.active, repeat=cfg.repeat
            ),
            on_trace_ready=self._write,
            record_shapes=True,
        )
        self._prof.start()

    def _write(self, prof: torch.profiler.profile) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / f"rank{self.rank}.step{prof.step_num}.pt.trace.json"
        prof.export_chrome_trace(str(path))
        self.traces.append(path)
        logger.info("profiler trace: %s (open in TensorBoard's profiler or ui.perfetto.dev)", path)

    def step(self) -> None:
        if self._prof is not None:
            self._prof.step()

    def close(self) -> None:
        if self._prof is not None:
            self._prof.stop()
            self._prof = None


class StepLogging:
    """The step records: every metrics.log_freq steps (and the first and last) one record of
    the steps since the last, its rate from their own phases (StepTimer: data, forward /
    backward, optimizer), so validation, harness eval and checkpoint time stay out; peak
    memory of the interval (reset after each record)."""

    def __init__(
        self,
        cfg: Any,
        *,
        timer: StepTimer,
        device: torch.device,
        world_size: int,
        flops_per_token: float,
        peak_tflops: float | None,
    ) -> None:
        self.cfg, self.timer, self.device = cfg, timer, device
        self.world_size, self.flops_per_token, self.peak_tflops = (
            world_size,
            flops_per_token,
            peak_tflops,
        )
        self.tokens_since, self.steps_since = 0, 0

    def is_log_step(self, step: int) -> bool:
        """Steps with a record: every metrics.log_freq-th, the first and the last."""
        return step % self.cfg.metrics.log_freq == 0 or step in (1, self.cfg.training.steps)

    def after_step(
        self,
        metrics: MetricsLogger,
        st: TrainState,
        loss: float,
        gnorm: float,
        lr: float,
        extra: dict[str, float] | None = None,
    ) -> None:
        """`extra`: more values for this step's record (only read at log steps)."""
        tokens = self.cfg.training.global_batch_tokens
        self.tokens_since += tokens
        self.steps_since += 1
        last = self.cfg.training.steps
        if not self.is_log_step(st.step):
            return
        phases = self.timer.pop()
        record = step_record(
            step=st.step,
            loss=loss,
            grad_norm=gnorm,
            lr=lr,
            tokens_seen=st.tokens_seen,
            tokens=self.tokens_since,
            seconds=sum(phases.values()),
            steps=max(self.steps_since, 1),
            phases=phases,
            world_size=self.world_size,
            flops_per_token=self.flops_per_token,
            peak_tflops=self.peak_tflops,
            memory=peak_memory(self.device, reset=True),  # this interval's peak
        )
        record.update(extra or {})
        metrics.log(record, console=console_line(record, last))
        self.tokens_since, self.steps_since = 0, 0


class Validation:
    """The fixed validation batches' mean token loss every validation.interval steps, at the
    last step, and whenever a checkpoint is due (so every checkpoint carries its val loss and
    "best" is chosen among saved steps); one record, and the run's best val loss.

    The record also carries bits per byte (`val_bpb`): the summed loss in bits over the UTF-8
    bytes of the validation targets' decoded text, a figure independent of the tokenizer
    (counted once here, collective: build it on every rank at the same point)."""

    def __init__(
        self,
        cfg: Any,
        module: TrainModule,
        batches: Sequence[Batch],
        set_phase: Callable[[str], None],
    ) -> None:
        self.cfg, self.module, self.batches, self.set_phase = cfg, module, batches, set_phase
        self.tokens_per_byte: float | None = None
        if cfg.validation.enable:
            self.tokens_per_byte = _tokens_per_byte(
                batches, cfg.data.tokenizer_dir, module.device, module.dims.loss_group()
            )

    def due(self, step: int, last_step: int, force: bool = False) -> bool:
        v = self.cfg.validation
        return v.enable and (force or step % v.interval == 0 or step == last_step)

    def run(self) -> float:
        """Mean token cross-entropy over the fixed validation batches of all ranks."""
        self.set_phase("validation (forward passes and the all-reduce of the loss)")
        return self.module.eval_loss(self.batches)

    def maybe_run(
        self, step: int, last_step: int, st: TrainState, metrics: MetricsLogger, force: bool
    ) -> float | None:
        if not self.due(step, last_step, force):
            return None
        val_loss = self.run()
        record = {"step": step, "val_loss": val_loss, "val_ppl": perplexity(val_loss)}
        console = f"step {step:>6}  val_loss {val_loss:.4f}  val_ppl {perplexity(val_loss):.2f}"
        if self.tokens_per_byte is not None:
            record["val_bpb"] = bits_per_byte(val_loss, self.tokens_per_byte)
            console += f"  val_bpb {record['val_bpb']:.4f}"
        metrics.log({**record, "tokens_seen": st.tokens_seen}, console=console)
        st.best_val_loss = min(st.best_val_loss, val_loss)
        return val_loss


def bits_per_byte(loss: float, tokens_per_byte: float) -> float:
    """Mean token loss in nats -> bits per UTF-8 byte of the text those tokens decode to."""
    return loss * tokens_per_byte / math.log(2)


def _tokens_per_byte(
    batches: Sequence[Batch], tokenizer_dir: str, device: torch.device, group: Any
) -> float | None:
    """Target tokens / UTF-8 bytes of their text over every rank's validation batches (one
    all-reduce); None, logged once, when the GPT-2 BPE files cannot be found."""
    counts = torch.zeros(3, dtype=torch.float64)  # tokens, bytes, ranks without a tokenizer
    try:
        lengths = torch.tensor(token_byte_lengths(get_tokenizer(tokenizer_dir or None)))
    except (TokenizerUnavailable, ValueError) as e:
        logger.info("validation: no bits per byte (%s)", " ".join(str(e).split())[:200])
        counts[2] = 1
    else:
        for _, targets in batches:
            counts[0] += targets.numel()
            counts[1] += lengths[targets].sum().double()
    if dist.is_initialized():
        counts = counts.to(device)  # where the group's backend reduces (NCCL: the GPU)
        dist.all_reduce(counts, group=group)
    tokens, n_bytes, missing = counts.tolist()
    if missing or n_bytes == 0:
        return None
    return tokens / n_bytes
