"""parallelize_gpt(): every distributed and performance decision applied to a plain GPT.

Order matters and follows TorchTitan: tensor parallelism first (its plan names the plain
modules), then activation checkpointing wraps each block (so the recomputed region is the
block), then torch.compile compiles the (wrapped) block (so the graph includes the checkpoint
policy), then FSDP2 shards the compiled blocks and finally the root over the data-parallel
mesh (so all-gathers are issued per block, overlapping the previous block's compute).
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
from torch.distributed.tensor import DTensor, Replicate, Shard, distribute_module
from torch.distributed.tensor.parallel import (
    ColwiseParallel,
    ParallelStyle,
    PrepareModuleInput,
    RowwiseParallel,
    SequenceParallel,
    parallelize_module,
)
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


def apply_tp(
    model: nn.Module, tp_mesh: DeviceMesh, *, async_tp: bool = False, loss_parallel: bool = True
) -> None:
    """Tensor + sequence parallelism over `tp_mesh` (Megatron-LM, TorchTitan's plan).

    The residual stream between blocks is sharded along the sequence (Shard(1)): the norms
    run on sequence shards (SequenceParallel); each attention / MLP gathers its input
    (Replicate), runs its first matmuls column-wise (qkv, fc, gate: each rank a slice of the
    heads / hidden units, which the model reads from the tensor, not from its args) and its
    projection row-wise, reduce-scattering back to sequence shards. The token (and learned
    position) embeddings are row-wise with sequence-sharded outputs; the lm-head gathers the
    sequence and returns replicated logits, so the loss is computed as on one device, or with
    `loss_parallel` keeps them split over the vocabulary for the training loss (the padded
    logits the step asks for: torchgpt.step.vocab_parallel) and gathers them
    for every other caller. The model code knows no mesh: everything is module plans and
    DTensor parameters.

    `async_tp` (CUDA, with torch.compile): inductor's micro-pipelined TP, which overlaps each
    all-gather / reduce-scatter with its matmul through symmetric memory. Never run here (no
    GPU); on another device it is refused.
    """
    a = model.args
    tp = tp_mesh.size()
    for name, value, what in [
        ("n_heads", a.n_heads, "attention heads"),
        ("hidden_dim", a.hidden_dim, "MLP hidden units"),
        ("padded_vocab_size", a.padded_vocab_size, "lm-head rows"),
    ]:
        if value % tp:
            raise ValueError(f"parallelism.tp={tp} must divide the model's {what} ({name}={value})")
    if a.qkv_layout != "per_head":
        raise ValueError("parallelism.tp > 1 needs model.qkv_layout = 'per_head'")
    seq = Shard(1)
    root_plan = {
        "tok_embeddings": _SyncRowwiseParallel(input_layouts=Replicate(), output_layouts=seq),
        "norm": SequenceParallel(),
        "output": ColwiseParallel(
            input_layouts=seq,
            output_layouts=Shard(-1) if loss_parallel else Replicate(),
            use_local_output=not loss_parallel,
        ),
    }
    if model.pos_embeddings is not None:  # (T,) positions -> (T, d): shard T, dim 0
        root_plan["pos_embeddings"] = RowwiseParallel(
            input_layouts=Replicate(), output_layouts=Shard(0)
        )
    tied = a.tie_embeddings
    parallelize_module(model, tp_mesh, root_plan)
    if loss_parallel:
        model.register_forward_hook(_local_logits_unless_padded, with_kwargs=True)
    if tied:  # both plans shard the (V, d) matrix by rows: one parameter again
        model.output.weight = model.tok_embeddings.weight
    for block in model.layers:
        plan = {
            "attn_norm": SequenceParallel(),
            "attn": PrepareModuleInput(  # (x, rope cos, sin, cache, start, mask, ve)
                input_layouts=(seq, *[None] * 6),
                desired_input_layouts=(Replicate(), *[None] * 6),
            ),
            "attn.qkv": ColwiseParallel(),
            "attn.proj": RowwiseParallel(output_layouts=seq),
            "mlp_norm": SequenceParallel(),
            "mlp": PrepareModuleInput(input_layouts=(seq,), desired_input_layouts=(Replicate(),)),
            "mlp.fc": ColwiseParallel(),
            "mlp.proj": RowwiseParallel(output_layouts=seq),
        }
        if block.mlp.gate is not None:
            plan["mlp.gate"] = ColwiseParallel()
        if block.attn.q_norm is not None:  # per-head norms: replicated weights, local heads
            plan["attn.q_norm"] = _head_sharded_norm()
            plan["attn.k_norm"] = _head_sharded_norm()
        parallelize_module(block, tp_mesh, plan)
    if async_tp:
        if tp_mesh.device_type != "cuda":
            raise ValueError(
                f"parallelism.tp_async needs CUDA (this mesh is on {tp_mesh.device_type})"
            )
        from torch._inductor import config as inductor_config
        from torch.distributed._symmetric_memory import enable_symm_mem_for_group

        inductor_config._micro_pipeline_tp = True
        enable_symm_mem_for_group(tp_mesh.get_group().group_name)
        logger.warning("parallelism.tp_async: on (untested in this project: no GPU here)")
    logger.info("applied tensor + sequence parallelism (tp=%d)", tp)


class _SyncRowwiseParallel(RowwiseParallel):
    """RowwiseParallel whose output reduce-scatter completes before the module returns.

    torch's RowwiseParallel leaves it asynchronous (an AsyncCollectiveTensor, waited on at its
    first use). The token embedding's output is the first block's input: with a compiled block
    (the modern flavors, which have no position table to add first) the compiled backward
    returned a plain gradient for it and torch 2.13's Redistribute.backward failed on it
    ('Tensor' object has no attribute '_local_tensor'). The next op needs the result at once,
    so waiting here costs no overlap."""

    @staticmethod
    def _prepare_output_fn(output_layouts, use_local_output, mod, outputs, device_mesh):
        if outputs.placements != output_layouts:
            outputs = outputs.redistribute(placements=output_layouts, async_op=False)
        return outputs.to_local() if use_local_output else outputs


def _local_logits_unless_padded(module, args, kwargs, output):
    """Loss parallel: the training step's padded logits stay vocabulary-sharded DTensors; every
    other call (validation, evaluation, sampling) slices the real vocabulary, which gathers
    it, and gets a plain tensor, as without tensor parallelism."""
    if isinstance(output, DTensor) and not kwargs.get("padded_vocab", False):
        return output.full_tensor()
    return output


def reduce_partial_grads(model: nn.Module) -> None:
    """Sum the gradients still held as partial sums over the tensor-parallel ranks (those of
    replicated weights under sequence parallelism: norms, row-wise biases) into Replicate ones,
    once per step after the backward, so that clipping, statistics and the optimizer all read
    whole gradients. torch 2.13's DTensor optimizer step would sum them itself; 2.11's fused
    AdamW stepped each rank with its own partial sum (the norm weights' moments came out ~5x
    off; tests/distributed/test_tp.py)."""
    for p in model.parameters():
        g = p.grad
        if isinstance(g, DTensor) and any(pl.is_partial() for pl in g.placements):
            placements = [Replicate() if pl.is_partial() else pl for pl in g.placements]
            p.grad = g.redistribute(g.device_mesh, placements)


def _head_sharded_norm():
    """A plan entry for a per-head norm inside attention (qk-norm): its weight a Replicate
    DTensor, its input (B, local heads, T, hs) read as Shard(1) of all heads, so the weight's
    gradient sums over every rank's heads; the output goes back to a local tensor."""

    class _HeadShardedNorm(ParallelStyle):
        def _apply(self, module: nn.Module, device_mesh: DeviceMesh) -> nn.Module:
            def inputs(mod, args, mesh):
                return (DTensor.from_local(args[0], mesh, [Shard(1)], run_check=False),)

            def outputs(mod, out, mesh):
                return out.to_local()

            return distribute_module(module, device_mesh, input_fn=inputs, output_fn=outputs)

    return _HeadShardedNorm()


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
    if dims.tp_enabled:
        if any(p.device != device for p in model.parameters()):
            model.to(device)  # DTensors are made on the mesh's device
        tp_mesh = dims.submeshes(mesh)["tp"]
        apply_tp(model, tp_mesh, async_tp=dims.tp_async, loss_parallel=dims.loss_parallel)
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
