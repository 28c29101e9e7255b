"""A consumer group shared with another pipeline, found where faust assigns its partitions.

A worker's consumer group is its faust app id, the pipeline's ``name``. Two pipelines on one
broker with one name and different topic prefixes keep their own partitions (faust assigns a
topic only to the members that read it), but share every rebalance: a worker that joins or
leaves either one paused both, by 5-13 s on the embedded broker (docs/scale.md). Nothing is
lost, so nothing fails; the group's leader, the one member that sees every member's topics,
says so in its log.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

from faust.assignor import PartitionAssignor

__all__ = ["foreign_members", "pipeline_assignor"]

log = logging.getLogger("mlink.group")


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
