"""What `mlink status` reads, on the real broker: a topic's real end, past Tansu's short end
offset after a batch of several records (docs/broker.md)."""

from __future__ import annotations

from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from mlink.deploy.pipeline_status import read_to_end


def test_read_to_end_finds_the_last_record_of_a_batch(broker, topic_factory):
    topic = topic_factory("status")
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, acks="all", linger_ms=50)
    producer.send(topic, b"alone").get(timeout=30)  # offset 0, a batch of its own
    sent = [producer.send(topic, f"r{i}".encode()) for i in range(4)]  # one batch, offsets 1-4
    producer.flush()
    assert [f.get().offset for f in sent] == [1, 2, 3, 4]
    producer.close()

    tp = TopicPartition(topic, 0)
    consumer = KafkaConsumer(bootstrap_servers=broker.bootstrap, enable_auto_commit=False)
    try:
        begins, ends, records = read_to_end(consumer, [tp], back=2, keep=3)
    finally:
        consumer.close()
    assert (begins[tp], ends[tp]) == (0, 5)  # Tansu's ListOffsets alone says 2
    # from 2 before the reported end to the real one, the last 3 kept (a suffix of the log)
    values = [r.value for r in records]
    everything = [b"alone", b"r0", b"r1", b"r2", b"r3"]
    assert 2 <= len(values) <= 3 and values == everything[-len(values) :]
