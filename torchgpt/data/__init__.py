"""Data: the GPT-2 tokenizer, the token shard format, text -> shards preparation, the loader.

The loader (and with it torch) is imported on first use, so tools/prepare_data.py and its
worker processes start without importing torch.
"""

from __future__ import annotations

from typing import Any

from torchgpt.data.shards import data_fingerprint, read_manifest, verify_shards
from torchgpt.data.tokenizer import EOT_ID, VOCAB_SIZE, get_tokenizer

_LOADER_NAMES = ("TrainLoader", "build_val_batches")

__all__ = [
    "EOT_ID",
    "VOCAB_SIZE",
    "TrainLoader",
    "build_val_batches",
    "data_fingerprint",
    "get_tokenizer",
    "read_manifest",
    "verify_shards",
]


def __getattr__(name: str) -> Any:
    if name in _LOADER_NAMES:
        from torchgpt.data import loader

        return getattr(loader, name)
    raise AttributeError(f"module 'torchgpt.data' has no attribute {name!r}")
