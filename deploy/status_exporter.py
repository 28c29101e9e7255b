"""A pipeline's lag, live workers and dead letters for Prometheus, read from the broker, so
they are there when no worker is: each worker exports only what it reads, and when every
worker is down their ``mlink_consumer_lag`` series vanish while cameras keep writing frames.
``mlink exporter CONFIG`` serves them (README, "In production").
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from mlink.deploy.config import PipelineConfig
from mlink.deploy.group_members import SETTLED, UNKNOWN, group_members
from mlink.deploy.pipeline_status import consumer_lag, dead_letter_report
from mlink.operators.relearn import model_set_id

__all__ = ["Exporter", "Look", "PipelineCollector", "look", "serve"]

log = logging.getLogger("mlink.exporter")
EVERY_S = 30.0  # a look reads a few topics' ends and asks the group: cheap, but not per scrape


@dataclass(frozen=True)
class Look:
    """What one look at the broker found; ``up`` is False when the broker did not answer,
    and then the other fields are not known."""

    at: float
    took_s: float
    up: bool
    lag: dict[str, int] = field(default_factory=dict)
    workers: int = 0
    workers_on_other_models: int = 0
    dead_letters: int | None = None
    group_state: str | None = None


def look(bootstrap: str, config: PipelineConfig, clock: Callable[[], float] = time.time) -> Look:
    """One look at the pipeline's group, input topics and dead letters."""
    started = time.monotonic()
    members = group_members(bootstrap, config)
    lag = consumer_lag(bootstrap, config) if members is not None else {}
    up = members is not None and bool(lag)  # both are logged and empty when the broker fails
    if not up:
        return Look(clock(), time.monotonic() - started, up=False)
    ours = model_set_id(config.specs())
    other = sum(n for k, n in (members.get("model_sets") or {}).items() if k not in (ours, UNKNOWN))
    letters = dead_letter_report(bootstrap, config, recent=0)
    return Look(
        at=clock(),
        took_s=time.monotonic() - started,
        up=True,
        lag=lag,
        workers=int(members.get("workers") or 0),
        workers_on_other_models=other,
        dead_letters=letters.get("count"),
        group_state=members.get("state"),
    )


class PipelineCollector(Collector):
    """Serves the newest :class:`Look`; :meth:`run` takes one every ``every_s`` seconds on its
    own thread, so a scrape never waits on the broker."""

    def __init__(
        self,
        bootstrap: str,
        config: PipelineConfig,
        every_s: float = EVERY_S,
        looker: Callable[[], Look] | None = None,
    ) -> None:
        self.every_s = every_s
        self._look = looker or (lambda: look(bootstrap, config))
        self.latest: Look | None = None
        self.unsettled_since: float | None = None
        """When the looks began to find workers in a group that is not Stable."""

    def refresh(self) -> Look:
        try:
            self.latest = self._look()
        except Exception as exc:  # a look must not end the exporter: say so and try again
            log.warning("could not look at the pipeline: %s", exc)
            self.latest = Look(time.time(), 0.0, up=False)
        now = self.latest
        if now.up:  # a look that failed says nothing either way
            unsettled = now.workers > 0 and now.group_state != SETTLED
            self.unsettled_since = (self.unsettled_since or now.at) if unsettled else None
        return self.latest

    def run(self, stop: threading.Event) -> None:
        """A look every ``every_s`` seconds until ``stop``, the first one ``every_s`` from now
        (the caller took one before serving)."""
        while not stop.wait(self.every_s):
            self.refresh()

    def collect(self) -> Iterator[GaugeMetricFamily]:
        now = self.latest
        if now is None:
            return
        yield _gauge("up", "1 when the last look reached the broker, else 0", float(now.up))
        yield _gauge("look_timestamp_seconds", "when the last look at the broker ended", now.at)
        yield _gauge("look_seconds", "how long the last look at the broker took", now.took_s)
        if not now.up:
            return
        lag = GaugeMetricFamily(
            "mlink_pipeline_consumer_lag",
            "records the pipeline's consumer group has not committed, per input topic",
            labels=["topic"],
        )
        for topic, value in sorted(now.lag.items()):
            lag.add_metric([topic], value)
        yield lag
        yield _gauge("workers", "live workers: the pipeline's consumer group members", now.workers)
        yield _gauge(
            "workers_on_other_models",
            "live workers on another config's models (a rolling restart under way, or a worker "
            "left behind); workers that name no model set are not counted",
            now.workers_on_other_models,
        )
        since = self.unsettled_since
        yield _gauge(
            "group_unsettled_seconds",
            "how long the looks have found workers in a consumer group that is not Stable (0: "
            "settled), from the first look that found it so; no worker answers meanwhile. "
            "Minutes on the embedded broker: a group that never settles (docs/broker.md, "
            "`mlink repair-group`)",
            0.0 if since is None else max(0.0, now.at - since),
        )
        if now.dead_letters is not None:
            yield _gauge("dead_letters", "records on the dead-letter topic", now.dead_letters)


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(f"mlink_pipeline_{name}", doc, value=value)


class Exporter:
    """An HTTP endpoint serving a :class:`PipelineCollector`, with the thread that keeps its
    look fresh; :meth:`close` ends both."""

    def __init__(self, collector: PipelineCollector, port: int, addr: str = "0.0.0.0") -> None:
        self.collector = collector
        registry = CollectorRegistry()
        collector.refresh()  # the first scrape sees a look, not an empty page
        registry.register(collector)
        self._server, self._http = start_http_server(port, addr=addr, registry=registry)
        self.port: int = self._server.server_port
        self._stop = threading.Event()
        self._looks = threading.Thread(
            target=collector.run, args=(self._stop,), name="mlink-exporter", daemon=True
        )
        self._looks.start()

    def wait(self) -> None:
        """Until :meth:`close` (from another thread) or Ctrl-C."""
        while self._looks.is_alive():
            self._looks.join(1.0)

    def close(self) -> None:
        self._stop.set()
        self._server.shutdown()
        self._http.join(5)
        self._looks.join(15)


def serve(bootstrap: str, config: PipelineConfig, port: int, every_s: float = EVERY_S) -> None:
    """Serve the pipeline's metrics on ``port`` until Ctrl-C or SIGTERM (the CLI's)."""
    exporter = Exporter(PipelineCollector(bootstrap, config, every_s), port)
    log.info("serving pipeline %s metrics on port %d", config.name, exporter.port)
    try:
        exporter.wait()
    finally:
        exporter.close()
