"""The training entry point: `python -m torchgpt.train CONFIG.toml [--section.key value ...]`.

run_train.sh wraps it in torchrun (after torchgpt.run.launch's checks). main() checks the launch
again in each worker (preflight), runs the Trainer (torchgpt/training/trainer.py), turns a failure
into
one line plus a traceback in train.log, and returns the README's exit codes. SIGTERM/SIGINT are
stop requests (torchgpt/run/preemption.py) from the end of the process-group setup on, so a signal
in any later phase ends with last_exit.json written and the run-folder lock released. Until
then they kill the worker as they always did: a worker waiting in the rendezvous for a peer that
is gone runs no Python handler, and torchrun would wait its 30 s grace for it; the launcher
removes a lock so left (torchgpt/run/launch.py).
"""

from __future__ import annotations

import gc
import logging
import os
import sys
import traceback

import torch
import torch.distributed as dist

from torchgpt.config.job_config import ConfigError, JobConfig
from torchgpt.config.manager import help_text
from torchgpt.parallel.dims import device_type, init_distributed, local_device
from torchgpt.run.files import LAUNCH_ID_ENV, LOG_FORMAT, RunFiles
from torchgpt.run.flight_recorder import enable_flight_recorder
from torchgpt.run.lock import RunFolderBusy, RunLock
from torchgpt.run.preemption import PreemptionHandler, die_with_launcher
from torchgpt.run.preflight import preflight
from torchgpt.training.memory import MemorySnapshot, out_of_memory_hint
from torchgpt.training.trainer import NonFiniteLossError, Trainer
from torchgpt.utils.hardware import tune_host_malloc

__all__ = ["NonFiniteLossError", "Trainer", "main"]


def _report_failure(error: BaseException, cfg: JobConfig, trainer: Trainer | None) -> None:
    """One line on the console; the traceback in RUN_DIR/train.log (and here if TORCHGPT_DEBUG)."""
    rank = int(os.environ.get("RANK", "0"))
    step = trainer.train_state.step + 1 if trainer is not None else None
    where = f"step {step}" if step else "setup"
    message = " ".join(str(error).split()) or "(no message)"
    if trainer is not None and ("timed out" in message.lower() or "timeout" in message.lower()):
        message += (
            f" [a collective waited longer than parallelism.collective_timeout_s="
            f"{cfg.parallelism.collective_timeout_s:g} s during {trainer.phase}: another rank "
            "stalled or died]"
        )
    tb = traceback.format_exc()
    files = trainer.run_files if trainer is not None else RunFiles(cfg.run_dir, rank)
    log_path = files.record_failure(where, tb)
    print(
        f"error: rank {rank} at {where}: {type(error).__name__}: {message}"
        + (f" (traceback in {log_path})" if log_path else ""),
        file=sys.stderr,
    )
    if os.environ.get("TORCHGPT_DEBUG", "") not in ("", "0"):
        print(tb, file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """Entry point; exit codes: 0 done (or preempted with nothing lost), 2 refused, 1 failed (or
    stopped before the step reached was saved)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: python -m torchgpt.train CONFIG.toml [--section.key value ...]\n")
        print(help_text())
        return 0 if argv else 2
    toml_path, overrides = (None, argv) if argv[0].startswith("--") else (argv[0], argv[1:])
    if "--help" in overrides or "-h" in overrides:
        print(help_text())
        return 0
    die_with_launcher()  # under run_train.sh: never outlive it
    stop = PreemptionHandler()  # installed once the process group exists (_run)
    try:
        return _main(toml_path, overrides, stop)
    finally:
        stop.restore()


def _main(toml_path: str | None, overrides: list[str], stop: PreemptionHandler) -> int:
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    try:
        # Shard hashes: the launcher checked them on this node; a lone process checks them here.
        single = world_size == 1 and LAUNCH_ID_ENV not in os.environ
        cfg = preflight(toml_path, overrides, world_size=world_size, checksums=single)
    except ConfigError as e:
        if rank == 0:
            print(f"error: {e}", file=sys.stderr)
        return 2
    if not torch.cuda.is_available():
        tune_host_malloc()  # CPU runs: reuse freed activation blocks (see hardware.py)
    lock = RunLock(cfg.run_dir)
    if rank == 0:  # before anything is written; other ranks wait in the rendezvous
        try:
            lock.acquire()
        except RunFolderBusy as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    stop.on_exit_now.append(lock.release)  # a second signal exits at once: release it first
    try:
        return _run(cfg, rank, stop, toml_path)
    finally:
        lock.release()


def _run(cfg: JobConfig, rank: int, stop: PreemptionHandler, toml_path: str | None) -> int:
    trainer = snapshot = None
    pr = cfg.profiling
    try:
        if pr.flight_recorder:  # read by ProcessGroupNCCL when it starts: set them first
            enable_flight_recorder(
                cfg.run_dir, pr.flight_recorder_entries, nccl=device_type() == "cuda"
            )
        init_distributed(cfg.parallelism.collective_timeout_s)
        stop.install()  # from here a signal is a stop request: setup ends, then the run stops
        # Before the model exists, so a snapshot shows setup's allocations too.
        snapshot = MemorySnapshot(pr, cfg.run_dir, rank, local_device())
        trainer = Trainer(cfg, preemption=stop, memory_snapshot=snapshot)
        trainer.train()
    except ConfigError as e:  # found by the workers (e.g. a checkpoint of another model)
        if rank == 0:
            print(f"error: {e}", file=sys.stderr)
        return 2
    except Exception as e:
        _report_failure(e, cfg, trainer)
        if isinstance(e, torch.OutOfMemoryError):
            dumped = snapshot.on_out_of_memory() if snapshot is not None else None
            tool = f"python tools/memory_estimate.py {toml_path or 'CONFIG.toml'} [same overrides]"
            print(out_of_memory_hint(e, dumped, tool), file=sys.stderr)
        # No destroy_process_group: a peer may still sit in a collective, and tearing the
        # group down under it can block; the process exits and torchrun stops the others.
        if trainer is not None:
            trainer.close()
        return 1
    trainer.close()
    code = 1 if trainer.outcome == "stopped" else 0  # stopped: steps since its checkpoint lost
    # Free the Trainer (model, meshes, checkpoint group) before destroying the process groups,
    # so that their gloo/NCCL worker threads are joined here. Left to interpreter shutdown,
    # those native threads raced finalization and a finished worker sometimes died of SIGABRT.
    del trainer
    gc.collect()
    if dist.is_initialized():
        dist.destroy_process_group()
    return code


def _exit_without_finalization(code: int) -> None:
    """Flush everything, then end the worker process without interpreter finalization.

    destroy_process_group() does not stop every native thread: torch's DTensor sharding caches
    keep DTensorSpecs -> DeviceMesh -> its ProcessGroups alive, so gloo's run-loop threads of
    the FSDP mesh outlive main(). Joined only during interpreter finalization, they race its
    teardown of the GIL, and a worker that had finished every step sometimes died of SIGABRT
    (torchrun then reported the whole job failed). Nothing of ours is left to finalize here.
    """
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    _exit_without_finalization(main())
