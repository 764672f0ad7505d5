"""Training and validation batches from token shards: memory-mapped, rank-disjoint, resumable.

Global stream: each train shard is cut into windows of seq_len + 1 tokens at stride seq_len
(consecutive windows share one boundary token, as in nanoGPT and llm.c; no window spans two
shards). Epoch e visits every window once, in a permutation seeded by (seed, e). The stream is
consumed in micro-steps of dp_world_size * micro_batch_size windows; rank r takes the contiguous
slice [r * mb, (r + 1) * mb) of each. The state is a global window count plus seed, seq_len and
a data fingerprint, so it resumes exactly, also at another data-parallel world size.
With data.align = "bos" the windows are cut at document starts instead (windows.py); the rest
is the same.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from torchgpt.data.shards import (
    data_fingerprint,
    read_header,
    read_manifest,
    split_shards,
)
from torchgpt.data.tokenizer import EOT_ID, TOKENIZER_NAME, VOCAB_SIZE
from torchgpt.data.windows import GlobalOrderSampler, WindowDataset, collate, document_starts

if TYPE_CHECKING:
    from torchgpt.config.job_config import JobConfig

__all__ = [
    "GlobalOrderSampler",
    "TrainLoader",
    "build_val_batches",
    "data_fingerprint",
    "read_manifest",
]

logger = logging.getLogger(__name__)

Batch = tuple[torch.Tensor, torch.Tensor]


def _check_args(seq_len: int, micro_batch_size: int, dp_rank: int, dp_world_size: int) -> None:
    if seq_len < 1 or micro_batch_size < 1:
        raise ValueError(f"seq_len={seq_len} and micro_batch_size={micro_batch_size} must be >= 1")
    if not 0 <= dp_rank < dp_world_size:
        raise ValueError(f"dp_rank={dp_rank} must be in [0, dp_world_size={dp_world_size})")


def open_split(
    data_dir: str | os.PathLike,
    split: str,
    tokenizer: str = TOKENIZER_NAME,
    vocab_size: int = VOCAB_SIZE,
) -> tuple[list[Path], list[int], int]:
    """Check the manifest and every header of `split`; return (paths, token counts, id limit)."""
    manifest = read_manifest(data_dir)
    tok = manifest["tokenizer"]
    if tok["name"] != tokenizer:
        raise ValueError(
            f"{data_dir} was tokenized with {tok['name']!r} but the model expects {tokenizer!r}; "
            f"re-run tools/prepare_data.py with the model's tokenizer or point data.dataset_path "
            f"at a matching folder"
        )
    if tok["vocab_size"] > vocab_size:
        raise ValueError(
            f"{data_dir} holds token ids up to {tok['vocab_size'] - 1}, beyond the model's "
            f"vocab_size={vocab_size}; use a model with vocab_size >= {tok['vocab_size']}"
        )
    entries = split_shards(manifest, split)
    if not entries:
        raise ValueError(f"{data_dir} has no {split} shards in its manifest.json")
    paths = [Path(data_dir) / e["file"] for e in entries]
    for path, entry in zip(paths, entries, strict=True):
        header = read_header(path)
        if header.tokenizer != tok["name"] or header.num_tokens != entry["tokens"]:
            raise ValueError(
                f"shard {path} (tokenizer {header.tokenizer!r}, {header.num_tokens} tokens) does "
                f"not match manifest.json ({tok['name']!r}, {entry['tokens']} tokens); run "
                f"tools/prepare_data.py --verify {data_dir}"
            )
    return paths, [e["tokens"] for e in entries], tok["vocab_size"]


class TrainLoader:
    """Endless (inputs, targets) micro-batches for one data-parallel rank, resumable exactly.

    Each item is a pair of int64 tensors of shape (micro_batch_size, seq_len); targets are the
    inputs shifted by one token. Epochs roll over with a fresh permutation. Batches are produced
    by a torch DataLoader (worker prefetch, pinned memory); the state counts only
    what this object has handed out, so prefetched batches never leak into a checkpoint.

    Args:
        data_dir: Folder written by tools/prepare_data.py.
        seq_len: Tokens per sequence.
        micro_batch_size: Sequences per rank per micro-step.
        dp_rank: This rank's index among the data-parallel ranks.
        dp_world_size: Number of data-parallel ranks.
        seed: Seeds the window order of every epoch.
        num_workers: DataLoader worker processes (0 reads in this process).
        pin_memory: Pin batches for fast host-to-GPU copies.
        vocab_size: The model's vocabulary; the data's tokenizer must fit in it.
        tokenizer: Tokenizer name the model was built for (checked against the manifest).
        allow_data_change: Default of `load_state_dict`'s override, so a checkpoint manager that
            calls `load_state_dict(sd)` honours data.allow_data_change.
        align: "none": windows at stride seq_len; "bos": every window starts at a document
            start (data.align; windows.document_starts), the tokens left out logged.
    """

    def __init__(
        self,
        data_dir: str | os.PathLike,
        *,
        seq_len: int,
        micro_batch_size: int,
        dp_rank: int,
        dp_world_size: int,
        seed: int = 0,
        num_workers: int = 0,
        pin_memory: bool = False,
        vocab_size: int = VOCAB_SIZE,
        tokenizer: str = TOKENIZER_NAME,
        allow_data_change: bool = False,
        align: str = "none",
    ):
        _check_args(seq_len, micro_batch_size, dp_rank, dp_world_size)
        if align not in ("none", "bos"):
            raise ValueError(f"data.align={align!r}: expected 'none' or 'bos'")
        self.align = align
        self.allow_data_change = allow_data_change
        self.data_dir, self.seq_len, self.seed = str(data_dir), seq_len, seed
        self.micro_batch_size = micro_batch_size
        self.dp_rank, self.dp_world_size = dp_rank, dp_world_size
        self.num_workers, self.pin_memory = num_workers, pin_memory
        paths, sizes, id_limit = open_split(data_dir, "train", tokenizer, vocab_size)
        if max(sizes) < seq_len + 1:
            biggest = paths[int(np.argmax(sizes))]
            raise ValueError(
                f"seq_len={seq_len} needs {seq_len + 1} tokens per window but the largest train "
                f"shard {biggest} holds {max(sizes)}; lower training.seq_len or prepare the data "
                f"with a larger --shard-size"
            )
        starts = None
        if align == "bos":
            found = [document_starts(p, seq_len, EOT_ID) for p in paths]
            starts = [s for s, _ in found]
            left_out = sum(d for _, d in found)
            logger.info(
                "data.align = bos: %d windows, each starting at a document start; %d of %d "
                "train tokens (%.1f%%: the ends of documents a window cuts) are left out of "
                "every epoch",
                sum(len(s) for s in starts),
                left_out,
                sum(sizes),
                100.0 * left_out / max(sum(sizes), 1),
            )
        self.dataset = WindowDataset(paths, sizes, seq_len, id_limit, starts)
        if len(self.dataset) == 0:
            raise ValueError(
                f"data.align = {align}: {data_dir} holds no window of {seq_len + 1} tokens that "
                "starts at a document start; lower training.seq_len or use data.align = none"
            )
        self.fingerprint = data_fingerprint(data_dir)
        self._windows_consumed = 0
        self._iterator: Iterator[Batch] | None = None

    @property
    def windows_per_epoch(self) -> int:
        return len(self.dataset)

    @property
    def tokens_per_epoch(self) -> int:
        """Tokens predicted per epoch (each window contributes seq_len targets)."""
        return self.windows_per_epoch * self.seq_len

    @property
    def windows_consumed(self) -> int:
        """Windows of the global stream consumed by all ranks together (over all epochs)."""
        return self._windows_consumed

    @property
    def epoch(self) -> int:
        """Epoch of the next window to be consumed."""
        return self._windows_consumed // self.windows_per_epoch

    def _build_iterator(self) -> Iterator[Batch]:
        sampler = GlobalOrderSampler(
            self.windows_per_epoch,
            seed=self.seed,
            start=self._windows_consumed,
            micro_batch_size=self.micro_batch_size,
            dp_rank=self.dp_rank,
            dp_world_size=self.dp_world_size,
        )
        extra = {"prefetch_factor": 2, "persistent_workers": False} if self.num_workers else {}
        # A plain DataLoader: the resumable state is the sampler's start position (a window
        # count), so the loader itself needs none; workers only prefetch what the sampler
        # names, and batches prefetched but never handed out are not counted.
        loader = DataLoader(
            self.dataset,
            batch_sampler=sampler,
            num_workers=self.num_workers,
            collate_fn=collate,
            pin_memory=self.pin_memory,
            **extra,
        )
        return iter(loader)

    def __iter__(self) -> TrainLoader:
        return self

    def __next__(self) -> Batch:
        if self._iterator is None:
            self._iterator = self._build_iterator()
        batch = next(self._iterator)
        before = self.epoch
        self._windows_consumed += self.micro_batch_size * self.dp_world_size
        if self.epoch != before:  # this micro-step consumed the last window of an epoch
            logger.info(
                "data epoch %d finished (%d windows, %d tokens); epoch %d is reshuffled with "
                "seed (%d, %d)",
                before,
                self.windows_per_epoch,
                self.tokens_per_epoch,
                self.epoch,
                self.seed,
                self.epoch,
            )
        return batch

    def state_dict(self) -> dict[str, Any]:
        """World-size-independent position in the global stream (a few counters)."""
        return {
            "windows_consumed": self._windows_consumed,
            "epoch": self.epoch,
            "seed": self.seed,
            "seq_len": self.seq_len,
            "fingerprint": self.fingerprint,
            "align": self.align,
        }

    def load_state_dict(
        self, state_dict: dict[str, Any], *, allow_data_change: bool | None = None
    ) -> None:
        """Continue from a saved position; the next batch is the one the saver would have got.

        Args:
            state_dict: From `state_dict`, possibly saved at another data-parallel world size.
            allow_data_change: Accept a different fingerprint, seq_len or seed; the data order
                then restarts from window 0 of this data. None uses the constructor's value.

        Raises:
            ValueError: The state is malformed or describes other data (and no override).
        """
        missing = {"windows_consumed", "seed", "seq_len", "fingerprint"} - set(state_dict)
        if missing:
            raise ValueError(f"dataloader state lacks {sorted(missing)}: not a TrainLoader state")
        ours = {"fingerprint": self.fingerprint, "seq_len": self.seq_len, "seed": self.seed}
        ours["align"] = self.align  # other windows: another stream (older states: "none")
        saved = {"align": "none", **state_dict}
        changed = [f"{k} {saved[k]!r} -> {v!r}" for k, v in ours.items() if saved[k] != v]
        self._iterator = None  # shuts down any workers of the previous iterator
        if not changed:
            self._windows_consumed = int(state_dict["windows_consumed"])
            return
        if not (self.allow_data_change if allow_data_change is None else allow_data_change):
            raise ValueError(
                f"checkpointed data differs from {self.data_dir} ({'; '.join(changed)}); resuming "
                f"would not continue the same token stream. Point data.dataset_path at the "
                f"original data, or set data.allow_data_change=true to restart the data order"
            )
        logger.warning("data changed (%s): data order restarts at window 0", "; ".join(changed))
        self._windows_consumed = 0


def build_val_batches(
    data_dir: str | os.PathLike,
    *,
    seq_len: int,
    micro_batch_size: int,
    num_tokens: int,
    dp_rank: int,
    dp_world_size: int,
    vocab_size: int = VOCAB_SIZE,
    tokenizer: str = TOKENIZER_NAME,
) -> list[Batch]:
    """The fixed validation set: the first `num_tokens` of the val shards, this rank's share.

    Windows are cut like the training windows, in shard order, grouped into micro-batches, and
    the micro-batches split into dp_world_size contiguous equal parts (so every rank runs the same
    number of forward passes). The count is rounded down to a whole number of micro-batches per
    rank; choose num_tokens as a multiple of seq_len * micro_batch_size * dp_world_size to keep
    the set identical across world sizes.

    Raises:
        ValueError: No val shards, or fewer val tokens than one micro-batch per rank needs.
    """
    _check_args(seq_len, micro_batch_size, dp_rank, dp_world_size)
    paths, sizes, id_limit = open_split(data_dir, "val", tokenizer, vocab_size)
    dataset = WindowDataset(paths, sizes, seq_len, id_limit)
    per_rank = num_tokens // (seq_len * micro_batch_size * dp_world_size)
    if per_rank == 0 or per_rank * dp_world_size * micro_batch_size > len(dataset):
        raise ValueError(
            f"validation needs {max(per_rank, 1) * dp_world_size} batches of {micro_batch_size} x "
            f"{seq_len} tokens (validation.tokens={num_tokens}) but {data_dir}'s val shards hold "
            f"{len(dataset)} windows of {seq_len + 1} tokens; lower validation.tokens (at least "
            f"{seq_len * micro_batch_size * dp_world_size}) or hold out more data"
        )
    if per_rank * seq_len * micro_batch_size * dp_world_size != num_tokens:
        logger.info(
            "validation uses %d of the requested %d tokens (whole micro-batches per rank)",
            per_rank * seq_len * micro_batch_size * dp_world_size,
            num_tokens,
        )
    first = dp_rank * per_rank * micro_batch_size
    return [
        collate([dataset[w] for w in range(b, b + micro_batch_size)])
        for b in range(first, first + per_rank * micro_batch_size, micro_batch_size)
    ]


def build_data(
    cfg: JobConfig, *, dp_rank: int, dp_degree: int, vocab_size: int, pin_memory: bool
) -> tuple[TrainLoader, list[Batch]]:
    """The train loader and the fixed validation batches (none unless validation.enable) that
    `cfg` asks for, for this data-parallel rank."""
    t, path = cfg.training, cfg.data.dataset_path
    loader = TrainLoader(
        path,
        seq_len=t.seq_len,
        micro_batch_size=t.micro_batch_size,
        dp_rank=dp_rank,
        dp_world_size=dp_degree,
        seed=cfg.job.seed,
        num_workers=cfg.data.num_workers,
        pin_memory=pin_memory,
        vocab_size=vocab_size,
        allow_data_change=cfg.data.allow_data_change,
        align=cfg.data.align,
    )
    if not cfg.validation.enable:
        return loader, []
    v = cfg.validation
    micro = v.micro_batch_size or t.micro_batch_size
    val = build_val_batches(
        path,
        seq_len=t.seq_len,
        micro_batch_size=micro,
        num_tokens=v.tokens,
        dp_rank=dp_rank,
        dp_world_size=dp_degree,
    )
    return loader, val
