"""The samples a trainer did not read itself: those before the first one its worker got.

The samples topic has one partition, so one worker at a time trains. A worker that takes the
partition over (a rolling restart, a crash, a worker restarted in place) starts at the group's
committed offset, and its buffer used to start empty: the links the worker before it had
trained from the whole buffer were retrained from the probes since (or, before the first full
links, only after a new warm-up's worth of probes). The samples are still in the topic; this
reads the newest of them back, up to the trainer's window.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiokafka import TopicPartition

from mlink.operators.runtime import MLink
from mlink.operators.wiring import groupless_consumer, verified
from mlink.topics.codec import decode_record
from mlink.topics.pipeline_header import other_writer
from mlink.topics.records import FrameResult

__all__ = ["SampleHistory", "read_samples"]

log = logging.getLogger(__name__)

READ_GIVE_UP_S = 30.0
"""A history that takes longer than this to read is cut short: training goes on without it."""


@dataclass(slots=True)
class SampleHistory:
    """Where this worker's reading of the samples partition stands: the first sample it reads,
    and every one after a gap (the partition was another worker's meanwhile), call for the
    history before it."""

    expected: int | None = None  # the offset after the last sample this worker read

    def gap_before(self, offset: int) -> bool:
        """Whether samples before ``offset`` went to another worker (or to none yet). An offset
        below the expected one is no gap: a rebalance delivers again what this worker read
        after the group's last commit."""
        expected = self.expected
        self.expected = max(offset + 1, expected or 0)
        return offset > 0 if expected is None else offset > expected


async def read_samples(
    app: Any,
    mlink: MLink,
    upto: int,
    limit: int,
    add: Callable[[FrameResult], bool],
) -> tuple[int, int, int]:
    """Pass each of this pipeline's samples at offsets ``[upto - limit, upto)`` of the samples
    topic (or from where the topic's log starts) to ``add``, oldest first. Records another
    pipeline wrote are passed over, and so are those that do not verify or decode (each was a
    dead letter when a trainer first read it). Returns (read, added: those ``add`` took,
    passed over)."""
    topic = mlink.names.samples
    own = mlink.settings.name
    consumer = groupless_consumer(app, mlink)
    await consumer.start()
    read, added, passed = 0, 0, 0
    try:
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        first = (await consumer.beginning_offsets([tp]))[tp]
        start = max(first, upto - limit)
        if start >= upto:
            return 0, 0, 0
        consumer.seek(tp, start)
        give_up = time.monotonic() + READ_GIVE_UP_S
        while await consumer.position(tp) < upto:
            if time.monotonic() > give_up:
                log.warning("reading the samples before offset %d stopped short", upto)
                break
            for message in (await consumer.getmany(tp, timeout_ms=500)).get(tp, []):
                if message.offset >= upto:
                    break
                if other_writer(message.headers, own):
                    passed += 1
                    continue
                try:
                    value = verified(mlink, topic, message.key, message.value, message.headers)
                    result = decode_record(value, FrameResult, limits=mlink.limits)
                except Exception:  # a dead letter when it was first read
                    passed += 1
                    continue
                added += bool(add(result))
                read += 1
        return read, added, passed
    finally:
        await consumer.stop()
