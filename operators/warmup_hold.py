"""When a worker stops waiting for its first links (``LinkSettings.hold_s``).

After its warm-up a worker pauses its frames for up to ``hold_s``, so a backlog waits for the
budgeted plan instead of running every model. A fixed wait is wrong when this worker trains the
links itself and training outlasts it: on the 2-core bench machine the first links of the
11-model video config took 40-51 s against the default 60 s, and a run whose hold expired 0.6 s
before the plan arrived ran 31 more frames with every model (BENCHMARKS.md, "Cascades", live
runs). So while this worker's trainer is training, the hold waits for it, and ``hold_s`` counts
again from when that training ended; :data:`HOLD_CAP` bounds a training that never ends.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["HOLD_CAP", "TrainingClock", "hold_over"]

HOLD_CAP = 5.0
"""While this worker trains, its warm-up hold lasts at most this many ``hold_s`` in all."""


@dataclass(slots=True)
class TrainingClock:
    """This worker's own link training as the warm-up hold sees it (monotonic seconds)."""

    since: float | None = None
    """When the training under way started (None: not training)."""
    ended: float | None = None
    """When the last training that saved a link version ended."""

    def start(self, now: float) -> None:
        self.since = now

    def stop(self, now: float, saved: bool) -> None:
        """A failed training does not restart the wait: no links are coming from it."""
        self.since = None
        if saved:
            self.ended = now


def hold_over(now: float, held_since: float, hold_s: float, training: TrainingClock) -> bool:
    """Whether a hold that began at ``held_since`` has waited long enough at ``now``."""
    if training.since is not None:
        return now - held_since >= HOLD_CAP * hold_s
    start = held_since if training.ended is None else max(held_since, training.ended)
    return now - start >= hold_s
