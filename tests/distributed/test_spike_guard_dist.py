"""The loss-spike guard at 2 processes (FSDP2): a spike injected on rank 0 alone (its loss and
its gradient shard x100) reaches both ranks through the step's all-reduces, so both skip that
update, their weight shards bitwise untouched, and both apply every other step."""

from __future__ import annotations

import json
from pathlib import Path

import torch.distributed as dist

from tests.trainer_utils import BASE, train_restoring_signals
from tests.unit.test_spike_guard import GUARD, SpikeAt
from torchgpt.config.manager import load_config
from torchgpt.step.train_module import TrainModule
from torchgpt.testing import run_distributed_test
from torchgpt.train import Trainer


class SpikeOnRank0(SpikeAt):
    spikes = (8,)

    def forward_backward(self, micro_batches, **kwargs):
        if dist.get_rank() != 0:  # the other rank computes a normal step
            self.step_no = self.lr_scheduler.last_epoch + 1
            return TrainModule.forward_backward(self, micro_batches, **kwargs)
        return super().forward_backward(micro_batches, **kwargs)


def _train(data: str, out: str) -> None:
    SpikeOnRank0.log = []
    args = ["--data.dataset_path", data, "--job.dump_folder", out, "--training.steps", "10"]
    cfg = load_config(None, BASE + args + GUARD, world_size=dist.get_world_size())
    trainer = Trainer(cfg, module_cls=SpikeOnRank0)
    train_restoring_signals(trainer)
    Path(out, f"rank{dist.get_rank()}.json").write_text(json.dumps(SpikeOnRank0.log))


def test_a_spike_on_one_rank_is_skipped_by_both(token_shards, tmp_path):
    run_distributed_test(_train, world_size=2, args=(str(token_shards), str(tmp_path)))
    logs = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    for log in logs:
        assert [r["step"] for r in log] == list(range(1, 11))
        assert [r["applied"] for r in log] == [s != 8 for s in range(1, 11)]
        assert log[7]["weights_unchanged"] and not log[8]["weights_unchanged"]
