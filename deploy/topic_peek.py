"""The first frames on a pipeline's source topic, read as a worker reads them, leaving no trace.

``mlink check`` calls every model on a few real frames; a ``source: {topic: ...}`` config has
them on Kafka. :func:`peek_frames` reads them without touching the pipeline:

- no consumer group: the consumer joins nothing and commits nothing (``group_id=None``), so
  the workers' offsets and group are left as they were; it assigns itself every partition of
  the topic and reads each from its beginning;
- never creates the topic by asking for it (:meth:`~mlink.deploy.config.PipelineConfig.
  consumer_kwargs`), with the pipeline's TLS/SASL settings and record sizes;
- bounded: the broker has ``connect_s`` to answer, the reading ``wait_s``, and at most
  ``REJECTS_PER_FRAME`` records per frame asked for are read looking for readable frames.

Each record becomes an image through the workers' own readers: the topic's ``source.format``
(:func:`mlink.topics.ingest.frame_from_record` and the msgpack codec), then
:func:`mlink.topics.frames.decode_frame`, under the pipeline's ``limits``. A record a worker
would dead-letter is kept as the worker's reason, not raised.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mlink.deploy.config import PipelineConfig
from mlink.topics.bootstrap import bootstrap_servers
from mlink.topics.frames import decode_frame
from mlink.topics.ingest import frame_from_record
from mlink.topics.limits import Limits
from mlink.topics.records import DecodeError, Frame

__all__ = ["CONNECT_S", "READ_S", "REJECTS_PER_FRAME", "TopicPeek", "TopicReadError", "peek_frames"]

CONNECT_S = 10.0
"""Seconds the broker has to answer (its metadata, and each request after)."""
READ_S = 10.0
"""Seconds spent reading records at most, once the topic's partitions are known."""
REJECTS_PER_FRAME = 10
"""Records read per frame asked for at most: a topic that begins with junk is not read whole."""


class TopicReadError(RuntimeError):
    """The topic could not be read at all: the broker did not answer, or it has no such topic."""


@dataclass(frozen=True, slots=True, kw_only=True)
class TopicPeek:
    """What the start of a source topic held: ``frames`` as ``(stream_id, image)`` pairs in the
    order read, ``read`` records in all (0: the topic is empty), and for each record a worker
    would dead-letter, where it is and why (``rejected``)."""

    topic: str
    frames: list[tuple[str, np.ndarray]] = field(default_factory=list)
    read: int = 0
    rejected: list[str] = field(default_factory=list)


def peek_frames(
    config: PipelineConfig,
    bootstrap: str,
    count: int,
    *,
    connect_s: float = CONNECT_S,
    wait_s: float = READ_S,
) -> TopicPeek:
    """The first ``count`` readable frames of ``config.source.topic`` on ``bootstrap`` (fewer
    when the topic holds fewer, or ``wait_s`` runs out). Raises :class:`TopicReadError` when the
    broker does not answer within ``connect_s`` or the topic does not exist."""
    from kafka import KafkaConsumer, TopicPartition
    from kafka.errors import KafkaError

    topic = config.source.topic
    if not topic:
        raise ValueError(f"pipeline {config.name!r} has no source topic to read")
    ms = int(connect_s * 1000)
    try:
        consumer = KafkaConsumer(
            bootstrap_servers=bootstrap_servers(bootstrap),
            group_id=None,
            enable_auto_commit=False,
            client_id="mlink-check",
            bootstrap_timeout_ms=ms,
            request_timeout_ms=ms,
            **config.consumer_kwargs(),
        )
    except KafkaError as exc:
        raise TopicReadError(_no_answer(bootstrap, connect_s, exc)) from exc
    try:
        try:
            partitions = consumer.partitions_for_topic(topic)
        except KafkaError as exc:  # KafkaTimeoutError: "Unable to bootstrap from [...]"
            raise TopicReadError(_no_answer(bootstrap, connect_s, exc)) from exc
        if not partitions:
            raise TopicReadError(
                f"the broker at {bootstrap} has no topic {topic!r}: check its name, or create it "
                "before the workers start (a broker that creates it on first use picks its own "
                "partition count; docs/broker.md)"
            )
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        begins, ends = consumer.beginning_offsets(tps), consumer.end_offsets(tps)
        if all(ends[tp] <= begins[tp] for tp in tps):
            return TopicPeek(topic=topic)
        consumer.seek_to_beginning(*tps)
        return _read(consumer, config, count, wait_s, lambda: _at_end(consumer, tps, ends))
    finally:
        consumer.close()


def _no_answer(bootstrap: str, seconds: float, exc: Exception) -> str:
    return (
        f"the broker at {bootstrap} did not answer within {seconds:g} s ({exc}); check --broker, "
        "`broker:` in the config or MLINK_BROKER, and that the broker is up"
    )


def _at_end(consumer: Any, tps: list[Any], ends: dict[Any, int]) -> bool:
    """Every partition read up to the end its broker reported. (Tansu reports the end of a
    batch as its first offset plus one, docs/broker.md; a batch is fetched whole, so a consumer
    past that offset has read the batch to its real end.)"""
    return all(consumer.position(tp) >= ends[tp] for tp in tps)


def _read(
    consumer: Any, config: PipelineConfig, count: int, wait_s: float, at_end: Callable[[], bool]
) -> TopicPeek:
    topic, fmt = config.source.topic or "", config.source.format
    limits = config.limits.limits()
    frames: list[tuple[str, np.ndarray]] = []
    rejected: list[str] = []
    read, most = 0, max(1, count) * REJECTS_PER_FRAME
    deadline = time.monotonic() + wait_s
    while len(frames) < count and read < most and time.monotonic() < deadline:
        batches = consumer.poll(timeout_ms=200, max_records=most - read)
        if not batches and at_end():
            break
        for record in (r for records in batches.values() for r in records):
            if len(frames) >= count or read >= most:
                break
            read += 1
            try:
                frame = _frame(record, fmt, limits)
                frames.append((frame.stream_id, decode_frame(frame, limits)))
            except DecodeError as exc:  # a worker dead-letters it with this reason
                where = f"{topic}[{record.partition}]@{record.offset}"
                why = str(exc)  # the image reader's reasons already say where
                rejected.append(why if why.startswith(where) else f"{where}: {why}")
    return TopicPeek(topic=topic, frames=frames, read=read, rejected=rejected)


def _frame(record: Any, fmt: str, limits: Limits) -> Frame:
    """The Frame a kafka-python record holds, read as the workers read ``fmt``."""
    return frame_from_record(
        fmt,  # type: ignore[arg-type]
        record.topic,
        record.partition,
        record.offset,
        record.key,
        record.value,
        record.headers,
        record.timestamp,  # ms; -1 when the record has none
        limits=limits,
    )
