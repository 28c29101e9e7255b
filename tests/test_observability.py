"""Worker metrics over HTTP, the health file, JSON logs (no broker; the lead's e2e tests scrape a
live worker)."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import logging.config
import os
import subprocess
import sys
import textwrap
import urllib.request
from collections import Counter
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest
from prometheus_client.parser import text_string_to_metric_families

from mlink.deploy.health import (
    HealthFile,
    json_logging_config,
    read_health,
    use_json_logs,
    wait_ready,
)
from mlink.operators import LinkSettings, MLink, Model, Settings
from mlink.operators.control_operators import _apply
from mlink.operators.metrics import WorkerMetrics, start_metrics_endpoint
from mlink.operators.relearn import relearn_message
from mlink.operators.wiring import count_crashes
from mlink.topics.records import ControlMessage
from mlink.topics.specs import VectorSpec
from tests.test_report import plan_and_probe_report


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """``{(sample name, sorted labels): value}`` from a real HTTP GET of the endpoint."""
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.status == 200
        text = response.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_metrics_endpoint_is_scraped_over_http() -> None:
    metrics = WorkerMetrics("worker-0", models=["digits", "parity", "idle"])
    metrics.frames.inc(3)
    metrics.model_call("digits", 0.004, 0.003)
    metrics.model_call("digits", 0.006, 0.002)
    metrics.model_call("parity", 0.2)
    metrics.model_failure("parity", "timeout")
    metrics.synthesized.labels("parity").inc(2)
    metrics.result(latency_s=0.05)
    metrics.result(degraded_reason="timeout", latency_s=12.0)
    metrics.dead_letter("planner", "DecodeError")
    metrics.live_agreement.labels("parity").set(0.97)
    metrics.epoch.set(4)
    metrics.link_version.set(2)
    metrics.links_pinned.set(1)
    metrics.relearns.inc()
    crashed = SimpleNamespace(metrics=Counter(), prom=metrics)

    async def agent(stream: object) -> None:  # raises outside every event's guard
        raise NameError("config_budget_message")

    with pytest.raises(NameError):  # faust still sees it, and restarts the agent
        asyncio.run(count_crashes(crashed, "controller")(agent)(None))
    assert crashed.metrics == {"agent_crashes:controller": 1}
    metrics.in_flight.set(5)
    metrics.set_lag("mlink.frames", 1, 17)
    metrics.model_healthy.labels("parity").set(0)

    endpoint = start_metrics_endpoint(metrics, port=0)
    try:
        assert endpoint.port > 0
        got = scrape(endpoint.url)
    finally:
        endpoint.stop()

    assert got[("mlink_frames_total", ())] == 3
    assert got[("mlink_model_executions_total", (("model", "digits"),))] == 2
    assert got[("mlink_model_executions_total", (("model", "idle"),))] == 0  # pre-created
    assert got[("mlink_model_latency_seconds_count", (("model", "digits"),))] == 2
    assert got[("mlink_model_latency_seconds_sum", (("model", "digits"),))] == pytest.approx(0.01)
    assert got[("mlink_model_cpu_seconds_total", (("model", "digits"),))] == pytest.approx(0.005)
    assert got[("mlink_model_cpu_seconds_total", (("model", "parity"),))] == 0  # not measured
    le = (("le", "0.25"), ("model", "parity"))
    assert got[("mlink_model_latency_seconds_bucket", le)] == 1
    assert got[("mlink_model_errors_total", (("kind", "timeout"), ("model", "parity")))] == 1
    assert got[("mlink_synthesized_total", (("model", "parity"),))] == 2
    assert got[("mlink_results_total", (("outcome", "complete"),))] == 1
    assert got[("mlink_results_total", (("outcome", "degraded"),))] == 1
    assert got[("mlink_degraded_total", (("reason", "timeout"),))] == 1
    assert got[("mlink_frame_latency_seconds_count", ())] == 2
    dead = (("reason", "DecodeError"), ("stage", "planner"))
    assert got[("mlink_dead_letters_total", dead)] == 1
    assert got[("mlink_live_agreement", (("model", "parity"),))] == pytest.approx(0.97)
    assert got[("mlink_epoch", ())] == 4
    assert got[("mlink_link_version", ())] == 2
    assert got[("mlink_links_pinned", ())] == 1
    assert got[("mlink_links_relearned_total", ())] == 1
    assert got[("mlink_agent_crashes_total", (("agent", "controller"),))] == 1
    assert got[("mlink_in_flight_frames", ())] == 5
    assert got[("mlink_consumer_lag", (("partition", "1"), ("topic", "mlink.frames")))] == 17
    assert got[("mlink_model_healthy", (("model", "parity"),))] == 0
    assert got[("mlink_model_healthy", (("model", "digits"),))] == 1
    info = (("pid", str(os.getpid())), ("worker", "worker-0"))
    assert got[("mlink_worker_info", info)] == 1


def test_each_worker_has_its_own_registry() -> None:
    a, b = WorkerMetrics("a"), WorkerMetrics("b")  # no "Duplicated timeseries" error
    a.frames.inc()
    assert a.registry.get_sample_value("mlink_frames_total") == 1
    assert b.registry.get_sample_value("mlink_frames_total") == 0


def test_a_taken_metrics_port_falls_back_to_a_free_one(caplog) -> None:
    """Two workers of `mlink run` on one machine share runtime.metrics_port: the second one's
    endpoint raised in a task and stopped the worker (an SRE's audit)."""
    first = start_metrics_endpoint(WorkerMetrics("a"), port=0)
    try:
        with caplog.at_level(logging.ERROR, logger="mlink.metrics"):
            second = start_metrics_endpoint(WorkerMetrics("b"), port=first.port)
        try:
            assert second.port not in (0, first.port)
            assert f"metrics port 127.0.0.1:{first.port} is taken" in caplog.text
            assert scrape(second.url)  # and it serves
        finally:
            second.stop()
    finally:
        first.stop()


def test_what_an_sre_alerts_on_is_exported() -> None:
    """An SRE's audit: the warm-up, the plan's cost and saving, and the worker's own failures
    (training, controller refusals) were in the log or `mlink status` only."""
    metrics = WorkerMetrics("w")
    counts: Counter[str] = Counter(training_failures=2)
    metrics.events.counts = counts
    state = SimpleNamespace(warming_up=True)
    metrics.warming_up.set_function(lambda: float(state.warming_up))
    extra = {"objective": 0.9, "cost": {"ms": 30.0}, "budget_ms": 33.0,
             "model_ms": {"a": 10.0, "b": 90.0}}  # fmt: skip
    metrics.plan_costs(extra)
    metrics.answered(["a"], extra["model_ms"])
    metrics.answered(["a", "b"], extra["model_ms"])
    metrics.answered(["a"], None)  # a warm-up frame: no cost table, not counted
    endpoint = start_metrics_endpoint(metrics, port=0)
    try:
        got = scrape(endpoint.url)
        state.warming_up = False
        counts["controller_refusals"] += 1
        again = scrape(endpoint.url)
    finally:
        endpoint.stop()
    assert got[("mlink_warming_up", ())] == 1 and again[("mlink_warming_up", ())] == 0
    assert got[("mlink_plan_ms", (("part", "plan"),))] == 30
    assert got[("mlink_plan_ms", (("part", "budget"),))] == 33
    assert got[("mlink_plan_ms", (("part", "all_models"),))] == 100
    assert got[("mlink_model_ms_total", (("part", "executed"),))] == 110
    assert got[("mlink_model_ms_total", (("part", "all_models"),))] == 200
    event = "mlink_worker_events_total"
    assert got[(event, (("event", "training_failures"),))] == 2
    assert got[(event, (("event", "controller_refusals"),))] == 0  # there before the first
    assert again[(event, (("event", "controller_refusals"),))] == 1
    metrics.plan_costs({"relearn": 3})  # a plan without costs: the series go
    assert not [s for s in metrics.plan_ms.collect()[0].samples]


def test_model_health_follows_the_tracker_and_the_process_is_measured() -> None:
    """An SRE's audit: a model the plan stopped calling kept the health of its last call for
    good, and the worker's memory and CPU were not exported."""
    metrics = WorkerMetrics("w", models=["a", "b"])
    metrics.model_call("a", 0.01)
    metrics.model_states({"a": "healthy", "b": "unhealthy"})
    endpoint = start_metrics_endpoint(metrics, port=0)
    try:
        got = scrape(endpoint.url)
        metrics.model_states({"b": "healthy"})  # recovered while idle: no call needed
        again = scrape(endpoint.url)
    finally:
        endpoint.stop()
    healthy = "mlink_model_healthy"
    assert got[(healthy, (("model", "a"),))] == 1 and got[(healthy, (("model", "b"),))] == 0
    assert again[(healthy, (("model", "b"),))] == 1
    last = "mlink_model_last_call_timestamp_seconds"
    assert got[(last, (("model", "a"),))] > 1e9 and got[(last, (("model", "b"),))] == 0
    if sys.platform == "linux":
        assert got[("process_resident_memory_bytes", ())] > 0
        assert ("process_cpu_seconds_total", ()) in got


def test_the_lag_of_a_partition_this_worker_gave_up_goes() -> None:
    """Its last value stood for good after a rebalance moved the partition away."""
    metrics = WorkerMetrics("w")
    metrics.set_lags({("f", 0): 3, ("f", 1): 9})
    metrics.set_lags({("f", 1): 4, ("f", 2): -1})
    samples = {s.labels["partition"]: s.value for s in metrics.consumer_lag.collect()[0].samples}
    assert samples == {"1": 4, "2": 0}


def test_health_file_round_trips_and_moves_on(tmp_path: Path) -> None:
    path = tmp_path / "run" / "worker-0.health.json"
    health = HealthFile(path, "worker-0")
    first = read_health(path)
    assert first is not None and not first.ready
    assert (first.worker, first.pid) == ("worker-0", os.getpid())
    health.update(ready=True, metrics_port=9123, epoch=2, extra={"partitions": [0, 1]})
    snap = read_health(path)
    assert snap.ready and snap.metrics_port == 9123 and snap.epoch == 2
    assert snap.extra == {"partitions": [0, 1]}
    assert snap.started_at == first.started_at and snap.last_heartbeat >= first.last_heartbeat
    assert health.beat().last_heartbeat >= snap.last_heartbeat
    assert snap.age() >= 0
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # no temp files left
    assert wait_ready(path, timeout=1, pid=os.getpid()) == read_health(path)
    assert read_health(tmp_path / "missing.json") is None


def test_wait_ready_reports_timeouts_stale_files_and_dead_workers(tmp_path: Path) -> None:
    path = tmp_path / "w.json"
    with pytest.raises(TimeoutError, match=r"not ready after 0\.2s.*None"):
        wait_ready(path, timeout=0.2)
    HealthFile(path, "w").update(ready=True)
    with pytest.raises(TimeoutError, match="ready=True"):  # left by another process
        wait_ready(path, timeout=0.2, pid=os.getpid() + 1)
    with pytest.raises(RuntimeError, match="exited with 3"):
        wait_ready(path, timeout=5, pid=os.getpid() + 1, alive=lambda: "exited with 3")


def test_wait_ready_follows_another_process(tmp_path: Path) -> None:
    path = tmp_path / "child.json"
    code = textwrap.dedent(
        f"""
        import time
        from mlink.deploy.health import HealthFile
        h = HealthFile({str(path)!r}, "child")
        time.sleep(0.5)
        h.update(ready=True, metrics_port=1234)
        time.sleep(30)
        """
    )
    child = subprocess.Popen([sys.executable, "-c", code])
    try:
        snap = wait_ready(path, timeout=60, pid=child.pid, alive=lambda: child.poll() and "died")
        assert snap.pid == child.pid and snap.metrics_port == 1234
    finally:
        child.kill()
        child.wait()


def test_json_logs_are_one_object_per_line() -> None:
    stream = io.StringIO()
    logger = logging.getLogger("mlink.test.json")
    logger.propagate = False
    handler = logging.StreamHandler(stream)
    logger.addHandler(handler)
    try:
        use_json_logs(logger)
        logger.warning("frame %s degraded", "f-1", extra={"frame_id": "f-1", "model": "ocr"})
    finally:
        logger.removeHandler(handler)
    line = json.loads(stream.getvalue().strip())
    assert line["message"] == "frame f-1 degraded"
    assert line["level"] == "WARNING" and line["logger"] == "mlink.test.json"
    assert line["frame_id"] == "f-1" and line["model"] == "ocr"
    assert line["process"] == os.getpid()

    config = json_logging_config("DEBUG")
    assert config["root"]["level"] == "DEBUG"
    configurator = logging.config.DictConfigurator(dict(config))
    formatter = configurator.configure_formatter(dict(config["formatters"]["json"]))
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "hello", None, None)
    assert json.loads(formatter.format(record))["message"] == "hello"


def test_the_control_replay_publishes_the_plans_forecast_and_the_one_after_probes(tmp_path):
    """``mlink_forecast{basis}``: a new plan sets the plan's to its estimate, the bound's to what
    it promises and the probes' to its lower bound; a probe report moves the probes' one as
    ``mlink status`` computes it; a malformed plan moves none."""
    models = [
        Model(name=n, fn=lambda frame: frame, spec=VectorSpec(size=1, task="linear"))
        for n in ("bright", "level", "spread")
    ]
    settings = Settings(name="f", budget={"fraction": 1}, links=LinkSettings(store=str(tmp_path)))
    mlink = MLink(settings, models)
    plan, probes = plan_and_probe_report()

    def gauge(basis: str) -> float:
        return mlink.prom.forecast.labels(basis)._value.get()

    try:
        assert _apply(mlink, plan) is None
        assert gauge("plan") == 0.9 and gauge("probes") == pytest.approx(0.8)
        assert gauge("bound") == pytest.approx(0.8)  # what the plan promises
        assert _apply(mlink, probes) is None
        assert gauge("plan") == 0.9 and gauge("probes") == pytest.approx(0.74)
        assert gauge("bound") == pytest.approx(0.8)  # probes move the forecast, not the promise
        broken = ControlMessage(
            kind="active_set",
            epoch=2,
            issued_at=3.0,
            active=("bright",),
            budget={"fraction": 0.5},
            extra={"objective": "high", "predicted": {"level": "x"}, "runs": {"level": None}},
        )
        assert _apply(mlink, broken) is None  # applied (the plan is valid), figures ignored
        assert _apply(mlink, replace(probes, epoch=2)) is None
        assert gauge("plan") == 0.9 and gauge("probes") == pytest.approx(0.74)
        assert gauge("bound") == pytest.approx(0.8)
        links = replace(plan, epoch=3, issued_at=4.0, extra={"objective": 0.85})  # paper's links
        assert _apply(mlink, links) is None
        assert gauge("plan") == 0.85  # and no bound left over from the plan before
        assert mlink.prom.registry.get_sample_value("mlink_forecast", {"basis": "bound"}) is None
        # nor a forecast after probes: the probes do not correct the paper's links
        assert mlink.prom.registry.get_sample_value("mlink_forecast", {"basis": "probes"}) is None
    finally:
        mlink.close()


def test_a_paper_link_plan_forecasts_from_what_its_detectors_find(tmp_path):
    """``mlink_forecast{basis="content"}``: the plan's estimate per content signature, weighed
    by how many of its active detectors found anything on the results this worker emitted."""
    import numpy as np

    from mlink.linkstore.content_forecast import ContentTable
    from mlink.operators.results import record_result
    from mlink.topics.records import FrameResult, ModelResult
    from mlink.topics.specs import BoxesSpec

    models = [Model(name="det", fn=lambda f: f, spec=BoxesSpec(max_boxes=2))] + [
        Model(name=n, fn=lambda f: f, spec=VectorSpec(size=1, task="linear")) for n in "ab"
    ]
    settings = Settings(name="c", budget={"fraction": 1}, links=LinkSettings(store=str(tmp_path)))
    mlink = MLink(settings, models)
    table = ContentTable(
        ("det",),
        1,
        {"a": 0.6, "b": 0.8},
        {"a": (1.0, 0.4, 0.6, 0.6), "b": (0.8, 0.8, 0.8, 0.8)},
        (True, True, False, False),
    )
    plan = ControlMessage(
        kind="active_set",
        epoch=1,
        issued_at=1.0,
        active=("det",),
        budget={"fraction": 0.5},
        extra={"objective": 0.8, "content": table.to_meta()},
    )
    box, none = np.array([[0.1, 0.1, 0.3, 0.3, 0.9]], np.float32), np.zeros((0, 5), np.float32)

    def result(epoch: int, found: np.ndarray) -> FrameResult:
        ran = ModelResult(model="det", output=found, status="executed")
        synth = [
            ModelResult(model=m, output=np.zeros(1), status="synthesized", sources=("det",))
            for m in "ab"
        ]
        return FrameResult(
            frame_id=f"f{epoch}",
            stream_id="s",
            seq=0,
            epoch=epoch,
            results=(ran, *synth),
            degraded=False,
            emitted_at=2.0,
        )

    def sample(name: str, **labels: str) -> float | None:
        return mlink.prom.registry.get_sample_value(name, labels)

    try:
        assert _apply(mlink, plan) is None
        assert sample("mlink_forecast", basis="content") == pytest.approx((1 + 1.4) / 3)
        for _ in range(3):
            record_result(mlink, result(1, box))  # signature 1: a at 0.4
        assert sample("mlink_forecast", basis="content") == pytest.approx((1 + 0.4 + 0.8) / 3)
        assert sample("mlink_unseen_content") == 0.0
        record_result(mlink, result(0, none))  # planned under the plan before: not counted
        assert sample("mlink_forecast", basis="content") == pytest.approx((1 + 0.4 + 0.8) / 3)
        forged = replace(plan, epoch=2, extra={"content": {**table.to_meta(), "runs": 99}})
        assert "content table" in (_apply(mlink, forged) or "")  # rejected, plan unchanged
        assert sample("mlink_forecast", basis="content") == pytest.approx((1 + 0.4 + 0.8) / 3)
        stream = replace(plan, epoch=2, extra={"objective": 0.9})  # no table: series removed
        assert _apply(mlink, stream) is None
        assert sample("mlink_forecast", basis="content") is None
        assert sample("mlink_unseen_content") == 0.0
    finally:
        mlink.close()


def test_a_relearn_plan_clears_the_forecast_gauges_of_the_lost_plan(tmp_path):
    names = ("bright", "level", "spread")
    models = [
        Model(name=n, fn=lambda frame: frame, spec=VectorSpec(size=1, task="linear")) for n in names
    ]
    settings = Settings(name="f", budget={"fraction": 1}, links=LinkSettings(store=str(tmp_path)))
    mlink = MLink(settings, models)
    plan, probes = plan_and_probe_report()
    try:
        assert _apply(mlink, plan) is None and _apply(mlink, probes) is None
        lost = relearn_message(list(names), 2, {"fraction": 0.5}, 1, 8, "v1 is gone")
        assert _apply(mlink, lost) is None
        for basis in ("plan", "bound", "probes"):  # mlink status shows no prediction either
            assert mlink.prom.registry.get_sample_value("mlink_forecast", {"basis": basis}) is None
    finally:
        mlink.close()
