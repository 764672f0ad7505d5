"""Checkpoints across process counts: FSDP2 on 2 gloo ranks <-> one process, and a full disk.

A resharded load must give exactly the saved full parameters and optimizer state; training on
from a resharded load must match training on without the restart.
"""

from __future__ import annotations

import contextlib
import copy
import errno
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.checkpoint.filesystem import FileSystem
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
)
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard

from torchgpt.checkpoint import (
    CheckpointManager,
    CheckpointSaveError,
    ModelState,
    OptimizerState,
    RNGState,
    load_full_model_state_dict,
)
from torchgpt.testing import run_distributed_test

GLOBAL_BATCH = 8


def _model(seed: int, shard: bool) -> nn.Module:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 5))  # 5 rows: uneven shards
    if shard:
        mesh = init_device_mesh("cpu", (dist.get_world_size(),))
        for layer in (model[0], model[2], model):
            fully_shard(layer, mesh=mesh)
    return model


def _optimizer(model: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)


def _train_step(model: nn.Module, opt: torch.optim.Optimizer, step: int) -> None:
    """One step on this rank's slice of a global batch fixed by `step` (all of it unsharded)."""
    x = torch.randn(GLOBAL_BATCH, 8, generator=torch.Generator().manual_seed(step))
    if dist.is_initialized():
        x = x.chunk(dist.get_world_size())[dist.get_rank()]
    model(x).pow(2).mean().backward()  # FSDP averages gradients: the full-batch mean's gradient
    opt.step()
    opt.zero_grad()


def _states(model: nn.Module, opt: torch.optim.Optimizer) -> dict:
    return {"model": ModelState(model), "optimizer": OptimizerState(model, opt), "rng": RNGState()}


def _full(model: nn.Module, opt: torch.optim.Optimizer) -> tuple[dict, dict]:
    """A copy of the full (unsharded) model and optimizer state; on 2 ranks only rank 0 holds it."""
    options = StateDictOptions(full_state_dict=True, cpu_offload=dist.is_initialized())
    # deepcopy: the dicts share tensors (params, the AdamW step) that training goes on changing.
    return copy.deepcopy(
        (
            get_model_state_dict(model, options=options),
            get_optimizer_state_dict(model, opt, options=options),
        )
    )


def _assert_same(actual: tuple[dict, dict], expected: tuple[dict, dict], exact: bool) -> None:
    (model_a, optim_a), (model_e, optim_e) = actual, expected
    check = torch.equal if exact else _close
    assert set(model_a) == set(model_e)
    assert all(check(model_a[k], model_e[k]) for k in model_e), "model differs"
    assert set(optim_a["state"]) == set(optim_e["state"]) == set(model_e)
    for fqn, state in optim_e["state"].items():
        for name, value in state.items():
            assert check(optim_a["state"][fqn][name], value), f"{fqn}.{name} differs"
    for group_a, group_e in zip(optim_a["param_groups"], optim_e["param_groups"], strict=True):
        assert group_a["lr"] == group_e["lr"] and sorted(group_a["params"]) == sorted(
            group_e["params"]
        )


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return torch.allclose(a, b, rtol=1e-5, atol=1e-6)


def _save_on_two_ranks(run_dir: str, expected_file: str) -> None:
    rank = dist.get_rank()
    model = _model(0, shard=True)
    opt = _optimizer(model)
    for step in (1, 2):
        _train_step(model, opt, step)
    torch.manual_seed(100 + rank)
    CheckpointManager(run_dir, states=_states(model, opt), interval=1).save(2, val_loss=1.0)
    draws = [None, None]
    dist.all_gather_object(draws, torch.rand(3))  # what each rank's RNG gives next
    at_2 = _full(model, opt)
    _train_step(model, opt, 3)
    at_3 = _full(model, opt)
    mgr = CheckpointManager(run_dir, states=_states(model, opt), interval=1, async_mode="async")
    release = threading.Event()
    with _before_write(lambda path: release.wait(timeout=30)):
        mgr.save(3)
        with torch.no_grad():
            for p in model.parameters():  # training goes on before the async write starts
                p.to_local().fill_(7.0)
        release.set()
        mgr.wait()
    mutated = _full(model, opt)[0]
    if rank == 0:
        assert all(bool((v == 7.0).all()) for v in mutated.values())
        torch.save({2: at_2, 3: at_3, "draws": draws}, expected_file)


def test_save_on_two_fsdp_ranks_load_in_one_process(tmp_path):
    run_dir, expected_file = tmp_path / "run", tmp_path / "expected.pt"
    run_distributed_test(_save_on_two_ranks, 2, args=(str(run_dir), str(expected_file)))
    expected = torch.load(expected_file, weights_only=False)
    for step in (3, 2):
        model = _model(5, shard=False)
        opt = _optimizer(model)
        mgr = CheckpointManager(run_dir, states=_states(model, opt), interval=1)
        assert mgr.load(load_step=step if step == 2 else -1) == step
        _assert_same(_full(model, opt), expected[step], exact=True)
    assert torch.equal(torch.rand(3), expected["draws"][0])  # rank 0's RNG entry, restored
    weights = load_full_model_state_dict(run_dir / "checkpoints" / "step-3")
    assert all(torch.equal(weights[k], v) for k, v in expected[3][0].items())
    assert mgr.best_step == 2


def _load_on_two_ranks(run_dir: str, expected_file: str) -> None:
    rank = dist.get_rank()
    expected = torch.load(expected_file, weights_only=False)
    model = _model(5, shard=True)
    opt = _optimizer(model)
    torch.manual_seed(1000 + rank)
    assert CheckpointManager(run_dir, states=_states(model, opt), interval=1).load() == 2
    draws = torch.rand(3)
    if rank == 0:
        assert torch.equal(draws, expected["draws"])  # the saved single-process RNG
    else:
        # No rank_1 entry in a 1-process checkpoint: this rank keeps its own seed.
        assert torch.equal(draws, torch.rand(3, generator=torch.Generator().manual_seed(1001)))
    at_2 = _full(model, opt)
    _train_step(model, opt, 3)
    at_3 = _full(model, opt)
    if rank == 0:
        _assert_same(at_2, expected[2], exact=True)
        _assert_same(at_3, expected[3], exact=False)  # sharded step: float reduction order


def test_save_in_one_process_load_on_two_fsdp_ranks(tmp_path):
    run_dir, expected_file = tmp_path / "run", tmp_path / "expected.pt"
    model = _model(0, shard=False)
    opt = _optimizer(model)
    for step in (1, 2):
        _train_step(model, opt, step)
    torch.manual_seed(42)
    CheckpointManager(run_dir, states=_states(model, opt), interval=1).save(2)
    draws = torch.rand(3)
    at_2 = _full(model, opt)
    _train_step(model, opt, 3)
    torch.save({2: at_2, 3: _full(model, opt), "draws": draws}, expected_file)
    run_distributed_test(_load_on_two_ranks, 2, args=(str(run_dir), str(expected_file)))


@contextlib.contextmanager
def _before_write(hook: Callable[[Path], object]) -> Iterator[None]:
    """Call hook(path) each time DCP's storage layer opens a file for writing in this process."""
    original = FileSystem.create_stream

    @contextlib.contextmanager
    def create_stream(fs, path, mode):
        if "w" in mode:
            hook(Path(path))
        with original(fs, path, mode) as stream:
            yield stream

    FileSystem.create_stream = create_stream
    try:
        yield
    finally:
        FileSystem.create_stream = original


def _no_space(path: Path) -> None:
    if path.suffix == ".distcp":
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))


def _full_disk_on_rank_1(run_dir: str) -> None:
    rank = dist.get_rank()
    model = _model(0, shard=True)
    opt = _optimizer(model)
    _train_step(model, opt, 1)
    CheckpointManager(run_dir, states=_states(model, opt), interval=1).save(1, val_loss=2.0)
    at_1 = _full(model, opt)
    _train_step(model, opt, 2)
    ckpt_dir = Path(run_dir) / "checkpoints"
    for async_mode in ("disabled", "async"):
        mgr = CheckpointManager(
            run_dir, states=_states(model, opt), interval=1, async_mode=async_mode
        )
        with _before_write(_no_space) if rank == 1 else contextlib.nullcontext():
            with pytest.raises(
                CheckpointSaveError, match=r"rank 1: OSError: \[Errno 28\] No space"
            ):
                mgr.save(2, val_loss=1.0)
                mgr.wait()  # async: the write error surfaces here, on every rank
        assert mgr.best_step == 1
        dist.barrier()
        assert sorted(p.name for p in ckpt_dir.iterdir()) == ["best.json", "step-1"]
    fresh = _model(9, shard=True)
    fresh_opt = _optimizer(fresh)
    assert CheckpointManager(run_dir, states=_states(fresh, fresh_opt), interval=1).load() == 1
    loaded = _full(fresh, fresh_opt)
    if rank == 0:
        _assert_same(loaded, at_1, exact=True)


def test_full_disk_on_one_rank_fails_every_rank_and_keeps_the_previous(tmp_path):
    run_distributed_test(_full_disk_on_rank_1, 2, args=(str(tmp_path),))
