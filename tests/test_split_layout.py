"""The split layout on the real broker: planner, model operator and link operator attached as
separate agents. Frames get one result each with provenance, links train and the budgeted plan
applies, and bad records on the outputs topic (unknown model, NaN, wrong shape, outputs for a
frame no planner saw) are dead-lettered without disturbing any frame."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pytest
from kafka import KafkaProducer

from mlink.deploy.runner import ResultCollector, read_control
from mlink.deploy.source import FrameProducer
from mlink.deploy.topics_setup import create_pipeline_topics
from mlink.linkstore.schedule import Schedule
from mlink.topics.codec import encode_record
from mlink.topics.records import ModelOutput
from tests.test_pipeline_e2e import (
    FAST_MODELS,
    dead_letters,
    executed,
    send_frames,
    wait_results,
    wait_until,
    worker_env,
    write_config,
)
from tests.test_stream_e2e import start_stream_worker, warm_up_then_plan

pytestmark = pytest.mark.broker
SPLIT_APP = "tests.faust_apps.split_app"


def output(frame_id: str, model: str, value: np.ndarray) -> bytes:
    stream, seq = frame_id.split(":")
    record = ModelOutput(
        frame_id=frame_id,
        stream_id=stream,
        seq=int(seq),
        model=model,
        output=value,
        epoch=0,
        elapsed_ms=1.0,
        produced_at=time.time(),
    )
    return encode_record(record)


def _steady(result: Any) -> bool:
    return result.epoch >= 1 and not result.probe


def timed_out(result: Any) -> bool:
    """Whether ``result`` is degraded only because the join waited out its output timeout (5 s
    here), which a loaded machine may cause; any other reason to degrade fails the test."""
    if not result.degraded:
        return False
    errors = [(r.model, r.error) for r in result.results if r.error]
    assert errors and all("no output within" in e for _, e in errors), (result.frame_id, errors)
    return True


def test_split_operators_answer_every_frame_and_dead_letter_bad_outputs(
    broker: Any, faust_worker: Any, tmp_path: Any
) -> None:
    path, config = write_config(
        tmp_path, "split", FAST_MODELS, partitions=2, warmup_frames=16, output_timeout_s=5.0
    )
    names = config.topics.names()
    create_pipeline_topics(config, broker.bootstrap)
    worker = faust_worker(SPLIT_APP, worker_env(path, broker.bootstrap, tmp_path / "faust"))
    collector = ResultCollector(broker.bootstrap, names.results)
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, acks="all")
    try:
        worker.wait_ready()
        with FrameProducer(broker.bootstrap, names.frames) as frames:
            warm = send_frames(frames, ["a", "b"], range(0, 10))
            wait_until(
                "links", lambda: read_control(broker.bootstrap, config)[0].epoch >= 1, 120, worker
            )
            wait_results(collector, set(warm), 60, [worker])
            bad = {
                "unknown model": output(warm[0], "bogus_model", np.ones(2, np.float32)),
                "NaN": output(warm[1], "parity_logreg", np.array([np.nan, 1.0], np.float32)),
                "wrong shape": output(warm[2], "ge5_forest", np.full(5, 0.2, np.float32)),
                "no plan": output("ghost:7", "parity_logreg", np.array([1.0, 0.0], np.float32)),
            }
            places = {}
            for what, value in bad.items():
                meta = producer.send(names.outputs, key=b"a", value=value).get(10)
                places[what] = (meta.topic, meta.partition, meta.offset)
            later = send_frames(frames, ["a", "b"], range(10, 30))
            wait_results(collector, set(later), 90, [worker])
            # A loaded worker may apply the new epoch a little after the broker has it: send
            # more until frames planned under the budgeted plan come back (bounded).
            seq, deadline = 30, time.monotonic() + 120
            while not any(_steady(collector.results[f]) for f in later):
                assert time.monotonic() < deadline, "no frame was planned under the budgeted plan"
                more = send_frames(frames, ["a", "b"], range(seq, seq + 10))
                wait_results(collector, set(more), 90, [worker])
                later, seq = later + more, seq + 10
        deadline = time.monotonic() + 60
        while len(dead_letters(broker.bootstrap, config)) < len(bad):
            assert time.monotonic() < deadline, dead_letters(broker.bootstrap, config)
            time.sleep(0.5)
        letters = {
            (d.topic, d.partition, d.offset): d for d in dead_letters(broker.bootstrap, config)
        }
        phrases = {
            "unknown model": "unknown model 'bogus_model'",
            "NaN": "NaN",
            "wrong shape": "expected shape (2,), got (5,)",
            "no plan": "no plan for frame 'ghost:7'",
        }
        for what, place in places.items():
            assert place in letters and phrases[what] in letters[place].reason, what
            assert letters[place].stage == "link-operator"
        assert "ghost:7" not in collector.results  # it never entered: no result
        assert collector.duplicates == 0
        state, _ = read_control(broker.bootstrap, config)
        synthesized = 0
        for frame_id in later:
            result = collector.results[frame_id]
            if timed_out(result):
                continue
            if _steady(result):
                assert executed(result) == tuple(sorted(state.active)), frame_id
                synthesized += sum(r.status == "synthesized" for r in result.results)
        assert synthesized > 0
    finally:
        producer.close()
        collector.close()


def test_the_link_operator_synthesizes_by_the_stream_schedule_each_frame_was_planned_under(
    broker: Any, faust_worker: Any, tmp_path: Any
) -> None:
    """With ``links.stream`` the split layout plans by the schedule (the planner) and now also
    synthesizes by it (the link operator, from its own per-stream memory): each synthesized
    output names the models its mode used, not the paper's links over whatever ran."""
    config, worker, collector = start_stream_worker(
        SPLIT_APP, "split-stream", broker, faust_worker, tmp_path
    )
    try:
        worker.wait_ready()
        with FrameProducer(broker.bootstrap, config.topics.names().frames) as frames:
            planned = warm_up_then_plan(worker, collector, frames)
        _, control = read_control(broker.bootstrap, config)
        sets = {m.epoch: m for m in control if m.kind == "active_set"}
        schedule = Schedule.from_extra(sets[1].extra, config.model_names)
        by_mode: dict[str, int] = {}
        for frame_id in planned:
            result = collector.results[frame_id]
            assert all(r.status != "missing" for r in result.results), frame_id
            if timed_out(result) or result.epoch != 1:
                continue
            ran = set(executed(result))
            assert ran == (set(config.model_names) if result.probe else schedule.runs(result.seq))
            for r in result.results:
                if r.status != "synthesized":
                    continue
                mode = schedule.mode(r.model)
                expected = ran if mode.kind == "links" else {r.model} | {mode.source} - {None}
                assert set(r.sources) == expected, (frame_id, r.model, mode, r.sources)
                by_mode[mode.kind] = by_mode.get(mode.kind, 0) + 1
            if result.probe:  # scored against what the schedule would have synthesized there
                scored = {r.model for r in result.results if r.agreement is not None}
                assert scored == set(config.model_names) - schedule.runs(result.seq, probes=False)
        assert by_mode, "no frame under the schedule had a synthesized output"
        assert collector.duplicates == 0
        assert not dead_letters(broker.bootstrap, config)
    finally:
        collector.close()
