"""Another pipeline on this pipeline's topics, told by the ``mlink-pipeline`` header of the
records it writes (:mod:`mlink.topics.pipeline_header`).

Two pipelines given one ``topics.prefix`` both read its frames and both answer every frame on
its results topic, each planning with the other's control messages refused as made for other
models (a new user's audit, stop 45). Nothing failed, so nothing said so. A worker whose
control log holds records of a pipeline that has live workers now refuses to start; records of
one with none (a pipeline renamed, or gone) are skipped with a warning; and a running worker
logs the first record of each other pipeline that reaches it.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from mlink.operators.group_check import describe_group
from mlink.operators.settings import SettingsError

__all__ = ["ForeignWriters", "live_members"]

log = logging.getLogger("mlink.control")
MAX_NAMES = 100  # distinct other pipelines remembered: the header is data, not to grow memory


class ForeignWriters:
    """The other pipelines whose records this worker has read on its topics."""

    def __init__(self, own: str, prefix_topic: str) -> None:
        self.own, self.topic = own, prefix_topic
        self.newest: dict[str, float] = {}  # pipeline -> newest record's time (epoch seconds)
        self._said: set[str] = set()

    def seen(self, writer: str, at_ms: float, live: bool) -> str:
        """Note a record ``writer`` wrote at ``at_ms``; return why it is skipped. ``live``:
        read after the replay of the history (logged now, once per pipeline)."""
        if writer in self.newest or len(self.newest) < MAX_NAMES:
            self.newest[writer] = max(self.newest.get(writer, 0.0), at_ms / 1000)
        reason = f"written by pipeline {writer!r}, not {self.own!r}"
        if live and writer not in self._said:
            self._said.add(writer)
            log.error(
                "pipeline %r writes to this pipeline's topic %s: two pipelines share one "
                "topics.prefix, and each answers the other's frames on one results topic. "
                "Give each pipeline its own topics.prefix; its records are skipped here",
                writer,
                self.topic,
            )
        return reason

    async def check(self, client_kwargs: dict[str, Any]) -> None:
        """After the replay of the history: raise :class:`SettingsError` when a pipeline that
        wrote to this control topic has live workers; warn of the others."""
        for writer, newest in sorted(self.newest.items()):
            members = await live_members(client_kwargs, writer)
            ago = time.time() - newest
            if members:
                raise SettingsError(
                    f"topics prefix of {self.topic} is in use by pipeline {writer!r} "
                    f"({members} live workers, last wrote {ago:.0f} s ago): two pipelines on one "
                    "prefix answer each other's frames. Give this pipeline its own "
                    "topics.prefix, or stop the other one (the embedded Tansu broker keeps "
                    "listing a worker killed with SIGKILL: docs/broker.md says how to clear it)"
                )
            self._said.add(writer)
            log.warning(
                "control topic %s holds records of pipeline %r (the newest %.0f s ago), which "
                "has no live workers%s: a renamed pipeline, or an earlier one on this "
                "topics.prefix. They are skipped; if it runs again, give each its own prefix",
                self.topic,
                writer,
                ago,
                "" if members == 0 else " as far as the broker said",
            )


async def live_members(client_kwargs: dict[str, Any], group: str) -> int | None:
    """How many members consumer group ``group`` has now, or None when the broker did not say."""
    try:
        answer = await describe_group(client_kwargs, group)
    except Exception as exc:  # advisory: a broker that will not say must not stop a worker
        log.warning("could not ask the broker about consumer group %r: %s", group, exc)
        return None
    return len(answer.members) if answer is not None and not answer.error else 0
