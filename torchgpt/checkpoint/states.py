"""Stateful adapters that put training state through torch.distributed.checkpoint (DCP).

ModelState / OptimizerState go through DCP natively (sharded DTensors, resharded on load);
RNGState keeps one entry per rank; PickledState carries a small world-size-independent state
(lr schedule, dataloader, train counters) as one opaque blob so it loads back exactly as saved.
"""

from __future__ import annotations

import io
import logging
import math
import random
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.checkpoint.stateful import Stateful

logger = logging.getLogger(__name__)

# One flat {fqn.state_name: tensor} dict: a different parallel layout reshards it on load
# (TorchTitan does the same).
_OPTIM_OPTIONS = StateDictOptions(flatten_optimizer_state_dict=True)


def _to_bytes(obj: Any) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def _from_bytes(data: bytes) -> Any:
    # Our own blobs (numpy RNG arrays, scheduler dicts): not loadable with weights_only=True.
    return torch.load(io.BytesIO(data), weights_only=False)


class ModelState(Stateful):
    """Model parameters and buffers, keyed by the FQNs of the unwrapped model.

    get_model_state_dict drops the `_orig_mod.` (torch.compile) and
    `_checkpoint_wrapped_module.` (activation checkpointing) prefixes, so one checkpoint loads
    into a plain, compiled or FSDP-sharded model alike.
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def state_dict(self) -> dict[str, Any]:
        return get_model_state_dict(self.model)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        set_model_state_dict(self.model, state_dict)


class OptimizerState(Stateful):
    """Optimizer state (moments, step counts, param groups) keyed by parameter FQNs."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        self.model, self.optimizer = model, optimizer

    def state_dict(self) -> dict[str, Any]:
        return get_optimizer_state_dict(self.model, self.optimizer, options=_OPTIM_OPTIONS)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        set_optimizer_state_dict(self.model, self.optimizer, state_dict, options=_OPTIM_OPTIONS)


def _rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


class RNGState(Stateful):
    """Python, numpy and torch (CPU, and CUDA when present) generator states of this rank.

    Each rank saves its own entry under `rank_{r}` and restores only that one. After a change
    of world size, ranks with no saved entry keep their freshly seeded state (logged).
    """

    @staticmethod
    def key(rank: int | None = None) -> str:
        """The entry name of `rank` (this process's rank by default)."""
        return f"rank_{_rank() if rank is None else rank}"

    def state_dict(self) -> dict[str, Any]:
        states = {
            "python": random.getstate(),
            "numpy": np.random.get_state(),
            "torch": torch.get_rng_state(),
        }
        if torch.cuda.is_available():
            states["cuda"] = torch.cuda.get_rng_state_all()
        return {self.key(): _to_bytes(states)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        blob = state_dict.get(self.key())
        if blob is None:
            logger.info("no saved RNG state for %s: keeping this rank's seeded state", self.key())
            return
        states = _from_bytes(blob)
        random.setstate(states["python"])
        np.random.set_state(states["numpy"])
        torch.set_rng_state(states["torch"])
        if "cuda" in states and torch.cuda.is_available():
            saved = states["cuda"]
            if len(saved) != torch.cuda.device_count():
                logger.info(
                    "saved CUDA RNG states of %d devices, this process sees %d: restoring the "
                    "overlap",
                    len(saved),
                    torch.cuda.device_count(),
                )
            for device, state in enumerate(saved[: torch.cuda.device_count()]):
                torch.cuda.set_rng_state(state, device)


class PickledState(Stateful):
    """Wrap a Stateful so its whole state_dict is saved as one blob and restored as saved.

    DCP loads nested dicts key by key into the fresh object's state_dict, so keys the fresh
    object lacks are silently dropped and keys it adds fail the load; one blob avoids both.
    The state must be the same on every rank: DCP keeps one copy of a key saved by all ranks.
    """

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def state_dict(self) -> dict[str, Any]:
        return {"pickle": _to_bytes(self.inner.state_dict())}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.inner.load_state_dict(_from_bytes(state_dict["pickle"]))


class TrainState(Stateful):
    """Counters that must survive a restart (the step, tokens seen, best validation loss), and
    the loop components' own small states in `extras` (name -> object with state_dict /
    load_state_dict, e.g. the loss-spike guard's window).

    Saved as one blob (PickledState), so an extra added later does not change the checkpoint's
    keys: a checkpoint from before it loads, and the extra starts empty (logged).
    """

    def __init__(self) -> None:
        self.step = 0
        self.tokens_seen = 0
        self.best_val_loss = math.inf
        self.extras: dict[str, Any] = {}

    def state_dict(self) -> dict:
        return {
            "step": self.step,
            "tokens_seen": self.tokens_seen,
            "best_val_loss": self.best_val_loss,
            **{name: extra.state_dict() for name, extra in self.extras.items()},
        }

    def load_state_dict(self, sd: dict) -> None:
        self.step = int(sd["step"])
        self.tokens_seen = int(sd["tokens_seen"])
        self.best_val_loss = float(sd["best_val_loss"])
        for name, extra in self.extras.items():
            if name in sd:
                extra.load_state_dict(sd[name])
            else:
                logger.info("the checkpoint has no %s state (saved before it existed): empty", name)
