"""Joining a frame's outputs and synthesizing the rest: the link operator's pure logic.

A frame's plan notice and model outputs all arrive on the outputs topic keyed by frame id, in any
order. :class:`PendingFrame` collects them in a :class:`JoinBuffer`, whose Kafka events stay
un-acked until the frame is done, so a crash loses nothing. Once every expected output is in, or the
deadline passes, :func:`assemble_result` builds the one result of the frame: executed outputs as
they are, every other model synthesized from the executed ones through the link set the frame was
planned with, each marked with its provenance.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mlink.linkstore.linkset import LinkSet
from mlink.topics.records import FrameResult, ModelOutput, ModelResult, PlanNotice

EMPTY = np.zeros(0, dtype=np.float32)


@dataclass(slots=True)
class PendingFrame:
    """Everything received so far for one frame."""

    frame_id: str
    notice: PlanNotice | None = None
    outputs: dict[str, ModelOutput] = field(default_factory=dict)
    first_seen: float = 0.0

    def add(self, record: PlanNotice | ModelOutput) -> None:
        if isinstance(record, PlanNotice):
            self.notice = record
        else:
            self.outputs.setdefault(record.model, record)  # first copy wins on redelivery

    @property
    def expected(self) -> tuple[str, ...]:
        return self.notice.plan.active if self.notice is not None else ()

    @property
    def complete(self) -> bool:
        return self.notice is not None and all(m in self.outputs for m in self.expected)


class JoinBuffer:
    """Unfinished frames, with the un-acked events that hold them, by frame id.

    Nothing here is persisted: the events stay un-acked until their frame's result is out, so
    after a crash or a rebalance the partition's next owner replays them from Kafka.
    """

    def __init__(self) -> None:
        self.frames: dict[str, PendingFrame] = {}
        self.events: dict[str, list[Any]] = {}
        self.partitions: dict[str, Any] = {}
        self.stream: Any = None  # the manual-ack stream, for acking from a timer

    def add(self, record: PlanNotice | ModelOutput, event: Any, now: float) -> PendingFrame:
        frame_id = record.frame_id
        state = self.frames.get(frame_id)
        if state is None:
            state = self.frames[frame_id] = PendingFrame(frame_id, first_seen=now)
            self.events[frame_id] = []
            self.partitions[frame_id] = event.message.tp
        state.add(record)
        self.events[frame_id].append(event)
        return state

    def pop(self, frame_id: str) -> list[Any]:
        """Forget a finished frame; returns its events, to be acked."""
        self.frames.pop(frame_id, None)
        self.partitions.pop(frame_id, None)
        return self.events.pop(frame_id, [])

    def overdue(self, now: float, timeout: float) -> list[str]:
        return [f for f, s in self.frames.items() if now - s.first_seen >= timeout]

    def drop_partitions(self, partitions: set[Any]) -> int:
        """Forget frames of partitions this worker no longer owns (their owner replays them)."""
        gone = [f for f, tp in self.partitions.items() if tp in partitions]
        for frame_id in gone:
            self.pop(frame_id)
        return len(gone)


def assemble_result(
    pending: PendingFrame,
    models: Sequence[str],
    linkset: LinkSet | None,
    now: float,
    timed_out: bool = False,
) -> FrameResult:
    """The frame's result: executed outputs, synthesized ones, and ``missing`` where impossible.

    ``degraded`` is set when an expected output never arrived or its model failed; the missing
    model is then synthesized too when links allow it, so the result is still as complete as
    it can be.
    """
    executed = {m: o for m, o in pending.outputs.items() if o.error is None}
    plan = pending.notice.plan if pending.notice else None
    expected = set(plan.active) if plan else set(models)
    results = []
    for model in models:
        output = executed.get(model)
        if output is not None:
            results.append(
                ModelResult(
                    model=model,
                    output=output.output,
                    status="executed",
                    elapsed_ms=output.elapsed_ms,
                )
            )
            continue
        sources = _sources(linkset, model, executed)
        if sources:
            synthesized = linkset.synthesize(
                model, {s: [executed[s].output] for s in sources}, trusted=True
            )
            results.append(
                ModelResult(
                    model=model,
                    output=np.asarray(synthesized[0]),
                    status="synthesized",
                    link_version=plan.link_version if plan else None,
                    sources=tuple(sources),
                )
            )
        else:
            results.append(ModelResult(model=model, output=EMPTY, status="missing"))
    degraded = timed_out or any(m not in executed for m in expected)
    first = pending.notice or next(iter(pending.outputs.values()))
    return FrameResult(
        frame_id=pending.frame_id,
        stream_id=first.stream_id,
        seq=first.seq,
        epoch=plan.epoch if plan else 0,
        results=tuple(results),
        degraded=degraded,
        emitted_at=now,
        timestamp=pending.notice.timestamp if pending.notice else None,
        probe=bool(plan and plan.probe),
    )


def _sources(linkset: LinkSet | None, target: str, executed: dict[str, Any]) -> list[str]:
    if linkset is None or target not in linkset.specs:
        return []
    return [s for s in linkset.sources_of(target) if s in executed]


def is_training_sample(result: FrameResult, notice: PlanNotice | None) -> bool:
    """Probe frames on which every model really ran are link training pairs."""
    return (
        notice is not None
        and notice.plan.probe
        and not result.degraded
        and all(r.status == "executed" for r in result.results)
    )
