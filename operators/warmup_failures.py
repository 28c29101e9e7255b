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

__all__ = ["FailureTally", "WarmupFailures"]

log = logging.getLogger("mlink.frames")
SAY_EVERY_S = 30.0
MAX_REASON_CHARS = 300


class FailureTally:
    """Per model: on how many results it was to run (``tried``), failed to give an output of
    its own (``failed``: missing, or synthesized in its place with the error), and its last
    error. Results on which no model ran (an undecodable frame: dead-lettered) are counted in
    ``frames`` and are no model's fault. The worker's warm-up log and ``mlink status``
    (:mod:`mlink.deploy.model_failures`) count the same way."""

    def __init__(self) -> None:
        self.failed: Counter[str] = Counter()
        self.tried: Counter[str] = Counter()
        self.last_error: dict[str, str] = {}
        self.frames = 0

    def add(self, results: Iterable[FrameResult]) -> None:
        for result in results:
            self.frames += 1
            if not any(r.status == "executed" for r in result.results):
                continue
            for r in result.results:
                if r.status == "synthesized" and not r.error:
                    continue  # the plan's synthesis, not a run that failed (that has its error)
                self.tried[r.model] += 1
                if r.status != "executed":
                    self.failed[r.model] += 1
                    self.last_error[r.model] = (r.error or "no output")[:MAX_REASON_CHARS]

    def clear(self) -> None:
        self.failed.clear()
        self.tried.clear()
        self.last_error.clear()
        self.frames = 0


class WarmupFailures(FailureTally):
    """The warm-up results that were no training sample (``frames``), per model, said in the
    log at most every ``say_every_s``."""

    def __init__(
        self, say_every_s: float = SAY_EVERY_S, clock: Callable[[], float] = time.monotonic
    ) -> None:
        super().__init__()
        self._every, self._clock = say_every_s, clock
        self._said_at: float | None = None

    def say(self, samples: int, needed: int) -> bool:
        """Log why the warm-up waits, at most every ``say_every_s``; True when it did."""
        now = self._clock()
        if not self.frames or (self._said_at is not None and now - self._said_at < self._every):
            return False
        self._said_at = now
        worst = (
            ", ".join(f"{m} on {n} ({self.last_error[m]})" for m, n in self.failed.most_common(3))
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
        super().clear()
        self._said_at = None
