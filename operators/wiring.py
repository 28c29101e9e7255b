"""Small pieces every agent module needs to talk to Kafka through faust."""

from __future__ import annotations

from typing import Any

import faust
from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth, server_list

from mlink.operators.dead_letters import DeadLetters
from mlink.operators.runtime import MLink

__all__ = ["dead_letters", "kafka_client_kwargs", "raw_topic"]


def raw_topic(app: faust.App, name: str) -> faust.TopicT:
    """A topic of raw bytes: every operator decodes values itself, to dead-letter what fails."""
    return app.topic(name, key_serializer="raw", value_serializer="raw")


def dead_letters(app: faust.App, mlink: MLink) -> DeadLetters:
    """The dead-letter sender of ``app`` for the pipeline's dead-letter topic."""
    topic = raw_topic(app, mlink.names.dead_letter)
    return DeadLetters(
        lambda key, value: topic.send(key=key, value=value),
        mlink.metrics,
        on_dead=mlink.prom.dead_letter,
    )


def kafka_client_kwargs(app: faust.App) -> dict[str, Any]:
    """Bootstrap servers and auth of ``app``'s broker, for extra aiokafka clients of ours."""
    conf = app.conf
    return {
        "bootstrap_servers": server_list(conf.broker, 9092),
        **credentials_to_aiokafka_auth(conf.broker_credentials, conf.ssl_context),
    }
