"""The result collector `mlink run` scores: on a broker that outlives a run, only this run's
results (real Tansu broker, no workers)."""

from __future__ import annotations

import numpy as np
from kafka import KafkaProducer

from mlink.deploy.runner import ResultCollector
from mlink.topics.codec import encode_record
from mlink.topics.records import FrameResult, ModelResult
from tests.procs import wait_until


def result(frame_id: str, emitted_at: float) -> bytes:
    out = ModelResult(model="m", output=np.zeros(1, np.float32), status="executed")
    return encode_record(
        FrameResult(
            frame_id=frame_id,
            stream_id="cam",
            seq=int(frame_id.split(":")[1]),
            epoch=1,
            results=(out,),
            degraded=False,
            emitted_at=emitted_at,
        )
    )


def test_a_run_reads_only_the_results_written_after_it_started(broker, topic_factory) -> None:
    topic = topic_factory("results", partitions=2)
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, acks="all")
    try:
        for seq in range(3):  # an earlier run of the same source: the same frame ids
            producer.send(topic, key=b"cam", value=result(f"cam:{seq}", 1.0)).get(10)
        everything = ResultCollector(broker.bootstrap, topic)
        new = ResultCollector(broker.bootstrap, topic, only_new=True)
        try:
            for seq in range(3):
                producer.send(topic, key=b"cam", value=result(f"cam:{seq}", 2.0)).get(10)
            ids = {f"cam:{seq}" for seq in range(3)}
            assert new.wait_for(ids, 30) and everything.wait_for(ids, 30)
            assert wait_until(lambda: everything.duplicates == 3, 30)
            assert everything.duplicates_of(["cam:0", "cam:0", "cam:9"]) == 1  # cam:9 not sent
            assert {r.emitted_at for r in new.results.values()} == {2.0}  # this run's
            assert new.duplicates == 0
            assert {r.emitted_at for r in everything.results.values()} == {1.0}  # the old ones
        finally:
            new.close()
            everything.close()
    finally:
        producer.close()


def test_an_earlier_runs_last_batch_is_not_taken_for_this_run(broker, topic_factory) -> None:
    """Tansu reports a multi-record batch's end as its first offset plus one: an earlier run's
    results written as one batch must not be read as this run's (mlink run twice on one broker
    kept 3 stale results of 4 and dropped this run's as duplicates)."""
    topic = topic_factory("results", partitions=1)
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, acks="all", linger_ms=50)
    try:
        for seq in range(4):  # an earlier run of the same source, in one batch
            producer.send(topic, key=b"cam", value=result(f"cam:{seq}", 1.0))
        producer.flush(10)
        new = ResultCollector(broker.bootstrap, topic, only_new=True)
        try:
            for seq in range(4):
                producer.send(topic, key=b"cam", value=result(f"cam:{seq}", 2.0)).get(10)
            assert new.wait_for({f"cam:{seq}" for seq in range(4)}, 30)
            assert {r.emitted_at for r in new.results.values()} == {2.0}
            assert new.duplicates == 0
        finally:
            new.close()
    finally:
        producer.close()
