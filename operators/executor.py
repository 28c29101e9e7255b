"""Executing one model off the event loop, with a timeout per call and a health state.

Two executors share one interface, :class:`ModelExecutor`:

- :class:`ThreadExecutor` runs the model on a daemon thread of the worker (the default: no copy
  of frames, no extra process);
- :class:`mlink.operators.isolation.ProcessExecutor` runs it in child processes that can be
  killed and restarted (``ExecutorSettings.isolation``).

A call that exceeds ``timeout_s`` gives each of its frames an error outcome ("model X timed out
after 2.0 s") and the model turns unhealthy; the worker carries on with other models.

Why a thread executor abandons a hung call instead of stopping it: Python cannot stop a thread.
The hung call keeps its thread (and whatever it holds) until it returns, if ever. To keep that
bounded, a model has exactly one thread, so at most one abandoned call per model; until that call
returns, every later call of the model fails fast with an error instead of queueing behind it,
and the other models, which have their own threads, are not delayed. The thread is a daemon, so
a call that never returns does not keep the process from exiting. Only process isolation can get
such a model back without a worker restart.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, Protocol, runtime_checkable

import numpy as np

from mlink.operators.health import HealthReport, ModelHealth
from mlink.operators.isolation import ProcessExecutor
from mlink.operators.model_errors import stuck_error, timeout_error
from mlink.operators.model_runner import (
    ModelRunner,
    RunOutcome,
    describe_exception,
    late_calls_timed_out,
    model_calls,
)
from mlink.operators.model_settings import ExecutorSettings, ModelFactory
from mlink.topics.specs import OutputSpec

__all__ = ["ModelExecutor", "ThreadExecutor", "make_executor", "start_executor"]

log = logging.getLogger("mlink.models")


@runtime_checkable
class ModelExecutor(Protocol):
    """Runs one model on frames; never raises for a model's failure (errors are outcomes)."""

    name: str

    def run(self, frames: Sequence[np.ndarray]) -> list[RunOutcome]:
        """Blocking: one outcome per frame, within about ``timeout_s``."""
        ...

    async def arun(self, frames: Sequence[np.ndarray]) -> list[RunOutcome]:
        """The same without blocking the event loop."""
        ...

    def health(self) -> HealthReport: ...

    def close(self) -> None: ...


def make_executor(
    name: str,
    model: Callable[[Any], Any] | ModelFactory,
    spec: OutputSpec,
    *,
    batch: bool = False,
    settings: ExecutorSettings | None = None,
) -> ModelExecutor:
    """The executor ``settings`` ask for, with the model built and ready (blocking: run it off
    the event loop, or use :func:`start_executor`).

    ``model`` is a built callable or a :class:`ModelFactory`; isolation needs a factory (the
    child builds its own model): ``ModelFactory("pkg.mod:make", {...})``, or
    ``ModelFactory.of(model)`` for a picklable model object.
    """
    settings = settings or ExecutorSettings()
    if settings.isolation is None:
        built = model.build() if isinstance(model, ModelFactory) else model
        return ThreadExecutor(name, built, spec, batch=batch, settings=settings)
    if not isinstance(model, ModelFactory):
        raise TypeError(
            f"model {name!r} runs isolated, so it needs a ModelFactory the child process can "
            "rebuild it from: ModelFactory('package.module:factory', args) or "
            "ModelFactory.of(model) for a picklable model object"
        )
    return ProcessExecutor(name, model, spec, batch=batch, settings=settings).start()


async def start_executor(
    name: str,
    model: Callable[[Any], Any] | ModelFactory,
    spec: OutputSpec,
    *,
    batch: bool = False,
    settings: ExecutorSettings | None = None,
) -> ModelExecutor:
    """:func:`make_executor` on a daemon thread, so a slow model build never blocks the event
    loop, and a worker stopped during the build exits without waiting for it (asyncio's own
    threads are joined at exit: a stop 2 s into a long build waited the stop deadline out). An
    executor whose build ends after its waiter was cancelled is closed."""
    loop = asyncio.get_running_loop()
    built: asyncio.Future[ModelExecutor] = loop.create_future()

    def settle(executor: ModelExecutor | None, error: BaseException | None) -> None:
        if built.cancelled():
            if executor is not None:
                executor.close()
        elif error is not None:
            built.set_exception(error)
        else:
            built.set_result(executor)  # type: ignore[arg-type]

    def build() -> None:
        try:
            executor, error = make_executor(name, model, spec, batch=batch, settings=settings), None
        except BaseException as exc:  # delivered to the waiter
            executor, error = None, exc
        try:
            loop.call_soon_threadsafe(settle, executor, error)
        except RuntimeError:  # the loop is closed: the worker is gone
            if executor is not None:
                executor.close()

    threading.Thread(target=build, name=f"mlink-build-{name}", daemon=True).start()
    return await built


class _ModelThread:
    """One daemon thread running submitted calls in order."""

    def __init__(self, name: str) -> None:
        self._jobs: queue.SimpleQueue[tuple[Future[Any], Callable[..., Any], tuple] | None] = (
            queue.SimpleQueue()
        )
        self._thread = threading.Thread(target=self._loop, name=f"mlink-model-{name}", daemon=True)
        self._thread.start()

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future[Any]:
        future: Future[Any] = Future()
        self._jobs.put((future, fn, args))
        return future

    def stop(self) -> None:
        self._jobs.put(None)

    def _loop(self) -> None:
        while (job := self._jobs.get()) is not None:
            future, fn, args = job
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn(*args))
            except BaseException as exc:  # delivered to the waiter, never kills the thread
                future.set_exception(exc)


class ThreadExecutor:
    """A model on its own daemon thread, each call bounded by ``settings.timeout_s``.

    Calls are serialised per executor (a model object is rarely thread-safe), separately for
    :meth:`run` and :meth:`arun` callers; use one of the two per executor, else one path's call
    may wait behind the other's inside its timeout.
    """

    def __init__(
        self,
        name: str,
        model: Callable[[Any], Any],
        spec: OutputSpec,
        *,
        batch: bool = False,
        settings: ExecutorSettings | None = None,
    ) -> None:
        self.name = name
        self.runner = ModelRunner(name, model, spec, batch)
        self.settings = settings or ExecutorSettings()
        self._health = ModelHealth(name, self.settings.health)
        self._thread = _ModelThread(name)
        self._stuck: Future[Any] | None = None
        self._stuck_since = 0.0
        self._sync_lock = threading.Lock()
        self._async_lock: asyncio.Lock | None = None

    def run(self, frames: Sequence[np.ndarray]) -> list[RunOutcome]:
        if not frames:
            return []
        with self._sync_lock:
            blocked = self._fail_fast(len(frames))
            if blocked is not None:
                return blocked
            future = self._thread.submit(self.runner.run, list(frames))
            limit = self._limit(frames)
            try:
                outcomes = future.result(timeout=limit)
            except FutureTimeout:
                return self._abandon(future, len(frames), limit)
            except BaseException as exc:  # ModelRunner catches Exception: this is SystemExit & co
                return self._raised(exc, len(frames))
        return self._settle(frames, outcomes)

    async def arun(self, frames: Sequence[np.ndarray]) -> list[RunOutcome]:
        if not frames:
            return []
        if self._async_lock is None:
            self._async_lock = asyncio.Lock()
        async with self._async_lock:
            blocked = self._fail_fast(len(frames))
            if blocked is not None:
                return blocked
            future = self._thread.submit(self.runner.run, list(frames))
            waiter = asyncio.wrap_future(future)
            limit = self._limit(frames)
            done, _ = await asyncio.wait([waiter], timeout=limit)
            if not done:
                return self._abandon(future, len(frames), limit)
            try:
                outcomes = waiter.result()
            except BaseException as exc:
                return self._raised(exc, len(frames))
        return self._settle(frames, outcomes)

    def health(self) -> HealthReport:
        return self._health.report()

    def close(self) -> None:
        """Stop the thread once its current call returns (a stuck call is left to the daemon)."""
        self._thread.stop()

    def _fail_fast(self, n: int) -> list[RunOutcome] | None:
        stuck = self._stuck
        if stuck is None:
            return None
        if stuck.done():
            self._stuck = None
            log.info(
                "model %s returned from its abandoned call after %.1f s; serving again",
                self.name,
                time.monotonic() - self._stuck_since,
            )
            return None
        error = stuck_error(self.name, time.monotonic() - self._stuck_since)
        self._health.failure("unavailable", error, n)
        return [RunOutcome(None, 0.0, error) for _ in range(n)]

    def _settle(self, frames: Sequence[np.ndarray], outcomes: list[RunOutcome]) -> list[RunOutcome]:
        """Health from ``outcomes``, a late one-frame call counted as a timeout."""
        timeout_s = self.settings.timeout_s
        outcomes, late = late_calls_timed_out(
            self.name, frames, self.runner.batch, outcomes, timeout_s
        )
        if any(late):
            self._health.failure("timeout", timeout_error(self.name, timeout_s), sum(late))
        self._health.observe(o.error for o, slow in zip(outcomes, late, strict=True) if not slow)
        return outcomes

    def _limit(self, frames: Sequence[np.ndarray]) -> float:
        """``timeout_s`` per call of the model (:func:`model_calls`)."""
        return self.settings.timeout_s * model_calls(frames, self.runner.batch)

    def _abandon(self, future: Future[Any], n: int, timeout: float) -> list[RunOutcome]:
        error = timeout_error(self.name, timeout)
        self._stuck, self._stuck_since = future, time.monotonic()
        self._health.failure("timeout", error, n)
        log.warning("%s; its thread is abandoned until the call returns", error)
        return [RunOutcome(None, timeout * 1000, error) for _ in range(n)]

    def _raised(self, exc: BaseException, n: int) -> list[RunOutcome]:
        error = f"model {self.name} raised {describe_exception(exc)}"
        self._health.failure("error", error, n)
        return [RunOutcome(None, 0.0, error) for _ in range(n)]
