"""The checkpoint manager's own process group: object collectives that keep ranks in agreement.

File-system decisions (which checkpoint, did the save fail) are made on rank 0 or gathered from
every rank, so all ranks take the same branch and none waits forever in a collective.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import torch.distributed as dist


class Comm:
    """Rank, world size and a dedicated gloo group; a no-op stand-in without a process group.

    The group is our own because async_save runs collectives from a background thread, and
    those must never interleave with training collectives on the default group. Creating it
    is collective: construct a Comm on every rank at the same point.
    """

    def __init__(self, timeout: timedelta | None = None) -> None:
        self.is_dist = dist.is_available() and dist.is_initialized()
        self.rank = dist.get_rank() if self.is_dist else 0
        self.world_size = dist.get_world_size() if self.is_dist else 1
        self.group = dist.new_group(backend="gloo", timeout=timeout) if self.is_dist else None

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's `obj` on every rank."""
        if not self.is_dist:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0, group=self.group)
        return box[0]

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's `obj`, in rank order, on every rank."""
        if not self.is_dist:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj, group=self.group)
        return out
