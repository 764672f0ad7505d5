"""ParallelDims: the single source of truth for the parallel degrees, ranks and device meshes.

dp_replicate x dp_shard x tp must equal the world size. dp_shard > 1 with dp_replicate > 1 is
HSDP, dp_shard > 1 alone is FSDP2, and dp_replicate > 1 alone is plain replication (DDP).
tp > 1 adds tensor parallelism inside each data-parallel rank (the innermost axis, so its
ranks are neighbours: one node's GPUs); its ranks share their batch.

As in TorchTitan, the world mesh holds only the axes of degree > 1 (named dp_replicate,
dp_shard, tp), and callers ask for a mesh by what it is for, never by rank arithmetic:
`mesh_for("batch")` (the ranks that split the batch: data loading, the data-parallel rank and
degree), `mesh_for("loss")` (the ranks whose losses are averaged), `mesh_for("fsdp")` /
`mesh_for("ddp")` (what the data-parallel wrapper shards or replicates over) and
`mesh_for("tp")`. Each is None where it would hold one rank. What every rank must agree on
each step (the loss and the stop flag) is reduced over `step_group()`: the loss mesh, or the
whole world when tp > 1 (tp ranks hold the same loss, so the world's mean is the batch's).
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Literal

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh

MeshRole = Literal["batch", "loss", "fsdp", "ddp", "tp"]


@dataclass(frozen=True)
class ParallelDims:
    dp_replicate: int
    dp_shard: int
    world_size: int
    data_parallel: str = "fsdp"
    tp: int = 1
    tp_async: bool = field(default=False, compare=False)
    loss_parallel: bool = field(default=True, compare=False)
    collective_timeout_s: float | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.dp_replicate * self.dp_shard * self.tp != self.world_size:
            raise ValueError(
                f"parallelism: dp_replicate({self.dp_replicate}) x dp_shard({self.dp_shard}) x "
                f"tp({self.tp}) != world_size({self.world_size})"
            )

    @classmethod
    def from_config(cls, par, world_size: int) -> ParallelDims:
        """Resolve -1 degrees against world_size and check the product; ValueError lists factors."""
        rep, shard, tp = par.dp_replicate, par.dp_shard, par.tp
        if tp < 1 or world_size % tp != 0:
            raise ValueError(f"parallelism.tp={tp} must be >= 1 and divide world_size={world_size}")
        if tp > 1 and par.data_parallel == "ddp":
            raise ValueError(
                "parallelism: tp > 1 composes with FSDP2 / HSDP (data_parallel = 'fsdp'), "
                "not with DDP"
            )
        world_size //= tp  # the data-parallel ranks
        if par.data_parallel == "ddp":
            # DDP replicates over every rank: a shard degree other than 1 / -1 is a contradiction.
            if shard not in (-1, 1) or rep not in (1, world_size):
                raise ValueError(
                    f"parallelism: data_parallel='ddp' replicates over all {world_size} ranks; "
                    f"set dp_shard=1 (or -1) and dp_replicate={world_size} (or 1), "
                    f"got dp_replicate={rep}, dp_shard={shard}"
                )
            rep, shard = world_size, 1
        elif shard == -1:
            if world_size % rep != 0:
                raise ValueError(
                    f"parallelism: dp_replicate={rep} does not divide world_size={world_size}"
                )
            shard = world_size // rep
        if rep * shard != world_size:
            raise ValueError(
                f"parallelism: dp_replicate({rep}) x dp_shard({shard}) = {rep * shard} "
                f"!= world_size({world_size}); make the product equal the number of processes"
            )
        if tp > 1 and rep > 1 and shard == 1:
            raise ValueError(
                f"parallelism: dp_replicate={rep} with tp={tp} needs dp_shard > 1 (HSDP x TP); "
                "replication alone would be DDP, which does not compose with tp"
            )
        return cls(
            rep,
            shard,
            world_size * tp,
            par.data_parallel,
            tp=tp,
            tp_async=par.tp_async,
            loss_parallel=par.loss_parallel,
            collective_timeout_s=par.collective_timeout_s,
        )

    @property
    def dp_degree(self) -> int:
        """How many ranks split the batch: dp_replicate x dp_shard, the batch mesh's size (not
        the world size: tensor-parallel ranks share their batch). Known without a process
        group, so the estimator plans layouts with it."""
        return self.dp_replicate * self.dp_shard

    @property
    def fsdp_enabled(self) -> bool:
        return self.data_parallel == "fsdp" and self.dp_shard > 1

    @property
    def hsdp_enabled(self) -> bool:
        return self.fsdp_enabled and self.dp_replicate > 1

    @property
    def ddp_enabled(self) -> bool:
        return self.dp_replicate > 1 and not self.fsdp_enabled

    @property
    def tp_enabled(self) -> bool:
        return self.tp > 1

    def step_group(self) -> dist.ProcessGroup | None:
        """What the step's loss and stop flag are summed over: the loss group, or (tp > 1) the
        whole world (None), so that a stop request reaches the tp peers too."""
        return None if self.tp_enabled else self.loss_group()

    @property
    def step_degree(self) -> int:
        """How many ranks' copies step_group() sums (world size when tp > 1)."""
        return self.world_size if self.tp_enabled else self.loss_degree

    @property
    def dp_rank(self) -> int:
        """This process's index among the ranks that split the batch (its batch-mesh rank)."""
        batch = self.mesh_for("batch")
        return batch.get_local_rank() if batch is not None else 0

    @property
    def loss_degree(self) -> int:
        """How many ranks' losses make one step's mean (the loss mesh's size)."""
        loss = self.mesh_for("loss")
        return loss.size() if loss is not None else 1

    def loss_group(self) -> dist.ProcessGroup | None:
        """The process group the step's loss is summed over (None: one process)."""
        loss = self.mesh_for("loss")
        return loss.get_group() if loss is not None else None

    @functools.cached_property
    def mesh(self) -> DeviceMesh | None:
        """The world mesh of this layout on this machine's device type, built on first use."""
        return self.build_mesh(device_type())

    def mesh_for(self, role: MeshRole) -> DeviceMesh | None:
        """This job's (sub)mesh for `role`, None where it would hold a single rank.

        batch / loss: every data-parallel rank (dp_replicate x dp_shard; flattened under
        HSDP); fsdp: what FSDP2 shards over (2-D (replicate, shard) under HSDP); ddp: the
        replicas; tp: the tensor-parallel ranks (none while tp = 1).
        """
        return self._meshes.get(role)

    @functools.cached_property
    def _meshes(self) -> dict[str, DeviceMesh]:
        return self.submeshes(self.mesh)

    def submeshes(self, world: DeviceMesh | None) -> dict[str, DeviceMesh]:
        """The role -> submesh map of a world mesh from `build_mesh`; empty on one process."""
        if world is None:
            return {}
        meshes = {}
        if self.dp_degree > 1:
            wrapper = self.wrapper_mesh(world)
            meshes["fsdp" if self.fsdp_enabled else "ddp"] = wrapper
            # Under HSDP the batch spans both axes: one flattened group (made on first use).
            dp = wrapper._flatten("dp") if self.hsdp_enabled else wrapper
            meshes["batch"] = meshes["loss"] = dp
        if "tp" in (world.mesh_dim_names or ()):
            meshes["tp"] = world["tp"]
        return meshes

    def wrapper_mesh(self, world: DeviceMesh) -> DeviceMesh:
        """What FSDP2 shards over ((dp_replicate, dp_shard) under HSDP, dp_shard otherwise) or
        DDP replicates over (dp_replicate), sliced out of a world mesh (the estimator passes
        one it built on CPU)."""
        if self.hsdp_enabled:
            return world["dp_replicate", "dp_shard"]
        return world["dp_shard" if self.fsdp_enabled else "dp_replicate"]

    def build_mesh(self, device_type: str) -> DeviceMesh | None:
        """The world mesh over the axes of degree > 1, in the order dp_replicate, dp_shard, tp:
        dp_shard (FSDP2) or dp_replicate (DDP) alone, (dp_replicate, dp_shard) for HSDP, and tp
        last (2-D dp x tp, 3-D replicate x shard x tp); None on one process."""
        if self.world_size == 1:
            return None
        axes = [
            (name, degree)
            for name, degree in (
                ("dp_replicate", self.dp_replicate),
                ("dp_shard", self.dp_shard),
                ("tp", self.tp),
            )
            if degree > 1
        ]
        if len(axes) == 1:
            return init_device_mesh(device_type, (self.world_size,), mesh_dim_names=(axes[0][0],))
        # A mesh of several axes makes its own subgroups: without options they would get
        # torch's default timeout (30 min gloo, 10 min NCCL), not collective_timeout_s.
        options = _timeout_options(self.collective_timeout_s)
        return init_device_mesh(
            device_type,
            tuple(d for _, d in axes),
            mesh_dim_names=tuple(n for n, _ in axes),
            backend_override={i: options for i in range(len(axes))} if options else None,
        )


def _timeout_options(timeout_s: float | None) -> tuple[str, object] | None:
    """(backend, options) that give a mesh subgroup the job's collective timeout."""
    if timeout_s is None or not dist.is_initialized():
        return None
    backend = dist.get_backend()
    if backend == "gloo":
        options = dist.ProcessGroupGloo._Options()
    elif backend == "nccl":
        options = dist.ProcessGroupNCCL.Options()
    else:
        return None
    options._timeout = timedelta(seconds=timeout_s)
    return backend, options


def init_distributed(timeout_s: float) -> None:
    """Join the process group torchrun describes (WORLD_SIZE > 1), with a collective timeout.

    On CUDA the device is set from LOCAL_RANK first and passed as device_id (NCCL binds its
    communicator to it eagerly); on CPU it is gloo. A collective that waits longer than
    `timeout_s` for a stalled or dead peer raises on every waiting rank instead of hanging.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return
    timeout = timedelta(seconds=timeout_s)
    if device_type() == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", device_id=device, timeout=timeout)
    else:
        dist.init_process_group("gloo", timeout=timeout)


def device_type() -> str:
    """cuda when a GPU is visible, else cpu: the whole stack picks its backend from this."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def local_device() -> torch.device:
    """This process's device: cuda:LOCAL_RANK (made current) when a GPU is visible, else cpu."""
    if device_type() != "cuda":
        return torch.device("cpu")
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    torch.cuda.set_device(device)
    return device
