"""The harness adapter sharded over ranks (issue #25): 2 gloo processes each score every
other batch of loglikelihood requests and gather the rest; every rank returns exactly, bitwise,
what one process returns, in the requests' own order."""

from __future__ import annotations

import json
import random
from pathlib import Path

import torch
import torch.distributed as dist

from torchgpt.eval.harness import TorchGPTLM
from torchgpt.model import GPT
from torchgpt.model.args import FLAVORS
from torchgpt.testing import run_distributed_test


def _model() -> GPT:
    torch.manual_seed(0)
    model = GPT(FLAVORS["debug"])
    model.init_weights()
    return model.eval()


def _requests(n: int = 23) -> list:
    rng = random.Random(0)
    return [
        (
            None,
            [rng.randrange(50257) for _ in range(rng.randrange(1, 40))],
            [rng.randrange(50257) for _ in range(rng.randrange(1, 6))],
        )
        for _ in range(n)
    ]


def _score(out: str, shard: bool) -> None:
    group = dist.new_group(backend="gloo") if shard else None
    lm = TorchGPTLM(_model(), batch_size=4, shard_group=group)
    lm._progress_off = True
    scored, score_chunk = [], lm._score_chunk
    lm._score_chunk = lambda chunk: scored.append(len(chunk)) or score_chunk(chunk)
    results = lm._loglikelihood_tokens(_requests())
    rank = dist.get_rank() if dist.is_initialized() else 0
    record = {"results": [[lp, g] for lp, g in results], "scored": scored}
    Path(out, f"rank{rank}.json").write_text(json.dumps(record))


def test_two_ranks_return_one_process_scores_bitwise(tmp_path, gpt2_bpe_dir):
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    _score(str(tmp_path / "one"), shard=False)
    run_distributed_test(_score, world_size=2, args=(str(tmp_path / "two"), True))
    one = json.loads((tmp_path / "one" / "rank0.json").read_text())
    assert len(one["results"]) == 23 and len({lp for lp, _ in one["results"]}) > 20
    assert one["scored"] == [4, 4, 4, 4, 4, 3]  # 6 batches of 4 in one process
    two = [json.loads((tmp_path / "two" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [len(t["scored"]) for t in two] == [3, 3]  # each rank scored every other batch
    assert sum(sum(t["scored"]) for t in two) == 23
    for t in two:
        assert t["results"] == one["results"]
