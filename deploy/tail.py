"""``mlink tail``: results as they arrive, for as long as someone watches.

Unlike :class:`mlink.deploy.runner.ResultCollector`, which keeps every result of a bounded run
to score it, a tail may run for days on a production topic: it keeps nothing but a bounded set
of recently seen frame ids (to drop the duplicates a worker restart re-delivers), and by default
starts at the end of the topic, as ``tail -f`` does, instead of replaying its whole history.
(Tansu reports the end of a multi-record batch too early, and workers write results in
batches, so there a tail may start inside the last batch and show a few results from just
before it; docs/broker.md.)
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from typing import Any

from mlink.topics.bootstrap import bootstrap_servers
from mlink.topics.codec import decode_record
from mlink.topics.records import DecodeError, FrameResult

__all__ = ["REMEMBER", "ResultTail", "assign_partitions", "result_line"]

REMEMBER = 65_536
"""Frame ids a tail remembers to drop duplicates: a re-delivery comes within a worker's
uncommitted batch, far fewer records than this, and the memory stays a few MB."""

_MARK = {"executed": "run", "synthesized": "link", "missing": "?"}


def result_line(result: FrameResult) -> str:
    """One line per frame: id, epoch, each model and whether it ran or was synthesized."""
    parts = [f"{r.model}={_MARK.get(r.status, r.status)}" for r in result.results]
    flags = (" PROBE" if result.probe else "") + (" DEGRADED" if result.degraded else "")
    return f"{result.frame_id} epoch={result.epoch}{flags} " + " ".join(parts)


def assign_partitions(
    consumer: Any, topic: str, *, from_beginning: bool = False, wait_s: float = 30.0
) -> None:
    """Assign every partition of ``topic`` to ``consumer`` (no group: nothing to join, so no
    seconds lost to a rebalance), positioned now at its beginning or its end (``seek_to_end``
    alone is lazy: resolved at the first poll, it would skip what was written in between)."""
    from kafka import TopicPartition
    from kafka.errors import KafkaTimeoutError

    deadline = time.monotonic() + wait_s
    while not (partitions := consumer.partitions_for_topic(topic)):
        if time.monotonic() > deadline:
            raise KafkaTimeoutError(f"topic {topic!r} has no partitions after {wait_s:.0f} s")
        consumer.topics()  # refresh the metadata
        time.sleep(0.2)
    tps = [TopicPartition(topic, p) for p in sorted(partitions)]
    consumer.assign(tps)
    if from_beginning:
        consumer.seek_to_beginning(*tps)
    else:
        consumer.seek_to_end(*tps)
    for tp in tps:
        consumer.position(tp)


class ResultTail:
    """Follows a results topic: new results in arrival order, each frame once."""

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        *,
        from_beginning: bool = False,
        client: Mapping[str, Any] | None = None,
        remember: int = REMEMBER,
    ) -> None:
        from kafka import KafkaConsumer

        self.duplicates = 0
        self.undecodable = 0
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._remember = max(1, remember)
        # no consumer group: a group join takes seconds (half the session timeout on Tansu),
        # and with "latest" the results written meanwhile were skipped, so a tail started just
        # before a run missed its first results. Its own partitions, positioned now, instead.
        self._consumer = KafkaConsumer(
            bootstrap_servers=bootstrap_servers(bootstrap),
            group_id=None,
            enable_auto_commit=False,
            **dict(client or {}),
        )
        assign_partitions(self._consumer, topic, from_beginning=from_beginning)

    def ready(self, timeout: float = 30.0) -> bool:
        """The tail knows where it starts in each partition (from construction on)."""
        return bool(self._consumer.assignment())

    def follow(
        self, stop: threading.Event | None = None, poll_ms: int = 200
    ) -> Iterator[FrameResult]:
        """Results until ``stop`` is set (or forever); bad records and duplicates are counted."""
        while stop is None or not stop.is_set():
            records: list[Any] = []
            for batch in self._consumer.poll(timeout_ms=poll_ms).values():
                records.extend(batch)
            for record in records:
                result = self._new_result(record.value)
                if result is not None:
                    yield result

    def _new_result(self, value: bytes | None) -> FrameResult | None:
        try:
            result = decode_record(value, FrameResult)
        except DecodeError:
            self.undecodable += 1
            return None
        if result.frame_id in self._seen:
            self.duplicates += 1
            return None
        self._seen[result.frame_id] = None
        if len(self._seen) > self._remember:
            self._seen.popitem(last=False)
        return result

    def close(self) -> None:
        self._consumer.close()
