"""A run stopped by SIGTERM through run_train.sh (issue #27): what it prints, what last_exit.json
says, that the lock is gone, and that the next launch resumes from the checkpoint named.

The signal goes to every process at once (the launcher's process group, as `kill -- -PGID`
of `make demo` does, and each worker, as Slurm does) during a step. The workers finish that
step, save it and exit 0; with torchrun's grace shorter than the step
(TORCH_ELASTIC_SHUTDOWN_TIMEOUT=1, a stand-in for a step slower than the 30 s default) they are
killed mid-step, and the launcher completes the record and removes their lock (exit 1). The
debug model in fp32 on one process, steps of 1,024 / 4,096 tokens (about 0.5 / 2 s on 2 idle
AVX2 cores).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

from tests.trainer_utils import launcher_env

REPO = Path(__file__).resolve().parents[2]
ARGS = [
    "train_configs/debug_model.toml",
    *("--training.steps", "100", "--training.seq_len", "64", "--training.micro_batch_size", "8"),
    *("--training.mixed_precision", "fp32", "--lr_scheduler.warmup_steps", "1"),
    *("--validation.enable", "false", "--checkpoint.interval", "2"),
    *("--metrics.log_freq", "1", "--metrics.enable_tensorboard", "false"),
]


def _start(args: list[str], log: Path, **env: str) -> subprocess.Popen:
    with open(log, "w") as out:
        return subprocess.Popen(
            [str(REPO / "run_train.sh"), *args],
            cwd=REPO,
            env=launcher_env({"NGPU": "1", **env}),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, as a shell job's
        )


def _wait(proc: subprocess.Popen, log: Path, ready, what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        assert proc.poll() is None, f"ended before {what}:\n{log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"no {what}:\n{log.read_text()[-3000:]}"
        time.sleep(0.05)


def _children(pid: int) -> list[int]:
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                kids.append(int(stat.parent.name))
        except (OSError, ValueError):
            continue
    return kids


def _sigterm_everything(proc: subprocess.Popen) -> None:
    """SIGTERM to the launcher's group and to each worker (torchrun gives them sessions)."""
    workers = _children(proc.pid)
    assert workers
    os.killpg(proc.pid, signal.SIGTERM)
    for pid in workers:
        os.kill(pid, signal.SIGTERM)


def _finish(proc: subprocess.Popen, timeout: float = 120) -> int:
    try:
        return proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


def test_sigterm_during_a_step_saves_it_and_the_next_launch_resumes(token_shards, tmp_path):
    args = [*ARGS, "--training.global_batch_tokens", "1024"]
    args += ["--data.dataset_path", str(token_shards), "--job.dump_folder", str(tmp_path)]
    run_dir, log = tmp_path / "debug", tmp_path / "first.log"
    proc = _start(args, log)
    _wait(proc, log, (run_dir / "checkpoints/step-2/COMPLETE").is_file, "checkpoint step-2")
    _sigterm_everything(proc)
    rc = _finish(proc)
    text = log.read_text()
    assert rc == 0, text[-3000:]
    record = json.loads((run_dir / "last_exit.json").read_text())
    step = record["step"]
    ckpt = run_dir / "checkpoints" / f"step-{step}"
    assert record["status"] == "preempted" and record["signal"] == "SIGTERM" and step >= 2
    assert record["checkpoint"] == str(ckpt) and (ckpt / "COMPLETE").is_file()
    assert not (run_dir / ".lock").exists()
    match = re.search(r"run_train.sh: preempted by SIGTERM during (step \d+[^:]*): ", text)
    assert match, text[-3000:]
    assert record["during"] == match.group(1)
    assert f": step {step} is saved in {ckpt}; the same command resumes from step {step} " in text

    # The next launch resumes there; one more step, with the schedule change logged.
    more = [*args, "--training.steps", str(step + 1), "--checkpoint.allow_change", "training.steps"]
    proc = _start(more, tmp_path / "second.log")
    rc = _finish(proc)
    text = (tmp_path / "second.log").read_text()
    assert rc == 0, text[-3000:]
    assert f"resumed from step {step}" in text
    assert f"lr schedule on resume at step {step}: training.steps 100 -> {step + 1}" in text
    assert json.loads((run_dir / "last_exit.json").read_text())["status"] == "finished"


def test_workers_killed_after_the_grace_leave_a_record_and_no_lock(token_shards, tmp_path):
    args = [*ARGS, "--training.global_batch_tokens", "4096"]
    args += ["--data.dataset_path", str(token_shards), "--job.dump_folder", str(tmp_path)]
    run_dir, log = tmp_path / "debug", tmp_path / "launch.log"
    proc = _start(args, log, TORCH_ELASTIC_SHUTDOWN_TIMEOUT="1")
    # Step 3 done, step 4 (a few seconds) under way: it cannot finish within the 1 s grace.
    _wait(proc, log, lambda: "step      3/100" in log.read_text(), "step 3")
    _sigterm_everything(proc)
    rc = _finish(proc)
    text = log.read_text()
    assert rc == 1, text[-3000:]
    record = json.loads((run_dir / "last_exit.json").read_text())
    ckpt = run_dir / "checkpoints" / "step-2"
    assert record["status"] == "stopped" and record["written_by"] == "launcher"
    assert (record["step"], record["checkpoint"], record["signal"]) == (3, str(ckpt), "SIGTERM")
    assert not (run_dir / ".lock").exists()
    assert (
        "run_train.sh: stopped by SIGTERM during step 4 (forward/backward), before step 3 was "
        "saved (the workers did not stop within torchrun's 1 s grace" in text
    ), text[-3000:]
    assert f"step 3 is lost; the same command resumes from step 2 ({ckpt})" in text
