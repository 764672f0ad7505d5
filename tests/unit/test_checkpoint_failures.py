"""Checkpoint failures in one process: full disk, killed saves, corrupt files, wrong model shape."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re

import pytest
import torch
from test_checkpoint_manager import Bundle
from torch import nn
from torch.distributed.checkpoint.filesystem import FileSystem

from torchgpt.checkpoint import CheckpointManager, CheckpointSaveError, ModelState, layout


class _LimitedStream:
    """A write stream on a disk with `budget[0]` bytes left: writes past it fail with ENOSPC."""

    def __init__(self, stream, budget: list[int]) -> None:
        self._stream, self._budget = stream, budget

    def write(self, data) -> int:
        n = memoryview(data).nbytes
        if n > self._budget[0]:
            self._stream.write(memoryview(data).cast("B")[: self._budget[0]])  # a torn write
            self._budget[0] = 0
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self._budget[0] -= n
        return self._stream.write(data)

    def __getattr__(self, name):
        return getattr(self._stream, name)


def fill_disk(monkeypatch, budget: int) -> None:
    """Make DCP's storage layer (FileSystem.create_stream) run out of space after `budget` bytes."""
    original = FileSystem.create_stream
    left = [budget]

    @contextlib.contextmanager
    def create_stream(self, path, mode):
        with original(self, path, mode) as stream:
            yield _LimitedStream(stream, left) if "w" in mode else stream

    monkeypatch.setattr(FileSystem, "create_stream", create_stream)


def _weights(bundle: Bundle) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in bundle.model.state_dict().items()}


def _assert_weights(bundle: Bundle, expected: dict[str, torch.Tensor]) -> None:
    for key, value in bundle.model.state_dict().items():
        assert torch.equal(value, expected[key]), key


def _distcp_size(path) -> int:
    return sum(f.stat().st_size for f in path.glob("*.distcp"))


@pytest.mark.parametrize("where", ["first byte", "mid shard", "metadata", "marker"])
def test_full_disk_keeps_the_previous_checkpoint(tmp_path, monkeypatch, where):
    b = Bundle()
    b.step()
    mgr = b.manager(tmp_path)
    first = mgr.save(2, val_loss=3.0)
    at_2 = _weights(b)
    b.step()
    size = _distcp_size(first)
    with monkeypatch.context() as patch:
        if where == "marker":
            real = layout.write_json_atomic

            def no_space_for_marker(path, obj):
                if path.name == layout.MARKER_NAME:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                real(path, obj)

            patch.setattr(layout, "write_json_atomic", no_space_for_marker)
        else:
            budget = {"first byte": 0, "mid shard": size // 2, "metadata": size + 16}[where]
            fill_disk(patch, budget)
        with pytest.raises(CheckpointSaveError, match="No space left on device") as err:
            mgr.save(4, val_loss=1.0)
    assert "step-2 is still the newest" in str(err.value)
    ckpt_dir = tmp_path / "checkpoints"
    assert sorted(p.name for p in ckpt_dir.iterdir()) == ["best.json", "step-2"]
    assert (mgr.best_step, mgr.best_val_loss) == (2, 3.0)  # the failed save is not "best"
    fresh = Bundle(seed=9)
    assert fresh.manager(tmp_path).load() == 2
    _assert_weights(fresh, at_2)
    assert mgr.save(4) == ckpt_dir / "step-4"  # with space again, saving works


def test_killed_saves_are_skipped_with_a_warning(tmp_path, caplog):
    b = Bundle()
    mgr = b.manager(tmp_path)
    mgr.save(2)
    b.step()
    step_4 = mgr.save(4)
    at_4 = _weights(b)
    b.step()
    step_8 = mgr.save(8)
    ckpt_dir = tmp_path / "checkpoints"
    # SIGKILL mid-save: a tmp folder with a torn shard, and a step folder without its marker.
    torn = ckpt_dir / "step-6.tmp"
    torn.mkdir()
    (torn / "__0_0.distcp").write_bytes((step_4 / "__0_0.distcp").read_bytes()[:100])
    (step_8 / layout.MARKER_NAME).unlink()

    fresh = Bundle(seed=9)
    with caplog.at_level(logging.WARNING):
        assert fresh.manager(tmp_path).load(resume="auto") == 4
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warned == [
        f"skipping incomplete checkpoint {torn} (its save never finished)",
        f"skipping incomplete checkpoint {step_8} (its save never finished)",
    ]
    _assert_weights(fresh, at_4)
    with pytest.raises(
        ValueError, match=r"load_step=8: .*step-8 is incomplete .*'step-2', 'step-4'"
    ):
        fresh.manager(tmp_path).load(load_step=8)
    with pytest.raises(ValueError, match="load_step=6: .*step-6 does not exist"):
        fresh.manager(tmp_path).load(load_step=6)
    mgr.save(10)  # the next save clears the unfinished tmp folder
    assert not torn.exists() and (ckpt_dir / "step-10").is_dir()


def test_corrupt_checkpoints_are_quarantined_or_rejected(tmp_path, caplog):
    b = Bundle()
    mgr = b.manager(tmp_path)
    mgr.save(2)
    at_2 = _weights(b)
    b.step()
    mgr.save(4)
    b.step()
    mgr.save(6)
    ckpt_dir = tmp_path / "checkpoints"
    (ckpt_dir / "step-6" / ".metadata").write_bytes(b"not a pickle")
    shard = ckpt_dir / "step-4" / "__0_0.distcp"
    size = shard.stat().st_size
    shard.write_bytes(shard.read_bytes()[:-2000])  # truncated data file

    # Asked for by name: refused with the file and the fix, left where it is.
    fresh = Bundle(seed=9)
    with pytest.raises(ValueError, match=r"step-6 fails verification: .*\.metadata is 12 bytes"):
        fresh.manager(tmp_path).load(load_step=6)
    with pytest.raises(ValueError, match=rf"__0_0.distcp is {size - 2000} bytes, {size} when"):
        fresh.manager(tmp_path).load(load_step=4)
    # Auto-resume: both quarantined with the reason, the newest good one loaded untouched.
    with caplog.at_level(logging.WARNING):
        assert fresh.manager(tmp_path).load() == 2
    warned = " ".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert "corrupt checkpoint" in warned and "step-6" in warned and "step-4" in warned
    _assert_weights(fresh, at_2)
    assert sorted(p.name for p in ckpt_dir.iterdir() if p.is_dir()) == [
        "step-2",
        "step-4.corrupt",
        "step-6.corrupt",
    ]
    assert "truncated" in (ckpt_dir / "step-4.corrupt" / "QUARANTINE.txt").read_text()
    assert [s for s, _ in fresh.manager(tmp_path).list_complete()] == [2]


def test_a_corrupt_checkpoint_neither_counts_nor_costs_the_good_ones(tmp_path):
    """The fault probe's crash loop: keep_latest_k=2, the newest checkpoint bit-flipped."""
    b = Bundle()
    mgr = b.manager(tmp_path, keep_latest_k=2)
    for step in (5, 10, 15):
        b.step()
        mgr.save(step)
    ckpt_dir = tmp_path / "checkpoints"
    shard = ckpt_dir / "step-15" / "__0_0.distcp"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 64] = os.urandom(64)
    shard.write_bytes(bytes(data))
    resumed = Bundle(seed=3)
    rmgr = resumed.manager(tmp_path, keep_latest_k=2)
    assert rmgr.load() == 10
    resumed.step()
    assert rmgr.save(15) == ckpt_dir / "step-15"  # the re-run step is saved again
    assert [s for s, _ in rmgr.list_complete()] == [10, 15]  # and step-10 survives retention
    assert (ckpt_dir / "step-15.corrupt").is_dir()
    assert (ckpt_dir / "step-15" / "checksums.json").is_file()


def test_a_half_loaded_unverifiable_checkpoint_stops_the_run(tmp_path):
    """Without checksums (an older torchgpt's checkpoint) damage shows only while loading; once
    part of the model is overwritten, auto-resume must not load another checkpoint on top."""
    b = Bundle()
    mgr = b.manager(tmp_path)
    mgr.save(2)
    b.step()
    mgr.save(4)
    ckpt_dir = tmp_path / "checkpoints"
    (ckpt_dir / "step-4" / "checksums.json").unlink()
    shard = ckpt_dir / "step-4" / "__0_0.distcp"
    shard.write_bytes(shard.read_bytes()[:-2000])
    with pytest.raises(RuntimeError, match="after part of the model was read from it"):
        Bundle(seed=9).manager(tmp_path).load()
    # Quarantined: the next launch resumes from the checkpoint before it.
    assert (ckpt_dir / "step-4.corrupt").is_dir()
    assert Bundle(seed=9).manager(tmp_path).load() == 2


def test_a_load_failure_of_intact_files_renames_nothing(tmp_path, monkeypatch):
    """Files that match their checksums are not the problem (memory, torch, a peer): the
    checkpoint stays where it is and the error says so."""
    import torch.distributed.checkpoint as dcp

    b = Bundle()
    mgr = b.manager(tmp_path)
    mgr.save(2)

    def failing_load(*args, **kwargs):
        raise MemoryError("out of memory while loading")

    monkeypatch.setattr(dcp, "load", failing_load)
    with pytest.raises(RuntimeError, match="files match their checksums: MemoryError"):
        Bundle(seed=9).manager(tmp_path).load()
    assert (tmp_path / "checkpoints" / "step-2").is_dir()


def test_shape_mismatch_lists_keys_and_shapes(tmp_path):
    Bundle(hidden=16).manager(tmp_path).save(2)
    bigger = Bundle(hidden=32)
    with pytest.raises(ValueError) as err:
        bigger.manager(tmp_path).load()
    msg = str(err.value)
    assert "step-2 does not match the model" in msg
    assert "model.0.weight: saved shape (16, 8) vs expected (32, 8)" in msg
    assert "model.0.bias: saved shape (16,) vs expected (32,)" in msg
    assert "model.2.weight: saved shape (4, 16) vs expected (4, 32)" in msg
    assert "optimizer.state.0.weight.exp_avg: saved shape (16, 8) vs expected (32, 8)" in msg
    assert "model.2.bias" not in msg  # same shape, not listed

    def model_only(model):
        return CheckpointManager(tmp_path, states={"model": ModelState(model)}, interval=1)

    deeper = torch.nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4), nn.Linear(4, 4))
    with pytest.raises(ValueError, match=r"model.3.weight: missing from the checkpoint"):
        model_only(deeper).load(load_step=2)
    with pytest.raises(ValueError, match=r"model.2.weight: in the checkpoint .* not in the model"):
        model_only(nn.Sequential(nn.Linear(8, 16))).load()


def test_bad_explicit_paths_name_the_path_and_the_fix(tmp_path):
    b = Bundle()
    b.manager(tmp_path).save(2)
    other = Bundle(seed=3)
    mgr = other.manager(tmp_path / "other_run")
    missing = tmp_path / "nope"
    expected = f"checkpoint.load_path: {missing} does not exist; point it at a checkpoint folder"
    with pytest.raises(ValueError, match=re.escape(expected) + r".*\['step-2'\]"):
        b.manager(tmp_path).load(load_path=str(missing))
    with pytest.raises(ValueError, match="holds checkpoints; point it at one of its step-N"):
        mgr.load(load_path=str(tmp_path))
    export = tmp_path / "model.pt"
    export.write_bytes(b"x")
    with pytest.raises(ValueError, match="is a file, not a DCP checkpoint folder"):
        mgr.load(load_path=str(export))
    assert mgr.load(load_path=str(tmp_path / "checkpoints" / "step-2")) == 2
    _assert_weights(other, _weights(b))
