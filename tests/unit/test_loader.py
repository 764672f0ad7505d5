"""TrainLoader / build_val_batches: global order, rank disjointness, exact resume across world
sizes, epochs, worker prefetch, the fixed val set, and clear errors."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch

from torchgpt.data.loader import GlobalOrderSampler, TrainLoader, build_val_batches
from torchgpt.data.shards import HEADER_BYTES, ShardWriter, data_fingerprint

TOK = {"name": "gpt2", "vocab_size": 50257, "eot_id": 50256}
T = 8  # seq_len
TRAIN_SIZES = (200, 180, 97)  # (n - 1) // T windows: 24 + 22 + 12 = 58
NUM_WINDOWS = 58


def write_dir(path, train_sizes=TRAIN_SIZES, val_sizes=(90, 50)):
    """Shard i of a split holds i * 10000 + arange(n): every token says where it came from."""
    path.mkdir(parents=True, exist_ok=True)
    entries = []
    for split, sizes in (("train", train_sizes), ("val", val_sizes)):
        writer = ShardWriter(path, split, max(sizes), TOK)
        for i, n in enumerate(sizes):
            writer.write(np.arange(i * 10000, i * 10000 + n, dtype=np.uint16))
            writer.finish()
        entries += writer.shards
    (path / "manifest.json").write_text(json.dumps({"tokenizer": TOK, "shards": entries}))
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_dir(tmp_path_factory.mktemp("shards"))


def window_id(x: torch.Tensor) -> tuple[int, int]:
    """(shard, window index in shard) of a window, from its first token."""
    first = int(x[0])
    return first // 10000, (first % 10000) // T


def loaders(data, world, mb, **kw):
    return [
        TrainLoader(data, seq_len=T, micro_batch_size=mb, dp_rank=r, dp_world_size=world, **kw)
        for r in range(world)
    ]


def global_stream(ranks: list[TrainLoader], steps: int) -> list[tuple[int, int]]:
    """Windows of `steps` micro-steps in global order (rank 0's slice first)."""
    out = []
    for _ in range(steps):
        for loader in ranks:
            x, y = next(loader)
            assert x.shape == y.shape == (loader.micro_batch_size, T) and x.dtype == torch.int64
            torch.testing.assert_close(x[:, 1:], y[:, :-1])
            out += [window_id(row) for row in x]
    return out


def test_windows_tile_each_shard_and_never_cross_shards(data):
    (loader,) = loaders(data, 1, NUM_WINDOWS)
    x, y = next(loader)
    assert loader.windows_per_epoch == NUM_WINDOWS and loader.tokens_per_epoch == NUM_WINDOWS * T
    full = torch.cat([x, y[:, -1:]], dim=1)  # the seq_len + 1 tokens of each window
    starts = sorted(int(w[0]) for w in full)
    expected = [s * 10000 + j * T for s, n in enumerate(TRAIN_SIZES) for j in range((n - 1) // T)]
    assert starts == expected  # every window once; stride seq_len; tails shorter than T+1 unused
    for w in full:  # consecutive tokens of one shard: nothing spans a shard boundary
        assert torch.equal(w, w[0] + torch.arange(T + 1))


def test_epochs_are_permutations_reshuffled_with_a_logged_boundary(data, caplog):
    (loader,) = loaders(data, 1, 2, seed=3)
    with caplog.at_level(logging.INFO, logger="torchgpt.data.loader"):
        stream = global_stream([loader], NUM_WINDOWS)  # exactly two epochs
    first, second = stream[:NUM_WINDOWS], stream[NUM_WINDOWS:]
    assert len(set(first)) == len(set(second)) == NUM_WINDOWS and set(first) == set(second)
    assert first != second
    assert loader.epoch == 2 and loader.state_dict()["epoch"] == 2
    messages = [r.getMessage() for r in caplog.records if "epoch" in r.getMessage()]
    assert len(messages) == 2 and messages[0].startswith("data epoch 0 finished (58 windows")
    other_seed = global_stream(loaders(data, 1, 2, seed=4), 5)
    assert other_seed != first[:10]
    assert global_stream(loaders(data, 1, 2, seed=3), 5) == first[:10]  # deterministic


@pytest.mark.parametrize("world", [1, 2, 4])
def test_ranks_take_disjoint_slices_of_one_global_order(data, world):
    mb = 4 // world  # the same global micro-step of 4 windows at every world size
    ranks = loaders(data, world, mb, seed=1)
    stream = global_stream(ranks, 14)  # 56 windows, all in epoch 0
    assert stream == global_stream(loaders(data, 1, 4, seed=1), 14)
    assert len(set(stream)) == len(stream)  # no rank sees another rank's window
    order = GlobalOrderSampler(
        NUM_WINDOWS, seed=1, start=0, micro_batch_size=4, dp_rank=0, dp_world_size=1
    ).permutation(0)
    assert len(set(order.tolist())) == NUM_WINDOWS
    states = [r.state_dict() for r in ranks]
    assert all(s == states[0] for s in states) and states[0]["windows_consumed"] == 56


@pytest.mark.parametrize("world_save, world_resume", [(1, 1), (2, 2), (4, 4), (2, 1), (1, 2)])
def test_resume_is_exact_across_world_sizes(data, world_save, world_resume):
    reference = global_stream(loaders(data, 1, 4, seed=7), 40)  # crosses two epoch boundaries
    before = loaders(data, world_save, 4 // world_save, seed=7)
    head = global_stream(before, 17)
    state = before[0].state_dict()
    assert state == {
        "windows_consumed": 68,
        "epoch": 1,
        "seed": 7,
        "seq_len": T,
        "fingerprint": data_fingerprint(data),
        "align": "none",
    }
    after = loaders(data, world_resume, 4 // world_resume, seed=7)
    for loader in after:
        loader.load_state_dict(state)
    assert head + global_stream(after, 23) == reference


def test_worker_prefetch_does_not_leak_into_the_state(data):
    reference = global_stream(loaders(data, 1, 4, seed=2), 12)
    (loader,) = loaders(data, 1, 4, seed=2, num_workers=2)
    head = global_stream([loader], 5)
    state = loader.state_dict()
    assert state["windows_consumed"] == 20  # workers ran ahead; the state did not
    (resumed,) = loaders(data, 1, 4, seed=2, num_workers=2)
    resumed.load_state_dict(state)
    assert head + global_stream([resumed], 7) == reference


def test_fingerprint_or_seed_mismatch_is_refused_unless_allowed(data, tmp_path):
    other = write_dir(tmp_path / "other", train_sizes=(200, 180, 98))
    (loader,) = loaders(data, 1, 4)
    next(loader)
    state = loader.state_dict()
    (fresh,) = loaders(other, 1, 4)
    with pytest.raises(
        ValueError, match="data differs from .*other .fingerprint .*allow_data_change=true"
    ):
        fresh.load_state_dict(state)
    fresh.load_state_dict(state, allow_data_change=True)
    assert fresh.windows_consumed == 0  # data order restarts on the new data
    (permissive,) = loaders(other, 1, 4, allow_data_change=True)  # as a checkpointer calls it
    permissive.load_state_dict(state)
    assert permissive.windows_consumed == 0
    (reseeded,) = loaders(data, 1, 4, seed=5)
    with pytest.raises(ValueError, match="seed 0 -> 5"):
        reseeded.load_state_dict(state)


def test_val_batches_are_fixed_and_split_disjointly(data):
    kw = {"seq_len": T, "micro_batch_size": 2, "num_tokens": 64}
    whole = build_val_batches(data, dp_rank=0, dp_world_size=1, **kw)
    again = build_val_batches(data, dp_rank=0, dp_world_size=1, **kw)
    assert len(whole) == len(again) == 4
    assert all(
        torch.equal(a, b)
        for bw, ba in zip(whole, again, strict=True)
        for a, b in zip(bw, ba, strict=True)
    )
    parts = [build_val_batches(data, dp_rank=r, dp_world_size=2, **kw) for r in range(2)]
    assert [len(p) for p in parts] == [2, 2]
    flat = [b for p in parts for b in p]
    for (x1, y1), (x2, y2) in zip(whole, flat, strict=True):  # same windows, split in order
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
    firsts = [int(row[0]) for x, _ in whole for row in x]
    assert firsts == [j * T for j in range(8)]  # the first 8 windows of val shard 0
    with pytest.raises(ValueError, match="validation.tokens=10000.*hold 17 windows"):
        build_val_batches(data, dp_rank=0, dp_world_size=1, **{**kw, "num_tokens": 10000})


def test_tokenizer_and_vocab_mismatch_errors(data):
    with pytest.raises(ValueError, match="tokenized with 'gpt2' but the model expects 'cl100k"):
        TrainLoader(
            data, seq_len=T, micro_batch_size=1, dp_rank=0, dp_world_size=1, tokenizer="cl100k_base"
        )
    with pytest.raises(ValueError, match="beyond the model's vocab_size=1000"):
        TrainLoader(
            data, seq_len=T, micro_batch_size=1, dp_rank=0, dp_world_size=1, vocab_size=1000
        )
    with pytest.raises(ValueError, match="largest train shard .*train_000000.bin holds 200"):
        TrainLoader(data, seq_len=200, micro_batch_size=1, dp_rank=0, dp_world_size=1)
    with pytest.raises(ValueError, match="dp_rank=2 must be in"):
        TrainLoader(data, seq_len=T, micro_batch_size=1, dp_rank=2, dp_world_size=2)


def test_corrupt_shards_are_named(tmp_path):
    data = write_dir(tmp_path / "d")
    shard = data / "train_000001.bin"
    raw = bytearray(shard.read_bytes())
    raw[HEADER_BYTES + 2 * 20 : HEADER_BYTES + 2 * 21] = np.uint16(60000).tobytes()
    shard.write_bytes(bytes(raw))
    (loader,) = loaders(data, 1, NUM_WINDOWS)  # headers are fine; the bad id shows on read
    with pytest.raises(ValueError, match=f"shard {shard} holds token id 60000 .*out of the"):
        next(loader)
    shard.write_bytes(bytes(raw[:500]))
    with pytest.raises(ValueError, match=f"shard {shard} is truncated"):
        loaders(data, 1, 1)
