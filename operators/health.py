"""A model's health: healthy -> failing -> unhealthy, and back after enough successes.

Errors on single frames (a model raised, or returned something its spec rejects) move a model
to ``failing`` and, after ``unhealthy_after`` in a row, to ``unhealthy``. A hang (a call that
exceeded its timeout) or a crash of the model's process is unhealthy at once: the model is not
merely wrong on one input, it is not answering. ``recover_after`` successes in a row bring any
state back to ``healthy``. Reasons and counts are kept, so a health report or metrics endpoint can
say why a model is unhealthy and since when.

The tracker is thread-safe (executors update it from their model threads or supervisor).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

__all__ = ["FailureKind", "HealthReport", "HealthSettings", "HealthState", "ModelHealth"]

HealthState = Literal["healthy", "failing", "unhealthy"]
FailureKind = Literal["error", "timeout", "crash", "unavailable"]
"""``error``: the model raised or returned a bad output; ``timeout``: a call exceeded its
timeout; ``crash``: the model's process died (signal, memory cap, build failure);
``unavailable``: a frame failed fast because the model is stuck or restarting."""


@dataclass(frozen=True, slots=True, kw_only=True)
class HealthSettings:
    """When a model is declared failing, unhealthy, and healthy again."""

    unhealthy_after: int = 3
    """Consecutive errors that make a failing model unhealthy (a timeout or crash: at once)."""
    recover_after: int = 3
    """Consecutive successes that make a failing or unhealthy model healthy again."""

    def __post_init__(self) -> None:
        if self.unhealthy_after < 1 or self.recover_after < 1:
            raise ValueError(
                "HealthSettings: unhealthy_after and recover_after must be >= 1, got "
                f"{self.unhealthy_after} and {self.recover_after}"
            )


@dataclass(frozen=True, slots=True, kw_only=True)
class HealthReport:
    """A snapshot of one model's health, for logs, metrics and readiness checks."""

    model: str
    state: HealthState
    reason: str | None
    """The last failure while not healthy (None once healthy again)."""
    since: float
    """Unix time of the last state change."""
    consecutive_errors: int
    consecutive_successes: int
    successes: int
    errors: int
    timeouts: int
    crashes: int
    unavailable: int
    restarts: int
    last_error: str | None


@dataclass(slots=True)
class ModelHealth:
    """Counts successes and failures of one model and derives its state."""

    model: str
    settings: HealthSettings = field(default_factory=HealthSettings)
    state: HealthState = "healthy"
    reason: str | None = None
    since: float = field(default_factory=time.time)
    consecutive_errors: int = 0
    consecutive_successes: int = 0
    successes: int = 0
    errors: int = 0
    timeouts: int = 0
    crashes: int = 0
    unavailable: int = 0
    restarts: int = 0
    last_error: str | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def success(self, count: int = 1) -> None:
        """``count`` frames got a valid output."""
        if count <= 0:
            return
        with self._lock:
            self.successes += count
            self.consecutive_successes += count
            self.consecutive_errors = 0
            recovered = self.consecutive_successes >= self.settings.recover_after
            if self.state != "healthy" and recovered:
                self._move("healthy", None)

    def failure(self, kind: FailureKind, reason: str, count: int = 1) -> None:
        """``count`` frames failed for ``reason``; a timeout or crash is unhealthy at once."""
        if count <= 0:
            return
        with self._lock:
            if kind == "error":
                self.errors += count
            elif kind == "timeout":
                self.timeouts += 1
            elif kind == "crash":
                self.crashes += 1
            else:
                self.unavailable += count
            self.last_error = reason
            self.consecutive_successes = 0
            self.consecutive_errors += count
            severe = kind != "error" or self.consecutive_errors >= self.settings.unhealthy_after
            if severe:
                self._move("unhealthy", reason)
            elif self.state == "healthy":
                self._move("failing", reason)
            else:
                self.reason = reason

    def observe(self, errors: Iterable[str | None]) -> None:
        """One call's frames in order: None for a valid output, else the frame's error."""
        for error in errors:
            if error is None:
                self.success()
            else:
                self.failure("error", error)

    def restarted(self) -> None:
        """The model's process was started again (counted; the state follows the next calls)."""
        with self._lock:
            self.restarts += 1

    def report(self) -> HealthReport:
        with self._lock:
            return HealthReport(
                model=self.model,
                state=self.state,
                reason=self.reason,
                since=self.since,
                consecutive_errors=self.consecutive_errors,
                consecutive_successes=self.consecutive_successes,
                successes=self.successes,
                errors=self.errors,
                timeouts=self.timeouts,
                crashes=self.crashes,
                unavailable=self.unavailable,
                restarts=self.restarts,
                last_error=self.last_error,
            )

    def _move(self, state: HealthState, reason: str | None) -> None:
        if state != self.state:
            self.since = time.time()
        self.state, self.reason = state, reason
