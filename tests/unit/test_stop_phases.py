"""A SIGTERM in each phase of a run (issue #27), in one process: where the run stops, what it
saves, and what last_exit.json says.

Setup: stop before the first step, nothing to save ("preempted", step 0). A step: finish it,
save it. Validation or a save: stop after it, without another step. Without checkpoints:
"stopped" (the steps are lost). A second signal: exit at once after recording "stopped" and
releasing the lock. The signal is sent by the process to itself at the chosen point.
"""

from __future__ import annotations

import json
import os
import signal
import time

import pytest

from tests.trainer_utils import BASE, train_restoring_signals
from torchgpt.config.manager import load_config
from torchgpt.run.files import EXIT_RECORD_NAME
from torchgpt.run.preemption import PreemptionHandler
from torchgpt.train import Trainer

CKPT = ["--checkpoint.enable", "true", "--checkpoint.interval", "100"]


def _sigterm_self() -> None:
    os.kill(os.getpid(), signal.SIGTERM)  # the handler runs before the next bytecode


def _trainer(data, tmp_path, extra: list[str]) -> Trainer:
    args = BASE + ["--data.dataset_path", str(data), "--job.dump_folder", str(tmp_path)]
    return Trainer(load_config(None, args + extra, world_size=1))


def _train(trainer: Trainer) -> dict:
    """trainer.train() with pytest's signal handlers put back after; returns last_exit.json."""
    train_restoring_signals(trainer)
    return json.loads((trainer.run_dir / EXIT_RECORD_NAME).read_text())


def _steps_saved(trainer: Trainer) -> list[int]:
    return [step for step, _ in trainer.checkpointer.list_complete()]


def test_a_signal_during_setup_stops_before_the_first_step(token_shards, tmp_path):
    trainer = _trainer(token_shards, tmp_path, CKPT)
    load = trainer.checkpointer.load

    def load_and_signal(**kwargs):
        _sigterm_self()
        return load(**kwargs)

    trainer.checkpointer.load = load_and_signal
    record = _train(trainer)
    assert trainer.outcome == "preempted" and trainer.train_state.step == 0
    assert _steps_saved(trainer) == []
    assert record["status"] == "preempted" and record["signal"] == "SIGTERM"
    assert (record["step"], record["checkpoint"]) == (0, None)
    assert record["during"] == "setup (loading the checkpoint to resume)"


def _signal_in_step(trainer, step: int) -> None:
    """SIGTERM to this process inside the forward/backward of optimizer step `step`."""
    forward_backward = trainer.module.forward_backward

    def signalling(batches):
        if trainer.train_state.step == step - 1:
            _sigterm_self()
        return forward_backward(batches)

    trainer.module.forward_backward = signalling


def test_a_signal_during_a_step_saves_that_step(token_shards, tmp_path):
    trainer = _trainer(token_shards, tmp_path, CKPT)
    _signal_in_step(trainer, 3)
    record = _train(trainer)
    assert trainer.outcome == "preempted" and _steps_saved(trainer) == [3]
    assert record["status"] == "preempted" and record["step"] == 3
    assert record["checkpoint"] == str(trainer.run_dir / "checkpoints" / "step-3")
    assert record["checkpoint_step"] == 3 and record["during"] == "step 3 (forward/backward)"
    assert record["written_by"] == "rank 0"


def test_a_signal_during_validation_saves_that_step_without_another(token_shards, tmp_path):
    extra = [*CKPT, "--validation.enable", "true", "--validation.interval", "2"]
    extra += ["--validation.tokens", "1024"]
    trainer = _trainer(token_shards, tmp_path, extra)
    eval_loss = trainer.module.eval_loss

    def eval_and_signal(batches):
        _sigterm_self()
        return eval_loss(batches)

    trainer.module.eval_loss = eval_and_signal
    record = _train(trainer)
    assert trainer.train_state.step == 2 and _steps_saved(trainer) == [2]
    assert record["status"] == "preempted" and record["step"] == 2
    assert record["during"] == "step 2, after its update (validation)"


def test_a_signal_during_a_save_stops_after_it(token_shards, tmp_path):
    trainer = _trainer(token_shards, tmp_path, ["--checkpoint.enable", "true"])
    trainer.checkpointer.interval = 2
    save, saves = trainer.checkpointer.save, []

    def save_and_signal(step, **kwargs):
        saves.append(step)
        path = save(step, **kwargs)
        _sigterm_self()  # after the save: DCP's own threads must not see the handler's work
        return path

    trainer.checkpointer.save = save_and_signal
    record = _train(trainer)
    assert saves == [2] and trainer.train_state.step == 2  # one save, no step 3
    assert record["status"] == "preempted" and record["checkpoint_step"] == 2


def test_without_checkpoints_a_stop_is_stopped_and_says_so(token_shards, tmp_path):
    trainer = _trainer(token_shards, tmp_path, [])  # BASE: checkpoint.enable = false
    _signal_in_step(trainer, 2)
    record = _train(trainer)
    assert trainer.outcome == "stopped" and trainer.train_state.step == 2
    assert record["status"] == "stopped" and record["checkpoint"] is None


def test_the_handler_repeats_within_5s_once_and_a_later_signal_exits_now(monkeypatch):
    handler = PreemptionHandler()
    seen, done = [], []
    handler.on_request = seen.append
    handler.on_exit_now += [lambda: done.append("lock"), lambda: done.append("record")]

    class Exited(Exception):
        pass

    def fake_exit(code):
        raise Exited(code)

    monkeypatch.setattr(os, "_exit", fake_exit)
    handler._handle(signal.SIGTERM, None)
    handler._handle(signal.SIGTERM, None)  # torchrun's forwarded copy: the same request
    assert handler.requested and seen == [signal.SIGTERM] and done == []
    assert handler.signal_name == "SIGTERM"
    handler._first_at = time.monotonic() - 6
    with pytest.raises(Exited) as exited:
        handler._handle(signal.SIGINT, None)
    assert exited.value.args == (128 + signal.SIGINT,)
    assert done == ["record", "lock"]  # the trainer's record first, then the lock
