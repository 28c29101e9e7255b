"""A model in child processes: a crash, a leak or a hang costs a restart of that model's process,
never the worker.

Each isolated model has a pool of ``IsolationSettings.processes`` children. A child
(:mod:`mlink.operators.model_process`) imports little besides the model's own code, builds the
model from its :class:`ModelFactory`, then serves one call at a time over a socket pair; large
frames go through a memory file shared with it (see that module; overhead measured by
``bench/isolation.py transport``). :mod:`mlink.operators.child_supervisor` starts and restarts
the children.

A caller owns a busy slot: it sees a timeout (and kills the child) or the end of the socket (the
child died) itself. Frames for a model with no live child fail fast with the reason; they never
wait for a model build.
"""

from __future__ import annotations

import asyncio
import itertools
import pickle
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from mlink.operators.child_supervisor import ChildSupervisor, Slot, describe_exit
from mlink.operators.health import HealthReport, ModelHealth
from mlink.operators.model_errors import timeout_error
from mlink.operators.model_process import send_frames
from mlink.operators.model_runner import RunOutcome, late_calls_timed_out, model_calls
from mlink.operators.model_settings import ExecutorSettings, IsolationSettings, ModelFactory
from mlink.topics.specs import OutputSpec

__all__ = ["ModelStartError", "ProcessExecutor"]


class ModelStartError(RuntimeError):
    """No child process of an isolated model could build the model."""


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
        self._children = ChildSupervisor(name, factory, spec, batch, self.isolation, self._health)
        # the supervisor's own slots and lock: callers take and give back slots under it
        self._slots, self._cond = self._children.slots, self._children.cond
        self._callers = ThreadPoolExecutor(
            self.isolation.processes, thread_name_prefix=f"mlink-{name}-call"
        )
        self._call_ids = itertools.count()

    # -- public --------------------------------------------------------------------------------
    def start(self) -> ProcessExecutor:
        """Start the children and wait until each is built or has failed once; raise
        :class:`ModelStartError` if none could build the model (a broken config fails loudly
        at start, not as endless restarts)."""
        if self._children.started:
            return self
        self._children.start()
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
        """Stop every child (see :meth:`ChildSupervisor.close`) and the caller threads."""
        self._children.close()
        self._callers.shutdown(wait=False)

    def __enter__(self) -> ProcessExecutor:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- one call ------------------------------------------------------------------------------
    def _acquire(self) -> tuple[Slot | None, str]:
        """A free child, waiting at most ``timeout_s`` for a busy one; never for a (re)start."""
        timeout = self.settings.timeout_s
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                if self._children.closing:
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

    def _call(self, slot: Slot, frames: Sequence[np.ndarray]) -> list[RunOutcome]:
        n = len(frames)
        timeout = self.settings.timeout_s * model_calls(frames, self.batch)
        conn = slot.conn
        assert conn is not None
        call_id = next(self._call_ids)
        try:
            send_frames(conn, call_id, frames, slot.shared)
            if not conn.poll(timeout):
                error = timeout_error(self.name, timeout)
                self._children.dead(
                    slot, f"killed: a call timed out after {timeout:.1f} s", "timeout"
                )
                return [RunOutcome(None, timeout * 1000, error) for _ in range(n)]
            status, reply_id, outcomes, over = pickle.loads(conn.recv_bytes())
        except (EOFError, OSError):
            if self._children.closing:
                return [RunOutcome(None, 0.0, f"model {self.name} is closed") for _ in range(n)]
            reason = slot.kill_reason or describe_exit(slot.process)
            self._children.dead(slot, reason, "crash")
            error = f"model {self.name}'s process died during the call ({reason}); restarting it"
            return [RunOutcome(None, 0.0, error) for _ in range(n)]
        if status != "ok" or reply_id != call_id or len(outcomes) != n:
            self._children.dead(slot, f"protocol error: {status} {reply_id}/{call_id}", "crash")
            error = f"model {self.name}'s process sent a wrong reply"
            return [RunOutcome(None, 0.0, error) for _ in range(n)]
        timeout_s = self.settings.timeout_s
        outcomes, late = late_calls_timed_out(self.name, frames, self.batch, outcomes, timeout_s)
        if any(late):
            self._health.failure("timeout", timeout_error(self.name, timeout_s), sum(late))
        self._health.observe(o.error for o, slow in zip(outcomes, late, strict=True) if not slow)
        if over:
            self._children.dead(slot, over, "crash")
        return outcomes
