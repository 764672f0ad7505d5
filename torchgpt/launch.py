"""run_train.sh's Python half: check the launch in this process, then run torchrun in it.

`python -m torchgpt.launch --nproc-per-node N [--log-rank R] [--torchrun-args STR] -- CONFIG
[--section.key value ...]`. Config, data and resume problems are reported together before any
worker starts (exit 2); a failed run is summarized in one line per failed rank instead of
torchrun's ChildFailedError traceback (exit 1). Exit codes are the README's table.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import signal
import sys
import time
import uuid
from pathlib import Path

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2


def _nnodes(torchrun_args: list[str]) -> int | None:
    """Nodes named by --nnodes (1 when absent); None for an elastic range such as 1:4."""
    value = "1"
    for i, arg in enumerate(torchrun_args):
        if arg == "--nnodes" and i + 1 < len(torchrun_args):
            value = torchrun_args[i + 1]
        elif arg.startswith("--nnodes="):
            value = arg.split("=", 1)[1]
    lo, _, hi = value.partition(":")
    if hi and hi != lo:
        return None
    return int(lo) if lo.isdigit() else None


def _nproc_per_node(value: str) -> int:
    if value in ("", "auto"):
        import torch

        return max(torch.cuda.device_count(), 1)
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"NGPU={value!r}: expected a positive number of processes per node")
    return int(value)


def _describe(exitcode: int) -> str:
    if exitcode < 0:
        try:
            return f"was killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"was killed by signal {-exitcode}"
    return f"exited with code {exitcode}"


def _quiet_torchrun() -> None:
    """Keep torchrun's own log to real problems: our summary replaces its per-worker lines."""
    if os.environ.get("TORCHGPT_DEBUG", "") not in ("", "0"):
        return
    for name in list(logging.root.manager.loggerDict):
        if name.startswith("torch.distributed"):
            logging.getLogger(name).setLevel(logging.ERROR)
    # Its failure line ("failed (exitcode: 1) local_rank: 0 ...") is our summary, said twice.
    logging.getLogger("torch.distributed.elastic.multiprocessing.api").setLevel(logging.CRITICAL)


def _run_torchrun(torchrun_argv: list[str], run_dir: str, nproc: int) -> int:
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    from torchgpt.preemption import LAUNCHER_PID_ENV
    from torchgpt.run_files import LAUNCH_ID_ENV

    os.environ[LAUNCH_ID_ENV] = uuid.uuid4().hex  # the workers inherit it (see last_exit.json)
    started = time.time()
    os.environ[LAUNCHER_PID_ENV] = str(os.getpid())  # workers die with us (die_with_launcher)
    if nproc > 1:
        # torchrun's default (one thread per worker), set here so it does not print a banner.
        os.environ.setdefault("OMP_NUM_THREADS", "1")
    _quiet_torchrun()
    try:
        run(parse_args(torchrun_argv))
    except ChildFailedError as e:
        codes = {rank: failure.exitcode for rank, failure in sorted(e.failures.items())}
        for rank, code in codes.items():
            stopped = code == -signal.SIGTERM and any(c != -signal.SIGTERM for c in codes.values())
            note = " (stopped by torchrun after the failure above)" if stopped else ""
            print(f"run_train.sh: rank {rank} {_describe(code)}{note}", file=sys.stderr)
        # Ranks torchrun stopped after the first failure are not a cause of their own.
        causes = [c for c in codes.values() if c != -signal.SIGTERM] or list(codes.values())
        if all(code == EXIT_BAD_INPUT for code in causes):
            return EXIT_BAD_INPUT
        print(
            f"run_train.sh: training failed; the traceback is in {run_dir}/train.log "
            "(TORCHGPT_DEBUG=1 also prints it here)",
            file=sys.stderr,
        )
        return EXIT_FAILED
    except SignalException as e:
        name = signal.Signals(e.sigval).name
        ended = _exit_record(run_dir, started)
        if ended is not None and ended.get("status") == "preempted":
            print(
                f"run_train.sh: preempted by {name}: checkpoint of step {ended['step']} saved to "
                f"{ended['checkpoint']}; the same command resumes from it",
                file=sys.stderr,
            )
            return EXIT_OK
        if ended is not None:
            print(f"run_train.sh: {name} arrived as the run finished: done", file=sys.stderr)
            return EXIT_OK
        print(f"run_train.sh: stopped by {name} before a checkpoint was saved", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def _exit_record(run_dir: str, started: float) -> dict | None:
    """This launch's last_exit.json: its launch id, or (another node's launcher, with its own
    id) written after this launcher started."""
    from torchgpt.run_files import EXIT_RECORD_NAME, LAUNCH_ID_ENV

    try:
        record = json.loads((Path(run_dir) / EXIT_RECORD_NAME).read_text())
    except (OSError, ValueError):
        return None
    ours = record.get("launch_id") == os.environ.get(LAUNCH_ID_ENV)
    recent = isinstance(record.get("written_at"), (int, float)) and record["written_at"] >= started
    return record if ours or recent else None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="run_train.sh", description=__doc__)
    p.add_argument("--nproc-per-node", default="auto")
    p.add_argument("--log-rank", default="0")
    p.add_argument("--torchrun-args", default="")
    p.add_argument("train_args", nargs=argparse.REMAINDER)
    args = p.parse_args(argv)
    train_args = args.train_args[1:] if args.train_args[:1] == ["--"] else args.train_args
    if not train_args or "-h" in train_args or "--help" in train_args:
        from torchgpt.train import main as train_main

        return train_main(train_args)
    from torchgpt.config import ConfigError
    from torchgpt.preflight import preflight

    torchrun_args = shlex.split(args.torchrun_args)
    try:
        nproc = _nproc_per_node(args.nproc_per_node)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    nnodes = _nnodes(torchrun_args)
    toml, overrides = (
        (None, train_args)
        if train_args[0].startswith("--")
        else (
            train_args[0],
            train_args[1:],
        )
    )
    try:
        cfg = preflight(
            toml, overrides, world_size=nproc * nnodes if nnodes else None, checksums=True
        )
    except ConfigError as e:
        print(f"error: {e}\nnothing was started (exit code 2)", file=sys.stderr)
        return EXIT_BAD_INPUT
    multi_node = any(a.startswith(("--nnodes", "--rdzv")) for a in torchrun_args)
    torchrun_argv = [
        *([] if multi_node else ["--standalone"]),
        f"--nproc_per_node={nproc}",
        *("--local-ranks-filter", args.log_rank, "--role", "rank", "--tee", "3"),
        *torchrun_args,
        *("-m", "torchgpt.train", *train_args),
    ]
    return _run_torchrun(torchrun_argv, str(cfg.run_dir), nproc)


if __name__ == "__main__":
    sys.exit(main())
