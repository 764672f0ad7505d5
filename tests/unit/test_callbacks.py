"""The Trainer's components (torchgpt/training/callbacks.py): garbage collection on a schedule
and the profiler's traces, through the real Trainer."""

from __future__ import annotations

import gc
import json
import logging

from tests.trainer_utils import BASE, train_in_process
from torchgpt.training.callbacks import GarbageCollection


def test_gc_runs_only_on_its_steps_and_is_restored(monkeypatch):
    collected: list[int] = []
    monkeypatch.setattr(gc, "collect", lambda generation=2: collected.append(generation) or 0)
    assert gc.isenabled()
    scheduled = GarbageCollection(3)
    assert not gc.isenabled() and collected == [1]  # automatic collection off, one at start
    for step in range(1, 7):
        scheduled.step(step)
    assert collected == [1, 1, 1]  # steps 3 and 6
    scheduled.close()
    assert gc.isenabled()
    GarbageCollection(0).step(3)  # 0: Python's own collector, nothing scheduled
    assert gc.isenabled() and collected == [1, 1, 1]


def test_profiler_writes_a_trace_per_cycle_that_perfetto_reads(token_shards, tmp_path, caplog):
    args = ["--data.dataset_path", str(token_shards), "--job.dump_folder", str(tmp_path)]
    args += ["--training.steps", "4", "--training.gc_freq", "2", "--profiling.enable", "true"]
    args += ["--profiling.wait", "1", "--profiling.warmup", "1", "--profiling.active", "1"]
    with caplog.at_level(logging.INFO, logger="torchgpt"):
        run_dir = train_in_process(None, BASE + args)
    assert gc.isenabled()  # the Trainer gave Python its collector back
    traces = sorted((run_dir / "profile").glob("rank0.*.pt.trace.json"))
    assert [t.name for t in traces] == ["rank0.step3.pt.trace.json"]
    events = json.loads(traces[0].read_text())["traceEvents"]
    names = {e.get("name", "") for e in events}
    assert "ProfilerStep#2" in names  # the one active step (0-based), with its ops inside
    assert any(n.startswith("aten::") for n in names)
    assert f"profiler trace: {traces[0]}" in caplog.text  # the console line names it
