"""`mlink exporter`: a pipeline's lag, live workers and dead letters for Prometheus, read from
the broker, so they are there when no worker runs (each worker exports only its own lag, and
with every worker down those series vanished: an SRE's audit, stop 43). On the real broker;
the collector's own logic without one."""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from kafka import KafkaProducer
from prometheus_client.parser import text_string_to_metric_families

from mlink.deploy.config import with_broker
from mlink.deploy.status_exporter import Exporter, Look, PipelineCollector, look
from mlink.deploy.topics_setup import create_pipeline_topics
from tests.test_pipeline_e2e import FAST_MODELS, write_config


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_the_lag_of_a_pipeline_with_no_worker_is_served(broker: Any, tmp_path: Path) -> None:
    _, config = write_config(
        tmp_path, "exporter", FAST_MODELS, partitions=2, warmup_frames=8, output_timeout_s=5.0
    )
    names = config.topics.names()
    create_pipeline_topics(config, broker.bootstrap)
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, acks="all", linger_ms=20)
    for i in range(7):  # frames from cameras, and nobody reads them
        producer.send(names.frames, f"frame {i}".encode(), partition=i % 2)
    for i in range(3):
        producer.send(names.dead_letter, f"letter {i}".encode())
    producer.flush()
    producer.close()

    exporter = Exporter(PipelineCollector(broker.bootstrap, config, every_s=60.0), port=0)
    try:
        metrics = scrape(exporter.port)
    finally:
        exporter.close()
    assert metrics[("mlink_pipeline_up", ())] == 1.0
    assert metrics[("mlink_pipeline_consumer_lag", (("topic", names.frames),))] == 7
    assert metrics[("mlink_pipeline_consumer_lag", (("topic", names.samples),))] == 0
    assert metrics[("mlink_pipeline_workers", ())] == 0  # an alert can say so, not miss a series
    assert metrics[("mlink_pipeline_workers_on_other_models", ())] == 0
    assert metrics[("mlink_pipeline_dead_letters", ())] == 3
    assert metrics[("mlink_pipeline_look_timestamp_seconds", ())] > time.time() - 120


def test_a_broker_that_does_not_answer_reads_as_down(tmp_path: Path) -> None:
    _, config = write_config(
        tmp_path, "exporter-down", FAST_MODELS, partitions=1, warmup_frames=8, output_timeout_s=5
    )
    seen = look("127.0.0.1:1", config)  # nothing listens on port 1
    assert not seen.up and seen.lag == {} and seen.dead_letters is None


def test_the_collector_serves_the_newest_look_and_survives_a_failing_one() -> None:
    looks = iter([Look(1.0, 0.1, True, {"frames": 4}, 2, 1, 0)])

    def looker() -> Look:
        return next(looks)  # the second look raises StopIteration: a look that failed

    collector = PipelineCollector("unused:9092", None, looker=looker)  # type: ignore[arg-type]
    assert list(collector.collect()) == []  # before the first look: nothing, not zeros
    collector.refresh()
    served = {s.name: s.value for f in collector.collect() for s in f.samples}
    assert served["mlink_pipeline_consumer_lag"] == 4 and served["mlink_pipeline_up"] == 1
    assert served["mlink_pipeline_workers_on_other_models"] == 1
    collector.refresh()
    served = {s.name: s.value for f in collector.collect() for s in f.samples}
    assert served["mlink_pipeline_up"] == 0  # down: no stale lag or worker counts
    assert "mlink_pipeline_consumer_lag" not in served and "mlink_pipeline_workers" not in served


def test_a_group_unsettled_across_looks_is_timed_until_it_settles() -> None:
    def seen(at: float, state: str | None, workers: int = 2, up: bool = True) -> Look:
        return Look(at, 0.1, up, {"frames": 0}, workers, group_state=state)

    looks = iter([seen(10, "Stable"), seen(40, "Unknown"), seen(70, "Unknown"),
                  seen(100, None, up=False), seen(130, "Unknown"), seen(160, "Stable"),
                  seen(190, "Empty", workers=0)])  # fmt: skip
    collector = PipelineCollector("unused:9092", None, looker=lambda: next(looks))  # type: ignore[arg-type]
    timed = []
    for _ in range(7):
        collector.refresh()
        served = {s.name: s.value for f in collector.collect() for s in f.samples}
        timed.append(served.get("mlink_pipeline_group_unsettled_seconds"))
    # a failed look serves nothing and does not end the count; no workers is not unsettled
    assert timed == [0.0, 0.0, 30.0, None, 90.0, 0.0, 0.0]


def test_the_command_serves_until_sigterm(broker: Any, tmp_path: Path) -> None:
    path, config = write_config(
        tmp_path, "exporter-cli", FAST_MODELS, partitions=1, warmup_frames=8, output_timeout_s=5
    )
    create_pipeline_topics(with_broker(config, broker.bootstrap), broker.bootstrap)
    log = tmp_path / "exporter.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [
                *(sys.executable, "-m", "mlink.deploy.cli", "exporter", str(path)),
                *("--broker", broker.bootstrap, "--port", "0", "--every", "5"),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 60
        port = None
        while port is None and time.monotonic() < deadline and proc.poll() is None:
            for line in log.read_text().splitlines():
                if "metrics on port" in line:
                    port = int(line.rsplit(" ", 1)[-1])
            time.sleep(0.2)
        assert port is not None, log.read_text()
        assert scrape(port)[("mlink_pipeline_up", ())] == 1.0
        proc.terminate()
        assert proc.wait(30) == 128 + 15, log.read_text()  # stopped, not hung
    finally:
        if proc.poll() is None:
            proc.kill()
