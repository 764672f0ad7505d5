"""Every rank sizes "auto" for the smallest device of the job (mixed GPUs agree on a layout)."""

import torch
import torch.distributed as dist

from torchgpt.config.manager import load_config
from torchgpt.testing import run_distributed_test
from torchgpt.training import sizing

AUTO = ["--training.micro_batch_size=auto", "--activation_checkpoint.mode=auto"]


def _ranks_see_different_memory() -> None:
    rank = dist.get_rank()
    sizing.device_memory_gib = lambda device_type, index=0: [80.0, 24.0][rank]
    assert sizing.smallest_device_memory_gib(torch.device("cpu")) == 24.0
    cfg = load_config("train_configs/mini_gpt_100m.toml", AUTO, world_size=2)
    chosen = sizing.resolve_auto_sizing(cfg, torch.device("cpu"), 2)
    assert chosen.device_memory_gib == 24.0
    both = [None, None]
    dist.all_gather_object(both, (cfg.training.micro_batch_size, cfg.activation_checkpoint.mode))
    assert both[0] == both[1] == (32, "none"), both  # as test_autosize at 24 GiB


def test_auto_sizing_uses_the_smallest_device_of_the_job():
    run_distributed_test(_ranks_see_different_memory, world_size=2)
