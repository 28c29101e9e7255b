"""Broker set-ups that stall a pipeline without an error: two pipelines under one name (one
consumer group), and a control topic with several partitions (an app started before its topics)."""

from __future__ import annotations

import time
from pathlib import Path

import yaml

from mlink.deploy.config import load_config
from mlink.deploy.topics_setup import create_pipeline_topics
from mlink.operators.group_check import foreign_members
from tests.conftest import FaustWorker
from tests.test_pipeline_e2e import APP, FAST_MODELS, worker_env, write_config

WARNING = "holds 1 worker(s) of another pipeline"


def test_members_that_do_not_read_the_pipelines_frames_are_foreign() -> None:
    leader = "p-__assignor-__leader"
    subscriptions = {
        "a": ["staging.frames", "staging.control", leader],
        "b": ["staging.frames", "staging.samples", leader],
        "c": ["prod.frames", "prod.control", leader],
    }
    assert foreign_members(subscriptions, "staging.frames") == {
        "c": sorted(["prod.frames", "prod.control", leader])
    }
    assert foreign_members(subscriptions, "prod.frames").keys() == {"a", "b"}
    assert foreign_members({}, "x") == {}


def test_a_second_pipeline_under_the_same_name_is_named_in_the_leaders_log(
    broker, tmp_path: Path
) -> None:
    first, config = write_config(
        tmp_path, "staging", FAST_MODELS, partitions=1, warmup_frames=8, output_timeout_s=5.0
    )
    second, _ = write_config(
        tmp_path, "prod", FAST_MODELS, partitions=1, warmup_frames=8, output_timeout_s=5.0
    )
    data = yaml.safe_load(second.read_text())
    data["name"] = config.name  # a config copied with its topic prefix changed, not its name
    second.write_text(yaml.safe_dump(data))
    workers = []
    try:
        for tag, path in (("staging", first), ("prod", second)):
            create_pipeline_topics(load_config(path), broker.bootstrap)
            env = worker_env(path, broker.bootstrap, tmp_path / f"faust-{tag}")
            worker = FaustWorker(APP, env, tmp_path / f"{tag}.log", tag)
            workers.append(worker)
            worker.wait_ready()
        # the second worker's join is a rebalance of the shared group; its leader warns
        deadline = time.monotonic() + 120
        while not any(WARNING in w.log() for w in workers) and time.monotonic() < deadline:
            time.sleep(1.0)
        assert any(WARNING in w.log() for w in workers), workers[0].log()[-3000:]
    finally:
        for worker in workers:
            worker.stop()


def test_workers_of_one_pipeline_do_not_warn(broker, tmp_path: Path) -> None:
    path, config = write_config(
        tmp_path, "alone", FAST_MODELS, partitions=2, warmup_frames=8, output_timeout_s=5.0
    )
    create_pipeline_topics(config, broker.bootstrap)
    workers = []
    try:
        for i in range(2):
            env = worker_env(path, broker.bootstrap, tmp_path / f"faust-{i}")
            workers.append(FaustWorker(APP, env, tmp_path / f"w{i}.log", f"w{i}"))
            workers[-1].wait_ready()
        time.sleep(12.0)  # past the second join's rebalance
        assert not any("another pipeline" in w.log() for w in workers)
    finally:
        for worker in workers:
            worker.stop()


def test_a_control_topic_with_several_partitions_stops_the_worker_with_the_fix(
    broker, tmp_path: Path
) -> None:
    """An app started before its topics were created: the broker made the control topic with
    its default partition count, and no plan could ever be seen. The worker says so and ends."""
    from kafka.admin import KafkaAdminClient, NewTopic

    path, config = write_config(
        tmp_path, "auto", FAST_MODELS, partitions=1, warmup_frames=8, output_timeout_s=5.0
    )
    admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
    try:
        admin.create_topics([NewTopic(config.topics.names().control, 4, 1)])
    finally:
        admin.close()
    env = worker_env(path, broker.bootstrap, tmp_path / "faust")
    worker = FaustWorker(APP, env, tmp_path / "w.log", "w0")
    try:
        worker.proc.wait(timeout=180)  # it ends itself
        said = " ".join(worker.log().split())
        assert "has 4 partitions; MLink needs exactly one" in said, worker.log_tail()
        assert "ensure_topics" in said
    finally:
        worker.stop()
