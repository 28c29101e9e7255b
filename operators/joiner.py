"""Joining a frame's outputs and synthesizing the rest: the link operator's pure logic.

A frame's plan notice and model outputs all arrive on the outputs topic keyed by frame id, in any
order. :class:`PendingFrame` collects them (and serialises to bytes, so it can live in a
changelogged faust Table and survive a worker crash). Once every expected output is in, or the
deadline passes, :func:`assemble_result` builds the one result of the frame: executed outputs as
they are, every other model synthesized from the executed ones through the link set the frame was
planned with, each marked with its provenance.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mlink.linkstore.linkset import LinkSet
from mlink.topics.codec import decode, encode
from mlink.topics.records import DecodeError, FrameResult, ModelOutput, ModelResult, PlanNotice

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

    def to_bytes(self) -> bytes:
        return encode(
            {
                "frame_id": self.frame_id,
                "notice": self.notice.to_dict() if self.notice else None,
                "outputs": [o.to_dict() for o in self.outputs.values()],
                "first_seen": self.first_seen,
            }
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> PendingFrame:
        try:
            d = decode(data)
            pending = cls(d["frame_id"], first_seen=float(d["first_seen"]))
            if d["notice"] is not None:
                pending.notice = PlanNotice.from_dict(d["notice"])
            for o in d["outputs"]:
                pending.add(ModelOutput.from_dict(o))
        except (KeyError, TypeError) as exc:
            raise DecodeError(f"pending frame state is malformed: {exc}") from exc
        return pending


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
            synthesized = linkset.synthesize(model, {s: [executed[s].output] for s in sources})
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


LinkSetLoader = Callable[[int], LinkSet | None]
