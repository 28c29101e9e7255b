"""Why warm-up frames were no training samples, said in the worker log now and then.

Links are trained only from frames on which every model ran. One model that fails on every
frame (a NaN, a wrong shape, a crash) therefore keeps the pipeline in its warm-up for good:
every model runs, nothing is saved, and the only sign was one warning per failed call (a new
user's audit, stop 45: 80 of 80 frames, 0 samples in 2.5 minutes). The worker now says which
model holds the warm-up, how often and why; ``mlink status`` shows the same from the results
(:mod:`mlink.deploy.model_failures`).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable

from mlink.topics.records import FrameResult

__all__ = ["WarmupFailures"]

log = logging.getLogger("mlink.frames")
SAY_EVERY_S = 30.0
MAX_REASON_CHARS = 300


class WarmupFailures:
    """Counts, per model, the warm-up frames it failed on, with its last error."""

    def __init__(
        self, say_every_s: float = SAY_EVERY_S, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.failed: Counter[str] = Counter()
        self.last_error: dict[str, str] = {}
        self.frames = 0  # warm-up frames that were no sample
        self._every, self._clock = say_every_s, clock
        self._said_at: float | None = None

    def add(self, unusable: Iterable[FrameResult]) -> None:
        """Note warm-up results that were no training sample."""
        for result in unusable:
            self.frames += 1
            if not any(r.status == "executed" for r in result.results):
                continue  # the frame's fault (undecodable: dead-lettered), or every model's
            for r in result.results:
                if r.status != "executed":
                    self.failed[r.model] += 1
                    if r.error:
                        self.last_error[r.model] = r.error[:MAX_REASON_CHARS]

    def say(self, samples: int, needed: int) -> bool:
        """Log why the warm-up waits, at most every ``say_every_s``; True when it did."""
        now = self._clock()
        if not self.frames or (self._said_at is not None and now - self._said_at < self._every):
            return False
        self._said_at = now
        worst = (
            ", ".join(
                f"{m} on {n} ({self.last_error.get(m, 'no output')})"
                for m, n in self.failed.most_common(3)
            )
            or "every model, or the frame (dead letters)"
        )
        log.warning(
            "warm-up: %d of the %d frames needed were training samples on this worker; %d were "
            "not, because a model failed on them: %s. Links are trained only from frames on "
            "which every model ran, so until then every model runs: fix the model, or take it "
            "out of the config",
            samples,
            needed,
            self.frames,
            worst,
        )
        return True

    def clear(self) -> None:
        """A new warm-up (a relearn) starts counting again."""
        self.failed.clear()
        self.last_error.clear()
        self.frames = 0
        self._said_at = None
