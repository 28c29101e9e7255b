"""What `mlink status` reads, on the real broker: a topic's real end, past Tansu's short end
offset after a batch of several records (docs/broker.md)."""

from __future__ import annotations

import io

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from rich.console import Console

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


def test_status_shows_the_plan_the_workers_applied_and_survives_odd_fields(broker, tmp_path):
    """Review: status showed the last ``active_set`` in the log, also one the workers skipped
    (a second controller's message of the same epoch), mixed with the applied plan's active
    set; and a ``predicted`` the workers ignore (not a mapping) crashed it."""
    from mlink.deploy.pipeline_status import status
    from mlink.deploy.runner import publish_control
    from mlink.deploy.status_view import render_status
    from mlink.deploy.topics_setup import create_pipeline_topics
    from mlink.topics.records import ControlMessage
    from tests.test_pipeline_e2e import FAST_MODELS, write_config

    _, config = write_config(
        tmp_path, "status", FAST_MODELS, partitions=1, warmup_frames=8, output_timeout_s=5.0
    )
    create_pipeline_topics(config, broker.bootstrap)
    a, b = FAST_MODELS[:2]

    def plan(epoch: int, active: tuple[str, ...], **extra: object) -> ControlMessage:
        return ControlMessage(
            kind="active_set",
            epoch=epoch,
            issued_at=float(epoch),
            active=active,
            budget={"fraction": 0.3},
            extra={"objective": 0.9, **extra},
        )

    publish_control(broker.bootstrap, config, plan(1, (a,), predicted={a: 1.0, b: 0.8}))
    publish_control(broker.bootstrap, config, plan(1, (b,), predicted={a: 0.5, b: 1.0}))
    seen = status(broker.bootstrap, config)
    assert seen["epoch"] == 1 and seen["active"] == [a]
    assert seen["predicted_agreement"] == {a: 1.0, b: 0.8}  # not the skipped message's
    assert seen["predicted_synthesized"] == {b: 0.8}
    assert seen["workers"]["workers"] == 0  # no worker of this pipeline runs (a real broker)

    publish_control(broker.bootstrap, config, plan(2, (a, b), predicted=[0.5, 1.0], lower="x"))
    seen = status(broker.bootstrap, config)
    assert seen["epoch"] == 2 and seen["predicted_agreement"] is None
    assert seen["predicted_lower"] is None and seen["predicted_synthesized_mean"] is None
    render_status(seen, Console(file=io.StringIO()))  # and `mlink status` prints it


def test_looking_at_a_pipeline_before_its_first_worker_creates_no_topic(broker, tmp_path):
    """An operator's first `mlink status` (or `links`) before any worker ran made the control
    topic by reading it, with the broker's 4 partitions; the trainer's announcement then landed
    on a partition the workers never read, and the pipeline stayed in warm-up for good. Reading
    now creates nothing; a command that writes (`mlink budget`) creates the pipeline's topics
    as a worker would; and a worker refuses a control topic with more than one partition."""
    from typer.testing import CliRunner

    from mlink.deploy.cli import app
    from mlink.deploy.kafka_admin import (
        TopicPartitionsError,
        TopicSpec,
        _topic_name,
        admin_client,
        ensure_topics,
    )
    from mlink.deploy.topics_setup import create_pipeline_topics
    from tests.test_pipeline_e2e import FAST_MODELS, write_config

    def topics() -> dict[str, int]:
        with admin_client(broker.bootstrap) as admin:
            mine = [t for t in admin.list_topics() if t.startswith(config.topics.prefix)]
            return {_topic_name(t): len(t["partitions"]) for t in admin.describe_topics(mine)}

    path, config = write_config(
        tmp_path, "early", FAST_MODELS, partitions=2, warmup_frames=8, output_timeout_s=5.0
    )
    names = config.topics.names()
    cli = CliRunner()
    for command in (["status"], ["status", "--json"], ["links"]):
        result = cli.invoke(app, [*command, str(path), "--broker", broker.bootstrap])
        assert names.control not in topics(), (command, result.output)
        if command == ["status"]:  # it looked like a pipeline warming up
            assert f"no control topic {names.control}" in " ".join(result.output.split())
    budget = ["budget", str(path), "--broker", broker.bootstrap, "--fraction", "0.5", "--wait", "0"]
    result = cli.invoke(app, budget)
    assert result.exit_code == 0, result.output
    made = topics()
    assert (made[names.control], made[names.samples], made[names.frames]) == (1, 1, 2)

    _, other = write_config(
        tmp_path, "wide", FAST_MODELS, partitions=1, warmup_frames=8, output_timeout_s=5.0
    )
    ensure_topics(broker.bootstrap, [TopicSpec(other.topics.names().control, 4)])
    try:
        create_pipeline_topics(other, broker.bootstrap)
    except TopicPartitionsError as exc:
        assert "4 partitions, 1 needed" in str(exc) and "topics.prefix" in str(exc)
    else:
        raise AssertionError("a control topic of 4 partitions was accepted")
