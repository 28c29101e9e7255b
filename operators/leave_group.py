"""A worker that stops leaves its consumer group, also from the group's first generation.

aiokafka sends LeaveGroup only when its generation is above 0, because Kafka numbers a
group's generations from 1. Tansu, the embedded broker, numbers them from 0, so the first
worker of a pipeline, and a lone worker that never rebalanced, stopped without leaving, and
Tansu listed it for good: 21 minutes and counting in stop 46's audit. Its pipeline's prefix
stayed refused to others, `mlink status` and the exporter counted a live worker that was not
there, and a rebalance could wait on it. Generation -1 still means "not joined": nothing to
leave. On Kafka, where no joined member has generation 0, nothing changes.
"""

from __future__ import annotations

import functools
from typing import Any

from aiokafka.consumer.group_coordinator import GroupCoordinator

__all__ = ["leave_group_from_generation_zero"]

_FLAG = "_mlink_leaves_from_generation_zero"


def leave_group_from_generation_zero() -> None:
    """Make every aiokafka group member of this process leave its group on stop once it has
    joined, generation 0 included (idempotent; every MLink app gets it from
    ``attach_control_replay``)."""
    original = GroupCoordinator._maybe_leave_group
    if getattr(original, _FLAG, False):
        return

    @functools.wraps(original)
    async def maybe_leave_group(self: Any) -> None:
        if self.generation == 0:  # joined, on a broker that counts from 0: aiokafka skips it
            self.generation = 1  # any joined generation: LeaveGroup names only the member id
            try:
                await original(self)
            finally:
                self.reset_generation()
            return
        await original(self)

    setattr(maybe_leave_group, _FLAG, True)
    GroupCoordinator._maybe_leave_group = maybe_leave_group  # type: ignore[method-assign]
