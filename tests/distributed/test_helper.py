"""The distributed test helper itself: a real 2-process gloo all-reduce, and failure propagation."""

import pytest
import torch
import torch.distributed as dist

from torchgpt.testing import run_distributed_test


def _all_reduce_sum() -> None:
    rank = dist.get_rank()
    t = torch.tensor([float(rank + 1)])
    dist.all_reduce(t)
    assert t.item() == 3.0, t  # 1 + 2


def _fail_on_rank_1() -> None:
    if dist.get_rank() == 1:
        raise RuntimeError("boom from rank 1")
    dist.barrier()


def test_all_reduce_two_processes():
    run_distributed_test(_all_reduce_sum, world_size=2)


def test_failure_in_rank_1_propagates():
    with pytest.raises(Exception, match="boom from rank 1"):
        run_distributed_test(_fail_on_rank_1, world_size=2)
