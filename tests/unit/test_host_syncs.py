"""A training step that never waits on the device between log steps (issues #16 and #22).

On a GPU every host sync (`.item()`, `.tolist()`, `bool()`/`int()`/`float()` of a tensor, a
copy to the CPU, `torch.cuda.synchronize`) stalls the queue that FSDP prefetch and
non-blocking copies rely on, and so does every blocking host-to-device copy: a tensor made
from a Python value on the device (`torch.tensor(x, device=...)`; the batches' own copies are
non_blocking from pinned memory). The step's own sync is one `.tolist()` of (loss, preemption
flag, grad norm); the timer reads CUDA events only at log steps. Counted here on CPU, where the
same calls would be syncs or copies on CUDA, for one and four micro-batches per step.
"""

from __future__ import annotations

import pytest
import torch
from torch.overrides import TorchFunctionMode

from tests.trainer_utils import BASE
from torchgpt.config.manager import load_config
from torchgpt.train import Trainer

SYNCS = {"item", "tolist", "__bool__", "__int__", "__float__", "__index__", "numpy", "cpu"}
# Tensors made from host data: on CUDA with a device argument, a blocking host-to-device copy.
FROM_HOST = {"tensor", "as_tensor", "asarray", "from_numpy"}


class HostSyncCounter(TorchFunctionMode):
    """Records every tensor-to-host read and every tensor made from host data while active (on
    CPU the copies cost nothing, but they are the same calls on CUDA)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name in SYNCS or name in FROM_HOST:
            self.calls.append(name)
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("grad_accum", [1, 4])
def test_a_step_syncs_with_the_host_at_most_twice(token_shards, tmp_path, monkeypatch, grad_accum):
    tokens = 2 * 64 * grad_accum  # micro-batch 2 x seq 64 per micro-step, one rank
    cfg = load_config(
        None,
        BASE
        + ["--data.dataset_path", str(token_shards), "--job.dump_folder", str(tmp_path)]
        + ["--training.global_batch_tokens", str(tokens), "--training.mixed_precision", "bf16"],
        world_size=1,
    )
    trainer = Trainer(cfg)
    assert trainer.grad_accum == grad_accum
    synchronize = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a, **k: synchronize.append(1))
    trainer.train_step()  # the first step creates the optimizer state
    with HostSyncCounter() as counter:
        for _ in range(3):
            trainer.train_step()
    trainer.close()
    assert len(counter.calls) + len(synchronize) <= 2 * 3, counter.calls
    assert counter.calls == ["tolist"] * 3  # exactly the step's own read, once per step


def test_the_counter_sees_a_tensor_made_from_a_python_value_in_the_step(
    token_shards, tmp_path, monkeypatch
):
    """The check above would fail on the flag the step used to build every step with
    torch.tensor(float(flag), device=...)."""
    cfg = load_config(
        None,
        BASE + ["--data.dataset_path", str(token_shards), "--job.dump_folder", str(tmp_path)],
        world_size=1,
    )
    trainer = Trainer(cfg)
    trainer.train_step()  # the first step creates the optimizer state
    clip = trainer.module.clip_grad_norm

    def clip_and_copy():
        torch.tensor(float(trainer.preemption.requested), device=trainer.device)
        return clip()

    monkeypatch.setattr(trainer.module, "clip_grad_norm", clip_and_copy)
    with HostSyncCounter() as counter:
        trainer.train_step()
    trainer.close()
    assert counter.calls == ["tensor", "tolist"]


def test_a_preemption_request_reaches_the_flag_without_a_copy(token_shards, tmp_path):
    cfg = load_config(
        None,
        BASE + ["--data.dataset_path", str(token_shards), "--job.dump_folder", str(tmp_path)],
        world_size=1,
    )
    trainer = Trainer(cfg)
    trainer.train_step()
    assert not trainer.stop.agreed
    trainer.preemption.requested = True
    with HostSyncCounter() as counter:
        trainer.train_step()
        trainer.train_step()
    trainer.close()
    assert trainer.stop.agreed and counter.calls == ["tolist"] * 2
