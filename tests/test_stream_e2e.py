"""Stream synthesis on the real broker: a worker with ``links.stream`` trains stream links after
its warm-up, the controller publishes a schedule, each frame runs the models the schedule gives
its sequence number (every model on probes), the rest are synthesized, probes report live
agreement, and a budget of accuracy targets re-plans."""

from __future__ import annotations

import re
import time
from typing import Any

import pytest
from kafka import KafkaProducer
from rich.console import Console

from mlink.deploy.config import PipelineConfig
from mlink.deploy.pipeline_status import status
from mlink.deploy.runner import ResultCollector, read_control, set_budget
from mlink.deploy.source import FrameProducer
from mlink.deploy.status_view import percent, render_status
from mlink.deploy.topics_setup import create_pipeline_topics
from mlink.eval.live_forecasts import forecasts_in_force
from mlink.linkstore.liveguard import DECAY
from mlink.linkstore.schedule import EXTRA_KEY, Schedule
from tests.test_pipeline_e2e import (
    APP,
    FAST_MODELS,
    dead_letters,
    executed,
    send_frames,
    wait_for_epoch,
    wait_results,
    wait_until,
    worker_env,
    write_config,
)

pytestmark = pytest.mark.broker


STREAMS = ["a", "b"]


def start_stream_worker(
    app: str,
    tag: str,
    broker: Any,
    faust_worker: Any,
    tmp_path: Any,
    extra_models: list[dict[str, Any]] | None = None,
    links: dict[str, Any] | None = None,
) -> tuple[PipelineConfig, Any, ResultCollector]:
    """A worker of ``app`` on the small digits config (plus ``extra_models``, and ``links``
    settings) with stream synthesis at half the full cost, its topics, and a collector of its
    results (close it)."""
    path, config = write_config(
        tmp_path,
        tag,
        FAST_MODELS,
        partitions=2,
        warmup_frames=24,
        output_timeout_s=5.0,
        fraction=0.5,
        # one training at the start unless ``links`` says otherwise (the quick first links'
        # tests): epoch 1 is the plan from the first links, and a budget set afterwards makes
        # epoch 2
        links={"stream": True, "probe_stride": 3, "first_epochs": 0, **(links or {})},
        extra_models=extra_models,
    )
    create_pipeline_topics(config, broker.bootstrap)
    worker = faust_worker(app, worker_env(path, broker.bootstrap, tmp_path / "faust"))
    return config, worker, ResultCollector(broker.bootstrap, config.topics.names().results)


def warm_up_then_plan(worker: Any, collector: ResultCollector, frames: FrameProducer) -> list[str]:
    """12 frames of each stream to warm up on, then, once the first schedule is out, 40 more of
    each planned by it; returns the planned frames' ids (all answered)."""
    warm = send_frames(frames, STREAMS, range(0, 12))
    wait_for_epoch(worker, 1, 180)
    wait_results(collector, set(warm), 60, [worker])
    planned = send_frames(frames, STREAMS, range(12, 52))
    wait_results(collector, set(planned), 120, [worker])
    return planned


def test_a_stream_schedule_plans_each_frame_and_synthesizes_the_rest(
    broker: Any, faust_worker: Any, tmp_path: Any
) -> None:
    config, worker, collector = start_stream_worker(APP, "stream", broker, faust_worker, tmp_path)
    names = config.topics.names()
    try:
        worker.wait_ready()
        with FrameProducer(broker.bootstrap, names.frames) as frames:
            planned = warm_up_then_plan(worker, collector, frames)
            set_budget(broker.bootstrap, config, {"target_agreement": 0.5})
            wait_for_epoch(worker, 2, 120)
            targeted = send_frames(frames, STREAMS, range(52, 72))
            wait_results(collector, set(targeted), 120, [worker])
        deadline = time.monotonic() + 120  # the trainer scores probes on its own schedule
        while True:
            time.sleep(1.0)
            _, control = read_control(broker.bootstrap, config)
            reports = [m for m in control if m.kind == "agreement" and m.epoch >= 1]
            if reports or time.monotonic() > deadline:
                break
        sets = {m.epoch: m for m in control if m.kind == "active_set"}
        schedule = Schedule.from_extra(sets[1].extra, config.model_names)
        assert sets[1].extra["cost"]["ms"] <= 0.5 * sum(m.cost.ms for m in config.models) + 1e-6
        synthesized = 0
        for frame_id in planned:
            result = collector.results[frame_id]
            assert not result.degraded, frame_id
            if result.epoch != 1:
                continue
            runs = set(config.model_names) if result.probe else schedule.runs(result.seq)
            assert set(executed(result)) == runs, frame_id
            assert result.probe == schedule.is_probe(result.seq)
            synthesized += sum(r.status == "synthesized" for r in result.results)
            assert all(r.status != "missing" for r in result.results)
        assert synthesized > 0
        assert EXTRA_KEY in sets[2].extra and sets[2].budget == {"target_agreement": 0.5}
        assert min(sets[2].extra["lower"].values()) >= 0.5 - 1e-9
        probes = [collector.results[f] for f in planned]
        probes = [r for r in probes if r.probe and r.epoch == 1]
        assert probes, "no probe frame under the schedule"
        for result in probes:  # scored against what the schedule would have synthesized there
            scored = {r.model for r in result.results if r.agreement is not None}
            assert scored == set(config.model_names) - schedule.runs(result.seq, probes=False)
        assert reports, "the trainer reported no live agreement under the schedule"
        for report in reports:  # the guard's tally: effective probes per model, decayed
            counts = report.extra["live_counts"]
            assert set(counts) == set(report.extra["live_agreement"])
            assert all(0 < n < 1 / (1 - DECAY) for n in counts.values()), report.extra
        assert collector.duplicates == 0
        assert not dead_letters(broker.bootstrap, config)
        report = status(broker.bootstrap, config)  # what `mlink status` shows of the plan
        _, control = read_control(broker.bootstrap, config)
        last = [m for m in control if m.kind == "active_set"][-1]
        assert report["predicted_synthesized"] == last.extra["predicted_synthesized"]
        for model, plan in last.extra["plan"].items():  # the schedule in force, without figures
            what = report["schedule"][model]
            assert plan == what or plan.startswith(what + " (est "), (plan, what)
        console = Console(width=120, record=True)
        render_status(report, console)
        text = console.export_text()
        for model, plan in last.extra["plan"].items():
            row = next(line for line in text.splitlines() if line.startswith(model + " "))
            assert report["schedule"][model] in row, (row, plan)
        assert "dead letters: none" in text
        # what the plan in force promises: its forecast bound, under its estimate
        assert report["predicted_promise"] <= report["predicted_accuracy"] + 1e-12
        assert f"promised: {percent(report['predicted_promise'])} all models" in text
        if report["live_agreement"]:  # the plan's forecast, corrected by the probes so far
            assert 0.0 <= report["forecast_with_probes"] <= 1.0
            assert "forecast with probes" in text
        # each planned frame's forecasts as `mlink run` checks them (eval.live_forecasts)
        forecasts = forecasts_in_force(
            config.model_names, control, {f: collector.results[f] for f in planned}
        )
        assert set(forecasts.up_front) == {f for f in planned if collector.results[f].epoch == 1}
        assert set(forecasts.up_front.values()) == {sets[1].extra["objective"]}
        assert all(0.0 <= v <= 1.0 for v in forecasts.with_probes.values())
        assert set(forecasts.bound) == set(forecasts.up_front)  # every stream plan promises
        assert all(forecasts.bound[f] <= forecasts.up_front[f] + 1e-12 for f in forecasts.bound)
    finally:
        collector.close()


def test_a_cold_stream_pipeline_plans_from_quick_first_links_then_from_the_full_ones(
    broker: Any, faust_worker: Any, tmp_path: Any
) -> None:
    """With the default ``first_epochs`` (5) and 100 epochs asked for, the first links train
    twice on the same warm-up: at 5 epochs, which the controller plans from at once (the hold
    ends), then in full, which it re-plans from. Every frame under either plan is answered once,
    planned by its schedule."""
    config, worker, collector = start_stream_worker(
        APP, "quickfirst", broker, faust_worker, tmp_path, links={"first_epochs": 5, "epochs": 100}
    )
    try:
        worker.wait_ready()
        with FrameProducer(broker.bootstrap, config.topics.names().frames) as frames:
            warm = send_frames(frames, STREAMS, range(0, 12))
            wait_for_epoch(worker, 2, 240)
            planned = send_frames(frames, STREAMS, range(12, 40))
            wait_results(collector, set(warm) | set(planned), 120, [worker])
        log = worker.log()
        quick = re.search(r"trained the quick first links v(\d+) on 24 samples", log)
        full = re.search(r"trained links v(\d+) on 24 samples", log)
        assert quick and full, log[-3000:]
        assert int(full.group(1)) > int(quick.group(1))
        assert log.index(quick.group(0)) < log.index(full.group(0))
        _, control = read_control(broker.bootstrap, config)
        sets = {m.epoch: m for m in control if m.kind == "active_set"}
        announced = {m.link_version: m.extra for m in control if m.kind == "link_version"}
        assert announced == {int(quick.group(1)): {"quick": True}, int(full.group(1)): {}}
        assert sets[1].link_version == int(quick.group(1)), sets
        assert sets[2].link_version == int(full.group(1)), sets
        for epoch in (1, 2):
            assert EXTRA_KEY in sets[epoch].extra
        later = Schedule.from_extra(sets[2].extra, config.model_names)
        for frame_id in planned:  # sent after the full links' plan: planned by it
            result = collector.results[frame_id]
            assert result.epoch >= 2 and not result.degraded, frame_id
            if result.epoch == 2:
                runs = set(config.model_names) if result.probe else later.runs(result.seq)
                assert set(executed(result)) == runs, frame_id
        assert collector.duplicates == 0
        assert not dead_letters(broker.bootstrap, config)
    finally:
        collector.close()


@pytest.mark.parametrize("in_child", [True, False], ids=["child", "thread"])
def test_a_worker_stopped_during_the_full_first_links_ends_there_and_starts_no_training(
    broker: Any, faust_worker: Any, tmp_path: Any, in_child: bool
) -> None:
    """The quick first links are in force and the full ones (3000 epochs: minutes) are
    training when the worker is stopped. Its training process is closed under the job: the log
    says the training stopped with the worker, not that it failed, and no training starts after
    it (one did: the quick links do not count as trained, so the buffer still called for the
    full ones, and a new training process started during the stop and held the exit up until
    the 15 s stop deadline). On the worker's thread (``train_in_child: false``) the training
    ends after the epoch under way: the thread held the process up to the deadline too."""
    config, worker, collector = start_stream_worker(
        APP,
        "quickstop",
        broker,
        faust_worker,
        tmp_path,
        links={"first_epochs": 5, "epochs": 3000, "train_in_child": in_child},
    )
    collector.close()  # no results are read
    worker.wait_ready()
    with FrameProducer(broker.bootstrap, config.topics.names().frames) as frames:
        send_frames(frames, STREAMS, range(0, 12))
        wait_for_epoch(worker, 1, 240)
        wait_until("the full training", lambda: "training links on 24" in worker.log(), 60, worker)
        send_frames(frames, STREAMS, range(12, 20))  # samples that call for more training
        time.sleep(3.0)
    worker.stop()
    log = worker.log()
    assert "trained the quick first links" in log, log[-3000:]
    stopped = log.index("link training on 24 samples stopped with the worker")
    assert "training links on" not in log[stopped:], log[stopped:]
    assert "link training failed" not in log, log[-3000:]
    # a training on the worker's thread ends at the next epoch (it held the process up, and the
    # stop deadline ended it with an error)
    assert "still stopping" not in log, log[-3000:]


def held_config(
    tmp_path: Any,
    tag: str,
    broker: Any,
    warmup: int,
    partitions: int,
    links: dict[str, Any] | None = None,
) -> tuple[Any, PipelineConfig]:
    """A stream config (and its topics) whose warm-up hold outlasts any test unless ``links``
    says otherwise: a loaded machine's slow training cannot end it; only the links do."""
    path, config = write_config(
        tmp_path,
        tag,
        FAST_MODELS,
        partitions=partitions,
        warmup_frames=warmup,
        output_timeout_s=5.0,
        fraction=0.5,
        links={
            "stream": True,
            "probe_stride": 3,
            "hold_s": 600.0,
            "first_epochs": 0,  # the hold waits for the one training, as these tests need
            **(links or {}),
        },
    )
    create_pipeline_topics(config, broker.bootstrap)
    return path, config


def backlog_warm_up(
    broker: Any,
    faust_worker: Any,
    tmp_path: Any,
    tag: str,
    seqs: int,
    links: dict[str, Any] | None = None,
) -> str:
    """``seqs`` frames of each stream sent at once to a fresh held worker (a warm-up of 24, two
    partitions); every frame comes back once, and the warm-up is what the config asks for plus
    at most three batches. Returns the worker's log."""
    warmup, batch = 24, 8  # batch: the runtime's default batch_size
    path, config = held_config(tmp_path, tag, broker, warmup, partitions=2, links=links)
    worker = faust_worker(APP, worker_env(path, broker.bootstrap, tmp_path / "faust"))
    collector = ResultCollector(broker.bootstrap, config.topics.names().results)
    try:
        worker.wait_ready()
        with FrameProducer(broker.bootstrap, config.topics.names().frames) as frames:
            sent = send_frames(frames, STREAMS, range(0, seqs))
        wait_results(collector, set(sent), 300, [worker])
        warm = sum(collector.results[f].epoch == 0 for f in sent)
        assert warmup <= warm <= warmup + 3 * batch, (warm, worker.log_tail())
        assert collector.duplicates == 0
        assert not dead_letters(broker.bootstrap, config)
        return worker.log()
    finally:
        collector.close()


def test_a_backlog_from_the_start_overshoots_the_warm_up_by_at_most_a_few_batches(
    broker: Any, faust_worker: Any, tmp_path: Any
) -> None:
    """The hold counts the frames already fetched for the agent, so a backlog's warm-up is what
    the config asks for, plus the rest of the batch that reaches it and what was in flight
    (before: every frame in faust's 64-frame buffer, 63-64 warm-up frames here)."""
    backlog_warm_up(broker, faust_worker, tmp_path, "overshoot", 80)


def test_a_hold_shorter_than_the_training_on_its_own_worker_waits_for_the_links(
    broker: Any, faust_worker: Any, tmp_path: Any
) -> None:
    """``hold_s`` 8 s, and links that take longer to train (150 epochs of links and of
    ensembles: 19 s on a 2-core machine with another suite running, the training process's
    start included). The worker trains them itself, so its hold waits for the training instead
    of planning more warm-up frames with every model, and says so in its log. The hold's cap
    (5 x ``hold_s``, 40 s) leaves room for a machine twice as slow as that."""
    links = {"hold_s": 8.0, "epochs": 150}
    log = backlog_warm_up(broker, faust_worker, tmp_path, "slowtrain", 60, links)
    assert "no links after" not in log, log[-3000:]
    trained = re.search(r"trained links v1 on \d+ samples in ([\d.]+) s", log)
    assert trained, log[-3000:]
    if float(trained.group(1)) > 8.0:  # it outlasted hold_s: the hold must have waited
        assert "still training the first links here" in log, log[-3000:]


def test_a_warm_up_hold_on_fetched_records_that_are_not_frames_fetches_more(
    broker: Any, faust_worker: Any, tmp_path: Any
) -> None:
    """The hold counts records already fetched towards the warm-up; when some of them turn out
    not to be frames, the worker must fetch more rather than wait for links that cannot train.
    8 frames and 8 bad records are in Kafka before the worker starts, so the hold usually begins
    on the first batch (8 planned + 8 fetched >= 12; it did in every run tried); the rest of the
    frames come once the bad records are dead letters, and only a worker that fetches again
    answers them. If the first batch's check finds fewer records fetched, no hold starts early
    and the test passes without taking that path."""
    path, config = held_config(tmp_path, "starved", broker, 12, partitions=1)
    names = config.topics.names()
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, acks="all")
    collector = ResultCollector(broker.bootstrap, names.results)
    try:
        with FrameProducer(broker.bootstrap, names.frames) as frames:
            sent = send_frames(frames, STREAMS, range(0, 4))
            for _ in range(8):
                producer.send(names.frames, key=b"a", value=b"\xc1 is never valid msgpack")
            producer.flush()
            worker = faust_worker(APP, worker_env(path, broker.bootstrap, tmp_path / "faust"))
            worker.wait_ready()
            wait_until(
                "dead letters",
                lambda: len(dead_letters(broker.bootstrap, config)) == 8,
                120,
                worker,
            )
            sent += send_frames(frames, STREAMS, range(4, 30))
        wait_results(collector, set(sent), 300, [worker])
        assert sum(collector.results[f].epoch == 0 for f in sent) >= 12
        assert collector.duplicates == 0
    finally:
        producer.close()
        collector.close()


def test_a_target_the_compute_bound_cannot_buy_back_is_said_and_kept_within_it(
    broker: Any, faust_worker: Any, tmp_path: Any
) -> None:
    """A per-model target beside an ms bound: ``drift`` shows a constant in the warm-up, so the
    plan synthesizes it, then changes on every call, so its probes miss the target. Only
    running it on every frame would meet it, which the bound forbids: the controller publishes
    the most accurate plan within the bound, naming ``drift`` in ``targets_unmet`` and in its
    reason, and does not re-plan for it again (before, it logged a refusal and published
    nothing)."""
    drift = {
        "name": "drift",
        "factory": "tests.misbehaving_models:drifting",
        "args": {"after": 24},
        "output": {"kind": "vector", "size": 3, "task": "softmax"},
        "cost": {"ms": 60.0},
    }
    config, worker, collector = start_stream_worker(
        APP, "unmet", broker, faust_worker, tmp_path, extra_models=[drift]
    )
    budget = {"target_agreement:drift": 0.8, "ms": 55.0}  # every frame of drift alone: 60 ms
    try:
        worker.wait_ready()
        set_budget(broker.bootstrap, config, budget)
        with FrameProducer(broker.bootstrap, config.topics.names().frames) as frames:
            warm_up_then_plan(worker, collector, frames)
            for start in range(52, 172, 40):
                sent = send_frames(frames, STREAMS, range(start, start + 40))
                wait_results(collector, set(sent), 120, [worker])
                _, control = read_control(broker.bootstrap, config)
                plans = [m for m in control if m.kind == "active_set"]
                unmet = [m for m in plans if "targets_unmet" in m.extra]
                if unmet:
                    break
            assert unmet, [m.extra.get("replan_reason") for m in plans]
            # probes under the fallback plan, so a re-plan for drift would have a cause to come
            more = send_frames(frames, STREAMS, range(start + 40, start + 120))
            wait_results(collector, set(more), 120, [worker])
            time.sleep(5)  # the trainer's last agreement reports, and a re-plan they would cause
            _, control = read_control(broker.bootstrap, config)
            plans = [m for m in control if m.kind == "active_set"]
        first = unmet[0]
        assert first.extra["targets_unmet"] == ["drift"] and first.budget == budget
        assert first.extra["cost"]["ms"] <= budget["ms"] + 1e-6
        reason = first.extra["replan_reason"]
        assert reason.startswith("drift: live agreement") and "drift below target" in reason
        later = [m for m in plans if m.epoch > first.epoch]
        assert not any("drift" in str(m.extra.get("replan_reason")) for m in later), later
        if not later:  # what `mlink status` shows of the plan in force
            assert status(broker.bootstrap, config)["replan_reason"] == reason
        assert collector.duplicates == 0
        assert not dead_letters(broker.bootstrap, config)
    finally:
        collector.close()
