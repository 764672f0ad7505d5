"""data.align = "bos" (issue #26): every training window starts at a document's leading
<|endoftext|>, windows never overlap, the tokens left out are counted, and the loader keeps its
exact resume and its independence of the world size."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from torchgpt.data.loader import TrainLoader
from torchgpt.data.shards import open_tokens
from torchgpt.data.tokenizer import EOT_ID

T = 64


def _loaders(data, world, mb, align="bos", seed=3):
    return [
        TrainLoader(
            data,
            seq_len=T,
            micro_batch_size=mb,
            dp_rank=r,
            dp_world_size=world,
            seed=seed,
            align=align,
        )
        for r in range(world)
    ]


def _stream(ranks, steps) -> list[torch.Tensor]:
    out = []
    for _ in range(steps):
        for loader in ranks:
            x, y = next(loader)
            torch.testing.assert_close(x[:, 1:], y[:, :-1])
            out += list(x)
    return out


def test_every_window_starts_a_document_without_overlap(token_shards, caplog):
    with caplog.at_level(logging.INFO, logger="torchgpt.data.loader"):
        (loader,) = _loaders(token_shards, 1, 8)
    windows = _stream([loader], 30)
    assert all(int(w[0]) == EOT_ID for w in windows)
    dataset = loader.dataset
    total = covered = 0
    for path, starts in zip(dataset.paths, dataset.starts, strict=True):
        tokens = np.asarray(open_tokens(path))
        assert (tokens[starts] == EOT_ID).all() and (np.diff(starts) >= T).all()
        assert starts[-1] + T + 1 <= len(tokens)
        total += len(tokens)
        covered += len(starts) * T + 1
    (plain,) = _loaders(token_shards, 1, 8, align="none")
    assert 0 < len(dataset) < len(plain.dataset)  # a document opens at most one window
    left_out = total - covered
    assert f"{left_out} of {total} train tokens" in caplog.text  # the share is stated


@pytest.mark.parametrize("world_save, world_resume", [(1, 2), (2, 1)])
def test_resume_is_exact_and_the_world_size_does_not_matter(token_shards, world_save, world_resume):
    reference = _stream(_loaders(token_shards, 1, 4), 12)
    before = _loaders(token_shards, world_save, 4 // world_save)
    head = _stream(before, 5)
    state = before[0].state_dict()
    assert state["align"] == "bos"
    after = _loaders(token_shards, world_resume, 4 // world_resume)
    for loader in after:
        loader.load_state_dict(state)
    assert torch.equal(torch.stack(head + _stream(after, 7)), torch.stack(reference))


def test_a_resume_with_another_alignment_is_refused(token_shards):
    (saved,) = _loaders(token_shards, 1, 4, align="none")
    next(saved)
    (other,) = _loaders(token_shards, 1, 4)
    with pytest.raises(ValueError, match="align 'none' -> 'bos'"):
        other.load_state_dict(saved.state_dict())
    old = {k: v for k, v in saved.state_dict().items() if k != "align"}  # before data.align
    (plain,) = _loaders(token_shards, 1, 4, align="none")
    plain.load_state_dict(old)
    assert plain.windows_consumed == 4
