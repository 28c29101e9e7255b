"""A live worker's Prometheus endpoint and health file, scraped over HTTP (real broker)."""

from __future__ import annotations

import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from mlink.deploy.config import PipelineConfig
from mlink.deploy.health import read_health, wait_ready
from mlink.deploy.runner import ResultCollector, read_control
from mlink.deploy.source import FrameProducer
from mlink.deploy.topics_setup import create_pipeline_topics
from mlink.linkstore.content_forecast import ContentTable, frame_signature
from tests.test_pipeline_e2e import (
    APP,
    FAST_MODELS,
    send_frames,
    wait_for_epoch,
    worker_env,
    write_config,
)

pytestmark = pytest.mark.broker


def scrape(port: int) -> dict[str, list[Any]]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {f.name: f.samples for f in text_string_to_metric_families(text)}


def total(families: dict[str, list[Any]], name: str, **labels: str) -> float:
    return sum(
        s.value
        for s in families.get(name, [])
        if s.name.endswith("_total") and all(s.labels.get(k) == v for k, v in labels.items())
    )


def metrics_worker(
    broker: Any, faust_worker: Any, tmp_path: Any, tag: str, **settings: Any
) -> tuple[PipelineConfig, Any, Path, ResultCollector]:
    """A digits pipeline (``settings`` as :func:`write_config` takes them) with one worker that
    serves its metrics on a free port and keeps a health file; its results are collected."""
    path, config = write_config(tmp_path, tag, FAST_MODELS, partitions=2, **settings)
    data = config.model_dump(mode="json")
    data["runtime"]["metrics_port"] = 0
    path.write_text(yaml.safe_dump(data))
    create_pipeline_topics(config, broker.bootstrap)
    health_path = tmp_path / "worker.health.json"
    env = {
        **worker_env(path, broker.bootstrap, tmp_path / "faust"),
        "MLINK_HEALTH": str(health_path),
    }
    collector = ResultCollector(broker.bootstrap, config.topics.names().results)
    return config, faust_worker(APP, env), health_path, collector


def test_a_live_worker_serves_its_metrics_and_health(
    broker: Any, faust_worker: Any, tmp_path: Any
) -> None:
    config, worker, health_path, collector = metrics_worker(
        broker, faust_worker, tmp_path, "metrics", warmup_frames=1000, output_timeout_s=10.0
    )
    try:
        health = wait_ready(health_path, 120, pid=worker.proc.pid)
        assert health.ready and health.metrics_port
        with FrameProducer(broker.bootstrap, config.topics.names().frames) as producer:
            ids = send_frames(producer, ["a", "b"], range(6))
        assert collector.wait_for(set(ids), 60)
        deadline = time.monotonic() + 30
        families = scrape(health.metrics_port)
        while total(families, "mlink_results", outcome="complete") < len(ids):
            assert time.monotonic() < deadline, families.get("mlink_results")
            time.sleep(0.5)
            families = scrape(health.metrics_port)
        assert total(families, "mlink_frames") >= len(ids)
        # every frame answered: none in flight (it kept the last batch's size, an SRE's audit)
        assert [s.value for s in families["mlink_in_flight_frames"]] == [0.0]
        assert [s.value for s in families["mlink_warming_up"]] == [1.0]  # 1000 warm-up frames
        events = {
            s.labels["event"]: s.value
            for s in families["mlink_worker_events"]
            if s.name.endswith("_total")
        }
        assert events["training_failures"] == 0 and events["samples_received"] >= len(ids)
        for model in FAST_MODELS:
            assert total(families, "mlink_model_executions", model=model) >= len(ids)
            latency = [
                s for s in families["mlink_model_latency_seconds"] if s.labels.get("model") == model
            ]
            assert any(s.name.endswith("_count") and s.value >= len(ids) for s in latency)
        assert "mlink_epoch" in families and "mlink_consumer_lag" in families
        assert "process_resident_memory_bytes" in families  # the worker's own memory and CPU
        called = {
            s.labels["model"]: s.value for s in families["mlink_model_last_call_timestamp_seconds"]
        }
        assert all(called[m] > health.started_at - 1 for m in FAST_MODELS), called
        later = wait_ready(health_path, 10, pid=worker.proc.pid)
        assert later.last_heartbeat >= health.last_heartbeat  # the worker keeps beating
        worker.stop()
        # a stopped worker is not ready (it said ready for good after exit: an SRE's audit)
        gone = read_health(health_path)
        assert gone is not None and not gone.ready and gone.extra.get("stopping"), gone
    finally:
        collector.close()


def test_a_live_worker_forecasts_a_paper_link_plan_from_what_its_detectors_find(
    broker: Any, faust_worker: Any, tmp_path: Any
) -> None:
    """The worker's ``mlink_forecast{basis="content"}`` is its plan's content table weighed by
    the signatures of the results it emitted under that plan: the same figure the run summary
    replays from the control log and the results."""
    boxes = {"kind": "boxes", "max_boxes": 8}
    detectors = [
        {"name": n, "factory": "tests.cascade_models:ink", "args": {"name": n}, "output": boxes,
         "cost": {"ms": ms}}
        for n, ms in (("ink", 1.0), ("ink_detail", 400.0))
    ]  # fmt: skip
    config, worker, health_path, collector = metrics_worker(
        broker,
        faust_worker,
        tmp_path,
        "content",
        warmup_frames=24,
        output_timeout_s=10.0,
        fraction=0.1,  # 44 of 443 ms: ink_detail (400 ms) is synthesized, from ink among others
        extra_models=detectors,
    )
    try:
        health = wait_ready(health_path, 120, pid=worker.proc.pid)
        with FrameProducer(broker.bootstrap, config.topics.names().frames) as producer:
            warm = send_frames(producer, ["a", "b"], range(0, 12))
            wait_for_epoch(worker, 1, 180)
            assert collector.wait_for(set(warm), 60)
            planned = send_frames(producer, ["a", "b"], range(12, 52))
        assert collector.wait_for(set(planned), 120)
        deadline = time.monotonic() + 30
        while True:  # the gauge follows the results the worker emitted; settle on its epoch
            families = scrape(health.metrics_port)
            _, control = read_control(broker.bootstrap, config)
            epoch = int(next(s.value for s in families["mlink_epoch"]))
            counted = [r for r in collector.results.values() if r.epoch == epoch]
            plan = next(m for m in control if m.kind == "active_set" and m.epoch == epoch)
            table = ContentTable.from_meta(plan.extra["content"], config.model_names)
            counts = np.zeros(4, dtype=int)
            for r in counted:
                outputs = {x.model: x.output for x in r.results if x.status == "executed"}
                counts[frame_signature(outputs, table.detectors)] += 1
            expected = table.forecast(counts)
            live = {
                s.labels["basis"]: s.value
                for s in families["mlink_forecast"]
                if s.name == "mlink_forecast"
            }
            if live.get("content") == pytest.approx(expected.value, abs=1e-9):
                break
            assert time.monotonic() < deadline, (live, expected, epoch, len(counted))
            time.sleep(0.5)
        assert "ink" in plan.active and table.detectors == ("ink",), plan.active
        assert counts[1] and counts[0], counts  # ink found something on some frames, not all
        unseen = next(s.value for s in families["mlink_unseen_content"])
        assert unseen == pytest.approx(expected.unseen)
        # the plan's cost and the saving it made, in its cost table (an SRE's audit)
        parts = {s.labels["part"]: s.value for s in families["mlink_plan_ms"]}
        assert parts["plan"] <= parts["budget"] < parts["all_models"]
        spent = {
            s.labels["part"]: s.value
            for s in families["mlink_model_ms"]
            if s.name.endswith("_total")
        }
        assert 0 < spent["executed"] < spent["all_models"]
        assert next(s.value for s in families["mlink_warming_up"]) == 0
    finally:
        collector.close()


def test_the_lag_shows_a_backlog_held_back_by_the_warm_up_hold(
    broker: Any, faust_worker: Any, tmp_path: Any
) -> None:
    """An SRE's audit: the lag was the fetcher's high-water mark minus the position, and the
    hold pauses fetching, so the frames that arrived during the hold never showed: it read 0
    on every partition while ~150 frames waited in Kafka. Now it is read from the broker."""
    config, worker, health_path, collector = metrics_worker(
        broker,
        faust_worker,
        tmp_path,
        "lag",
        warmup_frames=8,
        output_timeout_s=10.0,
        links={"epochs": 400, "ensemble_epochs": 100, "hold_s": 30},  # a slow first training
    )
    streams = ["a", "b", "c", "d"]
    try:
        health = wait_ready(health_path, 120, pid=worker.proc.pid)
        with FrameProducer(broker.bootstrap, config.topics.names().frames) as producer:
            ids = send_frames(producer, streams, range(4))  # the warm-up; then the hold
            deadline = time.monotonic() + 120
            while "waiting for the first links" not in worker.log():
                assert time.monotonic() < deadline, worker.log_tail()
                time.sleep(0.2)
            ids += send_frames(producer, streams, range(4, 34))  # 120 while fetching is paused
        seen = 0.0
        while seen < 20:
            assert time.monotonic() < deadline, worker.log_tail()
            assert "now at epoch 1:" not in worker.log(), f"the hold ended; lag seen {seen}"
            time.sleep(1.0)
            families = scrape(health.metrics_port)
            seen = sum(s.value for s in families.get("mlink_consumer_lag", []))
        assert [s.value for s in families["mlink_held_for_links"]] == [1.0]
        # Tansu's end offsets may run up to a produce batch short (docs/broker.md): 20 of 120
        assert collector.wait_for(set(ids), 180)
    finally:
        collector.close()
