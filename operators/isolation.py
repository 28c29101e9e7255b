"""A model in child processes: a crash, a leak or a hang costs a restart of that model's process,
never the worker.

Each isolated model has a pool of ``IsolationSettings.processes`` children. A child
(:mod:`mlink.operators.model_process`) imports little besides the model's own code, builds the
model from its :class:`ModelFactory`, then serves one call at a time over a socket pair; large
frames go through a memory file shared with it (see that module; overhead measured by
``bench/isolation.py transport``).

Lifecycle of a child slot::

    dead --(backoff elapsed)--> starting --(built)--> idle <--> busy
      ^                            |                   |         |
      +----- build failed, timed out, died, RSS over cap, killed +

A caller owns a busy slot: it sees a timeout (and kills the child) or the end of the socket (the
child died) itself. A supervisor thread per model starts children, notices idle ones dying,
polls their resident memory and restarts dead ones after an exponential backoff (reset once a
child has served ``backoff_reset_s``). Frames for a model with no live child fail fast with the
reason; they never wait for a model build.

Children die with the worker: the supervisor thread, which lives until :meth:`close`, starts
them, so ``PR_SET_PDEATHSIG`` (which fires when the *thread* that started a child exits) is
valid; a watchdog thread in the child also exits when its parent changes, and a child exits
when its socket closes. Children are ``daemon`` processes: multiprocessing kills them at a normal
exit of the worker; the price is that a model cannot start multiprocessing children of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import multiprocessing
import multiprocessing.connection
import os
import pickle
import signal
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any, Literal

import numpy as np

from mlink.operators.health import FailureKind, HealthReport, ModelHealth
from mlink.operators.model_process import FrameBuffer, child_main, rss_mb, send_frames
from mlink.operators.model_runner import RunOutcome
from mlink.operators.model_settings import ExecutorSettings, IsolationSettings, ModelFactory
from mlink.topics.specs import OutputSpec

__all__ = ["ModelStartError", "ProcessExecutor", "restart_delay"]

log = logging.getLogger("mlink.models")
SlotState = Literal["dead", "starting", "idle", "busy"]


class ModelStartError(RuntimeError):
    """No child process of an isolated model could build the model."""


def restart_delay(crashes_in_a_row: int, isolation: IsolationSettings) -> float:
    """Seconds before restarting a child that has crashed ``crashes_in_a_row`` times before
    this crash: the initial backoff, doubled per crash in a row, capped."""
    exponent = min(crashes_in_a_row, 62)
    return min(isolation.backoff_max_s, isolation.backoff_initial_s * 2**exponent)


# -- the parent --------------------------------------------------------------------------------

_FORKSERVER_PRELOAD = {"mlink.operators.model_process"}


def _preload_in_forkserver(ctx: Any, factory: ModelFactory) -> None:
    """Have the fork server import this module and the model's module once, so each (re)start
    forks a process that has them already. Only models created before the server's first start
    (the first isolated child of the process) are preloaded; later ones import in the child."""
    if isinstance(factory.target, str):
        _FORKSERVER_PRELOAD.add(factory.target.partition(":")[0])
    ctx.set_forkserver_preload(sorted(_FORKSERVER_PRELOAD))


@dataclass(slots=True)
class _Slot:
    index: int
    state: SlotState = "dead"
    process: BaseProcess | None = None
    conn: Connection | None = None
    shared: FrameBuffer | None = None
    spawned_at: float = 0.0
    ready_at: float | None = None
    restart_at: float = 0.0
    crashes_in_a_row: int = 0
    attempts: int = 0  # start attempts that ended (built or failed)
    readies: int = 0
    reason: str | None = None
    kill_reason: str | None = None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None


def _describe_exit(process: BaseProcess | None) -> str:
    if process is None:
        return "no process"
    process.join(timeout=1.0)
    code = process.exitcode
    if code is None:
        return f"process {process.pid} stopped answering"
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"process {process.pid} died with {signal.Signals(-code).name}"
        return f"process {process.pid} died with signal {-code}"
    return f"process {process.pid} exited with code {code}"


class ProcessExecutor:
    """An isolated model: :meth:`run` / :meth:`arun` like :class:`ThreadExecutor`, in a pool of
    child processes. Call :meth:`start` before the first frame and :meth:`close` at the end."""

    def __init__(
        self,
        name: str,
        factory: ModelFactory,
        spec: OutputSpec,
        *,
        batch: bool = False,
        settings: ExecutorSettings,
    ) -> None:
        if settings.isolation is None:
            raise ValueError("ProcessExecutor needs ExecutorSettings.isolation")
        self.name, self.factory, self.spec, self.batch = name, factory, spec, batch
        self.settings = settings
        self.isolation: IsolationSettings = settings.isolation
        self._health = ModelHealth(name, settings.health)
        self._ctx = multiprocessing.get_context(self.isolation.start_method)
        if self.isolation.start_method == "forkserver":
            _preload_in_forkserver(self._ctx, factory)
        self._slots = [_Slot(i) for i in range(self.isolation.processes)]
        self._cond = threading.Condition()
        self._closing = False
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        self._supervisor: threading.Thread | None = None
        self._callers = ThreadPoolExecutor(
            self.isolation.processes, thread_name_prefix=f"mlink-{name}-call"
        )
        self._call_ids = itertools.count()

    # -- public --------------------------------------------------------------------------------
    def start(self) -> ProcessExecutor:
        """Start the children and wait until each is built or has failed once; raise
        :class:`ModelStartError` if none could build the model (a broken config fails loudly
        at start, not as endless restarts)."""
        if self._supervisor is not None:
            return self
        self._supervisor = threading.Thread(
            target=self._supervise, name=f"mlink-{self.name}-supervisor", daemon=True
        )
        self._supervisor.start()
        deadline = time.monotonic() + self.isolation.start_timeout_s + 5.0
        with self._cond:
            while not all(s.attempts and s.state != "starting" for s in self._slots):
                if not self._cond.wait(timeout=max(0.0, deadline - time.monotonic())):
                    break
            failed = [s.reason for s in self._slots if s.state in ("dead", "starting")]
        if len(failed) == len(self._slots):
            self.close()
            raise ModelStartError(f"model {self.name} could not start: {failed[0]}")
        return self

    def run(self, frames: Sequence[np.ndarray]) -> list[RunOutcome]:
        n = len(frames)
        if not n:
            return []
        slot, problem = self._acquire()
        if slot is None:
            self._health.failure("unavailable", problem, n)
            return [RunOutcome(None, 0.0, problem) for _ in range(n)]
        try:
            return self._call(slot, frames)
        finally:
            with self._cond:
                if slot.state == "busy":
                    slot.state = "idle"
                self._cond.notify_all()

    async def arun(self, frames: Sequence[np.ndarray]) -> list[RunOutcome]:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._callers, self.run, list(frames))

    def health(self) -> HealthReport:
        return self._health.report()

    def pids(self) -> list[int]:
        """Process ids of the live children (for tests and metrics)."""
        with self._cond:
            return [s.pid for s in self._slots if s.state != "dead" and s.pid is not None]

    def close(self) -> None:
        """Stop the supervisor and every child: an idle child gets end-of-file and exits, a busy
        one is killed (its caller gets "closed" outcomes); SIGKILL for any left after 2 s."""
        with self._cond:
            if self._closing:
                return
            self._closing = True
            self._cond.notify_all()
            slots = [(s.state, s.process, s.conn) for s in self._slots]
            shared = [s.shared for s in self._slots if s.shared is not None]
            for slot in self._slots:
                slot.state, slot.conn, slot.shared = "dead", None, None
        self._wake()
        if self._supervisor is not None and self._supervisor is not threading.current_thread():
            self._supervisor.join(timeout=5.0)
        for state, process, conn in slots:
            if state == "busy" and process is not None:
                process.kill()
            elif conn is not None:
                conn.close()
        for _, process, conn in slots:
            if process is not None:
                process.join(timeout=2.0)
                if process.is_alive():
                    process.kill()
                    process.join(timeout=2.0)
            if conn is not None:
                conn.close()
        for buffer in shared:
            buffer.close()
        self._callers.shutdown(wait=False)
        wake_fds, self._wake_r, self._wake_w = (self._wake_r, self._wake_w), -1, -1
        for fd in wake_fds:
            with contextlib.suppress(OSError):
                os.close(fd)

    def __enter__(self) -> ProcessExecutor:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- one call ------------------------------------------------------------------------------
    def _acquire(self) -> tuple[_Slot | None, str]:
        """A free child, waiting at most ``timeout_s`` for a busy one; never for a (re)start."""
        timeout = self.settings.timeout_s
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                if self._closing:
                    return None, f"model {self.name} is closed"
                idle = next((s for s in self._slots if s.state == "idle"), None)
                if idle is not None:
                    idle.state = "busy"
                    return idle, ""
                if not any(s.state == "busy" for s in self._slots):
                    return None, self._unavailable()
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None, (
                        f"model {self.name}: no free process within {timeout:.1f} s "
                        f"({len(self._slots)} busy)"
                    )
                self._cond.wait(remaining)

    def _unavailable(self) -> str:
        now = time.monotonic()
        slot = min(self._slots, key=lambda s: (s.state != "starting", s.restart_at))
        after = f" after: {slot.reason}" if slot.reason else ""
        if slot.state == "starting":
            return f"model {self.name} is unavailable: its process is restarting{after}"
        wait = max(0.0, slot.restart_at - now)
        return f"model {self.name} is unavailable: restart in {wait:.1f} s{after}"

    def _call(self, slot: _Slot, frames: Sequence[np.ndarray]) -> list[RunOutcome]:
        n, timeout = len(frames), self.settings.timeout_s
        conn = slot.conn
        assert conn is not None
        call_id = next(self._call_ids)
        try:
            send_frames(conn, call_id, frames, slot.shared)
            if not conn.poll(timeout):
                error = f"model {self.name} timed out after {timeout:.1f} s"
                self._dead(slot, f"killed: a call timed out after {timeout:.1f} s", "timeout")
                return [RunOutcome(None, timeout * 1000, error) for _ in range(n)]
            status, reply_id, outcomes, over = pickle.loads(conn.recv_bytes())
        except (EOFError, OSError):
            if self._closing:
                return [RunOutcome(None, 0.0, f"model {self.name} is closed") for _ in range(n)]
            reason = slot.kill_reason or _describe_exit(slot.process)
            self._dead(slot, reason, "crash")
            error = f"model {self.name}'s process died during the call ({reason}); restarting it"
            return [RunOutcome(None, 0.0, error) for _ in range(n)]
        if status != "ok" or reply_id != call_id or len(outcomes) != n:
            self._dead(slot, f"protocol error: {status} {reply_id}/{call_id}", "crash")
            error = f"model {self.name}'s process sent a wrong reply"
            return [RunOutcome(None, 0.0, error) for _ in range(n)]
        self._health.observe(o.error for o in outcomes)
        if over:
            self._dead(slot, over, "crash")
        return outcomes

    # -- supervisor ----------------------------------------------------------------------------
    def _supervise(self) -> None:
        try:
            while True:
                with self._cond:
                    if self._closing:
                        return
                    self._start_due()
                    watched, timeout = self._watch_list()
                ready = multiprocessing.connection.wait([*watched, self._wake_r], timeout)
                with self._cond:
                    if self._closing:
                        return
                    self._drain_wake(ready)
                    for obj in ready:
                        if obj in watched:
                            self._on_ready(watched[obj], obj)
                    self._check_start_timeouts()
                    self._poll_rss()
        except Exception:  # a supervisor bug must not go silent: the model would never restart
            log.exception("supervisor of model %s stopped", self.name)

    def _start_due(self) -> None:
        now = time.monotonic()
        for slot in self._slots:
            if slot.state == "dead" and now >= slot.restart_at:
                self._spawn(slot)

    def _spawn(self, slot: _Slot) -> None:
        parent_conn, child_conn = self._ctx.Pipe(duplex=True)
        shared = FrameBuffer.create()
        process = self._ctx.Process(
            target=child_main,
            args=(
                child_conn,
                shared,
                self.factory,
                self.name,
                self.spec,
                self.batch,
                self.isolation,
                os.getpid(),
            ),
            name=f"mlink-model-{self.name}-{slot.index}",
            daemon=True,
        )
        try:
            process.start()
        except Exception as exc:
            parent_conn.close()
            child_conn.close()
            if shared is not None:
                shared.close()
            self._dead(slot, f"could not start a process: {exc}", "crash")
            return
        child_conn.close()
        slot.process, slot.conn, slot.shared, slot.state = process, parent_conn, shared, "starting"
        slot.spawned_at, slot.ready_at, slot.kill_reason = time.monotonic(), None, None

    def _watch_list(self) -> tuple[dict[Any, _Slot], float]:
        now = time.monotonic()
        watched: dict[Any, _Slot] = {}
        deadlines = [now + 60.0]
        for slot in self._slots:
            if slot.state == "starting" and slot.conn is not None and slot.process is not None:
                watched[slot.conn] = slot
                watched[slot.process.sentinel] = slot
                deadlines.append(slot.spawned_at + self.isolation.start_timeout_s)
            elif slot.state == "idle" and slot.process is not None:
                watched[slot.process.sentinel] = slot
            elif slot.state == "dead":
                deadlines.append(slot.restart_at)
        if self.isolation.max_rss_mb is not None:
            deadlines.append(now + self.isolation.rss_poll_s)
        return watched, max(0.0, min(deadlines) - now)

    def _on_ready(self, slot: _Slot, obj: Any) -> None:
        process, conn = slot.process, slot.conn
        is_sentinel = process is not None and obj == process.sentinel
        if slot.state == "starting" and conn is not None and obj is conn:
            self._read_start_message(slot, conn)
        elif slot.state == "idle" and is_sentinel:
            self._dead(slot, slot.kill_reason or _describe_exit(process), "crash")
        elif slot.state == "starting" and is_sentinel and not (conn is not None and conn.poll()):
            self._dead(slot, f"died while building: {_describe_exit(process)}", "crash")

    def _read_start_message(self, slot: _Slot, conn: Connection) -> None:
        try:
            message = pickle.loads(conn.recv_bytes())
        except (EOFError, OSError):
            self._dead(slot, f"died while building: {_describe_exit(slot.process)}", "crash")
            return
        if message[0] != "ready":
            self._dead(slot, f"build failed: {message[1].strip()}", "crash")
            return
        slot.state, slot.ready_at, slot.reason = "idle", time.monotonic(), None
        slot.attempts += 1
        slot.readies += 1
        if slot.readies > 1:
            self._health.restarted()
            log.info("model %s: process %s restarted", self.name, slot.pid)
        self._cond.notify_all()

    def _check_start_timeouts(self) -> None:
        limit = self.isolation.start_timeout_s
        for slot in self._slots:
            if slot.state == "starting" and time.monotonic() - slot.spawned_at > limit:
                self._dead(slot, f"not built within {limit:.0f} s", "crash")

    def _poll_rss(self) -> None:
        cap = self.isolation.max_rss_mb
        if cap is None:
            return
        for slot in self._slots:
            if slot.state in ("idle", "busy") and slot.pid is not None and not slot.kill_reason:
                rss = rss_mb(slot.pid)
                if rss is not None and rss > cap and slot.process is not None:
                    slot.kill_reason = f"killed: RSS {rss:.0f} MB over the {cap:.0f} MB cap"
                    slot.process.kill()  # idle: the sentinel fires; busy: the caller sees EOF

    # -- shared --------------------------------------------------------------------------------
    def _dead(self, slot: _Slot, reason: str, kind: FailureKind) -> None:
        """Kill what is left of the child and schedule its restart after the backoff."""
        with self._cond:
            process, conn = slot.process, slot.conn
            if process is not None and process.is_alive():
                process.kill()
            if process is not None:
                process.join(timeout=1.0)
            if conn is not None:
                conn.close()
            if slot.shared is not None:
                slot.shared.close()
            now = time.monotonic()
            iso = self.isolation
            if slot.ready_at is None:
                slot.attempts += 1  # died before it was ready: a failed start
            if slot.ready_at is not None and now - slot.ready_at >= iso.backoff_reset_s:
                slot.crashes_in_a_row = 0
            delay = restart_delay(slot.crashes_in_a_row, iso)
            slot.crashes_in_a_row += 1
            slot.state, slot.reason, slot.conn, slot.shared = "dead", reason, None, None
            slot.ready_at, slot.restart_at = None, now + delay
            self._cond.notify_all()
        if not self._closing:
            self._health.failure(kind, f"model {self.name}: {reason}")
            log.warning("model %s: %s; restart in %.1f s", self.name, reason, delay)
        self._wake()

    def _wake(self) -> None:
        if self._wake_w >= 0:  # after close() the number may belong to another file
            with contextlib.suppress(OSError):
                os.write(self._wake_w, b"x")

    def _drain_wake(self, ready: list[Any]) -> None:
        if self._wake_r in ready:
            with contextlib.suppress(OSError):
                os.read(self._wake_r, 4096)
