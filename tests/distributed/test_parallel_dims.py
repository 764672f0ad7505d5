"""ParallelDims' named meshes: every data-parallel fact comes from the mesh of its role, and the
tensor-parallel axis exists with degree 1 (no mesh: it would hold one rank)."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from torchgpt.config.job_config import Parallelism
from torchgpt.parallel.dims import ParallelDims
from torchgpt.testing import run_distributed_test


def _par(rep: int, shard: int, kind: str = "fsdp") -> Parallelism:
    return Parallelism(
        dp_replicate=rep, dp_shard=shard, data_parallel=kind, collective_timeout_s=60.0
    )


def _check_roles(rep: int, shard: int, kind: str) -> None:
    world, rank = dist.get_world_size(), dist.get_rank()
    dims = ParallelDims.from_config(_par(rep, shard, kind), world)
    assert dims.tp == 1 and dims.mesh_for("tp") is None
    batch, loss = dims.mesh_for("batch"), dims.mesh_for("loss")
    assert batch.size() == loss.size() == dims.dp_degree == dims.loss_degree == world
    # The data-parallel rank is the batch mesh's coordinate (row-major over replicate, shard).
    coord = dims.mesh.get_coordinate()
    expected = coord[0] * dims.dp_shard + coord[1] if dims.hsdp_enabled else coord[0]
    assert dims.dp_rank == expected == batch.get_local_rank()
    wrapper = dims.mesh_for("fsdp" if dims.fsdp_enabled else "ddp")
    assert wrapper.ndim == (2 if dims.hsdp_enabled else 1)
    assert wrapper.mesh_dim_names == (
        ("dp_replicate", "dp_shard")
        if dims.hsdp_enabled
        else ("dp_shard",)
        if dims.fsdp_enabled
        else ("dp_replicate",)
    )
    # The loss group sums every data-parallel rank's share once.
    total = torch.tensor([float(rank + 1)])
    dist.all_reduce(total, group=dims.loss_group())
    assert total.item() == world * (world + 1) / 2


@pytest.mark.parametrize(
    "world_size,rep,shard,kind",
    [(2, 1, -1, "fsdp"), (2, 1, 1, "ddp"), (4, 2, 2, "fsdp")],
    ids=["fsdp2", "ddp2", "hsdp2x2"],
)
def test_meshes_by_role(world_size, rep, shard, kind):
    run_distributed_test(_check_roles, world_size=world_size, args=(rep, shard, kind))


def test_one_process_has_no_mesh_and_degrees_of_one():
    dims = ParallelDims(1, 1, 1)
    assert dims.mesh_for("batch") is None and dims.loss_group() is None
    assert (dims.dp_rank, dims.dp_degree, dims.loss_degree, dims.tp) == (0, 1, 1, 1)
    with pytest.raises(ValueError, match=r"x tp\(2\) != world_size\(2\)"):
        ParallelDims(1, 2, 2, tp=2)
