"""What parallelism.tp > 1 refuses at config time, and the degrees ParallelDims resolves."""

from __future__ import annotations

import pytest

from torchgpt.config.job_config import ConfigError
from torchgpt.config.manager import load_config
from torchgpt.parallel.dims import ParallelDims

TP = ["--parallelism.tp", "2", "--model.qkv_layout", "per_head", "--training.micro_batch_size", "8"]
TP += ["--activation_checkpoint.mode", "selective"]


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--model.qkv_layout", "grouped"], "needs model.qkv_layout = 'per_head'"),
        (["--optimizer.name", "muon"], "Muon's orthogonalisation needs each whole matrix"),
        (["--compile.enable", "true", "--compile.whole_model", "true"], "per-block compile is"),
        (["--model.flavor", "gpt2-1558m"], r"divide the model's attention heads \(n_heads=25\)"),
        (["--parallelism.tp_async", "true"], "tp_async works through torch.compile"),
        (["--model.unet_skips", "true"], "model.unet_skips with parallelism.tp > 1"),
        (["--model.value_embeds", "1"], "model.value_embeds with parallelism.tp > 1"),
        (["--model.tie_embeddings", "false"], "the token table's gradient comes out whole"),
    ],
)
def test_combinations_tp_cannot_run_yet_are_refused_by_name(extra, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, TP + extra, world_size=4)


@pytest.mark.parametrize(
    "world,extra,message",
    [
        (3, [], "parallelism.tp=2 must be >= 1 and divide world_size=3"),
        (4, ["--parallelism.data_parallel", "ddp"], "not with DDP"),
        (4, ["--parallelism.dp_replicate", "2", "--parallelism.dp_shard", "1"], "HSDP x TP"),
    ],
)
def test_layouts_that_do_not_compose_are_refused(world, extra, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, TP + extra, world_size=world)


def test_the_degrees_resolve_around_tp():
    cfg = load_config(None, TP, world_size=8)
    dims = ParallelDims.from_config(cfg.parallelism, 8)
    assert (dims.dp_replicate, dims.dp_shard, dims.tp, dims.dp_degree) == (1, 4, 2, 4)
    cfg = load_config(None, TP + ["--parallelism.dp_replicate", "2"], world_size=8)
    dims = ParallelDims.from_config(cfg.parallelism, 8)
    assert (dims.dp_replicate, dims.dp_shard, dims.hsdp_enabled) == (2, 2, True)
    assert dims.step_degree == 8 and not dims.ddp_enabled
    tp_only = ParallelDims.from_config(load_config(None, TP, world_size=2).parallelism, 2)
    assert tp_only.dp_degree == 1 and not tp_only.fsdp_enabled and not tp_only.ddp_enabled
