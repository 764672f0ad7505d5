"""run_train.sh's Python half: check the launch in this process, then run torchrun in it.

`python -m torchgpt.run.launch --nproc-per-node N [--log-rank R] [--torchrun-args STR] -- CONFIG
[--section.key value ...]`. Config, data and resume problems are reported together before any
worker starts (exit 2); a failed run is summarized in one line per failed rank instead of
torchrun's ChildFailedError traceback (exit 1). A run stopped by SIGTERM/SIGINT, in any phase,
ends with one line saying what is saved and what the same command does next; when its workers
could not finish the stop (killed after torchrun's grace), this process completes
last_exit.json and removes their lock. Exit codes are the README's table.
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

from torchgpt.config.job_config import JobConfig

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class _StopRequest(BaseException):
    """SIGTERM/SIGINT before torchrun took the signals over (during this process's checks).

    A BaseException, like KeyboardInterrupt: no `except Exception` on the way swallows it.
    """

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _raise_stop(signum: int, frame: object) -> None:
    raise _StopRequest(signum)


def _ignore_stop_signals() -> None:
    """While the outcome is written and printed (milliseconds): a repeat must not cut it short."""
    for sig in _STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


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


def _run_torchrun(torchrun_argv: list[str], cfg: JobConfig, nproc: int) -> int:
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    from torchgpt.run.files import LAUNCH_ID_ENV
    from torchgpt.run.preemption import LAUNCHER_PID_ENV

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
        _ignore_stop_signals()
        codes = {rank: failure.exitcode for rank, failure in sorted(e.failures.items())}
        stopped = _stop_outcome(cfg, started, None, codes)
        return _report_failure(codes, str(cfg.run_dir)) if stopped is None else stopped
    except SignalException as e:
        _ignore_stop_signals()
        _end_leftover_workers()  # a repeated signal cuts torchrun's wait for them short
        stopped = _stop_outcome(cfg, started, signal.Signals(e.sigval), {})
        return EXIT_FAILED if stopped is None else stopped
    _ignore_stop_signals()
    stopped = _stop_outcome(cfg, started, None, {})  # a signal sent to the workers only
    return EXIT_OK if stopped is None else stopped


def _report_failure(codes: dict[int, int], run_dir: str) -> int:
    """One line per failed rank and where the traceback is; the exit code."""
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


def _end_leftover_workers() -> None:
    """SIGKILL and reap this process's children that are still alive (torchrun's workers)."""
    me = os.getpid()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) != me:
                continue
            pid = int(stat.parent.name)
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        except (OSError, ValueError, IndexError):
            continue


def _signal_deaths(codes: dict[int, int]) -> bool:
    """Every rank ended by SIGTERM/SIGINT: killed by it (-N), or by a second one (128 + N)."""
    stops = {-int(s) for s in _STOP_SIGNALS} | {128 + int(s) for s in _STOP_SIGNALS}
    return bool(codes) and all(code in stops for code in codes.values())


def _grace_s() -> int:
    """torchrun's wait between its SIGTERM to the workers and its SIGKILL."""
    value = os.environ.get("TORCH_ELASTIC_SHUTDOWN_TIMEOUT", "30")
    return int(value) if value.isdigit() else 30


def _stop_outcome(
    cfg: JobConfig, started: float, sig: signal.Signals | None, codes: dict[int, int]
) -> int | None:
    """Print how a stopped run ended and return the exit code; None when it was not stopped.

    The workers' own last_exit.json when they wrote it; otherwise (killed after torchrun's
    grace, or before their handlers were in place) finish_stop_record completes it.
    """
    from torchgpt.run.files import finish_stop_record, read_exit_record

    record = read_exit_record(cfg.run_dir, started)
    status = record.get("status") if record else None
    if status == "finished":
        if sig is not None:
            print(f"run_train.sh: {sig.name} arrived as the run finished: done", file=sys.stderr)
        return None if sig is None else EXIT_OK
    if status == "stopping" and codes and not _signal_deaths(codes):
        return None  # a rank failed and torchrun stopped the others: a failure, not a stop
    why = None
    if status in ("preempted", "stopped"):
        if status == "stopped":
            why = "a second signal ended it at once" if cfg.checkpoint.enable else None
    elif sig is None and status != "stopping" and not _signal_deaths(codes):
        return None  # not a stop: a plain success or failure
    else:
        note = record if status == "stopping" else None
        if note is not None and time.time() - note["written_at"] >= _grace_s() - 1:
            why = (
                f"the workers did not stop within torchrun's {_grace_s()} s grace "
                "(TORCH_ELASTIC_SHUTDOWN_TIMEOUT) and were killed"
            )
        else:
            why = "the workers ended before they could save it; see train.log"
        name = sig.name if sig is not None else (note or {}).get("signal") or "a signal"
        record, problem = finish_stop_record(cfg, started, name, note)
        if record is None:
            print(f"run_train.sh: stopped by {name} {problem}", file=sys.stderr)
            return EXIT_OK if problem.startswith("before the launch") else EXIT_FAILED
    if not cfg.checkpoint.enable:
        why = "checkpointing is off (checkpoint.enable = false)"
    print(_stop_message(record, cfg, why), file=sys.stderr)
    return EXIT_OK if record["status"] == "preempted" else EXIT_FAILED


def _stop_message(record: dict, cfg: JobConfig, why: str | None) -> str:
    """One line: what stopped the run, what is saved, what the same command does next."""
    from torchgpt.run.files import next_launch

    ckpt, saved = record.get("checkpoint"), record.get("checkpoint_step")
    then = next_launch(cfg, (saved, Path(ckpt)) if ckpt and saved is not None else None)
    name = record.get("signal") or "a signal to another rank"
    during = f" during {record['during']}" if record.get("during") else ""
    step = record["step"]
    if record["status"] == "preempted":
        kept = f"step {step} is saved in {ckpt}" if ckpt and saved == step else "no step had run"
        cut = f" ({why}; no finished step is lost)" if why else ""
        return f"run_train.sh: preempted by {name}{during}{cut}: {kept}; {then}"
    first = (saved or 0) + 1
    lost = f"steps {first}-{step} are" if step > first else f"step {step} is"
    return (
        f"run_train.sh: stopped by {name}{during}, before step {step} was saved"
        + (f" ({why})" if why else "")
        + f": {lost} lost; {then}"
    )


def _stopped_before_start(signum: int, toml: str | None, overrides: list[str]) -> int:
    """A signal during this process's own checks: nothing started, nothing written (exit 0)."""
    from torchgpt.run.preemption import signal_name

    then = ""
    try:
        from torchgpt.checkpoint.layout import newest_complete
        from torchgpt.config.manager import load_config
        from torchgpt.run.files import next_launch

        cfg = load_config(toml, overrides)
        then = "; " + next_launch(cfg, newest_complete(cfg.run_dir / "checkpoints"))
    except Exception:  # a bad config, or an import the signal cut short: say no more
        pass
    print(
        f"run_train.sh: stopped by {signal_name(signum)} before training started (during the "
        f"launcher's checks): nothing was started or written{then}",
        file=sys.stderr,
    )
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    """run_train.sh's entry point; returns the README's exit code."""
    pending: list[int] = []
    previous = {sig: signal.signal(sig, lambda n, f: pending.append(n)) for sig in _STOP_SIGNALS}
    try:
        # Imported with the signals held back: an exception raised inside torch's import leaves
        # it half-initialized, and the process then died of SIGSEGV.
        import numpy  # noqa: F401
        import torch  # noqa: F401
        import torch.distributed.run  # noqa: F401

        for sig in _STOP_SIGNALS:
            signal.signal(sig, _raise_stop)
        if pending:
            raise _StopRequest(pending[0])
        return _main(argv)
    except _StopRequest as e:
        _ignore_stop_signals()
        train_args = _train_args(argv)
        toml, overrides = _split(train_args)
        return _stopped_before_start(e.signum, toml, overrides)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _train_args(argv: list[str] | None) -> list[str]:
    args = _parser().parse_args(argv)
    return args.train_args[1:] if args.train_args[:1] == ["--"] else args.train_args


def _split(train_args: list[str]) -> tuple[str | None, list[str]]:
    """(CONFIG.toml or None, the --section.key overrides)."""
    if not train_args or train_args[0].startswith("--"):
        return None, train_args
    return train_args[0], train_args[1:]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="run_train.sh", description=__doc__)
    p.add_argument("--nproc-per-node", default="auto")
    p.add_argument("--log-rank", default="0")
    p.add_argument("--torchrun-args", default="")
    p.add_argument("train_args", nargs=argparse.REMAINDER)
    return p


def _main(argv: list[str] | None) -> int:
    args = _parser().parse_args(argv)
    train_args = args.train_args[1:] if args.train_args[:1] == ["--"] else args.train_args
    if not train_args or "-h" in train_args or "--help" in train_args:
        # the worker entry point's own help (run, not imported: the lifecycle sits below it)
        return subprocess.call([sys.executable, "-m", "torchgpt.train", *train_args])
    from torchgpt.config.job_config import ConfigError
    from torchgpt.run.preflight import preflight

    torchrun_args = shlex.split(args.torchrun_args)
    try:
        nproc = _nproc_per_node(args.nproc_per_node)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    nnodes = _nnodes(torchrun_args)
    toml, overrides = _split(train_args)
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
    return _run_torchrun(torchrun_argv, cfg, nproc)


if __name__ == "__main__":
    sys.exit(main())
