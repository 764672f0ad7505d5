"""Check a checkpoint against the state about to be loaded, before DCP touches any tensor.

DCP stops at the first missing key or size mismatch with a terse message; this lists every
missing, unexpected and mis-shaped key with saved vs expected shapes, so a wrong model config
is obvious from the error alone.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint.metadata import Metadata, TensorStorageMetadata

# Keys whose extras in a checkpoint mean a different model (optimizer extras follow from them).
_STRICT_PREFIXES = ("model.",)
_MAX_LISTED = 30


@contextlib.contextmanager
def quiet_no_dist() -> Iterator[None]:
    """Silence DCP's warning that no process group means one process: that is what we mean."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield


def flatten(state: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Flatten nested dicts to DCP's dotted keys ({'model': {'w': t}} -> {'model.w': t})."""
    flat: dict[str, Any] = {}
    for key, value in state.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, prefix=f"{name}."))
        else:
            flat[name] = value
    return flat


def read_metadata(path: Path) -> Metadata:
    """DCP's metadata of the checkpoint folder `path` (keys, global shapes, dtypes)."""
    return FileSystemReader(str(path)).read_metadata()


def _shape(size: Any) -> tuple[int, ...]:
    return tuple(int(s) for s in size)


def find_mismatches(expected: Mapping[str, Any], metadata: Metadata) -> list[str]:
    """Describe every key of `expected` (flat) the checkpoint lacks or holds with another shape.

    Also lists checkpoint keys under `model.` that `expected` does not have (a bigger model).
    """
    saved = metadata.state_dict_metadata
    problems: list[str] = []
    for key, value in expected.items():
        entry = saved.get(key)
        is_tensor = isinstance(value, torch.Tensor)
        if entry is None:
            want = f"expected shape {_shape(value.shape)}" if is_tensor else "expected an object"
            problems.append(f"{key}: missing from the checkpoint ({want})")
        elif is_tensor and not isinstance(entry, TensorStorageMetadata):
            problems.append(f"{key}: saved as a non-tensor, expected shape {_shape(value.shape)}")
        elif is_tensor and _shape(entry.size) != _shape(value.shape):
            problems.append(
                f"{key}: saved shape {_shape(entry.size)} vs expected {_shape(value.shape)}"
            )
    for key, entry in saved.items():
        if key.startswith(_STRICT_PREFIXES) and key not in expected:
            shape = _shape(entry.size) if isinstance(entry, TensorStorageMetadata) else "object"
            problems.append(f"{key}: in the checkpoint (saved shape {shape}) but not in the model")
    return problems


def mismatch_message(path: Path, problems: list[str]) -> str:
    """A ValueError message listing the mismatched keys of checkpoint `path`."""
    listed = "\n  ".join(problems[:_MAX_LISTED])
    more = f"\n  ... and {len(problems) - _MAX_LISTED} more" if len(problems) > _MAX_LISTED else ""
    return (
        f"checkpoint {path} does not match the model being trained "
        f"({len(problems)} mismatched keys):\n  {listed}{more}\n"
        "Load it with the model config it was saved with (see its checkpoint_info.json), "
        "or start a fresh run directory."
    )
