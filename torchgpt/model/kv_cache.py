"""The KV cache of incremental decoding: keys and values of every attention layer so far."""

from __future__ import annotations

from torch import Tensor


class LayerKVCache:
    """Keys and values of one attention layer, allocated on first use.

    Args:
        max_seq_len: number of positions to hold.
    """

    def __init__(self, max_seq_len: int) -> None:
        self.max_seq_len = max_seq_len
        self.k: Tensor | None = None
        self.v: Tensor | None = None

    def update(self, k: Tensor, v: Tensor, start_pos: int) -> tuple[Tensor, Tensor]:
        """Store k, v (B, nh, T, hs) at positions start_pos.. and return all keys/values so far.

        The buffers take the dtype of the first k/v, so the cache follows autocast.
        """
        if self.k is None:
            B, nh, _, hs = k.shape
            shape = (B, nh, self.max_seq_len, hs)
            self.k = k.new_zeros(shape)
            self.v = v.new_zeros(shape)
        end = start_pos + k.size(2)
        self.k[:, :, start_pos:end] = k
        self.v[:, :, start_pos:end] = v
        return self.k[:, :, :end], self.v[:, :, :end]  # (B, nh, end, hs)

    def keep_rows(self, rows: Tensor) -> None:
        """Keep only batch rows `rows` (decoding went on without the others)."""
        if self.k is not None:
            self.k, self.v = self.k[rows], self.v[rows]


class KVCache:
    """One `LayerKVCache` per block; index it with the block number.

    Args:
        n_layers: number of blocks.
        max_seq_len: positions per layer (the model's context).
    """

    def __init__(self, n_layers: int, max_seq_len: int) -> None:
        self.layers = [LayerKVCache(max_seq_len) for _ in range(n_layers)]

    def __getitem__(self, i: int) -> LayerKVCache:
        return self.layers[i]

    def __len__(self) -> int:
        return len(self.layers)

    def keep_rows(self, rows: Tensor) -> None:
        """Keep only batch rows `rows` in every layer."""
        for layer in self.layers:
            layer.keep_rows(rows)
