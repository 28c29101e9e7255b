"""The child processes of one isolated model, kept alive: a crashed, hung or bloated child is
replaced, after a backoff, without the callers waiting for it.

Lifecycle of a child slot::

    dead --(backoff elapsed)--> starting --(built)--> idle <--> busy
      ^                            |                   |         |
      +----- build failed, timed out, died, RSS over cap, killed +

A supervisor thread per model starts children, notices idle ones dying, polls their resident
memory and restarts dead ones after an exponential backoff (reset once a child has served
``backoff_reset_s``). A busy slot belongs to its caller (:mod:`mlink.operators.isolation`), which
reports a timeout or a dead child through :meth:`ChildSupervisor.dead`.

Children die with the worker: the supervisor thread, which lives until :meth:`close`, starts
them, so ``PR_SET_PDEATHSIG`` (which fires when the *thread* that started a child exits) is
valid; a watchdog thread in the child also exits when its parent changes, and a child exits
when its socket closes. Children are ``daemon`` processes: multiprocessing kills them at a normal
exit of the worker; the price is that a model cannot start multiprocessing children of its own.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import multiprocessing.connection
import os
import pickle
import signal
import threading
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any, Literal

from mlink.operators.health import FailureKind, ModelHealth
from mlink.operators.model_process import FrameBuffer, child_main, rss_mb
from mlink.operators.model_settings import IsolationSettings, ModelFactory
from mlink.topics.specs import OutputSpec

__all__ = ["ChildSupervisor", "Slot", "SlotState", "describe_exit", "restart_delay"]

log = logging.getLogger("mlink.models")
SUPERVISOR_PAUSE_S = 0.5  # after an error of the supervisor loop itself, doubling up to:
SUPERVISOR_PAUSE_MAX_S = 30.0
SlotState = Literal["dead", "starting", "idle", "busy"]


def restart_delay(crashes_in_a_row: int, isolation: IsolationSettings) -> float:
    """Seconds before restarting a child that has crashed ``crashes_in_a_row`` times before
    this crash: the initial backoff, doubled per crash in a row, capped."""
    exponent = min(crashes_in_a_row, 62)
    return min(isolation.backoff_max_s, isolation.backoff_initial_s * 2**exponent)


_FORKSERVER_PRELOAD = {"mlink.operators.model_process"}


def _preload_in_forkserver(ctx: Any, factory: ModelFactory) -> None:
    """Have the fork server import the child side (``model_process``) and the model's module
    once, so each (re)start forks a process that has them already. Only models created before
    the server's first start (the first isolated child of the process) are preloaded; later ones
    import in the child."""
    if isinstance(factory.target, str):
        _FORKSERVER_PRELOAD.add(factory.target.partition(":")[0])
    ctx.set_forkserver_preload(sorted(_FORKSERVER_PRELOAD))


@dataclass(slots=True)
class Slot:
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


def describe_exit(process: BaseProcess | None) -> str:
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


class ChildSupervisor:
    """The ``isolation.processes`` child slots of one model. Callers take idle slots and give
    them back under :attr:`cond`, the lock every slot change happens under."""

    def __init__(
        self,
        name: str,
        factory: ModelFactory,
        spec: OutputSpec,
        batch: bool,
        isolation: IsolationSettings,
        health: ModelHealth,
    ) -> None:
        self.name, self.factory, self.spec, self.batch = name, factory, spec, batch
        self.isolation = isolation
        self._health = health
        self._ctx = multiprocessing.get_context(isolation.start_method)
        if isolation.start_method == "forkserver":
            _preload_in_forkserver(self._ctx, factory)
        self.slots = [Slot(i) for i in range(isolation.processes)]
        self.cond = threading.Condition()
        self.closing = False
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        self._thread: threading.Thread | None = None

    @property
    def started(self) -> bool:
        return self._thread is not None

    def start(self) -> None:
        if self._thread is not None:
            return
        self._thread = threading.Thread(
            target=self._supervise, name=f"mlink-{self.name}-supervisor", daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        """Stop the supervisor and every child: an idle child gets end-of-file and exits, a busy
        one is killed (its caller gets "closed" outcomes); SIGKILL for any left after 2 s."""
        with self.cond:
            if self.closing:
                return
            self.closing = True
            self.cond.notify_all()
            slots = [(s.state, s.process, s.conn) for s in self.slots]
            shared = [s.shared for s in self.slots if s.shared is not None]
            for slot in self.slots:
                slot.state, slot.conn, slot.shared = "dead", None, None
        self._wake()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5.0)
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
        wake_fds, self._wake_r, self._wake_w = (self._wake_r, self._wake_w), -1, -1
        for fd in wake_fds:
            with contextlib.suppress(OSError):
                os.close(fd)

    # -- supervisor ----------------------------------------------------------------------------
    def _supervise(self) -> None:
        """The loop outlives its own errors: the children die with this thread (their parent
        death signal), so a supervisor that stopped on one error would take every healthy child
        of the model with it and restart none."""
        pause = SUPERVISOR_PAUSE_S
        while not self.closing:
            try:
                self._supervise_once()
                pause = SUPERVISOR_PAUSE_S
            except Exception:  # said every time, tried again after a growing pause
                log.exception("supervisor of model %s failed; going on in %.1f s", self.name, pause)
                time.sleep(pause)
                pause = min(pause * 2, SUPERVISOR_PAUSE_MAX_S)

    def _supervise_once(self) -> None:
        with self.cond:
            if self.closing:
                return
            self._start_due()
            watched, timeout = self._watch_list()
        ready = multiprocessing.connection.wait([*watched, self._wake_r], timeout)
        with self.cond:
            if self.closing:
                return
            self._drain_wake(ready)
            for obj in ready:
                if obj in watched:
                    self._on_ready(watched[obj], obj)
            self._check_start_timeouts()
            self._poll_rss()

    def _start_due(self) -> None:
        now = time.monotonic()
        for slot in self.slots:
            if slot.state == "dead" and now >= slot.restart_at:
                self._spawn(slot)

    def _spawn(self, slot: Slot) -> None:
        try:  # out of file descriptors or memory for a moment: a failed start, retried later
            parent_conn, child_conn = self._ctx.Pipe(duplex=True)
        except Exception as exc:
            self.dead(slot, f"could not start a process: {exc}", "crash")
            return
        try:
            shared = FrameBuffer.create()
        except Exception as exc:
            parent_conn.close()
            child_conn.close()
            self.dead(slot, f"could not start a process: {exc}", "crash")
            return
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
            self.dead(slot, f"could not start a process: {exc}", "crash")
            return
        child_conn.close()
        slot.process, slot.conn, slot.shared, slot.state = process, parent_conn, shared, "starting"
        slot.spawned_at, slot.ready_at, slot.kill_reason = time.monotonic(), None, None

    def _watch_list(self) -> tuple[dict[Any, Slot], float]:
        now = time.monotonic()
        watched: dict[Any, Slot] = {}
        deadlines = [now + 60.0]
        for slot in self.slots:
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

    def _on_ready(self, slot: Slot, obj: Any) -> None:
        process, conn = slot.process, slot.conn
        is_sentinel = process is not None and obj == process.sentinel
        if slot.state == "starting" and conn is not None and obj is conn:
            self._read_start_message(slot, conn)
        elif slot.state == "idle" and is_sentinel:
            self.dead(slot, slot.kill_reason or describe_exit(process), "crash")
        elif slot.state == "starting" and is_sentinel and not (conn is not None and conn.poll()):
            self.dead(slot, f"died while building: {describe_exit(process)}", "crash")

    def _read_start_message(self, slot: Slot, conn: Connection) -> None:
        try:
            message = pickle.loads(conn.recv_bytes())
        except (EOFError, OSError):
            self.dead(slot, f"died while building: {describe_exit(slot.process)}", "crash")
            return
        if message[0] != "ready":
            self.dead(slot, f"build failed: {message[1].strip()}", "crash")
            return
        slot.state, slot.ready_at, slot.reason = "idle", time.monotonic(), None
        slot.attempts += 1
        slot.readies += 1
        if slot.readies > 1:
            self._health.restarted()
            log.info("model %s: process %s restarted", self.name, slot.pid)
        self.cond.notify_all()

    def _check_start_timeouts(self) -> None:
        limit = self.isolation.start_timeout_s
        for slot in self.slots:
            if slot.state == "starting" and time.monotonic() - slot.spawned_at > limit:
                self.dead(slot, f"not built within {limit:.0f} s", "crash")

    def _poll_rss(self) -> None:
        cap = self.isolation.max_rss_mb
        if cap is None:
            return
        for slot in self.slots:
            if slot.state in ("idle", "busy") and slot.pid is not None and not slot.kill_reason:
                rss = rss_mb(slot.pid)
                if rss is not None and rss > cap and slot.process is not None:
                    slot.kill_reason = f"killed: RSS {rss:.0f} MB over the {cap:.0f} MB cap"
                    slot.process.kill()  # idle: the sentinel fires; busy: the caller sees EOF

    # -- shared --------------------------------------------------------------------------------
    def dead(self, slot: Slot, reason: str, kind: FailureKind) -> None:
        """Kill what is left of the child and schedule its restart after the backoff."""
        with self.cond:
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
            self.cond.notify_all()
        if not self.closing:
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
