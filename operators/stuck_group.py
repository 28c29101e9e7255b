"""A consumer group whose rebalances never complete, told apart from one that is rebalancing.

The embedded Tansu broker can keep a member that left as its group's leader (docs/broker.md,
"A group that never settles"). Every live member then joins, waits for a sync from a leader
that is gone, and joins again about every 13 s; no worker answers a frame until the group is
deleted, and from outside it looks like any rebalance (state ``Unknown``, workers not ready).
Each worker counts its own join rounds that ended without an assignment. Past
``STUCK_AFTER_S`` and ``STUCK_ROUNDS`` of them it logs an ERROR that names the remedy
(``mlink repair-group``, with the workers stopped), and ``mlink_group_unsynced_seconds``
says how long it has waited.
"""

from __future__ import annotations

import functools
import logging
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "STUCK_AFTER_S",
    "JoinRounds",
    "unsynced_seconds",
    "watch_join_rounds",
]

log = logging.getLogger("mlink.group")
STUCK_AFTER_S = 60.0  # a healthy rebalance on a loaded machine took 5-18 s (docs/broker.md)
STUCK_ROUNDS = 3  # and a wedged round takes ~13 s on Tansu: at least 3 failed rounds
SAY_AGAIN_S = 300.0  # while it stays stuck, the ERROR again this often
_FLAG = "_mlink_watches_join_rounds"
_ROUNDS: weakref.WeakKeyDictionary[Any, JoinRounds] = weakref.WeakKeyDictionary()
"""Each group member of this process (its aiokafka coordinator) -> its rounds."""


@dataclass(slots=True)
class JoinRounds:
    """One consumer's join rounds since it last had an assignment; :meth:`ended` says what
    to log about each round."""

    group: str
    stuck_after_s: float = STUCK_AFTER_S
    stuck_rounds: int = STUCK_ROUNDS
    failed: int = 0
    since: float | None = None
    """Monotonic start of the first round that has not ended in an assignment."""
    generations: list[int] = field(default_factory=list)
    said_at: float | None = None

    def started(self, now: float) -> None:
        """A join round starts: the wait counts from the first one of a streak."""
        if self.since is None:
            self.since = now

    def ended(self, synced: bool, generation: int, now: float) -> tuple[int, str] | None:
        """A round ended, with an assignment or not; the log level and message to say, if
        any: an ERROR when the streak is past both limits (again every ``SAY_AGAIN_S``),
        and an INFO when a streak that was said ends."""
        if synced:
            said = self.said_at is not None
            waited, rounds = self.unsynced_s(now), self.failed
            self.failed, self.since, self.said_at = 0, None, None
            self.generations.clear()
            if said:
                return logging.INFO, (
                    f"consumer group {self.group!r} completed a rebalance after {waited:.0f} s "
                    f"and {rounds} join rounds without one"
                )
            return None
        self.failed += 1
        self.started(now)
        if generation not in self.generations[-5:]:
            self.generations.append(generation)
        waited = self.unsynced_s(now)
        if self.failed < self.stuck_rounds or waited < self.stuck_after_s:
            return None
        if self.said_at is not None and now - self.said_at < SAY_AGAIN_S:
            return None
        self.said_at = now
        return logging.ERROR, self.message(waited)

    def unsynced_s(self, now: float) -> float:
        """Seconds since the streak began (0 when the member has its assignment)."""
        return 0.0 if self.since is None else max(0.0, now - self.since)

    def message(self, waited: float) -> str:
        gens = ", ".join(str(g) for g in self.generations[-5:])
        return (
            f"consumer group {self.group!r} has not completed a rebalance in {waited:.0f} s: "
            f"{self.failed} join rounds ended without an assignment (generation {gens}), so "
            "this worker answers no frame. On the embedded broker this is Tansu keeping a "
            "member that left as the group's leader, and it does not end by itself: stop the "
            "pipeline's workers, run `mlink repair-group CONFIG` (it deletes the group and "
            "restores its committed offsets) and start them again (docs/broker.md, 'A group "
            "that never settles'). On Kafka, look for a worker that keeps restarting or one "
            "slower than the rebalance timeout"
        )


def unsynced_seconds(clock: Callable[[], float] = time.monotonic) -> float:
    """The longest any consumer group member of this process has been joining without an
    assignment, in seconds (0 when each has one): the ``mlink_group_unsynced_seconds``
    gauge."""
    now = clock()
    return max((rounds.unsynced_s(now) for rounds in list(_ROUNDS.values())), default=0.0)


def watch_join_rounds(clock: Callable[[], float] = time.monotonic) -> None:
    """Count every aiokafka group member's join rounds in this process (idempotent; every
    MLink app gets it from ``attach_control_replay``). A round that raises, or is cancelled
    by a stop, is not counted."""
    from aiokafka.consumer.group_coordinator import CoordinatorGroupRebalance

    original = CoordinatorGroupRebalance.perform_group_join
    if getattr(original, _FLAG, False):
        return

    @functools.wraps(original)
    async def perform_group_join(self: Any) -> Any:
        rounds = _ROUNDS.get(self._coordinator)
        if rounds is None:
            rounds = _ROUNDS[self._coordinator] = JoinRounds(self.group_id, STUCK_AFTER_S)
        rounds.started(clock())
        result = await original(self)
        said = rounds.ended(result is not None, self._coordinator.generation, clock())
        if said is not None:
            log.log(*said)
        return result

    setattr(perform_group_join, _FLAG, True)
    CoordinatorGroupRebalance.perform_group_join = perform_group_join  # type: ignore[method-assign]
