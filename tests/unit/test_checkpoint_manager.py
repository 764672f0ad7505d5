"""CheckpointManager in one process (no process group): round trip, best/last/retention, async."""

from __future__ import annotations

import contextlib
import json
import random
import threading
from collections.abc import Iterator

import numpy as np
import pytest
import torch
from torch import nn
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper
from torch.distributed.checkpoint.filesystem import FileSystem

from torchgpt.checkpoint import CheckpointManager, ModelState, OptimizerState, RNGState
from torchgpt.checkpoint.layout import read_best, steps_to_delete


class FakeLoader:
    """Dataloader stand-in whose saved state has keys a fresh instance lacks."""

    def __init__(self) -> None:
        self.position = 0
        self.per_shard: dict[str, int] = {}

    def advance(self) -> None:
        self.position += 1
        self.per_shard[f"shard_{self.position % 3}"] = self.position

    def state_dict(self) -> dict:
        return {"position": self.position, "per_shard": dict(self.per_shard)}

    def load_state_dict(self, sd: dict) -> None:
        self.position, self.per_shard = sd["position"], dict(sd["per_shard"])


class Counters:
    def __init__(self) -> None:
        self.step, self.tokens_seen, self.best_val_loss = 0, 0, float("inf")

    def state_dict(self) -> dict:
        return {"step": self.step, "tokens_seen": self.tokens_seen, "best": self.best_val_loss}

    def load_state_dict(self, sd: dict) -> None:
        self.step, self.tokens_seen, self.best_val_loss = sd["step"], sd["tokens_seen"], sd["best"]


class Bundle:
    """A tiny trainer: model, AdamW, LambdaLR, loader, counters, RNG, wired as the Trainer does."""

    def __init__(self, seed: int = 0, hidden: int = 16) -> None:
        torch.manual_seed(seed)
        self.model = nn.Sequential(nn.Linear(8, hidden), nn.ReLU(), nn.Linear(hidden, 4))
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-2, weight_decay=0.1)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lambda s: 1.0 / (1 + s))
        self.loader, self.counters = FakeLoader(), Counters()
        self.states = {
            "model": ModelState(self.model),
            "optimizer": OptimizerState(self.model, self.opt),
            "lr_scheduler": self.sched,
            "dataloader": self.loader,
            "train_state": self.counters,
            "rng": RNGState(),
        }

    def step(self) -> float:
        # Data drawn from the global RNGs, so resumed RNG state matters for the next losses.
        x = torch.randn(4, 8) * (1 + random.random()) + float(np.random.rand())
        loss = self.model(x).pow(2).mean()
        loss.backward()
        self.opt.step()
        self.opt.zero_grad()
        self.sched.step()
        self.loader.advance()
        self.counters.step += 1
        self.counters.tokens_seen += 32
        return loss.item()

    def manager(self, run_dir, **kwargs) -> CheckpointManager:
        kwargs.setdefault("interval", 2)
        return CheckpointManager(run_dir, states=self.states, **kwargs)


def test_should_save_every_interval_and_at_the_last_step(tmp_path):
    mgr = Bundle().manager(tmp_path, interval=3)
    assert [s for s in range(0, 11) if mgr.should_save(s, last_step=10)] == [3, 6, 9, 10]
    off = Bundle().manager(tmp_path, interval=3, enabled=False)
    assert not any(off.should_save(s, last_step=10) for s in range(11))
    assert off.save(3) is None and not (tmp_path / "checkpoints").exists()
    assert off.load() is None


def test_resume_restores_every_state_and_continues_bitwise(tmp_path):
    seed_everything(1)
    a = Bundle(seed=1)
    for _ in range(3):
        a.step()
    config = {"training": {"steps": 10, "lr": 3e-4}, "run": {"dump_folder": tmp_path}}
    path = a.manager(tmp_path, extra_metadata={"config": config}).save(3, val_loss=2.5)
    assert path == tmp_path / "checkpoints" / "step-3"
    expected_losses = [a.step() for _ in range(3)]

    seed_everything(99)
    b = Bundle(seed=7)
    assert b.manager(tmp_path).load() == 3
    assert b.counters.state_dict() == {"step": 3, "tokens_seen": 96, "best": float("inf")}
    assert b.loader.per_shard == {"shard_1": 1, "shard_2": 2, "shard_0": 3}
    assert b.sched.state_dict()["last_epoch"] == 3
    assert [b.step() for _ in range(3)] == expected_losses  # bitwise: RNG, optimizer, schedule
    for pa, pb in zip(a.model.parameters(), b.model.parameters(), strict=True):
        assert torch.equal(pa, pb)

    info = json.loads((path / "checkpoint_info.json").read_text())
    assert info["step"] == 3 and info["val_loss"] == 2.5 and info["world_size"] == 1
    assert info["extra"]["config"]["training"] == {"steps": 10, "lr": 3e-4}
    assert info["extra"]["config"]["run"]["dump_folder"] == str(tmp_path)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def test_best_last_and_retention_bookkeeping(tmp_path):
    b = Bundle()
    mgr = b.manager(tmp_path, keep_latest_k=2)
    for step, val in [(2, 5.0), (4, 1.0), (6, 4.0), (8, None), (10, 2.0)]:
        b.step()
        mgr.save(step, val_loss=val)
    # newest two (8, 10) plus the best (4, val 1.0); 2 and 6 deleted.
    assert [s for s, _ in mgr.list_complete()] == [4, 8, 10]
    assert (mgr.best_step, mgr.best_val_loss) == (4, 1.0)
    assert read_best(tmp_path / "checkpoints") == (4, 1.0)

    again = b.manager(tmp_path, keep_latest_k=2)  # a restarted run reads best.json
    assert (again.best_step, again.best_val_loss) == (4, 1.0)
    again.save(12, val_loss=float("nan"))  # NaN is never best
    assert again.best_step == 4
    again.save(14, val_loss=0.5)
    assert [s for s, _ in again.list_complete()] == [12, 14]
    assert read_best(tmp_path / "checkpoints") == (14, 0.5)

    keep_all = b.manager(tmp_path, keep_latest_k=0)
    for step in (16, 18, 20, 22):
        keep_all.save(step)
    assert [s for s, _ in keep_all.list_complete()] == [12, 14, 16, 18, 20, 22]


def test_retention_rules():
    assert steps_to_delete([1, 2, 3, 4], 2, None) == [1, 2]
    assert steps_to_delete([1, 2, 3, 4], 2, 1) == [2]
    assert steps_to_delete([1, 2, 3, 4], 1, 4) == [1, 2, 3]
    assert steps_to_delete([1, 2, 3], 0, None) == []
    # A rewound run just saved step 2 below 3 and 4 on disk: step 2 is the one kept.
    assert steps_to_delete([2, 3, 4], 1, None, protect=2) == [3, 4]
    assert steps_to_delete([2, 3, 4], 2, 3, protect=2) == []  # 4 is newest, 3 is best


def test_existing_step_is_kept_unless_forced(tmp_path):
    b = Bundle()
    mgr = b.manager(tmp_path)
    mgr.save(2)
    saved = {k: v.clone() for k, v in b.model.state_dict().items()}
    b.step()
    assert mgr.save(2) == tmp_path / "checkpoints" / "step-2"  # kept as it was
    c = Bundle(seed=5)
    c.manager(tmp_path).load(load_step=2)
    assert all(torch.equal(saved[k], v) for k, v in c.model.state_dict().items())
    mgr.save(2, force=True)  # replaced with the current weights
    c.manager(tmp_path).load(load_step=2)
    for pb, pc in zip(b.model.parameters(), c.model.parameters(), strict=True):
        assert torch.equal(pb, pc)


@contextlib.contextmanager
def held_writes() -> Iterator[threading.Event]:
    """Hold every DCP file write until the yielded event is set (so training surely runs first)."""
    original, release = FileSystem.create_stream, threading.Event()

    @contextlib.contextmanager
    def create_stream(fs, path, mode):
        if "w" in mode:
            assert release.wait(timeout=30), "the test never released the held writes"
        with original(fs, path, mode) as stream:
            yield stream

    FileSystem.create_stream = create_stream
    try:
        yield release
    finally:
        release.set()
        FileSystem.create_stream = original


def test_async_save_copies_state_before_training_goes_on(tmp_path):
    b = Bundle()
    b.step()
    mgr = b.manager(tmp_path, async_mode="async")
    saved = {k: v.clone() for k, v in b.model.state_dict().items()}
    with held_writes() as release:
        path = mgr.save(2, val_loss=1.0)
        assert mgr.list_complete() == []  # returned before anything was written
        with torch.no_grad():
            for p in b.model.parameters():  # training changes the weights during the write
                p.fill_(7.0)
        release.set()
        mgr.wait()
    assert mgr.last_blocked_seconds > 0
    assert mgr.list_complete() == [(2, path)]
    assert read_best(tmp_path / "checkpoints") == (2, 1.0)
    c = Bundle(seed=3)
    assert c.manager(tmp_path).load() == 2
    assert all(torch.equal(saved[k], v) for k, v in c.model.state_dict().items())
    b.step()
    mgr.save(4)
    mgr.save(6)  # waits for step 4 first
    mgr.wait()
    assert [s for s, _ in mgr.list_complete()] == [2, 4, 6]


def test_compiled_and_activation_checkpointed_models_share_keys(tmp_path):
    b = Bundle()
    plain_keys = set(ModelState(b.model).state_dict())
    assert plain_keys == {"0.weight", "0.bias", "2.weight", "2.bias"}
    torch.manual_seed(4)
    wrapped = nn.Sequential(checkpoint_wrapper(nn.Linear(8, 16)), nn.ReLU(), nn.Linear(16, 4))
    compiled = torch.compile(wrapped)  # not run: wrapping alone adds the _orig_mod prefix
    assert set(ModelState(compiled).state_dict()) == plain_keys
    CheckpointManager(tmp_path, states={"model": ModelState(compiled)}, interval=1).save(1)
    CheckpointManager(tmp_path, states={"model": ModelState(b.model)}, interval=1).load()
    assert torch.equal(b.model[0].weight, wrapped[0]._checkpoint_wrapped_module.weight)


def test_rng_state_is_keyed_by_rank_and_missing_entries_keep_the_seed():
    rng = RNGState()
    sd = rng.state_dict()
    assert list(sd) == ["rank_0"]
    expected = torch.rand(3), random.random(), np.random.rand()
    rng.load_state_dict(sd)
    assert torch.equal(torch.rand(3), expected[0])
    assert random.random() == expected[1] and np.random.rand() == expected[2]
    torch.manual_seed(11)
    seeded = torch.rand(2)
    torch.manual_seed(11)
    rng.load_state_dict({"rank_1": sd["rank_0"]})  # no entry for this rank: no change
    assert torch.equal(torch.rand(2), seeded)


@pytest.mark.parametrize(
    "kwargs, key",
    [
        ({"interval": 0}, "checkpoint.interval"),
        ({"keep_latest_k": -1}, "checkpoint.keep_latest_k"),
        ({"async_mode": "fast"}, "checkpoint.async_mode"),
    ],
)
def test_invalid_arguments_name_the_key(tmp_path, kwargs, key):
    with pytest.raises(ValueError, match=key):
        Bundle().manager(tmp_path, **kwargs)


def test_invalid_resume_and_non_stateful(tmp_path):
    with pytest.raises(ValueError, match="checkpoint.resume"):
        Bundle().manager(tmp_path).load(resume="maybe")
    with pytest.raises(ValueError, match="'thing'"):
        CheckpointManager(tmp_path, states={"thing": object()}, interval=1)
    assert Bundle().manager(tmp_path).load() is None  # nothing saved yet: a fresh start
