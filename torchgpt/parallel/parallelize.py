"""parallelize_gpt(): every distributed and performance decision applied to a plain GPT.

Order matters and follows TorchTitan: activation checkpointing wraps each block first (so the
recomputed region is the block), then torch.compile compiles the (wrapped) block (so the graph
includes the checkpoint policy), then FSDP2 shards the compiled blocks and finally the root (so
all-gathers are issued per block, overlapping the previous block's compute).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from typing import Literal

import torch
from torch import nn
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import (
    checkpoint_wrapper as ptd_checkpoint_wrapper,
)
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.nn.parallel import DistributedDataParallel
from torch.utils.checkpoint import CheckpointPolicy, create_selective_checkpoint_contexts

from torchgpt.parallel.dims import ParallelDims

logger = logging.getLogger(__name__)

# Ops whose outputs selective AC keeps (TorchTitan's list): matmuls and attention are the
# expensive ones to recompute; pointwise ops (norms, GELU, residual adds) are cheap to redo.
_aten = torch.ops.aten
_SAVE_LIST = {
    _aten.mm.default,
    _aten.addmm.default,
    _aten.bmm.default,
    _aten._scaled_dot_product_flash_attention.default,
    _aten._scaled_dot_product_efficient_attention.default,
    _aten._scaled_dot_product_flash_attention_for_cpu.default,
    _aten.max.default,
}
if hasattr(_aten, "_scaled_dot_product_cudnn_attention"):
    _SAVE_LIST.add(_aten._scaled_dot_product_cudnn_attention.default)


def _op_sac_policy():
    """Save matmul/attention outputs, but only every other mm (TorchTitan's memory/compute
    trade)."""
    meta: dict[str, int] = defaultdict(int)

    def policy(ctx, func, *args, **kwargs):
        mode = "recompute" if ctx.is_recompute else "forward"
        if func in (_aten.mm.default, _aten.addmm.default):
            meta[f"{mode}_mm_count"] += 1
        # Recompute every second mm output to cut memory further at a small compute cost.
        to_save = func in _SAVE_LIST and not (
            func in (_aten.mm.default, _aten.addmm.default) and meta[f"{mode}_mm_count"] % 2 == 0
        )
        return CheckpointPolicy.MUST_SAVE if to_save else CheckpointPolicy.PREFER_RECOMPUTE

    return policy


def apply_activation_checkpointing(
    model: nn.Module, mode: Literal["none", "full", "selective"], selective_option: str = "op"
) -> None:
    """Wrap blocks of `model.layers` in place: full, op-level selective, or every-Nth-block."""
    if mode == "none":
        return
    every_n = int(selective_option) if mode == "selective" and selective_option != "op" else 1
    for idx, block in enumerate(model.layers):
        if mode == "selective" and selective_option == "op":

            def context_fn():
                return create_selective_checkpoint_contexts(_op_sac_policy())

            wrapped = ptd_checkpoint_wrapper(block, context_fn=context_fn, preserve_rng_state=False)
        elif idx % every_n == 0:
            wrapped = ptd_checkpoint_wrapper(block, preserve_rng_state=False)
        else:
            continue
        model.layers[idx] = wrapped
    logger.info("applied %s activation checkpointing (%s)", mode, selective_option)


def apply_compile(model: nn.Module, whole_model: bool = False) -> None:
    """torch.compile in place (Module.compile keeps parameter names free of `_orig_mod`).

    Per block by default: blocks are identical, so one graph is compiled and reused, and FSDP2
    hooks stay outside the compiled region (fullgraph blocks, no graph breaks on collectives).
    """
    if whole_model:
        model.compile()
    else:
        for block in model.layers:
            block.compile(fullgraph=True)
    logger.info(
        "compiled the model with torch.compile (%s)", "whole" if whole_model else "per block"
    )


def apply_fsdp(
    model: nn.Module,
    mesh: DeviceMesh,
    *,
    param_dtype: torch.dtype,
    reshard_after_forward: Literal["default", "always", "never"] = "default",
) -> None:
    """FSDP2 fully_shard per block, then the root (embeddings, final norm, tied lm-head).

    bf16 params for compute and fp32 gradient reduction keep fp32 master weights in the
    optimizer (MixedPrecisionPolicy). With a 2-D (replicate, shard) mesh this is HSDP.
    """
    mp = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32)
    n = len(model.layers)
    for idx, block in enumerate(model.layers):
        if reshard_after_forward == "default":
            # The last block's params are needed again first in backward: keep them gathered.
            reshard = idx < n - 1
        else:
            reshard = reshard_after_forward == "always"
        fully_shard(block, mesh=mesh, mp_policy=mp, reshard_after_forward=reshard)
    fully_shard(
        model, mesh=mesh, mp_policy=mp, reshard_after_forward=reshard_after_forward != "never"
    )


def parallelize_gpt(
    model: nn.Module,
    dims: ParallelDims,
    mesh: DeviceMesh | None,
    *,
    device: torch.device,
    ac_mode: Literal["none", "full", "selective"] = "none",
    ac_selective_option: str = "op",
    compile_enable: bool = False,
    compile_whole_model: bool = False,
    param_dtype: torch.dtype = torch.float32,
    reshard_after_forward: Literal["default", "always", "never"] = "default",
) -> nn.Module:
    """AC -> compile -> FSDP2/HSDP or DDP, in that order. Returns the module to train.

    The model arrives materialized on CPU (see Trainer._build_model for why) and leaves on
    `device`. FSDP2 keeps the module itself (returned as is); DDP returns its wrapper.
    """
    apply_activation_checkpointing(model, ac_mode, ac_selective_option)
    if compile_enable:
        apply_compile(model, compile_whole_model)
    if dims.fsdp_enabled:
        fsdp_mesh = dims.wrapper_mesh(mesh)
        apply_fsdp(
            model, fsdp_mesh, param_dtype=param_dtype, reshard_after_forward=reshard_after_forward
        )
        logger.info(
            "applied %s (replicate=%d, shard=%d)",
            "HSDP" if dims.hsdp_enabled else "FSDP2",
            dims.dp_replicate,
            dims.dp_shard,
        )
        return model
    if any(p.device != device for p in model.parameters()):
        model.to(device)
    if dims.ddp_enabled:
        # Classic DDP: stable across the supported torch range (the composable `replicate`
        # API is still private and has changed between releases).
        pg = dims.wrapper_mesh(mesh).get_group() if mesh is not None else None
        model = DistributedDataParallel(model, process_group=pg, broadcast_buffers=False)
        logger.info("applied DDP over %d ranks", dims.world_size)
    return model
