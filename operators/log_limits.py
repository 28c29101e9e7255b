"""Repeated client errors, said once a while instead of a hundred times a second.

While its broker is away (a maintenance window, a network partition), a worker stays up and
retries, which is right; but aiokafka logs every failed connect, metadata refresh and fetch at
ERROR, about 108 lines a second from one worker (840 KB a minute, over a gigabyte a day),
which fills disks and log quotas and buries the one line that matters. :class:`RepeatLimiter`
passes the first record of each kind, then at most one per ``every_s``, saying how many like it
were held back. The Kafka clients' loggers are limited, and each model's failures
(``mlink.model_failures.<model>``: a model broken for good logged a line per batch, 170 lines for 80
frames in a new user's audit, stop 45); MLink's other lines all pass.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable

__all__ = ["LIMITED_LOGGERS", "RepeatLimiter", "limit_client_repeats"]

LIMITED_LOGGERS: tuple[str, ...] = ("aiokafka", "kafka", "mlink.model_failures")
"""Loggers (and their children) whose repeated records are limited."""


class RepeatLimiter(logging.Filter):
    """A handler filter: the first record of a kind (logger, level, message template), then at
    most one per ``every_s`` seconds, with the count held back since the last one appended."""

    def __init__(
        self,
        every_s: float = 30.0,
        prefixes: Iterable[str] = LIMITED_LOGGERS,
        clock: Callable[[], float] = time.monotonic,
        kinds: int = 512,
    ) -> None:
        super().__init__()
        self.every_s = every_s
        self.prefixes = tuple(prefixes)
        self.clock = clock
        self.kinds = kinds
        self._seen: OrderedDict[tuple[str, int, str], list[float]] = OrderedDict()

    def _limited(self, name: str) -> bool:
        return any(name == p or name.startswith(p + ".") for p in self.prefixes)

    def filter(self, record: logging.LogRecord) -> bool:
        decided = getattr(record, "_mlink_repeat", None)  # a record meets every handler
        if decided is not None:
            return bool(decided)
        passed = self._decide(record)
        record._mlink_repeat = passed
        return passed

    def _decide(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING or not self._limited(record.name):
            return True
        key = (record.name, record.levelno, str(record.msg))
        now = self.clock()
        entry = self._seen.get(key)
        if entry is None:  # [when last passed, held back since]
            self._seen[key] = [now, 0]
            while len(self._seen) > self.kinds:  # bounded whatever the messages say
                self._seen.popitem(last=False)
            return True
        self._seen.move_to_end(key)
        if now - entry[0] < self.every_s:
            entry[1] += 1
            return False
        held, entry[0], entry[1] = int(entry[1]), now, 0
        if held:
            record.msg = f"{record.msg} ({held} more lines like it in the last {self.every_s:g} s)"
        return True


def limit_client_repeats(every_s: float = 30.0) -> RepeatLimiter:
    """Install one :class:`RepeatLimiter` on every handler of the root logger (call it once
    the worker's logging is set up: faust sets up its handlers when the worker starts)."""
    limiter = RepeatLimiter(every_s)
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, RepeatLimiter) for f in handler.filters):
            handler.addFilter(limiter)
    return limiter
