"""Per-block statistics at log steps (`metrics.layer_stats`): where a run's gradients, weights,
updates and activations grow or die, block by block.

For each transformer block: the gradient norm before clipping, the weight norm, the update /
weight norm ratio (the step's relative change; ~1e-3 is healthy for AdamW), and the RMS of the
residual stream after the block (the model's `residual_ms`, averaged over the step's
micro-batches). Norms are global whatever the layout: each rank sums the squares of its local
shards, and one all-reduce per sharded mesh dimension adds them up (replicated dimensions
already agree), so FSDP2, HSDP, DDP and one process report the same numbers. Only log steps
pay: one copy of the blocks' local parameters for the update, a few small all-reduces, and one
host read when the record is written.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.distributed.tensor import DTensor

STATS = ("grad_norm", "weight_norm", "update_ratio", "act_rms")


def _local(t: Tensor) -> Tensor:
    return t.to_local() if isinstance(t, DTensor) else t


def _sharded_dims(p: Tensor) -> tuple[int, ...]:
    """The mesh dimensions over which a parameter's shards must be summed (under TP a block
    holds both sharded matrices and replicated norm weights)."""
    if not isinstance(p, DTensor):
        return ()
    # Any split placement (Shard, or the strided shard FSDP2 puts over a tensor-parallel
    # shard's rows) sums over its dimension; only Replicate does not.
    return tuple(dim for dim, pl in enumerate(p.placements) if not pl.is_replicate())


class LayerStats:
    """Collects the four statistics of every block during one log step.

    Args:
        model: The parallelized model (a GPT, or DDP around one); its `layers` are the blocks.
        enabled: metrics.layer_stats; when False `start` always returns None.
        batch_group: The process group the batch is split over (the residual RMS's mean).
    """

    def __init__(
        self, model: nn.Module, *, enabled: bool, batch_group: dist.ProcessGroup | None
    ) -> None:
        self.enabled = enabled
        self.root = getattr(model, "module", model)  # DDP wraps; FSDP2 and compile do not
        self.blocks = [list(block.parameters()) for block in self.root.layers]
        first = self.blocks[0][0]
        self.mesh = first.device_mesh if isinstance(first, DTensor) else None
        self.dims = [[_sharded_dims(p) for p in ps] for ps in self.blocks]
        self.batch_group = batch_group
        self._values: dict[str, Tensor] = {}
        self._before: list[list[Tensor]] | None = None

    def start(self, is_log_step: bool) -> LayerStats | None:
        """Before the step's forward: collect during this step if it is a log step."""
        if not (self.enabled and is_log_step):
            return None
        self._values, self._before = {}, None
        self.root.residual_ms = []
        return self

    def _norms(self, per_block: list[list[Tensor]]) -> Tensor:
        """(n_blocks,) global L2 norms of each block's tensors (local shards summed)."""
        device = per_block[0][0].device
        by_dims: dict[tuple[int, ...], Tensor] = {}
        for i, (ts, dims) in enumerate(zip(per_block, self.dims, strict=True)):
            for t, d in zip(ts, dims, strict=True):
                if d not in by_dims:
                    by_dims[d] = torch.zeros(len(per_block), device=device)
                by_dims[d][i] += t.float().pow(2).sum()
        total = torch.zeros(len(per_block), device=device)
        for dims, squares in by_dims.items():
            for dim in dims:  # one all-reduce per sharded mesh dimension of this kind
                dist.all_reduce(squares, group=self.mesh.get_group(dim))
            total += squares
        return total.sqrt()

    def gradients(self) -> None:
        """After the backward, before clipping: gradient norms and the residual RMS (under TP
        the backward has summed the replicated weights' partial gradients already:
        parallelize.reduce_partial_grads)."""
        ms = torch.stack(self.root.residual_ms).view(-1, len(self.blocks)).mean(0)
        self.root.residual_ms = None
        if dist.is_initialized() and dist.get_world_size(self.batch_group) > 1:
            dist.all_reduce(ms, group=self.batch_group)
            ms /= dist.get_world_size(self.batch_group)
        self._values["act_rms"] = ms.sqrt()
        grads = [
            [_local(p.grad) if p.grad is not None else _local(p).new_zeros(()) for p in ps]
            for ps in self.blocks
        ]
        self._values["grad_norm"] = self._norms(grads)

    def weights(self) -> None:
        """Before the optimizer step: weight norms, and a copy of the weights for the update."""
        self._before = [[_local(p).detach().clone() for p in ps] for ps in self.blocks]
        self._values["weight_norm"] = self._norms(self._before)

    def updates(self) -> None:
        """After the optimizer step: ||new - old|| / ||old|| per block."""
        assert self._before is not None, "weights() first"
        deltas = [
            [_local(p).detach() - old for p, old in zip(ps, olds, strict=True)]
            for ps, olds in zip(self.blocks, self._before, strict=True)
        ]
        self._before = None
        self._values["update_ratio"] = self._norms(deltas) / self._values["weight_norm"]

    def record(self) -> dict[str, float]:
        """The collected statistics as record keys (one host read), then cleared."""
        names = [k for k in STATS if k in self._values]
        if not names:
            return {}
        rows = torch.stack([self._values[k] for k in names]).tolist()
        self._values = {}
        return {
            f"layer_{name}/{i:02d}": value
            for name, row in zip(names, rows, strict=True)
            for i, value in enumerate(row)
        }
