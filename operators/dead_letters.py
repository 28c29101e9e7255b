"""Bad input is data: the one place where a failed record becomes a dead letter.

Every agent hands its raw events to :meth:`DeadLetters.decode`, which returns the records that
decoded and turns every failure -- any exception, not only decode errors -- into a
:class:`~mlink.topics.records.DeadLetter` (stage, reason, traceback summary, original bytes,
topic, partition, offset) on the dead-letter topic. Agents use :meth:`DeadLetters.guard` around
the processing of one record so that nothing a record says can crash the agent: faust acks the
events of an agent that raised, so a crash would lose the good records batched with the bad one.
"""

from __future__ import annotations

import contextlib
import logging
import time
import traceback
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any, Final, TypeVar

from mlink.topics.codec import encode_record
from mlink.topics.records import DeadLetter, DecodeError

__all__ = ["DeadLetters"]

log = logging.getLogger("mlink.dead_letters")
R = TypeVar("R")
_REASON_MAX: Final = 2000
_TRACE_MAX: Final = 4000


def _summary(exc: BaseException) -> str:
    """The last frames of a traceback: where it failed, short enough for a record."""
    lines = traceback.format_exception(type(exc), exc, exc.__traceback__, limit=-4)
    return "".join(lines)[-_TRACE_MAX:]


def _clean(text: str, limit: int) -> str:
    """One line, bounded: a reason comes from untrusted input and lands in logs."""
    text = "".join(c if c.isprintable() else " " for c in text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class DeadLetters:
    """Sends dead letters for one app; ``send`` is a coroutine ``(key, value) -> None``.

    ``max_value_bytes`` bounds the original bytes kept (a record too large for the pipeline is
    kept as a prefix, and the reason says how large it was).
    """

    def __init__(
        self,
        send: Callable[[bytes | None, bytes], Any],
        counters: Any,
        max_value_bytes: int = 1_000_000,
        on_dead: Callable[[str, str], None] | None = None,
    ) -> None:
        self._send = send
        self._counters = counters
        self.max_value_bytes = max_value_bytes
        self.on_dead = on_dead

    async def send(
        self, event: Any, stage: str, reason: object, exc: BaseException | None = None
    ) -> None:
        """Dead-letter one event; never raises (a dead letter that cannot be sent is logged)."""
        message = event.message
        key = event.key if isinstance(event.key, bytes) else None
        value = event.value if isinstance(event.value, bytes) else b""
        text = _clean(str(reason), _REASON_MAX)
        if len(value) > self.max_value_bytes:
            text += f" (value truncated from {len(value):,} bytes)"
            value = value[: self.max_value_bytes]
        trace = _summary(exc) if exc is not None and not _expected(exc) else None
        self._counters[f"dead_letters:{stage}"] += 1
        if self.on_dead is not None:
            self.on_dead(stage, type(exc).__name__ if exc is not None else "invalid")
        log.warning(
            "dead letter from %s at %s[%s]@%s: %s",
            stage,
            message.topic,
            message.partition,
            message.offset,
            text,
        )
        try:
            record = DeadLetter(
                topic=message.topic,
                partition=message.partition,
                offset=message.offset,
                key=key,
                value=value,
                reason=text or type(exc).__name__,
                stage=stage,
                at=time.time(),
                traceback=trace,
            )
            await self._send(key, encode_record(record))
        except Exception:
            self._counters["dead_letters_unsent"] += 1
            log.exception(
                "could not send a dead letter for %s[%s]@%s",
                message.topic,
                message.partition,
                message.offset,
            )

    async def decode(
        self, events: Iterable[Any], decode: Callable[[Any], R], stage: str
    ) -> list[tuple[Any, R]]:
        """The events that ``decode(event)`` turns into records, with their records; the rest
        are dead-lettered."""
        good = []
        for event in events:
            try:
                good.append((event, decode(event)))
            except Exception as exc:
                await self.send(event, stage, exc, exc)
        return good

    @contextlib.asynccontextmanager
    async def guard(self, events: Any, stage: str) -> AsyncIterator[None]:
        """Run a block for one event (or a list of events); any exception dead-letters them."""
        try:
            yield
        except Exception as exc:
            for event in events if isinstance(events, list | tuple) else [events]:
                await self.send(event, stage, f"{type(exc).__name__}: {exc}", exc)


def _expected(exc: BaseException) -> bool:
    """Bad input explains itself; a traceback only helps for failures nobody anticipated."""
    return isinstance(exc, DecodeError)
