"""Windows of token shards: the dataset of seq_len + 1 token windows (at a fixed stride, or
starting at document starts) and the global-order sampler that deals them to the ranks.

`document_starts` is `data.align = "bos"`: every window begins at a document's leading
<|endoftext|>, chosen greedily so that windows never overlap (beyond the one boundary token a
window shares with the next); the end of a document that a window cuts and the next window does
not reach is not trained on (counted and logged by the loader).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from torchgpt.data.shards import open_tokens

Batch = tuple[torch.Tensor, torch.Tensor]


def document_starts(path: Path, seq_len: int, eot_id: int) -> tuple[np.ndarray, int]:
    """Window starts of shard `path` for aligned windows, and the tokens they leave out.

    A start is the position of an <|endoftext|> (a document's first token); after a window at
    s, the next is the first document start >= s + seq_len, and each window needs seq_len + 1
    tokens inside the shard.
    """
    tokens = open_tokens(path)
    n = len(tokens)
    candidates = np.flatnonzero(np.asarray(tokens) == eot_id)
    starts: list[int] = []
    next_free = 0
    i = int(np.searchsorted(candidates, next_free))
    while i < len(candidates):
        s = int(candidates[i])
        if s + seq_len + 1 > n:
            break
        starts.append(s)
        next_free = s + seq_len
        i = int(np.searchsorted(candidates, next_free, side="left"))
    covered = len(starts) * seq_len + (1 if starts else 0)
    return np.asarray(starts, dtype=np.int64), n - covered


class WindowDataset(Dataset):
    """Window id -> the seq_len + 1 tokens of that window (int64), read from memory-mapped shards.

    Shards are mapped lazily in whichever process reads them (DataLoader workers included), so
    nothing but the requested windows is ever paged in.
    """

    def __init__(
        self,
        paths: list[Path],
        shard_tokens: list[int],
        seq_len: int,
        id_limit: int,
        starts: list[np.ndarray] | None = None,
    ):
        """`starts`: each shard's window start positions (document_starts); None cuts windows
        at stride seq_len."""
        self.paths, self.seq_len, self.id_limit, self.starts = paths, seq_len, id_limit, starts
        if starts is None:
            counts = [max((n - 1) // seq_len, 0) for n in shard_tokens]
        else:
            counts = [len(s) for s in starts]
        self.offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self._maps: dict[int, np.memmap] = {}

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __getitem__(self, window: int) -> torch.Tensor:
        if not 0 <= window < len(self):
            raise IndexError(f"window {window} out of range [0, {len(self)})")
        shard = int(np.searchsorted(self.offsets, window, side="right")) - 1
        if shard not in self._maps:
            self._maps[shard] = open_tokens(self.paths[shard])
        local = window - int(self.offsets[shard])
        start = int(self.starts[shard][local]) if self.starts is not None else local * self.seq_len
        tokens = np.asarray(self._maps[shard][start : start + self.seq_len + 1], dtype=np.int64)
        if int(tokens.max()) >= self.id_limit:
            raise ValueError(
                f"shard {self.paths[shard]} holds token id {int(tokens.max())} (tokens {start}.."
                f"{start + self.seq_len}), out of the tokenizer's range [0, {self.id_limit}): the "
                f"shard is corrupt; run tools/prepare_data.py --verify on its folder"
            )
        return torch.from_numpy(tokens)


class GlobalOrderSampler:
    """Batch sampler: this rank's window ids for each micro-step of the global stream, forever.

    Global position p is window perm_e[p mod W] with e = p // W, where perm_e is the
    permutation of the W windows drawn by numpy's PCG64 from SeedSequence([seed, e]).
    """

    def __init__(
        self,
        num_windows: int,
        *,
        seed: int,
        start: int,
        micro_batch_size: int,
        dp_rank: int,
        dp_world_size: int,
    ):
        self.num_windows, self.seed, self.start = num_windows, seed, start
        self.mb, self.rank, self.world = micro_batch_size, dp_rank, dp_world_size
        self._perms: dict[int, np.ndarray] = {}

    def permutation(self, epoch: int) -> np.ndarray:
        """The window order of `epoch` (the two most recent epochs stay cached)."""
        if epoch not in self._perms:
            rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([self.seed, epoch])))
            self._perms = {e: p for e, p in self._perms.items() if e == epoch - 1}
            self._perms[epoch] = rng.permutation(self.num_windows)
        return self._perms[epoch]

    def __iter__(self) -> Iterator[list[int]]:
        step = self.mb * self.world
        pos = self.start + self.rank * self.mb
        while True:
            epochs, index = np.divmod(np.arange(pos, pos + self.mb), self.num_windows)
            yield [int(self.permutation(int(e))[i]) for e, i in zip(epochs, index, strict=True)]
            pos += step


def collate(windows: list[torch.Tensor]) -> Batch:
    batch = torch.stack(windows)
    return batch[:, :-1].contiguous(), batch[:, 1:].contiguous()
