"""The launcher's side of a stop (issue #27), in this process: a signal during its own checks,
and the record it completes when the workers could not (killed after torchrun's grace).

The end-to-end runs through run_train.sh are in tests/integration/test_stop.py.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest

from torchgpt.config.manager import load_config
from torchgpt.run import launch
from torchgpt.run.files import EXIT_RECORD_NAME, LAUNCH_ID_ENV, write_exit_record
from torchgpt.run.lock import LOCK_NAME, RunLock

CONFIG = "train_configs/debug_model.toml"


def _fake_checkpoint(run_dir, step: int):
    """A folder that counts as complete (name, COMPLETE marker, DCP .metadata)."""
    path = run_dir / "checkpoints" / f"step-{step}"
    path.mkdir(parents=True)
    (path / "COMPLETE").write_text("{}")
    (path / ".metadata").write_text("")
    return path


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_signal_during_the_launchers_checks_starts_and_writes_nothing(
    tmp_path, monkeypatch, capsys
):
    run_dir = tmp_path / "debug"
    ckpt = _fake_checkpoint(run_dir, 20)
    before = sorted(p.name for p in run_dir.rglob("*"))
    import torchgpt.run.preflight

    def preflight_stopped(*args, **kwargs):
        signal.raise_signal(signal.SIGTERM)
        raise AssertionError("the signal did not stop the checks")

    monkeypatch.setattr(torchgpt.run.preflight, "preflight", preflight_stopped)
    handler = signal.getsignal(signal.SIGTERM)
    rc = launch.main(["--nproc-per-node", "1", "--", CONFIG, "--job.dump_folder", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 0, err
    assert "run_train.sh: stopped by SIGTERM before training started" in err
    assert "nothing was started or written" in err
    assert f"the same command resumes from step 20 ({ckpt})" in err
    assert sorted(p.name for p in run_dir.rglob("*")) == before
    assert signal.getsignal(signal.SIGTERM) == handler  # put back on the way out


def _launch_with_note(tmp_path, monkeypatch, *, step: int, saved: int):
    """A run folder as a stop killed half-way leaves it: rank 0's lock (its process gone) and
    its "stopping" note; returns (cfg, started)."""
    monkeypatch.setenv(LAUNCH_ID_ENV, "launch-under-test")
    cfg = load_config(CONFIG, ["--job.dump_folder", str(tmp_path)])
    started = time.time()
    _fake_checkpoint(cfg.run_dir, saved)
    lock = {"host": RunLock(cfg.run_dir).me["host"], "pid": _dead_pid(), "start_ticks": 1}
    (cfg.run_dir / LOCK_NAME).write_text(json.dumps(lock))
    write_exit_record(
        cfg.run_dir,
        "stopping",
        step=step,
        checkpoint=cfg.run_dir / "checkpoints" / f"step-{saved}",
        signal="SIGTERM",
        during=f"step {step + 1} (forward/backward)",
    )
    return cfg, started


def test_workers_killed_after_the_grace_get_their_record_and_lock_done(
    tmp_path, monkeypatch, capsys
):
    monkeypatch.setenv("TORCH_ELASTIC_SHUTDOWN_TIMEOUT", "1")
    cfg, started = _launch_with_note(tmp_path, monkeypatch, step=23, saved=20)
    rc = launch._stop_outcome(cfg, started, signal.SIGTERM, {})
    err = capsys.readouterr().err
    assert rc == 1, err
    assert not (cfg.run_dir / LOCK_NAME).exists()
    record = json.loads((cfg.run_dir / EXIT_RECORD_NAME).read_text())
    ckpt = cfg.run_dir / "checkpoints" / "step-20"
    assert record["status"] == "stopped" and record["written_by"] == "launcher"
    assert (record["step"], record["checkpoint"], record["checkpoint_step"]) == (23, str(ckpt), 20)
    assert record["signal"] == "SIGTERM" and record["during"] == "step 24 (forward/backward)"
    assert (
        "run_train.sh: stopped by SIGTERM during step 24 (forward/backward), before step 23 was "
        "saved (the workers did not stop within torchrun's 1 s grace "
        "(TORCH_ELASTIC_SHUTDOWN_TIMEOUT) and were killed): steps 21-23 are lost; "
        f"the same command resumes from step 20 ({ckpt})"
    ) in err


def test_killed_mid_step_after_a_save_loses_nothing_and_exits_0(tmp_path, monkeypatch, capsys):
    cfg, started = _launch_with_note(tmp_path, monkeypatch, step=20, saved=20)
    assert launch._stop_outcome(cfg, started, signal.SIGTERM, {}) == 0
    record = json.loads((cfg.run_dir / EXIT_RECORD_NAME).read_text())
    assert record["status"] == "preempted" and record["checkpoint_step"] == 20
    assert "preempted by SIGTERM during step 21 (forward/backward)" in capsys.readouterr().err


def test_a_live_holders_folder_is_left_alone(tmp_path, monkeypatch, capsys):
    cfg, started = _launch_with_note(tmp_path, monkeypatch, step=23, saved=20)
    (cfg.run_dir / LOCK_NAME).unlink()
    lock = RunLock(cfg.run_dir)
    lock.acquire()  # another job, alive: its folder, its record
    try:
        note = (cfg.run_dir / EXIT_RECORD_NAME).read_text()
        assert launch._stop_outcome(cfg, started, signal.SIGTERM, {}) == 1
        assert (cfg.run_dir / EXIT_RECORD_NAME).read_text() == note
        assert (cfg.run_dir / LOCK_NAME).exists()
        assert "stopped by SIGTERM while" in capsys.readouterr().err
    finally:
        lock.release()


@pytest.mark.parametrize("codes", [{}, {0: -signal.SIGTERM}])
def test_a_launch_stopped_before_acceptance_writes_nothing(tmp_path, monkeypatch, capsys, codes):
    monkeypatch.setenv(LAUNCH_ID_ENV, "launch-under-test")
    cfg = load_config(CONFIG, ["--job.dump_folder", str(tmp_path)])
    _fake_checkpoint(cfg.run_dir, 4)
    before = sorted(p.name for p in cfg.run_dir.rglob("*"))
    sig = signal.SIGTERM if not codes else None  # killed by it before its handler existed
    assert launch._stop_outcome(cfg, time.time(), sig, codes) == 0
    assert sorted(p.name for p in cfg.run_dir.rglob("*")) == before
    assert "before the launch was accepted: nothing was written" in capsys.readouterr().err


def test_a_plain_failure_is_not_a_stop(tmp_path, monkeypatch):
    monkeypatch.setenv(LAUNCH_ID_ENV, "launch-under-test")
    cfg = load_config(CONFIG, ["--job.dump_folder", str(tmp_path)])
    assert launch._stop_outcome(cfg, time.time(), None, {0: 1}) is None
    assert launch._stop_outcome(cfg, time.time(), None, {}) is None


def test_a_rank_failure_after_a_stop_note_is_a_failure(tmp_path, monkeypatch):
    """Rank 1 crashed; torchrun's SIGTERM made rank 0 note "stopping" before it failed too."""
    cfg, started = _launch_with_note(tmp_path, monkeypatch, step=23, saved=20)
    assert launch._stop_outcome(cfg, started, None, {0: 1, 1: 1}) is None
    assert json.loads((cfg.run_dir / EXIT_RECORD_NAME).read_text())["status"] == "stopping"
