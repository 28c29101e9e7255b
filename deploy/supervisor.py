"""Keeping worker processes alive: a worker that dies is restarted, with backoff.

Nothing inside a worker can survive the worker's own death (a SIGKILL, the kernel's OOM killer,
a segfault in a model run on a thread), so ``mlink run`` supervises its workers the way systemd
or Kubernetes would: a worker that exits while it should be running is started again after a
delay that doubles with every restart in a row (up to ``backoff_max_s``) and resets once a
worker has stayed up for ``healthy_after_s``. A slot restarted ``loop_restarts`` times within
``loop_window_s`` is reported as a crash loop (and still restarted, at the longest delay), so a
fault matrix can tell a recovered fault from one that keeps a worker down. Only deaths before
the worker became ready count towards a crash loop: a worker killed while it was serving (a
crash, an OOM, a SIGKILL) that comes back and serves again is a recovery, not a loop.

Its frames are not lost meanwhile: they stay un-acked in Kafka and the partition's next owner,
this worker's replacement or another worker, replays them.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from mlink.deploy.health import read_health
from mlink.deploy.processes import WorkerProcess

__all__ = ["WorkerSupervisor"]


def _ready(process: WorkerProcess) -> bool:
    try:
        health = read_health(process.health_path)
    except ValueError:
        return False
    return bool(health and health.ready and health.pid == process.proc.pid)


log = logging.getLogger("mlink.supervisor")


@dataclass(slots=True)
class _Slot:
    index: int
    process: WorkerProcess
    generation: int = 0
    started: float = field(default_factory=time.monotonic)
    delay: float = 0.0
    restarts: deque[float] = field(default_factory=deque)
    crash_loop: bool = False
    ever_ready: bool = False


class WorkerSupervisor:
    """``make(slot, generation)`` builds a worker process; ``count`` slots are kept running."""

    def __init__(
        self,
        make: Callable[[int, int], WorkerProcess],
        count: int,
        *,
        backoff_initial_s: float = 1.0,
        backoff_max_s: float = 30.0,
        healthy_after_s: float = 60.0,
        loop_restarts: int = 3,
        loop_window_s: float = 60.0,
        poll_s: float = 0.2,
    ) -> None:
        self._make = make
        self._initial, self._max = backoff_initial_s, backoff_max_s
        self._healthy_after, self._poll = healthy_after_s, poll_s
        self._loop_restarts, self._loop_window = loop_restarts, loop_window_s
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.slots = [_Slot(i, make(i, 0)) for i in range(count)]
        self.restarts = 0
        self._thread = threading.Thread(target=self._watch, name="mlink-supervisor", daemon=True)
        self._thread.start()

    @property
    def workers(self) -> list[WorkerProcess]:
        with self._lock:
            return [slot.process for slot in self.slots]

    @property
    def crash_loops(self) -> int:
        return sum(slot.crash_loop for slot in self.slots)

    def wait_ready(self, timeout: float = 300.0) -> list[float]:
        """Until every slot's worker is ready; each one's seconds from its spawn to ready.

        A worker that dies before it is ready (a broker not yet answering, a model that failed
        to load once) is this supervisor's to restart, so its death does not end the wait; a
        crash loop or the timeout does, with the worker's log tail.
        """
        deadline = time.monotonic() + timeout
        return [self._wait_slot(slot, deadline) for slot in self.slots]

    def _wait_slot(self, slot: _Slot, deadline: float) -> float:
        while True:
            with self._lock:
                process, looping = slot.process, slot.crash_loop
            if _ready(process):
                return process.wait_ready(max(deadline - process.started, 0.0))
            if looping:
                raise RuntimeError(
                    f"worker {slot.index} is in a crash loop and never became ready; its log "
                    f"{process.log_path} ends with:\n{process.log_tail(30)}"
                )
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"worker {slot.index} not ready in time; its log {process.log_path} ends "
                    f"with:\n{process.log_tail(30)}"
                )
            if self._stop.wait(self._poll):
                raise RuntimeError("the supervisor was stopped before every worker was ready")

    def _watch(self) -> None:
        while not self._stop.wait(self._poll):
            for slot in self.slots:
                code = slot.process.proc.poll()
                if code is None:
                    if not slot.ever_ready and _ready(slot.process):
                        slot.ever_ready = True
                        slot.restarts.clear()  # it serves: earlier deaths were not a loop
                    if time.monotonic() - slot.started > self._healthy_after:
                        slot.delay = 0.0
                    continue
                self._restart(slot, code)

    def _restart(self, slot: _Slot, code: int) -> None:
        now = time.monotonic()
        slot.delay = self._initial if not slot.delay else min(slot.delay * 2, self._max)
        if slot.ever_ready or _ready(slot.process):  # it had served: a recovery, not a loop
            slot.restarts.clear()
        slot.restarts.append(now)
        while slot.restarts and now - slot.restarts[0] > self._loop_window:
            slot.restarts.popleft()
        if len(slot.restarts) >= self._loop_restarts and not slot.crash_loop:
            slot.crash_loop = True
            log.error("worker %d is in a crash loop (%d restarts)", slot.index, len(slot.restarts))
        log.warning(
            "worker %d exited with %s; restarting in %.1f s (log %s)",
            slot.index,
            code,
            slot.delay,
            slot.process.log_path,
        )
        if self._stop.wait(slot.delay):
            return
        with self._lock:
            slot.generation += 1
            slot.process = self._make(slot.index, slot.generation)
            slot.started = time.monotonic()
            slot.ever_ready = False
            self.restarts += 1

    def stop(self) -> None:
        """Stop supervising, then stop every worker (SIGTERM, SIGKILL after a grace period)."""
        self._stop.set()
        self._thread.join(10)
        for worker in reversed(self.workers):
            worker.stop()
