"""Fault tolerance end to end: run_train.sh jobs killed, preempted and restarted.

Every job is the debug model (fp32, seq 64) for 20 steps with checkpoints at 10 and 20. A
restart must reproduce the losses of an uninterrupted 20-step run: bitwise (==) at the same
world size, within 1e-5 on another one. Faults: SIGKILL of the whole job after the step-10
checkpoint (compile off and on), SIGKILL inside the step-20 save after DCP wrote everything but
before the COMPLETE marker, and SIGTERM to one rank mid-run (a preemption notice).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from torch.distributed.checkpoint import FileSystemWriter

from tests.trainer_utils import launcher_env, train_in_process
from torchgpt.eval.loading import read_metrics

REPO = Path(__file__).resolve().parents[2]
CONFIG = "train_configs/debug_model.toml"
STEPS = 20
# fp32 and global batch 256 = 4 sequences of 64: divisible over 1, 2 and 4 ranks.
ARGS = [
    *("--training.steps", str(STEPS), "--training.seq_len", "64"),
    *("--training.micro_batch_size", "1", "--training.global_batch_tokens", "256"),
    *("--training.mixed_precision", "fp32", "--lr_scheduler.warmup_steps", "2"),
    *("--validation.enable", "false", "--checkpoint.interval", "10"),
    *("--checkpoint.keep_latest_k", "0", "--metrics.log_freq", "1"),
    *("--metrics.enable_tensorboard", "false"),
]
STALL_STEP_ENV, STALL_FLAG_ENV = "TORCHGPT_TEST_STALL_STEP", "TORCHGPT_TEST_STALL_FLAG"


class StallBeforeMarker(FileSystemWriter):
    """Fault injection through $TORCHGPT_CHECKPOINT_WRITER: the save of step $STALL_STEP stops
    for good once DCP has written every shard and .metadata, before the COMPLETE marker."""

    def finish(self, metadata, results) -> None:
        super().finish(metadata, results)  # DCP's coordinator (rank 0) writes .metadata here
        if Path(self.path).name == f"step-{os.environ[STALL_STEP_ENV]}.tmp":
            Path(os.environ[STALL_FLAG_ENV]).touch()
            time.sleep(600)  # until the test's SIGKILL


class Job:
    """One run_train.sh launch in its own session; output goes to a log file."""

    live: list[Job] = []  # killed at teardown if a failing test left them running

    def __init__(self, data_dir: Path, dump: Path, nproc: int = 2, extra=(), env=None) -> None:
        self.run_dir = dump / "debug"
        self.log = dump / f"launch-{time.monotonic_ns()}.log"
        dump.mkdir(parents=True, exist_ok=True)
        cmd = [str(REPO / "run_train.sh"), CONFIG, *ARGS, *extra]
        cmd += ["--data.dataset_path", str(data_dir), "--job.dump_folder", str(dump)]
        with open(self.log, "w") as out:
            self.proc = subprocess.Popen(
                cmd,
                cwd=REPO,
                env=launcher_env({"NGPU": str(nproc), **(env or {})}),
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        Job.live.append(self)

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def finish(self, timeout: float = 600) -> str:
        """Wait for the job; it must exit 0. Returns its output."""
        rc = self.proc.wait(timeout=timeout)
        assert rc == 0, f"exit code {rc}:\n{self.text()[-4000:]}"
        return self.text()

    def wait_for(self, what: str, ready: Callable[[], bool], timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            assert self.proc.poll() is None, f"job ended before {what}:\n{self.text()[-4000:]}"
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            time.sleep(0.05)

    def workers(self) -> dict[int, int]:
        """rank -> pid of the training processes (torchrun starts each in its own session)."""
        ranks = {}
        for pid in _descendants(self.proc.pid):
            try:
                env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            except OSError:
                continue
            for item in env:
                if item.startswith(b"RANK="):
                    ranks[int(item[5:])] = pid
        return ranks

    def kill(self) -> None:
        """SIGKILL torchrun and every worker at once, as a node failure would."""
        for pid in [self.proc.pid, *_descendants(self.proc.pid)]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait(timeout=60)


@pytest.fixture(autouse=True)
def _no_leftover_jobs():
    yield
    while Job.live:
        job = Job.live.pop()
        if job.proc.poll() is None:
            job.kill()


def _descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [root]
    while todo:
        kids = children.get(todo.pop(), [])
        found += kids
        todo += kids
    return found


def records(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    # A killed job can leave a torn last line; everything before it is whole.
    lines = path.read_text().splitlines()
    return [json.loads(line) for line in lines if line.endswith("}")]


def losses(run_dir: Path) -> dict[int, float]:
    """step -> loss, the last record of each step (a restarted run logs some steps twice)."""
    return {r["step"]: r["loss"] for r in records(run_dir) if "loss" in r}


def copy_checkpoint(src_run: Path, step: int, dst_dump: Path) -> Path:
    """A fresh run directory with only `src_run`'s step-N checkpoint (a job that died after it)."""
    dst = dst_dump / "debug" / "checkpoints" / f"step-{step}"
    shutil.copytree(src_run / "checkpoints" / f"step-{step}", dst)
    return dst_dump / "debug"


def complete(run_dir: Path, step: int) -> bool:
    return (run_dir / "checkpoints" / f"step-{step}" / "COMPLETE").is_file()


def train_here(data_dir: Path, dump: Path) -> None:
    """The same job in this process (1 rank)."""
    args = [*ARGS, "--data.dataset_path", str(data_dir), "--job.dump_folder", str(dump)]
    train_in_process(str(REPO / CONFIG), args)


@pytest.fixture(scope="module")
def straight(token_shards, tmp_path_factory) -> Path:
    """The uninterrupted 20-step job on 2 processes: reference losses and checkpoints."""
    dump = tmp_path_factory.mktemp("straight")
    Job(token_shards, dump).finish()
    return dump / "debug"


@pytest.mark.parametrize("compile_enable", [False, True], ids=["eager", "compiled"])
def test_sigkill_after_checkpoint_resumes_bitwise(token_shards, tmp_path, straight, compile_enable):
    extra = ["--compile.enable", "true"] if compile_enable else []
    reference = losses(straight)
    if compile_enable:  # compiled fp32 kernels round differently from eager: own reference
        Job(token_shards, tmp_path / "straight", extra=extra).finish()
        reference = losses(tmp_path / "straight" / "debug")
    job = Job(token_shards, tmp_path / "run", extra=extra)
    job.wait_for("the step-10 checkpoint", lambda: complete(job.run_dir, 10))
    job.kill()
    run_dir = job.run_dir
    assert not complete(run_dir, 20) and not (run_dir / "model.pt").exists(), "killed too late"
    out = Job(token_shards, tmp_path / "run", extra=extra).finish()
    assert "resumed from step 10" in out
    assert sorted(reference) == list(range(1, STEPS + 1))
    got = losses(run_dir)
    # Steps 1-10 come from the killed job: if they differ, two fresh runs already disagree (seen
    # once: the code under test was edited between the jobs), which is not a resume problem.
    fresh_equal = all(got[s] == reference[s] for s in range(1, 11))
    assert {s: got[s] for s in range(11, 21)} == {s: reference[s] for s in range(11, 21)}, (
        f"resumed losses differ; fresh steps 1-10 {'agree' if fresh_equal else 'DIFFER too'}"
    )
    assert (run_dir / "model.pt").exists()
    # The killed job logged some steps after 10 too: reports see every step once.
    assert [r["step"] for r in read_metrics(run_dir) if "loss" in r] == list(range(1, STEPS + 1))


def test_sigkill_inside_a_save_resumes_from_the_previous_checkpoint(
    token_shards, tmp_path, straight
):
    run_dir = copy_checkpoint(straight, 10, tmp_path)
    flag = tmp_path / "stalled"
    env = {
        "TORCHGPT_CHECKPOINT_WRITER": f"tests.integration.test_resume:{StallBeforeMarker.__name__}",
        STALL_STEP_ENV: "20",
        STALL_FLAG_ENV: str(flag),
    }
    job = Job(token_shards, tmp_path, env=env)
    job.wait_for("the stalled step-20 save", flag.exists)
    job.kill()
    tmp = run_dir / "checkpoints" / "step-20.tmp"
    written = sorted(p.name for p in tmp.iterdir())
    assert written == [".metadata", "__0_0.distcp", "__1_0.distcp"], written
    assert not (run_dir / "checkpoints" / "step-20").exists()

    out = Job(token_shards, tmp_path).finish()
    assert f"skipping incomplete checkpoint {tmp}" in out
    assert "resumed from step 10" in out
    assert complete(run_dir, 20) and not tmp.exists()
    reference = losses(straight)
    # Both jobs trained steps 11-20 from the same checkpoint: every record must match.
    logged = [(r["step"], r["loss"]) for r in records(run_dir) if "loss" in r]
    assert [s for s, _ in logged] == list(range(11, 21)) * 2
    assert all(loss == reference[s] for s, loss in logged), (logged, reference)


def test_sigterm_on_one_rank_checkpoints_the_current_step_and_exits_0(
    token_shards, tmp_path, straight
):
    run_dir = copy_checkpoint(straight, 10, tmp_path)
    job = Job(token_shards, tmp_path, env={"LOG_RANK": "0,1"})
    job.wait_for("step 13", lambda: max(losses(run_dir), default=0) >= 13)
    os.kill(job.workers()[1], signal.SIGTERM)  # rank 0 learns of it through the all-reduce
    out = job.finish()
    match = re.search(r"preempted: checkpoint of step (\d+) saved to (\S+); exiting", out)
    assert match, out[-3000:]
    step = int(match.group(1))
    assert 13 <= step < STEPS and match.group(2) == str(run_dir / "checkpoints" / f"step-{step}")
    assert out.count("preempted: checkpoint of step") == 2  # both ranks, LOG_RANK=0,1
    assert complete(run_dir, step) and max(losses(run_dir)) == step
    assert not (run_dir / "model.pt").exists()

    out = Job(token_shards, tmp_path).finish()
    assert f"resumed from step {step}" in out
    reference = losses(straight)
    assert losses(run_dir) == {s: reference[s] for s in range(11, 21)}


@pytest.fixture(scope="module")
def straight_one_process(token_shards, tmp_path_factory) -> Path:
    dump = tmp_path_factory.mktemp("straight_1")
    train_here(token_shards, dump)
    return dump / "debug"


@pytest.mark.parametrize("saved_on,resumed_on", [(2, 1), (2, 4), (1, 2)])
def test_resume_on_another_number_of_processes(
    token_shards, tmp_path, request, straight, saved_on, resumed_on
):
    source = straight if saved_on == 2 else request.getfixturevalue("straight_one_process")
    run_dir = copy_checkpoint(source, 10, tmp_path)
    if resumed_on == 1:
        train_here(token_shards, tmp_path)
    else:
        assert "resumed from step 10" in Job(token_shards, tmp_path, nproc=resumed_on).finish()
    # The reference is the uninterrupted run that wrote the checkpoint: same weights at step 10,
    # same batches after it, so only the fp32 reduction order of steps 11-20 differs (another
    # batch would move the loss by ~1e-1, so 1e-5 also proves the data order).
    got, reference = losses(run_dir), losses(source)
    assert sorted(got) == list(range(11, 21))
    for step in got:
        assert got[step] == pytest.approx(reference[step], abs=1e-5), (step, got, reference)
    assert records(run_dir)[-1]["tokens_seen"] == STEPS * 256


def test_bit_flipped_newest_checkpoint_is_quarantined_and_the_run_resumes_bitwise(
    token_shards, tmp_path, straight
):
    """4 KiB of random bytes in the newest checkpoint's data file (the fault probe's case): the
    launch verifies it, quarantines it, resumes from the one before and saves the step again."""
    run_dir = copy_checkpoint(straight, 10, tmp_path)
    copy_checkpoint(straight, 20, tmp_path)
    shard = run_dir / "checkpoints" / "step-20" / "__0_0.distcp"
    data = bytearray(shard.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 4096] = os.urandom(4096)
    shard.write_bytes(bytes(data))
    out = Job(token_shards, tmp_path).finish()
    assert re.search(r"corrupt checkpoint \S+step-20: verification failed: \S+__0_0\.distcp", out)
    assert "resumed from step 10" in out
    assert (run_dir / "checkpoints" / "step-20.corrupt" / "QUARANTINE.txt").is_file()
    assert complete(run_dir, 20)  # saved again
    got, reference = losses(run_dir), losses(straight)
    assert {s: got[s] for s in range(11, 21)} == {s: reference[s] for s in range(11, 21)}


def test_truncated_newest_checkpoint_costs_no_good_checkpoint(token_shards, tmp_path):
    """The fault probe's retention case at 2 processes: keep_latest_k=2, checkpoints at 5, 10,
    15, rank 1's shard of step-15 truncated. The relaunch quarantines step-15, resumes from 10,
    saves 15 again, and step-10 survives (it used to be deleted with step-5)."""
    extra = ["--training.steps", "15", "--checkpoint.interval", "5"]
    extra += ["--checkpoint.keep_latest_k", "2"]
    Job(token_shards, tmp_path, extra=extra).finish()
    run_dir = tmp_path / "debug"
    ckpts = run_dir / "checkpoints"
    assert sorted(p.name for p in ckpts.glob("step-*")) == ["step-10", "step-15"]
    shard = ckpts / "step-15" / "__1_0.distcp"
    shard.write_bytes(shard.read_bytes()[:-4096])
    out = Job(token_shards, tmp_path, extra=extra).finish()
    assert re.search(
        r"corrupt checkpoint \S+step-15: verification failed: \S+__1_0\.distcp is", out
    )
    assert "resumed from step 10" in out
    assert sorted(p.name for p in ckpts.iterdir() if p.is_dir()) == [
        "step-10",
        "step-15",
        "step-15.corrupt",
    ]
    assert complete(run_dir, 15)
