"""A consumer group shared with another pipeline, found where faust assigns its partitions.

A worker's consumer group is its faust app id, the pipeline's ``name``. Two pipelines on one
broker with one name and different topic prefixes keep their own partitions (faust assigns a
topic only to the members that read it), but share every rebalance: a worker that joins or
leaves either one paused both, by 5-13 s on the embedded broker (docs/scale.md). Nothing is
lost, so nothing fails; the group's leader, the one member that sees every member's topics,
says so in its log.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from faust.assignor import PartitionAssignor

__all__ = ["GroupAnswer", "describe_group", "foreign_members", "pipeline_assignor"]

log = logging.getLogger("mlink.group")
ASK_FOR_S = 10.0  # a broker that does not answer the group request must not hold the caller


def foreign_members(subscriptions: Mapping[str, Iterable[str]], own: str) -> dict[str, list[str]]:
    """The members of a group that do not read ``own`` (this pipeline's frames topic), with the
    topics they read: the workers of another pipeline under the same name."""
    return {
        member: sorted(topics)
        for member, topics in ((m, set(t)) for m, t in subscriptions.items())
        if own not in topics
    }


def pipeline_assignor(own: str) -> type[PartitionAssignor]:
    """faust's assignor (the ``PartitionAssignor`` setting), warning when the group holds
    members that do not read ``own``."""

    class PipelineAssignor(PartitionAssignor):
        def _perform_assignment(self, cluster: Any, member_metadata: Any) -> Any:
            subscriptions = {m: meta.subscription for m, meta in member_metadata.items()}
            if foreign := foreign_members(subscriptions, own):
                topics = sorted({t for ts in foreign.values() for t in ts if "__assignor" not in t})
                log.warning(
                    "consumer group %r holds %d worker(s) of another pipeline (reading %s, not "
                    "%s): a pipeline's `name` is its consumer group, so every worker that joins "
                    "or leaves either pipeline pauses both; give each pipeline on this broker "
                    "its own name",
                    self.app.conf.id,
                    len(foreign),
                    ", ".join(topics[:6]) + (" ..." if len(topics) > 6 else ""),
                    own,
                )
            return super()._perform_assignment(cluster, member_metadata)

    return PipelineAssignor


@dataclass(frozen=True)
class GroupAnswer:
    """The broker's answer on one consumer group: its error code (0: none), its state
    (Stable, PreparingRebalance, Empty, Dead...) and its members as ``(member id, client
    id)``."""

    error: int
    state: str
    members: list[tuple[str, str]]


async def describe_group(admin_kwargs: dict[str, Any], group: str) -> GroupAnswer | None:
    """Ask the broker about consumer group ``group`` with aiokafka's admin client (on Tansu,
    kafka-python 3.0 cannot parse the answer: :mod:`mlink.deploy.group_members`); None when
    the answer names no such group. ``admin_kwargs``: bootstrap servers and security of an
    ``AIOKafkaAdminClient``. Raises what the client raises, or a timeout after
    ``ASK_FOR_S`` per request."""
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(request_timeout_ms=int(ASK_FOR_S * 1000), **admin_kwargs)
    try:
        await asyncio.wait_for(admin.start(), ASK_FOR_S)
        replies = await asyncio.wait_for(admin.describe_consumer_groups([group]), ASK_FOR_S)
    finally:
        with contextlib.suppress(Exception):  # what failed before it is what the caller sees
            await asyncio.wait_for(admin.close(), ASK_FOR_S)
    for reply in replies:
        for error, name, state, _protocol_type, _protocol, members, *_ in reply.groups:
            if name == group:
                return GroupAnswer(error, state, [(m[0], m[1]) for m in members])
    return None
