"""Record signatures: what they bind (topic, key, value), rotation, header shapes, and that the
Kafka clients and the embedded broker carry the header end to end."""

from __future__ import annotations

import asyncio
import time

import pytest

from mlink.topics.names import TopicNames
from mlink.topics.records import DecodeError
from mlink.topics.signing import (
    SIGNATURE_HEADER,
    SIGNING_KEY_ENV,
    SignatureError,
    Signer,
    signed_topics,
)

KEY_A = b"a" * 32
KEY_B = b"b" * 32
TOPIC, KEY, VALUE = "mlink.control", b"active_set", b"\x85msgpack..."


def test_a_signed_record_verifies() -> None:
    signer = Signer([KEY_A])
    headers = signer.sign(TOPIC, KEY, VALUE)
    assert [name for name, _ in headers] == [SIGNATURE_HEADER]
    assert headers[0][1].startswith(b"v1=") and len(headers[0][1]) == 3 + 64
    signer.verify(TOPIC, KEY, VALUE, headers)
    signer.verify(TOPIC, None, VALUE, signer.sign(TOPIC, None, VALUE))


@pytest.mark.parametrize(
    ("topic", "key", "value"),
    [
        ("mlink.outputs", KEY, VALUE),  # replayed onto another topic
        (TOPIC, b"budget", VALUE),  # key swapped
        (TOPIC, None, VALUE),  # key dropped
        (TOPIC, b"", VALUE),  # key emptied: not the same as no key
        (TOPIC, KEY, VALUE + b"\x00"),  # value changed
        ("mlink.contro", b"lactive_set", VALUE),  # bytes moved across the boundary
    ],
)
def test_the_signature_binds_topic_key_and_value(
    topic: str, key: bytes | None, value: bytes
) -> None:
    signer = Signer([KEY_A])
    headers = signer.sign(TOPIC, KEY, VALUE)
    with pytest.raises(SignatureError, match="bad signature"):
        signer.verify(topic, key, value, headers)


def test_unsigned_and_doubly_signed_records_are_rejected_as_decode_errors() -> None:
    signer = Signer([KEY_A])
    for headers in (None, [], [("other", b"x")], {}):
        with pytest.raises(SignatureError, match=r"unsigned record on 'mlink\.control'") as info:
            signer.verify(TOPIC, KEY, VALUE, headers)
        assert isinstance(info.value, DecodeError)  # dead-lettered like unreadable input
    twice = signer.sign(TOPIC, KEY, VALUE) * 2
    with pytest.raises(SignatureError, match="carries 2 signatures"):
        signer.verify(TOPIC, KEY, VALUE, twice)
    with pytest.raises(SignatureError, match="bad signature"):
        signer.verify(TOPIC, KEY, VALUE, [(SIGNATURE_HEADER, None)])


def test_another_deployments_key_does_not_verify() -> None:
    headers = Signer([KEY_B]).sign(TOPIC, KEY, VALUE)
    with pytest.raises(SignatureError, match="bad signature"):
        Signer([KEY_A]).verify(TOPIC, KEY, VALUE, headers)


def test_key_rotation_signs_with_the_first_and_accepts_any() -> None:
    old, rolling, new = Signer([KEY_A]), Signer([KEY_B, KEY_A]), Signer([KEY_B])
    rolling.verify(TOPIC, KEY, VALUE, old.sign(TOPIC, KEY, VALUE))  # old writers still accepted
    new.verify(TOPIC, KEY, VALUE, rolling.sign(TOPIC, KEY, VALUE))  # rolling writers use the new
    with pytest.raises(SignatureError):
        new.verify(TOPIC, KEY, VALUE, old.sign(TOPIC, KEY, VALUE))


def test_headers_in_every_client_shape() -> None:
    signer = Signer([KEY_A])
    (name, value) = signer.sign(TOPIC, KEY, VALUE)[0]
    for headers in (
        [(name, value)],  # kafka-python, aiokafka
        ((name, value), ("trace", b"1")),
        {name: value},  # faust may hand a dict
        [(name.encode(), value)],  # names as bytes
        [(name, bytearray(value))],
    ):
        signer.verify(TOPIC, KEY, VALUE, headers)


def test_without_keys_signing_is_off() -> None:
    signer = Signer.from_env({})
    assert not signer.enabled and signer.sign(TOPIC, KEY, VALUE) == []
    signer.verify(TOPIC, KEY, VALUE, None)


def test_keys_come_from_the_environment() -> None:
    signer = Signer.from_env({SIGNING_KEY_ENV: f" {KEY_B.decode()} , {KEY_A.decode()} "})
    assert signer.enabled and repr(signer) == "Signer(2 keys)"
    Signer([KEY_B]).verify(TOPIC, KEY, VALUE, signer.sign(TOPIC, KEY, VALUE))
    with pytest.raises(ValueError, match=rf"{SIGNING_KEY_ENV}: signing key 0 must be at least 16"):
        Signer.from_env({SIGNING_KEY_ENV: "short"})
    assert KEY_A.decode() not in repr(signer)


def test_the_steering_topics_are_signed() -> None:
    names = TopicNames.with_prefix("p")
    assert signed_topics(names) == {"p.control", "p.planned", "p.outputs", "p.samples"}


def test_signing_a_large_value_is_fast() -> None:
    signer = Signer([KEY_A, KEY_B])
    value = bytes(2 * 1024 * 1024)
    started = time.perf_counter()
    signer.verify(TOPIC, KEY, value, signer.sign(TOPIC, KEY, value))
    assert time.perf_counter() - started < 5.0  # generous: ~10 ms on the dev machine


# -- the header crosses the real broker -------------------------------------------------------


@pytest.mark.broker
def test_signature_headers_survive_the_broker_and_every_client(broker, topic_factory) -> None:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
    from aiokafka import TopicPartition as AioTopicPartition
    from kafka import KafkaConsumer, KafkaProducer, TopicPartition

    topic = topic_factory("signed")
    signer = Signer([KEY_A])
    records = [(b"k1", b"from kafka-python"), (None, b"from aiokafka")]

    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, acks="all")
    try:
        key, value = records[0]
        producer.send(topic, key=key, value=value, headers=signer.sign(topic, key, value))
        producer.flush(timeout=10)
    finally:
        producer.close(timeout=5)

    async def aiokafka_round_trip() -> list:
        aproducer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, acks="all")
        await aproducer.start()
        try:
            key, value = records[1]
            await aproducer.send_and_wait(
                topic, key=key, value=value, headers=signer.sign(topic, key, value)
            )
        finally:
            await aproducer.stop()
        consumer = AIOKafkaConsumer(bootstrap_servers=broker.bootstrap, enable_auto_commit=False)
        await consumer.start()
        try:
            tp = AioTopicPartition(topic, 0)
            consumer.assign([tp])
            await consumer.seek_to_beginning(tp)
            got: list = []
            deadline = time.monotonic() + 30
            while len(got) < 2 and time.monotonic() < deadline:
                batch = await consumer.getmany(tp, timeout_ms=500)
                got.extend(batch.get(tp, []))
            return got
        finally:
            await consumer.stop()

    from_aiokafka = asyncio.run(aiokafka_round_trip())

    consumer = KafkaConsumer(bootstrap_servers=broker.bootstrap, enable_auto_commit=False)
    try:
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        consumer.seek_to_beginning(tp)
        from_kafka_python: list = []
        deadline = time.monotonic() + 30
        while len(from_kafka_python) < 2 and time.monotonic() < deadline:
            from_kafka_python.extend(consumer.poll(timeout_ms=500).get(tp, []))
    finally:
        consumer.close()

    for received in (from_aiokafka, from_kafka_python):
        assert [(r.key, r.value) for r in received] == records
        for r in received:
            assert [name for name, _ in r.headers] == [SIGNATURE_HEADER]
            signer.verify(topic, r.key, r.value, r.headers)
            with pytest.raises(SignatureError):
                signer.verify(topic + "-other", r.key, r.value, r.headers)


@pytest.mark.broker
def test_a_faust_agent_verifies_and_signs_records_near_the_size_limit(
    broker, topic_factory, faust_worker
) -> None:
    """Issue 9: a 1.52 MB frame crashed faust's producer (1 MB); with Limits.faust_settings
    records up to the limit pass, and event.headers carry the signature through faust."""
    import uuid

    from kafka import KafkaConsumer, KafkaProducer, TopicPartition

    from mlink.topics.limits import DEFAULT_LIMITS

    config = DEFAULT_LIMITS.topic_config()
    source, sink = topic_factory("relay-in", 1, config), topic_factory("relay-out", 1, config)
    env = {
        "MLINK_FAUST_APP_ID": f"relay-{uuid.uuid4().hex[:8]}",
        "MLINK_RELAY_IN": source,
        "MLINK_RELAY_OUT": sink,
        SIGNING_KEY_ENV: KEY_A.decode(),
    }
    worker = faust_worker("tests.faust_apps.signed_relay_app", env)
    worker.wait_ready(timeout=60)
    signer = Signer([KEY_A])
    big = bytes(range(256)) * (DEFAULT_LIMITS.max_record_bytes // 256)  # exactly the limit
    sent = [
        (b"good", b"small", signer.sign(source, b"good", b"small")),
        (b"big", big, signer.sign(source, b"big", big)),
        (b"unsigned", b"x", []),
        (b"moved", b"x", signer.sign(sink, b"moved", b"x")),  # signed for another topic
    ]
    producer = KafkaProducer(
        bootstrap_servers=broker.bootstrap, acks="all", **DEFAULT_LIMITS.kafka_producer_kwargs()
    )
    try:
        for key, value, headers in sent:
            producer.send(source, key=key, value=value, headers=headers)
        producer.flush(timeout=30)
    finally:
        producer.close(timeout=5)

    consumer = KafkaConsumer(
        bootstrap_servers=broker.bootstrap,
        enable_auto_commit=False,
        **DEFAULT_LIMITS.kafka_consumer_kwargs(),
    )
    try:
        tp = TopicPartition(sink, 0)
        consumer.assign([tp])
        consumer.seek_to_beginning(tp)
        out: list = []
        deadline = time.monotonic() + 60
        while len(out) < 4 and time.monotonic() < deadline:
            out.extend(consumer.poll(timeout_ms=500).get(tp, []))
    finally:
        consumer.close()
    assert [r.key for r in out] == [b"good", b"big", b"rejected", b"rejected"], worker.log_tail()
    for r in out[:2]:
        signer.verify(sink, r.key, r.value, r.headers)
    assert out[1].value == big
    assert b"unsigned record" in out[2].value and b"bad signature" in out[3].value


def test_restating_the_control_state_survives_retiring_the_old_key(broker, tmp_path, monkeypatch):
    """Review: after ``new,old`` then ``new``, a restarting worker skipped the whole control
    history signed with the old key and warmed up again from nothing; ``mlink resign`` between
    the two steps publishes the state in force again under the new key."""
    from mlink.deploy.key_rotation import restate_control
    from mlink.deploy.link_pins import pin_message
    from mlink.deploy.pipeline_status import status
    from mlink.deploy.runner import publish_control, read_control
    from mlink.deploy.topics_setup import create_pipeline_topics
    from mlink.topics.records import ControlMessage
    from tests.test_pipeline_e2e import FAST_MODELS, write_config

    old, new = "o" * 32, "n" * 32
    _, config = write_config(
        tmp_path, "resign", FAST_MODELS, partitions=1, warmup_frames=8, output_timeout_s=5.0
    )
    create_pipeline_topics(config, broker.bootstrap)
    monkeypatch.setenv("MLINK_SIGNING_KEY", old)
    a = FAST_MODELS[0]
    for message in (
        ControlMessage(kind="link_version", epoch=0, issued_at=1.0, link_version=3),
        ControlMessage(
            kind="active_set",
            epoch=1,
            issued_at=2.0,
            active=(a,),
            budget={"fraction": 0.3},
            link_version=3,
            extra={"objective": 0.9},
        ),
        ControlMessage(kind="budget", epoch=1, issued_at=3.0, budget={"fraction": 0.2}),
        pin_message(2, True),  # mlink links --pin 2
    ):
        publish_control(broker.bootstrap, config, message)

    monkeypatch.setenv("MLINK_SIGNING_KEY", f"{new},{'x' * 32}")  # the old key forgotten
    with pytest.raises(ValueError, match="none of the control topic's records verifies"):
        restate_control(broker.bootstrap, config)  # it said "nothing to restate", rc 0
    assert status(broker.bootstrap, config)["unverified_control"] == 4

    monkeypatch.setenv("MLINK_SIGNING_KEY", f"{new},{old}")  # step 1: both keys everywhere
    kinds = [m.kind for m in restate_control(broker.bootstrap, config)]
    assert kinds == ["budget", "link_version", "active_set", "link_version"]  # the pin last

    monkeypatch.setenv("MLINK_SIGNING_KEY", new)  # step 2: the old key retired
    state, _ = read_control(broker.bootstrap, config)
    assert (state.epoch, state.active, state.link_version, state.latest_links) == (2, (a,), 3, 3)
    assert state.pinned_links == 2
    assert state.requested_budget == {"fraction": 0.2} and not state.budget_from_config
    assert state.plan_extra == {"objective": 0.9}


def test_turning_signing_on_restates_an_unsigned_log(broker, tmp_path, monkeypatch) -> None:
    """Review: with a key set, every unsigned record is refused, so turning signing on sent
    every restarting worker back to a warm-up, and resign's advice led nowhere."""
    from mlink.deploy.key_rotation import restate_control
    from mlink.deploy.runner import publish_control, read_control
    from mlink.deploy.topics_setup import create_pipeline_topics
    from mlink.topics.records import ControlMessage
    from tests.test_pipeline_e2e import FAST_MODELS, write_config

    _, config = write_config(
        tmp_path, "signon", FAST_MODELS, partitions=1, warmup_frames=8, output_timeout_s=5.0
    )
    create_pipeline_topics(config, broker.bootstrap)
    monkeypatch.delenv("MLINK_SIGNING_KEY", raising=False)
    plan = ControlMessage(
        kind="active_set",
        epoch=1,
        issued_at=2.0,
        active=(FAST_MODELS[0],),
        budget={"fraction": 0.3},
        link_version=3,
    )
    for message in (
        ControlMessage(kind="link_version", epoch=0, issued_at=1.0, link_version=3),
        plan,
    ):
        publish_control(broker.bootstrap, config, message)
    monkeypatch.setenv("MLINK_SIGNING_KEY", "k" * 32)
    with pytest.raises(ValueError, match="--from-unsigned"):
        restate_control(broker.bootstrap, config)
    kinds = [m.kind for m in restate_control(broker.bootstrap, config, from_unsigned=True)]
    assert kinds == ["link_version", "active_set"]
    state, _ = read_control(broker.bootstrap, config)  # as a worker with the key replays it
    assert (state.epoch, state.link_version, state.active) == (2, 3, (FAST_MODELS[0],))
