"""Loss parallel's cross-entropy on vocabulary shards against F.cross_entropy on the whole
logits: the value and every rank's slice of the gradient, with padding columns, on 2 and 4
gloo ranks, in fp32 and bf16."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import DTensor, Shard

from torchgpt.step.vocab_parallel import vocab_parallel_cross_entropy_sum
from torchgpt.testing import run_distributed_test

B, T, VOCAB, PADDED = 3, 5, 61, 64  # 3 padding columns, all in the last slice


def _check(dtype_names: tuple[str, ...]) -> None:
    rank, world = dist.get_rank(), dist.get_world_size()
    mesh = init_device_mesh("cpu", (world,), mesh_dim_names=("tp",))
    for name in dtype_names:
        _check_dtype(getattr(torch, name), mesh, rank, world)


def _check_dtype(dtype: torch.dtype, mesh, rank: int, world: int) -> None:
    gen = torch.Generator().manual_seed(0)
    full = (3 * torch.randn(B, T, PADDED, generator=gen)).to(dtype)
    targets = torch.randint(0, VOCAB, (B, T), generator=gen)
    targets[0, 0], targets[0, 1] = 0, VOCAB - 1  # the first and last real columns

    ref_logits = full.clone().requires_grad_(True)
    ref = F.cross_entropy(
        ref_logits[..., :VOCAB].flatten(0, 1).float(), targets.flatten(), reduction="sum"
    )
    ref.backward()

    mine = full.chunk(world, dim=-1)[rank].clone().requires_grad_(True)
    logits = DTensor.from_local(mine, mesh, [Shard(2)], run_check=False)
    loss = vocab_parallel_cross_entropy_sum(logits, targets, VOCAB)
    loss.backward()

    assert not isinstance(loss, DTensor) and loss.dtype == torch.float32
    torch.testing.assert_close(loss, ref, rtol=1e-6, atol=0)
    assert mine.grad.dtype == dtype
    expected = ref_logits.grad.chunk(world, dim=-1)[rank]
    tol = 1e-6 if dtype == torch.float32 else 8e-3  # bf16: the gradient's own rounding
    torch.testing.assert_close(mine.grad.float(), expected.float(), rtol=tol, atol=tol)
    if rank == world - 1:
        assert torch.all(mine.grad[..., VOCAB - rank * PADDED // world :] == 0)  # padding


@pytest.mark.parametrize("world_size,dtypes", [(2, ("float32", "bfloat16")), (4, ("float32",))])
def test_vocab_parallel_loss_equals_the_whole_cross_entropy(world_size: int, dtypes) -> None:
    run_distributed_test(_check, world_size=world_size, args=(dtypes,))
