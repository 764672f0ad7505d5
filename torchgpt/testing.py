"""Test support: run a function in N gloo processes on CPU (OLMo-core's run_distributed_test shape).

Each process joins a fresh process group on a free localhost port, runs `fn(*args)`, and tears the
group down. An exception in any rank fails the caller with every failing rank's traceback: when
one rank raises, its peers usually fail next (a collective loses its partner), and which failure
torch.multiprocessing notices first is a race, so the root cause is always included.
"""

from __future__ import annotations

import os
import socket
import tempfile
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def find_free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(
    rank: int, world_size: int, port: int, fn: Callable, args: tuple, env: dict, err_dir: str
) -> None:
    os.environ.update(env)
    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world_size),
        LOCAL_WORLD_SIZE=str(world_size),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    # One thread per rank, as torchrun does: ranks share this machine's cores.
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        fn(*args)
    except BaseException:
        # Written before the group is torn down, so before any peer can fail because of it.
        Path(err_dir, f"rank{rank}.txt").write_text(traceback.format_exc())
        raise
    finally:
        if dist.is_initialized():  # fn may have torn it down itself (torchgpt.train.main does)
            dist.destroy_process_group()


def run_distributed_test(
    fn: Callable[..., Any], world_size: int = 2, args: tuple = (), env: dict | None = None
) -> None:
    """Run fn(*args) in `world_size` spawned gloo processes; re-raise the first failure.

    `fn` must be importable at module level (it is pickled into the children).
    """
    with tempfile.TemporaryDirectory(prefix="torchgpt-dist-test-") as err_dir:
        try:
            mp.start_processes(
                _worker,
                args=(world_size, find_free_port(), fn, args, dict(env or {}), err_dir),
                nprocs=world_size,
                join=True,
                start_method="spawn",
            )
        except Exception as e:
            reports = sorted(Path(err_dir).glob("rank*.txt"))
            if not reports:
                raise
            detail = "\n".join(f"--- {p.stem} ---\n{p.read_text()}" for p in reports)
            raise RuntimeError(f"{e}\nevery failing rank's traceback:\n{detail}") from e


def write_synthetic_shards(
    out: str | os.PathLike,
    *,
    train_tokens: int = 600_000,
    val_tokens: int = 40_000,
    shard_size: int = 250_000,
    seed: int = 0,
) -> Path:
    """A finished tools/prepare_data.py-style folder of learnable synthetic GPT-2 token ids.

    Documents are strings of "phrases" (fixed random runs of 3-10 ids drawn from a Zipf-like
    vocabulary of 2,000 GPT-2 ids) picked with Zipf weights, each document led by <|endoftext|>
    like prepared text. A model learns phrase continuations within a few steps, so loss curves
    fall as on real text, and tests of the trainer need neither ../shared nor a tokenizer.
    Written through the real shard writer and manifest, so loaders check it like real data.
    """
    import numpy as np

    from torchgpt.data.shards import MANIFEST, ShardWriter, write_json_atomic
    from torchgpt.data.tokenizer import EOT_ID, TOKENIZER_NAME, VOCAB_SIZE

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    vocab = rng.choice(EOT_ID, size=2000, replace=False)
    word_p = 1.0 / np.arange(1, len(vocab) + 1)
    phrases = [
        rng.choice(vocab, size=int(rng.integers(3, 11)), p=word_p / word_p.sum())
        for _ in range(500)
    ]
    phrase_p = 1.0 / np.arange(1, len(phrases) + 1) ** 0.8
    phrase_p /= phrase_p.sum()
    tokenizer = {"name": TOKENIZER_NAME, "vocab_size": VOCAB_SIZE, "eot_id": EOT_ID}
    shards, documents = [], {}
    for split, total in (("train", train_tokens), ("val", val_tokens)):
        writer = ShardWriter(out, split, shard_size, tokenizer)
        written, docs = 0, 0
        while written < total:
            picks = rng.choice(len(phrases), size=int(rng.integers(20, 80)), p=phrase_p)
            doc = np.concatenate([[EOT_ID], *(phrases[i] for i in picks)])
            doc = doc[: total - written].astype("<u2")
            writer.write(doc)
            written, docs = written + len(doc), docs + 1
        writer.finish()
        shards += writer.shards
        documents[split] = docs
    manifest = {
        "source": {"kind": "synthetic", "seed": seed},
        "tokenizer": tokenizer,
        "shard_size": shard_size,
        "documents": documents,
        "tokens": {"train": train_tokens, "val": val_tokens},
        "shards": shards,
        "command": f"torchgpt.testing.write_synthetic_shards(seed={seed})",
    }
    write_json_atomic(out / MANIFEST, manifest)
    return out
