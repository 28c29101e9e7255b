"""A cascade on the real broker: with ``links.cascades`` the controller plans an expensive
detector to run only where a cheap one finds anything, and the worker runs it exactly there,
after the cheap one, on the same frame; everywhere else it is drawn from the cheap one's head.
When that model crashes on some frames and bad records arrive amid a backlog, every frame still
gets exactly one result (degraded, with the crash, where the cascade's model failed)."""

from __future__ import annotations

from typing import Any

import pytest
from kafka import KafkaProducer
from rich.console import Console

from mlink.deploy.pipeline_status import status
from mlink.deploy.runner import ResultCollector, read_control
from mlink.deploy.source import FrameProducer
from mlink.deploy.status_view import render_status
from mlink.deploy.topics_setup import create_pipeline_topics
from mlink.linkstore.schedule import Schedule
from tests.test_hardening_e2e import poison_records
from tests.test_pipeline_e2e import (
    APP,
    FAST_MODELS,
    dead_letters,
    executed,
    wait_results,
    worker_env,
    write_config,
)
from tests.test_stream_e2e import warm_up_then_plan
from tests.test_stream_faults import send_backlog, settle

pytestmark = pytest.mark.broker

BOXES = {"kind": "boxes", "max_boxes": 8}
CASCADE_MODELS = [
    {"name": n, "factory": "tests.cascade_models:ink", "args": {"name": n}, "output": BOXES,
     "cost": {"ms": ms}}
    for n, ms in (("ink", 1.0), ("ink_detail", 400.0))
]  # fmt: skip


def test_a_cascade_runs_its_model_only_where_the_source_fires(
    broker: Any, faust_worker: Any, tmp_path: Any
) -> None:
    path, config = write_config(
        tmp_path,
        "cascade",
        FAST_MODELS,
        partitions=2,
        warmup_frames=24,
        output_timeout_s=5.0,
        fraction=0.7,  # room for the cascade (about 60% of the frames), not for every frame
        links={"stream": True, "probe_stride": 3, "cascades": True},
        extra_models=CASCADE_MODELS,
    )
    create_pipeline_topics(config, broker.bootstrap)
    worker = faust_worker(APP, worker_env(path, broker.bootstrap, tmp_path / "faust"))
    collector = ResultCollector(broker.bootstrap, config.topics.names().results)
    try:
        worker.wait_ready()
        with FrameProducer(broker.bootstrap, config.topics.names().frames) as frames:
            planned = warm_up_then_plan(worker, collector, frames)
        _, control = read_control(broker.bootstrap, config)
        plan = next(m for m in control if m.kind == "active_set" and m.epoch == 1)
        schedule = Schedule.from_extra(plan.extra, config.model_names)
        assert schedule.mode("ink_detail").key() == "gate(ink)", plan.extra["plan"]
        assert schedule.periods["ink"] == 1
        fired = skipped = 0
        for frame_id in planned:
            result = collector.results[frame_id]
            assert not result.degraded, frame_id
            assert all(r.status != "missing" for r in result.results)
            if result.epoch != 1 or result.probe:
                continue
            outputs = {r.model: r.output for r in result.results}
            fires = len(outputs["ink"]) > 0
            expected = schedule.runs(result.seq) | ({"ink_detail"} if fires else set())
            assert set(executed(result)) == expected, frame_id
            fired += fires
            skipped += not fires
        assert fired and skipped, (fired, skipped)  # it ran on some frames and not on others
        assert collector.duplicates == 0
        assert not dead_letters(broker.bootstrap, config)
        report = status(broker.bootstrap, config)
        assert report["schedule"]["ink_detail"].endswith("where ink finds anything, head(ink)")
        console = Console(width=160, record=True)
        render_status(report, console)
        assert "where ink finds anything" in console.export_text()
    finally:
        collector.close()


BACKLOG = range(52, 100)  # 48 frames per stream, sent at once after the first plan
TRIGGERED = set(range(52, 100, 2))  # ink_detail crashes on these (when it runs on them)


def test_a_cascade_model_that_crashes_and_bad_records_lose_no_frame(
    broker: Any, faust_worker: Any, tmp_path: Any
) -> None:
    flaky = [
        {**m, "factory": "tests.cascade_models:flaky_ink"} if m["name"] == "ink_detail" else m
        for m in CASCADE_MODELS
    ]
    path, config = write_config(
        tmp_path,
        "cascade-faults",
        FAST_MODELS,
        partitions=2,
        warmup_frames=24,
        output_timeout_s=5.0,
        fraction=0.7,
        links={"stream": True, "probe_stride": 3, "cascades": True},
        extra_models=flaky,
    )
    names = config.topics.names()
    create_pipeline_topics(config, broker.bootstrap)
    worker = faust_worker(APP, worker_env(path, broker.bootstrap, tmp_path / "faust"))
    collector = ResultCollector(broker.bootstrap, names.results)
    producer = KafkaProducer(
        bootstrap_servers=broker.bootstrap, acks="all", max_request_size=8 * 1024 * 1024
    )
    poison = {k: poison_records()[k] for k in ("garbage", "3 MB record")}
    try:
        worker.wait_ready()
        sent: dict[str, tuple[str, int, int]] = {}
        with FrameProducer(broker.bootstrap, names.frames) as frames:
            warm_up_then_plan(worker, collector, frames)

            def bad_record(seq: int) -> None:  # two, in the middle of the backlog
                if what := {60: "garbage", 80: "3 MB record"}.get(seq):
                    meta = producer.send(names.frames, key=b"a", value=poison[what]).get(10)
                    sent[what] = (meta.topic, meta.partition, meta.offset)

            backlog = send_backlog(frames, BACKLOG, TRIGGERED, bad_record)
            wait_results(collector, set(backlog), 240, [worker])
        settle(broker, config, worker, collector, len(sent))
        letters = {(d.topic, d.partition, d.offset) for d in dead_letters(broker.bootstrap, config)}
        assert set(sent.values()) <= letters, (sent, letters)

        _, control = read_control(broker.bootstrap, config)
        sets = {m.epoch: m for m in control if m.kind == "active_set"}
        crashed = ran_later = 0
        for frame_id in backlog:
            result = collector.results[frame_id]
            assert all(r.status != "missing" for r in result.results), frame_id
            detail = next(r for r in result.results if r.model == "ink_detail")
            if result.epoch not in sets:
                continue
            schedule = Schedule.from_extra(sets[result.epoch].extra, config.model_names)
            fires = len(next(r for r in result.results if r.model == "ink").output) > 0
            asked = (
                result.probe
                or "ink_detail" in schedule.runs(result.seq)
                or (fires and schedule.mode("ink_detail").kind == "gate")
            )
            if result.seq in TRIGGERED and asked:
                crashed += 1
                assert result.degraded, frame_id
                assert detail.status == "synthesized", (frame_id, detail)
                assert "ink_detail crashed" in (detail.error or ""), (frame_id, detail)
            elif asked and crashed and detail.status == "executed":
                ran_later += 1  # one crash does not switch the cascade off
        assert crashed, "the cascade never ran ink_detail on a frame it crashes on"
        assert ran_later, "ink_detail never ran again after it crashed"
    finally:
        producer.close()
        collector.close()
