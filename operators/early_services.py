"""What a worker does from its start, before its consumer has partitions.

faust starts an app's own tasks and timers only once its consumer has had its first
assignment, so a worker that never gets one served no metrics and froze its health file's
heartbeat: stop 47's audit found neither on the workers of a group that never settles
(docs/broker.md), which is when an operator needs them. A mode service added to the app
before it starts runs before the consumer joins (:mod:`mlink.operators.model_builder`).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import faust
from mode import Service

from mlink.operators.metrics import start_metrics_endpoint
from mlink.operators.runtime import MLink

__all__ = ["EarlyTimer", "MetricsServer", "every_from_start"]

log = logging.getLogger("mlink.worker")


class MetricsServer(Service):
    """Serves the worker's Prometheus endpoint (``Settings.metrics_port``) from the app's
    start; the endpoint is ``mlink.metrics_endpoint``."""

    def __init__(self, mlink: MLink, **kwargs: Any) -> None:
        self.mlink = mlink
        super().__init__(**kwargs)

    async def on_start(self) -> None:
        settings = self.mlink.settings
        if settings.metrics_port is not None:
            endpoint = start_metrics_endpoint(
                self.mlink.prom, settings.metrics_port, settings.metrics_host
            )
            self.mlink.metrics_endpoint = endpoint  # type: ignore[attr-defined]


class EarlyTimer(Service):
    """Awaits ``beat`` every ``interval_s`` seconds, the first time at the app's start; a
    beat that raises is logged and the next one comes all the same."""

    def __init__(
        self, beat: Callable[[], Awaitable[None]], interval_s: float, **kwargs: Any
    ) -> None:
        self.beat = beat
        self.interval_s = interval_s
        super().__init__(**kwargs)

    @Service.task
    async def _beats(self) -> None:
        while not self.should_stop:
            try:
                await self.beat()
            except Exception:
                log.exception("%s failed; it runs again in %g s", self.beat, self.interval_s)
            await self.sleep(self.interval_s)


def every_from_start(
    app: faust.App, interval_s: float
) -> Callable[[Callable[[], Awaitable[None]]], Callable[[], Awaitable[None]]]:
    """Like ``app.timer(interval)``, but from the app's start, not from its first assignment
    (call before the app starts)."""

    def register(beat: Callable[[], Awaitable[None]]) -> Callable[[], Awaitable[None]]:
        app.add_dependency(EarlyTimer(beat, interval_s))
        return beat

    return register
