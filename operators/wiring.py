"""Small pieces every agent module needs to talk to Kafka through faust."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import faust
from aiokafka import AIOKafkaConsumer
from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth, server_list

from mlink.operators.dead_letters import DeadLetters
from mlink.operators.runtime import MLink
from mlink.topics.pipeline_header import pipeline_header
from mlink.topics.signing import signed_topics

log = logging.getLogger("mlink.agents")
AgentFun = Callable[[Any], Awaitable[None]]

__all__ = [
    "Outbox",
    "acks_when_answered",
    "agent_crashes",
    "count_crashes",
    "dead_letters",
    "groupless_consumer",
    "kafka_client_kwargs",
    "raw_topic",
    "verified",
    "verified_value",
]


def raw_topic(app: faust.App, name: str) -> faust.TopicT:
    """A topic of raw bytes: every operator decodes values itself, to dead-letter what fails."""
    return app.topic(name, key_serializer="raw", value_serializer="raw")


def dead_letters(app: faust.App, mlink: MLink) -> DeadLetters:
    """The dead-letter sender of ``app`` for the pipeline's dead-letter topic."""
    topic = raw_topic(app, mlink.names.dead_letter)
    return DeadLetters(
        lambda key, value: topic.send(key=key, value=value),
        mlink.metrics,
        max_value_bytes=mlink.limits.max_dead_letter_value_bytes,
        on_dead=mlink.prom.dead_letter,
    )


class Outbox:
    """Sends raw records to one topic, stamped with the pipeline's name and signed when the
    pipeline signs that topic.

    Straight to the app's producer rather than through ``Topic.send``: the records are bytes
    already, faust's topic layer would only add work per record (a result per frame adds up),
    and the producer is the one faust flushes before it commits the consumed offsets, so
    delivery stays at least once.
    """

    def __init__(self, app: faust.App, mlink: MLink, name: str) -> None:
        self.app = app
        self.name = name
        self.signer = mlink.signer if name in signed_topics(mlink.names) else None
        self.stamp = pipeline_header(mlink.settings.name)  # which pipeline wrote it

    async def send(self, key: bytes | None, value: bytes) -> None:
        headers = [self.stamp, *(self.signer.sign(self.name, key, value) if self.signer else ())]
        await self.app.producer.send(self.name, key, value, None, None, headers)


def acks_when_answered(stream: faust.StreamT) -> set[int]:
    """Make ``stream`` ack only the events whose ids the caller adds to the returned set.

    faust's ``take_events`` acks a batch when its generator closes, also when a stop cancelled
    the agent in the middle of the batch; the consumer then committed frames that were never
    answered, and the next owner of the partition started after them (a helper's rollout
    audit, stop 45: 9 frames in 3 of 14 stops; ``tests/test_stop_mid_batch.py`` lost all 8).
    An event left out is not committed, and whoever owns its partition next replays it.
    """
    answered: set[int] = set()
    ack = stream.ack

    async def ack_if_answered(event: Any) -> bool:
        if id(event) not in answered:
            return False
        answered.discard(id(event))
        return await ack(event)

    stream.ack = ack_if_answered  # type: ignore[method-assign]  # what take_events calls
    return answered


_CRASHES = "agent_crashes:"


def agent_crashes(metrics: Mapping[str, int]) -> dict[str, int]:
    """``{agent: crashes}`` from a worker's counters (:func:`count_crashes`), for its health
    file: ``mlink run`` sums them over its workers into the run summary."""
    return {k[len(_CRASHES) :]: int(n) for k, n in metrics.items() if k.startswith(_CRASHES)}


def count_crashes(mlink: MLink, agent: str) -> Callable[[AgentFun], AgentFun]:
    """Wrap an agent's function so that a crash is counted (``mlink_agent_crashes_total{agent}``,
    the worker's metrics) before faust restarts the agent. Faust logs a crash in the worker log
    only, and a controller that crashed every 5 s for minutes kept the pipeline in warm-up with
    nothing an operator's dashboard could see. (Not faust's ``on_error``: the app sets its own,
    which the consumer needs.)"""

    def wrap(fun: AgentFun) -> AgentFun:
        @functools.wraps(fun)
        async def run(stream: Any) -> None:
            try:
                await fun(stream)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                mlink.metrics[f"{_CRASHES}{agent}"] += 1
                mlink.prom.agent_crashes.labels(agent).inc()
                log.error(
                    "agent %s crashed (faust restarts it): %s: %s", agent, type(exc).__name__, exc
                )
                raise

        return run

    return wrap


def verified_value(mlink: MLink, event: Any) -> bytes:
    """The event's value once its signature checks out (signed topics only); raises
    :class:`~mlink.topics.signing.SignatureError`, a DecodeError, when it does not."""
    return verified(mlink, event.message.topic, event.key, event.value, event.headers)


def verified(mlink: MLink, topic: str, key: bytes | None, value: bytes, headers: Any) -> bytes:
    """:func:`verified_value` of a record as any Kafka client gives it."""
    if mlink.signer.enabled and topic in signed_topics(mlink.names):
        mlink.signer.verify(topic, key, value, headers or [])
    return value


def groupless_consumer(app: faust.App, mlink: MLink) -> AIOKafkaConsumer:
    """An aiokafka consumer in no group (not started) on ``app``'s broker, with the pipeline's
    limits: for reading a topic's history beside faust's consumer (the control log, the
    samples before a handover)."""
    return AIOKafkaConsumer(
        enable_auto_commit=False,
        fetch_max_wait_ms=200,
        **kafka_client_kwargs(app),
        **mlink.limits.aiokafka_consumer_kwargs(),
    )


def kafka_client_kwargs(app: faust.App) -> dict[str, Any]:
    """Bootstrap servers and auth of ``app``'s broker, for extra aiokafka clients of ours."""
    conf = app.conf
    return {
        "bootstrap_servers": server_list(conf.broker, 9092),
        **credentials_to_aiokafka_auth(conf.broker_credentials, conf.ssl_context),
    }
