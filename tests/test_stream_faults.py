"""Stream synthesis under faults, in the split and the fused layout, on the real broker and a
real faust worker: a model that raises on some frames, bad records on the outputs topic (split
layout), and a backlog sent all at once after the first schedule. Every frame that entered gets
exactly one result; a frame whose planned model failed is degraded with the model's error and
that model synthesized by its mode; bad records become dead letters; the worker carries on."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from kafka import KafkaProducer

from bench.fault_harness import TRIGGER
from mlink.deploy.runner import read_control
from mlink.deploy.source import FrameProducer
from mlink.linkstore.schedule import EXTRA_KEY, Schedule
from tests.test_pipeline_e2e import (
    APP,
    IMAGES,
    dead_letters,
    wait_for_epoch,
    wait_results,
    wait_until,
)
from tests.test_split_layout import SPLIT_APP, output, timed_out
from tests.test_stream_e2e import STREAMS, start_stream_worker, warm_up_then_plan

pytestmark = pytest.mark.broker

FLAKY = {
    "name": "flaky",
    "factory": "tests.misbehaving_models:misbehaving",
    "args": {"fault": "raise", "trigger": TRIGGER},
    "output": {"kind": "vector", "size": 2, "task": "softmax"},
    "cost": {"ms": 40.0},  # dearer than the digit models: the schedule need not run it always
}
BACKLOG = range(52, 112)  # 60 frames per stream, sent at once
TRIGGERED = set(range(52, 112, 3))  # flaky raises on these


def send_backlog(
    frames: FrameProducer,
    seqs: range = BACKLOG,
    triggered: set[int] = TRIGGERED,
    before: Callable[[int], None] = lambda seq: None,
) -> list[str]:
    """Every stream's frames ``seqs`` at once, the ``triggered`` ones marked for the
    misbehaving models; ``before(seq)`` runs before each seq's frames (to slip in bad records)."""
    ids = []
    for seq in seqs:
        before(seq)
        for i, stream in enumerate(STREAMS):
            image = IMAGES[(seq * len(STREAMS) + i) % len(IMAGES)].copy()
            if seq in triggered:
                image.flat[0] = TRIGGER
            ids.append(frames.send(stream, seq, image).frame_id)
    frames.flush()
    return ids


def settle(broker: Any, config: Any, worker: Any, collector: Any, letters: int) -> None:
    """Wait for ``letters`` dead letters; then the worker must be up and no result twice."""
    wait_until(
        "dead letters",
        lambda: len(dead_letters(broker.bootstrap, config)) >= letters,
        60,
        worker,
    )
    assert worker.proc.poll() is None, "the worker died"
    assert collector.duplicates == 0


@pytest.mark.parametrize("app", [SPLIT_APP, APP], ids=["split", "fused"])
def test_stream_synthesis_keeps_every_frame_through_a_failing_model_bad_records_and_a_backlog(
    app: str, broker: Any, faust_worker: Any, tmp_path: Any
) -> None:
    config, worker, collector = start_stream_worker(
        app, "stream-faults", broker, faust_worker, tmp_path, extra_models=[FLAKY]
    )
    names = config.topics.names()
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, acks="all")
    try:
        worker.wait_ready()
        with FrameProducer(broker.bootstrap, names.frames) as frames:
            planned = warm_up_then_plan(worker, collector, frames)
            bad = {  # the outputs topic: only the split layout reads it
                "unknown model": output(planned[0], "bogus_model", np.ones(2, np.float32)),
                "NaN": output(planned[1], "flaky", np.array([np.nan, 1.0], np.float32)),
                "no plan": output("ghost:3", "flaky", np.array([1.0, 0.0], np.float32)),
            }
            bad = bad if app == SPLIT_APP else {}
            for value in bad.values():
                producer.send(names.outputs, key=b"a", value=value).get(10)
            backlog = send_backlog(frames)
            wait_results(collector, set(backlog), 240, [worker])
        settle(broker, config, worker, collector, len(bad))
        assert "ghost:3" not in collector.results  # it never entered: no result
        reasons = [d.reason for d in dead_letters(broker.bootstrap, config)]
        phrases = ("unknown model 'bogus_model'", "NaN", "no plan for frame 'ghost:3'")
        for phrase in phrases if bad else ():
            assert any(phrase in r for r in reasons), (phrase, reasons)

        _, control = read_control(broker.bootstrap, config)
        sets = {m.epoch: m for m in control if m.kind == "active_set"}
        failed, ran_after_failure = 0, 0
        for frame_id in backlog:
            result = collector.results[frame_id]
            flaky = next(r for r in result.results if r.model == "flaky")
            assert all(r.status != "missing" for r in result.results), frame_id
            if result.epoch not in sets or EXTRA_KEY not in sets[result.epoch].extra:
                continue
            schedule = Schedule.from_extra(sets[result.epoch].extra, config.model_names)
            planned_to_run = result.probe or "flaky" in schedule.runs(result.seq)
            if result.seq in TRIGGERED and planned_to_run:
                failed += 1
                assert result.degraded, frame_id
                assert flaky.status == "synthesized" and "cannot handle frame" in (
                    flaky.error or ""
                ), (frame_id, flaky)
                continue
            if failed and flaky.status == "executed":
                ran_after_failure += 1  # one bad call does not disable the model
            timed_out(result)  # only a loaded machine's join timeout may degrade the rest
        assert failed > 0, "flaky was never planned on a frame it fails on"
        assert ran_after_failure > 0, "flaky never ran again after its first failure"
    finally:
        producer.close()
        collector.close()


def test_the_quick_first_links_come_through_a_model_failing_in_the_warm_up_and_bad_samples(
    broker: Any, faust_worker: Any, tmp_path: Any
) -> None:
    """The default two-pass first training (quick links, then the full ones) on a warm-up in
    which a model raises on some frames, with records on the samples topic that are not
    samples: the failed frames are no training samples, the bad records are dead letters at
    the trainer, both trainings come through, and every frame is answered once."""
    config, worker, collector = start_stream_worker(
        APP, "quick-faults", broker, faust_worker, tmp_path, [FLAKY], links={"first_epochs": 5}
    )
    names = config.topics.names()
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, acks="all")
    try:
        worker.wait_ready()
        with FrameProducer(broker.bootstrap, names.frames) as frames:
            # 32 warm-up frames, 4 of them failed: 28 samples where the warm-up asks for 24
            warm = send_backlog(frames, range(0, 16), {2, 9})
            for value in (b"\x00 not a sample", b"\x82\xa1x\x01"):  # junk, and msgpack of no record
                producer.send(names.samples, key=b"a", value=value).get(10)
            wait_for_epoch(worker, 2, 300)  # the plan from the quick links, then the full ones
            backlog = send_backlog(frames)
            wait_results(collector, set(warm) | set(backlog), 240, [worker])
        settle(broker, config, worker, collector, 2)
        log = worker.log()
        quick = log.index("trained the quick first links v1 ")
        assert quick < log.index("trained links v2 "), log[-3000:]
        assert "link training failed" not in log and "quick first links failed" not in log
        letters = dead_letters(broker.bootstrap, config)
        assert sorted(d.stage for d in letters) == ["trainer", "trainer"], letters
        for seq in (2, 9):  # the warm-up frames flaky failed on: answered, degraded
            for stream in STREAMS:
                result = collector.results[f"{stream}:{seq}"]
                flaky = next(r for r in result.results if r.model == "flaky")
                assert result.degraded and "cannot handle frame" in (flaky.error or ""), result
        _, control = read_control(broker.bootstrap, config)
        sets = {m.epoch: m for m in control if m.kind == "active_set"}
        assert sets[1].link_version == 1 and sets[2].link_version == 2
        assert {collector.results[f].epoch for f in backlog} <= {2, *range(3, 10)}
    finally:
        producer.close()
        collector.close()
