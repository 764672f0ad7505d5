"""First contact through run_train.sh: which interpreter, what a mistake prints, exit codes.

The README's table: 0 finished, 2 a config or input problem (found before torchrun starts, one
message, no traceback, nothing written), 1 a failure during the run (one line per failing rank,
the traceback in RUN_DIR/train.log). Launches use a fresh machine's PATH, which has no `python`
and a `python3` without torch, so a launcher that relied on PATH would fail here.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.trainer_utils import launcher_env

REPO = Path(__file__).resolve().parents[2]
FRESH_PATH = "/usr/local/bin:/usr/bin:/bin"
TINY = [
    *("--training.steps", "2", "--training.seq_len", "64", "--training.micro_batch_size", "2"),
    *("--training.global_batch_tokens", "256", "--training.mixed_precision", "fp32"),
    *("--lr_scheduler.warmup_steps", "1", "--validation.tokens", "1024"),
    *("--checkpoint.interval", "2", "--metrics.log_freq", "1"),
    *("--metrics.enable_tensorboard", "false"),
]


def launch(args: list[str], env: dict[str, str], script: Path = REPO / "run_train.sh"):
    return subprocess.run(
        [str(script), *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )


def fresh_env(**extra: str) -> dict[str, str]:
    env = launcher_env({"PATH": FRESH_PATH, "NGPU": "1", **extra})
    env.pop("VIRTUAL_ENV", None)
    return env


def snapshot(folder: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file under `folder`."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def start_job(args: list[str], log: Path, nproc: int = 2) -> subprocess.Popen:
    """run_train.sh in a session of its own (so its whole group can be killed), output to log."""
    with open(log, "w") as out:
        return subprocess.Popen(
            [str(REPO / "run_train.sh"), *args],
            cwd=REPO,
            env=fresh_env(NGPU=str(nproc)),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def wait_for_line(proc: subprocess.Popen, log: Path, line: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while line not in log.read_text():
        assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.1)


def test_fresh_path_launch_uses_python_and_trains(token_shards, tmp_path):
    args = ["train_configs/debug_model.toml", *TINY, "--data.dataset_path", str(token_shards)]
    proc = launch([*args, "--job.dump_folder", str(tmp_path)], fresh_env())
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert f"run_train.sh: python {sys.executable} ($PYTHON)" in out
    assert (tmp_path / "debug" / "checkpoints" / "step-2").is_dir()


def test_interpreter_rules_without_python_set(tmp_path):
    """No $PYTHON: the checkout's .venv, else python3 on PATH (refused when it has no torch)."""
    checkout = tmp_path / "checkout"
    (checkout / "scripts").mkdir(parents=True)
    for name in ("run_train.sh", "scripts/find_python.sh"):
        shutil.copy2(REPO / name, checkout / name)
    env = fresh_env()
    env.pop("PYTHON")
    system = shutil.which("python3", path=FRESH_PATH)
    proc = launch(["--help"], env, script=checkout / "run_train.sh")
    if system is None:
        assert proc.returncode == 2 and "no Python found" in proc.stderr
    else:
        has_torch = subprocess.run([system, "-c", "import torch"], capture_output=True)
        if has_torch.returncode == 0:
            pytest.skip(f"{system} has torch: this machine cannot show the refusal")
        assert proc.returncode == 2, proc.stderr
        assert f"{system} (python3 on PATH) has no torch; run 'make setup'" in proc.stderr
    (checkout / ".venv" / "bin").mkdir(parents=True)
    venv_python = checkout / ".venv" / "bin" / "python"
    venv_python.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')  # a venv stand-in
    venv_python.chmod(0o755)
    proc = launch(["--help"], env, script=checkout / "run_train.sh")
    assert proc.returncode == 0, proc.stderr
    assert f"python {checkout}/.venv/bin/python (the project's .venv)" in proc.stderr
    assert "--training.steps" in proc.stdout  # the config help, from that interpreter


def test_every_input_problem_in_one_message_exit_2(tmp_path):
    proc = launch(
        [
            "train_configs/debug_model.toml",
            *("--training.stpes", "3", "--optimizer.lr", "-1"),
            *("--data.dataset_path", str(tmp_path / "no_such_data")),
            *("--job.dump_folder", str(tmp_path / "runs")),
        ],
        fresh_env(NGPU="2"),
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    err = proc.stderr
    assert "unknown key 'training.stpes' (did you mean 'training.steps'?)" in err
    assert "optimizer.lr: must be > 0" in err
    assert "Traceback" not in err and "ChildFailedError" not in err and "[rank" not in err
    assert not (tmp_path / "runs").exists()
    # With the config fixed, the missing data folder is named, still before any worker.
    proc = launch(
        [
            "train_configs/debug_model.toml",
            *("--data.dataset_path", str(tmp_path / "no_such_data")),
            *("--job.dump_folder", str(tmp_path / "runs")),
        ],
        fresh_env(NGPU="2"),
    )
    assert proc.returncode == 2
    assert f"data.dataset_path: data folder {tmp_path / 'no_such_data'} does not exist" in (
        proc.stderr
    )
    assert "tools/prepare_data.py --out" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "runs").exists()


def test_refused_resume_leaves_the_run_folder_as_it_was(token_shards, tmp_path):
    args = ["train_configs/debug_model.toml", *TINY, "--data.dataset_path", str(token_shards)]
    args += ["--job.dump_folder", str(tmp_path)]
    assert launch(args, fresh_env()).returncode == 0
    run_dir = tmp_path / "debug"
    before = snapshot(run_dir)
    assert "config.json" in before and "checkpoints/step-2/COMPLETE" in before
    proc = launch([*args, "--model.flavor", "gpt2-d128-l4"], fresh_env())
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "holds a model of flavor 'debug' but this config builds 'gpt2-d128-l4'" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert snapshot(run_dir) == before
    assert json.loads((run_dir / "config.json").read_text())["model"]["flavor"] == "debug"


def _corrupt_token_ids(src: Path, dst: Path) -> None:
    """A copy of `src` whose train shards hold out-of-range ids (headers and sizes intact)."""
    shutil.copytree(src, dst)
    for shard in dst.glob("train_*.bin"):
        tokens = np.memmap(shard, dtype="<u2", mode="r+", offset=1024)
        tokens[:] = 65535
        tokens.flush()
        del tokens


@pytest.mark.parametrize("debug", [False, True])
def test_failure_during_the_run_one_line_exit_1(token_shards, tmp_path, debug):
    data = tmp_path / "data"
    _corrupt_token_ids(token_shards, data)
    args = ["train_configs/debug_model.toml", *TINY, "--data.dataset_path", str(data)]
    args += ["--data.verify_checksums", "false"]  # let the damage surface during the run
    env = fresh_env(NGPU="2", **({"TORCHGPT_DEBUG": "1"} if debug else {}))
    proc = launch([*args, "--job.dump_folder", str(tmp_path / "runs")], env)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out[-3000:]
    log = tmp_path / "runs" / "debug" / "train.log"
    errors = [line for line in out.splitlines() if "error: rank 0 at step 1: ValueError" in line]
    assert len(errors) == 1, out[-3000:]
    assert "holds token id 65535" in errors[0] and "prepare_data.py --verify" in errors[0]
    assert f"(traceback in {log})" in errors[0]
    assert "run_train.sh: rank 0 exited with code 1" in out
    assert "ChildFailedError" not in out
    assert ("Traceback (most recent call last)" in out) == debug
    assert "Traceback (most recent call last)" in log.read_text()


def test_sigterm_to_the_launcher_saves_and_exits_0(token_shards, tmp_path):
    """A scheduler's preemption notice goes to the launcher: the workers finish the step, save,
    and run_train.sh exits 0 (requeue), naming the checkpoint that the same command resumes."""
    args = ["train_configs/debug_model.toml", *TINY, "--data.dataset_path", str(token_shards)]
    args += ["--job.dump_folder", str(tmp_path), "--training.steps", "400"]
    args += ["--checkpoint.interval", "1000", "--validation.enable", "false"]
    log = tmp_path / "launch.log"
    proc = start_job(args, log)
    try:
        wait_for_line(proc, log, "step      2/400")
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    text = log.read_text()
    assert rc == 0, text[-3000:]
    match = re.search(
        r"preempted by SIGTERM during step \d+[^:]*: step (\d+) is saved in (\S+);", text
    )
    assert match, text[-3000:]
    step = int(match.group(1))
    assert 2 <= step < 400 and Path(match.group(2)) == tmp_path / "debug/checkpoints" / (
        f"step-{step}"
    )
    assert (Path(match.group(2)) / "COMPLETE").is_file()
    assert f"the same command resumes from step {step} ({match.group(2)})" in text
    record = json.loads((tmp_path / "debug" / "last_exit.json").read_text())
    assert (record["status"], record["step"], record["signal"]) == ("preempted", step, "SIGTERM")
    assert not (tmp_path / "debug" / ".lock").exists()


def _alive(pid: int) -> bool:
    """A process that exists and is not a zombie (an orphan may wait to be reaped)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "State:\tZ" not in status


def _workers_of(launcher: int) -> list[int]:
    """Pids of the training processes that `launcher` started (named in their environment)."""
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            env = (entry / "environ").read_bytes().split(b"\0") if entry.name.isdigit() else []
        except OSError:
            continue
        if f"TORCHGPT_LAUNCHER_PID={launcher}".encode() in env and any(
            e.startswith(b"LOCAL_RANK=") for e in env
        ):
            pids.append(int(entry.name))
    return pids


def test_workers_never_outlive_the_launcher(token_shards, tmp_path):
    """kill -9 of the launcher's process group (an OOM kill, a scheduler's hard stop): torchrun
    had put the workers in sessions of their own; they must still be gone within 15 s."""
    args = ["train_configs/debug_model.toml", *TINY, "--data.dataset_path", str(token_shards)]
    # Far more steps than the 15 s window can finish: the workers must die, not end.
    args += ["--job.dump_folder", str(tmp_path), "--training.steps", "100000"]
    args += ["--checkpoint.interval", "1000000", "--validation.enable", "false"]
    log = tmp_path / "launch.log"
    proc = start_job(args, log)
    try:
        wait_for_line(proc, log, "step      2/100000")
        workers = _workers_of(proc.pid)
        assert len(workers) == 2, workers
        assert all(os.getsid(w) != os.getsid(proc.pid) for w in workers)  # their own sessions
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        deadline = time.monotonic() + 15
        while any(_alive(w) for w in workers) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not [w for w in workers if _alive(w)]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


def test_resume_refuses_a_change_of_the_math_unless_allowed(token_shards, tmp_path):
    args = ["train_configs/debug_model.toml", *TINY, "--data.dataset_path", str(token_shards)]
    args += ["--job.dump_folder", str(tmp_path)]
    assert launch(args, fresh_env()).returncode == 0
    run_dir = tmp_path / "debug"
    before = snapshot(run_dir)
    changed = [*args, "--training.steps", "4", "--training.global_batch_tokens", "512"]
    proc = launch(changed, fresh_env())
    assert proc.returncode == 2, proc.stdout + proc.stderr
    err = proc.stderr
    assert "training.global_batch_tokens: 256 -> 512" in err and "training.steps: 2 -> 4" in err
    assert "--checkpoint.allow_change training.global_batch_tokens,training.steps" in err
    assert snapshot(run_dir) == before
    proc = launch([*changed, "--checkpoint.allow_change", "training.stpes"], fresh_env())
    assert proc.returncode == 2 and "'training.stpes' is not a key whose change" in proc.stderr
    # Allowed: extending the run by two steps resumes, says so, and keeps a record.
    extended = [*args, "--training.steps", "4", "--checkpoint.allow_change", "training.steps"]
    proc = launch(extended, fresh_env())
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert "resumed from step 2" in out and "training.steps: 2 -> 4" in out
    launches = json.loads((run_dir / "run_info.json").read_text())["launches"]
    assert [x.get("allowed_changes") for x in launches] == [[], ["training.steps: 2 -> 4"]]


def test_a_flipped_byte_inside_a_shard_is_found_before_the_run(token_shards, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(token_shards, data)
    shard = data / "train_000001.bin"
    tokens = np.memmap(shard, dtype="<u2", mode="r+", offset=1024)
    tokens[len(tokens) // 2] ^= 1  # still a valid id: header, size and id range all pass
    tokens.flush()
    del tokens
    args = ["train_configs/debug_model.toml", *TINY, "--data.dataset_path", str(data)]
    proc = launch([*args, "--job.dump_folder", str(tmp_path / "runs")], fresh_env(NGPU="2"))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert f"shard {shard} does not match its sha256 in manifest.json" in proc.stderr
    assert f"tools/prepare_data.py --verify {data}" in proc.stderr
    assert not (tmp_path / "runs").exists()


def test_one_job_owns_a_run_folder(token_shards, tmp_path):
    """A second launch into a live job's folder is refused naming the holder; after the job is
    killed (its lock left behind), the next launch takes the stale lock over and resumes."""
    args = ["train_configs/debug_model.toml", *TINY, "--data.dataset_path", str(token_shards)]
    args += ["--job.dump_folder", str(tmp_path), "--training.steps", "400"]
    args += ["--checkpoint.interval", "2", "--validation.enable", "false"]
    log = tmp_path / "first.log"
    first = start_job(args, log)
    try:
        wait_for_line(first, log, "step      3/400")
        holder = json.loads((tmp_path / "debug" / ".lock").read_text())
        second = launch(args, fresh_env(NGPU="2"))
        assert second.returncode == 2, second.stdout + second.stderr
        assert f"is in use by another job (host {holder['host']}, pid {holder['pid']}" in (
            second.stdout + second.stderr
        )
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(timeout=30)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
    deadline = time.monotonic() + 15  # the workers die with their launcher
    while _alive(holder["pid"]) and time.monotonic() < deadline:
        time.sleep(0.1)
    shorter = [*args, "--training.steps", "6", "--checkpoint.allow_change", "training.steps"]
    third = launch(shorter, fresh_env())
    out = third.stdout + third.stderr
    assert third.returncode == 0, out[-3000:]
    assert "taking over the stale lock" in out and "its process is gone" in out
    assert "resumed from step" in out
    assert not (tmp_path / "debug" / ".lock").exists()


def test_a_stalled_rank_fails_the_job_within_the_timeout(token_shards, tmp_path):
    """SIGSTOP on rank 1 (a hung GPU, a stuck filesystem): rank 0's next collective times out
    after parallelism.collective_timeout_s and names the phase; the job ends with exit 1."""
    args = ["train_configs/debug_model.toml", *TINY, "--data.dataset_path", str(token_shards)]
    args += ["--job.dump_folder", str(tmp_path), "--training.steps", "400"]
    args += ["--checkpoint.interval", "1000", "--validation.enable", "false"]
    args += ["--parallelism.collective_timeout_s", "5"]
    log = tmp_path / "launch.log"
    proc = start_job(args, log)
    try:
        wait_for_line(proc, log, "step      2/400")
        (rank1,) = [
            w for w in _workers_of(proc.pid) if b"RANK=1" in Path(f"/proc/{w}/environ").read_bytes()
        ]
        os.kill(rank1, signal.SIGSTOP)
        stopped = time.monotonic()
        rc = proc.wait(timeout=120)
        took = time.monotonic() - stopped
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    text = log.read_text()
    assert rc == 1, text[-3000:]
    assert "collective waited longer than parallelism.collective_timeout_s=5 s during" in text
    # 5 s to time out, then torchrun's 30 s grace before it SIGKILLs the stopped rank.
    assert took < 5 + 30 + 20, took
