"""Prometheus metrics of one worker, and the HTTP endpoint that serves them.

Each worker owns a :class:`WorkerMetrics` with its own ``CollectorRegistry`` (so tests and
several apps in one process never share counters) and serves it with
:func:`start_metrics_endpoint`. The agents only call the small recording methods; nothing here
touches faust or Kafka, so the metrics are testable without a broker.

Names follow Prometheus conventions (counters end in ``_total``, durations are seconds)::

    mlink_frames_total                      frames this worker planned
    mlink_results_total{outcome}            results emitted: complete | degraded
    mlink_degraded_total{reason}            degraded results by reason: timeout (a model's
                                            output did not come in time) | links (the link
                                            version was unusable or synthesis failed) |
                                            input (the frame's image did not decode) |
                                            model_error (a model call failed)
    mlink_dead_letters_total{stage,reason}  records sent to the dead-letter topic
    mlink_model_executions_total{model}     frames the model really ran on (a batch call
                                            counts each of its frames)
    mlink_model_calls_total{model}          calls of the model (a batch counts once): frames
                                            over calls is its batch fill
    mlink_model_errors_total{model,kind}    failed calls: error | timeout
    mlink_model_latency_seconds{model}      histogram of the model's wall time per frame (a
                                            batch call's time over its frames, observed once
                                            per frame: what each frame cost, as plans price)
    mlink_model_cpu_seconds_total{model}    CPU time of the calls' threads (what plans price)
    mlink_synthesized_total{model}          outputs synthesized by links instead of run
    mlink_frame_latency_seconds             histogram, frame timestamp -> result emitted
    mlink_group_unsynced_seconds            time spent joining the group without an
                                            assignment (a group that never settles)
    mlink_live_agreement{model}             probe agreement of synthesized vs real outputs
    mlink_forecast{basis}                   the plan's expected agreement, all models:
                                            plan (its estimate) | bound (what it promises,
                                            stream plans) | probes (rescaled by the probes) |
                                            content (re-weighted to what the active detectors
                                            found on this worker's frames; paper-link plans)
    mlink_unseen_content                    share of those frames whose content no estimate
                                            scored (their forecast is the plan's estimate)
    mlink_model_healthy{model}              1 healthy, 0 failing or unhealthy (e.g. hung),
                                            from each model's health tracker every 5 s, so
                                            a model no longer called does not keep a stale
                                            value (an SRE's audit)
    mlink_model_last_call_timestamp_seconds{model}  when the model last answered a call
                                            (0: never on this worker); a model the plan
                                            synthesizes is called on probes only
    mlink_epoch / mlink_link_version        control-plane state this worker runs
    mlink_links_for_other_models            1 while the plan in force is from links trained
                                            for other models: every model runs on its frames
    mlink_epoch_heard                       the newest plan's epoch heard on the control
                                            topic; above mlink_epoch, this worker refused the
                                            newest plans (only logged before)
    mlink_links_pinned                      version pinned with mlink links --pin (0 = none)
    mlink_links_relearned_total             the link version in force was lost or damaged in
                                            the store: every model ran until new links came
    mlink_in_flight_frames                  planned, not yet answered (the flow-control window)
    mlink_warming_up / mlink_held_for_links 1 while every model runs for want of links / while
                                            the warm-up hold pauses fetching
    mlink_plan_ms{part}                     the plan in force per frame: plan | budget |
                                            all_models, in its cost table
    mlink_model_ms_total{part}              executed | all_models model cost of the frames
                                            answered under a priced plan: saved = 1 - ratio
    mlink_worker_events_total{event}        the worker's own failures (training, controller
                                            refusals, unusable link versions...: EVENTS)
    mlink_consumer_lag{topic,partition}     the broker's end offset minus this worker's
                                            position, every 5 s, for the partitions it reads
                                            (gone with the worker: `mlink status` reads the
                                            group's committed lag from the broker)
    mlink_worker_info{worker,pid}           constant 1, identifies the process
    process_* / python_info                 prometheus_client's process collector (resident
                                            memory, CPU seconds, open fds: Linux) for the
                                            worker process; isolated models' child processes
                                            are not in it
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
)

from mlink.operators.stuck_group import unsynced_seconds

if TYPE_CHECKING:  # the metrics stay importable without torch (health checks, dashboards)
    from mlink.linkstore.content_forecast import ContentForecast

__all__ = ["MetricsEndpoint", "WorkerMetrics", "start_metrics_endpoint"]

log = logging.getLogger("mlink.metrics")

# Model calls range from sub-millisecond (sklearn) to seconds (large nets on CPU).
MODEL_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
# Frame latency includes queueing: up to a minute is informative for a backlog.
FRAME_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class WorkerMetrics:
    """The metrics of one worker process, in a registry of their own.

    ``models`` pre-creates the per-model series at zero, so a model that never ran still shows
    up (a dashboard can tell "never ran" from "not exported").
    """

    def __init__(
        self, worker: str, models: Iterable[str] = (), registry: CollectorRegistry | None = None
    ) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.info = Info("mlink_worker", "identifies the worker process", registry=r)
        self.info.info({"worker": worker, "pid": str(os.getpid())})
        self.frames = Counter("mlink_frames", "frames planned by this worker", registry=r)
        self.results = Counter("mlink_results", "frame results emitted", ["outcome"], registry=r)
        self.degraded = Counter(
            "mlink_degraded", "degraded results by reason", ["reason"], registry=r
        )
        self.dead_letters = Counter(
            "mlink_dead_letters", "records dead-lettered", ["stage", "reason"], registry=r
        )
        self.executions = Counter(
            "mlink_model_executions",
            "frames the model really ran on (a batch call counts each of its frames)",
            ["model"],
            registry=r,
        )
        self.model_calls = Counter(
            "mlink_model_calls", "calls of the model (a batch counts once)", ["model"], registry=r
        )
        self.model_errors = Counter(
            "mlink_model_errors", "failed model calls", ["model", "kind"], registry=r
        )
        self.model_latency = Histogram(
            "mlink_model_latency_seconds",
            "wall time per frame of the model's calls (a batch call's time over its frames)",
            ["model"],
            buckets=MODEL_BUCKETS,
            registry=r,
        )
        self.model_cpu = Counter(
            "mlink_model_cpu_seconds",
            "CPU time of the threads that ran the model's calls",
            ["model"],
            registry=r,
        )
        self.synthesized = Counter(
            "mlink_synthesized", "outputs synthesized by links", ["model"], registry=r
        )
        self.frame_latency = Histogram(
            "mlink_frame_latency_seconds",
            "frame timestamp to result emitted",
            buckets=FRAME_BUCKETS,
            registry=r,
        )
        self.live_agreement = Gauge(
            "mlink_live_agreement", "probe agreement of synthesized outputs", ["model"], registry=r
        )
        self.forecast = Gauge(
            "mlink_forecast",
            "expected agreement over all models: the plan's estimate, its forecast bound "
            "(stream plans), the estimate after probes, and the estimate re-weighted to the "
            "content the active detectors found (paper-link plans)",
            ["basis"],
            registry=r,
        )
        self.unseen_content = Gauge(
            "mlink_unseen_content",
            "share of this worker's frames under the plan whose content no estimate scored",
            registry=r,
        )
        self.model_healthy = Gauge(
            "mlink_model_healthy",
            "1 when the model answers, 0 when failing or unhealthy",
            ["model"],
            registry=r,
        )
        self.model_last_call = Gauge(
            "mlink_model_last_call_timestamp_seconds",
            "unix time of the model's last successful call on this worker (0: never)",
            ["model"],
            registry=r,
        )
        self.epoch = Gauge("mlink_epoch", "control epoch this worker plans with", registry=r)
        self.links_for_other_models = Gauge(
            "mlink_links_for_other_models",
            "1 while the plan in force is from a link version trained for other models than "
            "this worker's config: it runs every model on the plan's frames",
            registry=r,
        )
        self.epoch_heard = Gauge(
            "mlink_epoch_heard",
            "the newest plan's epoch on the control topic, applied or refused: above "
            "mlink_epoch, this worker refused it (e.g. a config with other models) and serves "
            "an older plan",
            registry=r,
        )
        self.link_version = Gauge(
            "mlink_link_version", "linkstore version in use (0 = none yet)", registry=r
        )
        self.links_pinned = Gauge(
            "mlink_links_pinned",
            "link version an operator pinned (mlink links --pin; 0 = none): newer versions "
            "are not planned from",
            registry=r,
        )
        self.agent_crashes = Counter(
            "mlink_agent_crashes",
            "times an agent raised outside every event's guard and faust restarted it: a bug "
            "or a broken dependency; a steady rate is a crash loop that can keep the pipeline "
            "in its warm-up (alert on it)",
            ["agent"],
            registry=r,
        )
        self.relearns = Counter(
            "mlink_links_relearned",
            "plans that ran every model because the store lost or damaged the link version "
            "in force (the controller's worker; mlink.operators.relearn)",
            registry=r,
        )
        self.in_flight = Gauge(
            "mlink_in_flight_frames", "frames planned and not yet answered", registry=r
        )
        self.group_unsynced = Gauge(
            "mlink_group_unsynced_seconds",
            "how long this worker has been joining its consumer group without an assignment "
            "(0 while it has one); it answers no frame meanwhile. Minutes on the embedded "
            "broker: a group that never settles (docs/broker.md, `mlink repair-group`)",
            registry=r,
        )
        self.group_unsynced.set_function(unsynced_seconds)
        self.consumer_lag = Gauge(
            "mlink_consumer_lag",
            "records not yet consumed, per partition this worker reads",
            ["topic", "partition"],
            registry=r,
        )
        self._lag_series: set[tuple[str, int]] = set()
        self.warming_up = Gauge(
            "mlink_warming_up",
            "1 while every model runs for want of links (the first warm-up, or a relearn)",
            registry=r,
        )
        self.held_for_links = Gauge(
            "mlink_held_for_links",
            "1 while the warm-up hold pauses fetching frames until the links come (a backlog "
            "then waits in Kafka: mlink_consumer_lag grows)",
            registry=r,
        )
        self.plan_ms = Gauge(
            "mlink_plan_ms",
            "per frame, in the plan's cost table: what the plan in force costs (part=plan), "
            "its budget (budget) and every model (all_models); 1 - plan / all_models is the "
            "saving it plans (absent during a warm-up)",
            ["part"],
            registry=r,
        )
        self.model_ms = Counter(
            "mlink_model_ms",
            "model cost of the frames answered under a priced plan, in its cost table: of the "
            "models that ran (part=executed) and of every model (all_models); 1 - the ratio "
            "of their rates is the compute saved",
            ["part"],
            registry=r,
        )
        self.events = _EventCounts(r)
        for model in models:
            self.executions.labels(model)
            self.model_calls.labels(model)
            self.synthesized.labels(model)
            self.model_latency.labels(model)
            self.model_cpu.labels(model)
            self.model_healthy.labels(model).set(1)
            self.model_last_call.labels(model)
        for outcome in ("complete", "degraded"):
            self.results.labels(outcome)
        self._model_children: dict[str, tuple[Any, Any, Any, Any, Any]] = {}
        if registry is None:  # a registry of the caller's may hold its own process collector
            ProcessCollector(registry=r)
            PlatformCollector(registry=r)

    # -- what the agents call ----------------------------------------------------------------

    def _children(self, model: str) -> tuple[Any, Any, Any, Any, Any]:
        """The per-model series (executions, latency, synthesized, CPU, last call), looked up
        once: a worker records them for every frame, and ``labels()`` costs a lock and a dict
        lookup."""
        children = self._model_children.get(model)
        if children is None:
            children = self._model_children[model] = (
                self.executions.labels(model),
                self.model_latency.labels(model),
                self.synthesized.labels(model),
                self.model_cpu.labels(model),
                self.model_last_call.labels(model),
            )
        return children

    def model_call(self, model: str, seconds: float, cpu_seconds: float | None = None) -> None:
        """One successful real call of ``model`` that took ``seconds`` (wall) and
        ``cpu_seconds`` of its thread's CPU time (where measured)."""
        executions, latency, _, cpu, last_call = self._children(model)
        executions.inc()
        latency.observe(seconds)
        last_call.set_to_current_time()
        if cpu_seconds is not None and cpu_seconds >= 0:
            cpu.inc(cpu_seconds)

    def synthesized_output(self, model: str) -> None:
        """One output of ``model`` synthesized through links instead of run."""
        self._children(model)[2].inc()

    def model_states(self, states: Mapping[str, str]) -> None:
        """Each model's health state (``healthy``, ``failing``, ``unhealthy``) as its tracker
        has it now: set on a timer, not only after a call, so a model the plan stopped calling
        does not keep the value of its last call for good."""
        for model, state in states.items():
            self.model_healthy.labels(model).set(float(state == "healthy"))

    def model_failure(self, model: str, kind: str = "error") -> None:
        """A failed call; ``kind`` is ``error`` or ``timeout``."""
        self.model_errors.labels(model, kind).inc()

    def result(self, *, degraded_reason: str | None = None, latency_s: float | None = None) -> None:
        """One frame result emitted (degraded when a reason is given)."""
        if degraded_reason is None:
            self.results.labels("complete").inc()
        else:
            self.results.labels("degraded").inc()
            self.degraded.labels(degraded_reason).inc()
        if latency_s is not None and latency_s >= 0:
            self.frame_latency.observe(latency_s)

    def content_forecast(self, forecast: ContentForecast | None) -> None:
        """The plan's content-weighted forecast; None (a plan without a content table) removes
        the series, so no stale forecast outlives its plan."""
        if forecast is None:
            with contextlib.suppress(KeyError):
                self.forecast.remove("content")
            self.unseen_content.set(0.0)
            return
        self.forecast.labels("content").set(forecast.value)
        self.unseen_content.set(forecast.unseen)

    def dead_letter(self, stage: str, reason: str) -> None:
        self.dead_letters.labels(stage, reason).inc()

    def plan_costs(self, extra: Mapping[str, Any]) -> None:
        """The plan in force's cost, budget and every model's cost (from ``extra``); a plan
        without them (a warm-up, a relearn) removes the series."""
        model_ms = extra.get("model_ms")
        cost = extra.get("cost")
        parts = {
            "plan": cost.get("ms") if isinstance(cost, Mapping) else None,
            "budget": extra.get("budget_ms"),
            "all_models": sum(model_ms.values()) if _numbers(model_ms) else None,
        }
        for part, value in parts.items():
            if isinstance(value, int | float) and "objective" in extra:
                self.plan_ms.labels(part).set(float(value))
            else:
                with contextlib.suppress(KeyError):
                    self.plan_ms.remove(part)

    def answered(self, executed: Iterable[str], model_ms: Any) -> None:
        """One frame answered: the cost of the models that ran and of every model, in the
        plan's table ``model_ms`` (nothing without one)."""
        if not _numbers(model_ms):
            return
        self.model_ms.labels("executed").inc(sum(float(model_ms.get(m, 0.0)) for m in executed))
        self.model_ms.labels("all_models").inc(sum(float(v) for v in model_ms.values()))

    def set_lag(self, topic: str, partition: int, lag: int) -> None:
        self.consumer_lag.labels(topic, str(partition)).set(max(0, lag))

    def set_lags(self, lags: Mapping[tuple[str, int], int]) -> None:
        """The lag of every partition this worker reads now; the series of partitions it no
        longer reads go (a rebalance moved them: their last value would stand for good)."""
        for topic, partition in self._lag_series - set(lags):
            with contextlib.suppress(KeyError):
                self.consumer_lag.remove(topic, str(partition))
        for (topic, partition), lag in lags.items():
            self.set_lag(topic, partition, lag)
        self._lag_series = set(lags)


#: The worker's own counts (``MLink.metrics``) an operator alerts on, exported as
#: ``mlink_worker_events_total{event}``: before, they were only in the log's metrics line.
EVENTS = {
    "training_failures": "link training raised (a full disk, a store that refuses writes)",
    "controller_refusals": "the controller kept the plan: a version it could not load, or "
    "a budget no plan meets",
    "announce_failures": "a trained version could not be announced on the control topic",
    "bad_link_versions": "a frame or plan named a link version this worker could not use",
    "control_view_failures": "a control message applied but this worker's views of it failed",
    "dead_letters_unsent": "a dead letter could not be sent (logged instead)",
    "pins_ended": "a pinned version the store lost: the controller planned from the newest",
    "samples_received": "training samples the trainer read",
    "samples_of_other_pipelines": "samples another pipeline on this topics.prefix wrote (skipped)",
    "warmup_frames_unusable": "warm-up frames that were no training sample: a model failed on "
    "them, and the warm-up waits for more (the worker log says which model)",
}


def _numbers(table: Any) -> bool:
    return isinstance(table, Mapping) and all(isinstance(v, int | float) for v in table.values())


class _EventCounts:
    """``mlink_worker_events_total{event}`` read from a counts mapping at scrape time, every
    event of :data:`EVENTS` at 0 until it happens (an alert on ``increase`` sees the first)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.counts: Mapping[str, float] = {}
        registry.register(self)

    def collect(self) -> Iterable[Any]:
        from prometheus_client.core import CounterMetricFamily

        family = CounterMetricFamily(
            "mlink_worker_events",
            "the worker's own failures and events by name (mlink.operators.metrics.EVENTS)",
            labels=["event"],
        )
        for event in EVENTS:
            family.add_metric([event], float(self.counts.get(event, 0)))
        yield family


@dataclass
class MetricsEndpoint:
    """A running ``/metrics`` HTTP endpoint; ``port`` is the bound one (also for port 0)."""

    host: str
    port: int
    _server: Any
    _thread: Any

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/metrics"

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


def start_metrics_endpoint(
    metrics: WorkerMetrics, port: int = 0, host: str = "127.0.0.1"
) -> MetricsEndpoint:
    """Serve ``metrics`` on ``http://host:port/metrics`` from a daemon thread.

    ``port`` 0 lets the OS pick a free port; the bound one is logged and returned (write it to
    the health file so ``mlink run`` and scrapers find it). ``host`` defaults to loopback; use
    ``0.0.0.0`` for a scraper on another machine.
    """
    from prometheus_client import start_http_server

    try:
        server, thread = start_http_server(port, addr=host, registry=metrics.registry)
    except OSError as exc:
        if not port:
            raise
        # a second worker on this machine with the same runtime.metrics_port: the task's error
        # stopped the whole worker, and `mlink run` starts every worker with the same port
        log.error(
            "metrics port %s:%d is taken (%s; another worker on this machine?): serving on a "
            "free port instead, named below and in the health file; give each worker its own "
            "runtime.metrics_port, or 0",
            host,
            port,
            exc,
        )
        server, thread = start_http_server(0, addr=host, registry=metrics.registry)
    endpoint = MetricsEndpoint(host, int(server.server_port), server, thread)
    log.info("metrics endpoint on %s", endpoint.url)
    return endpoint
