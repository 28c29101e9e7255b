"""Building a frame's one result, and joining its outputs when model operators run apart.

:func:`build_results` is the link operator's core: for a batch of frames it takes each frame's
plan and the outcomes of the models that ran, keeps executed outputs as they are, synthesizes
every other model from the executed ones through the link set the frame was planned with (one
batched link call per target and active set, not one per frame), and marks each output with its
provenance. The fused frame operator calls it directly; the separate link operator first
collects a frame's plan notice and outputs from the outputs topic in a :class:`JoinBuffer`, whose
Kafka events stay un-acked until the frame is done, so a crash loses nothing.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from mlink.linkstore.linkset import LinkSet
from mlink.operators.model_errors import NO_OUTPUT
from mlink.topics.ids import clip_text
from mlink.topics.records import FrameResult, ModelOutput, ModelResult, Plan, PlanNotice

if TYPE_CHECKING:
    from mlink.operators.stream_synthesis import StreamOutcome

__all__ = [
    "Executed",
    "FrameWork",
    "JoinBuffer",
    "PendingFrame",
    "build_results",
    "is_training_sample",
]

EMPTY = np.zeros(0, dtype=np.float32)


@dataclass(frozen=True, slots=True)
class Executed:
    """One model's outcome on one frame: a validated output, or the error that replaced it.
    ``elapsed_ms`` is None when the model never ran (its frame could not be decoded, or it
    could not be called): then it cost nothing."""

    output: np.ndarray | None
    elapsed_ms: float | None
    error: str | None = None
    cpu_ms: float | None = None


@dataclass(slots=True)
class FrameWork:
    """What is known about one frame when its result is built."""

    frame_id: str
    stream_id: str
    seq: int
    timestamp: float | None
    plan: Plan | None
    outcomes: dict[str, Executed] = field(default_factory=dict)
    missing_reason: str | None = None  # why expected outcomes are absent (e.g. a join timeout)


def build_results(
    frames: Sequence[FrameWork],
    models: Sequence[str],
    linksets: Mapping[int, LinkSet],
    now: float,
    estimates: Mapping[str, float] | None = None,
    unusable: Mapping[int, str] | None = None,
    streamed: Sequence[StreamOutcome | None] | None = None,
) -> list[FrameResult]:
    """One result per frame, in order; inactive models synthesized in batches.

    ``linksets`` maps link versions to loaded link sets; a frame whose version is absent gets
    ``missing`` for every model it did not run, and when ``unusable`` says why that version
    could not be used (corrupt, or made for other models), the result is degraded with that
    reason. ``estimates`` are the agreement estimates attached to synthesized outputs.
    ``degraded`` is also set when a model the plan expected did not produce an output (it
    failed, timed out or never arrived); that model is then synthesized too when links allow,
    so the result is as complete as it can be. ``streamed`` (per frame, or None) are the
    outputs stream synthesis made (:mod:`mlink.operators.stream_synthesis`); those frames take
    them instead of the paper's links, and on probe frames their shadow agreement.
    """
    estimates = estimates or {}
    unusable = unusable or {}
    streamed = streamed or [None] * len(frames)
    executed = [{m: o.output for m, o in w.outcomes.items() if o.error is None} for w in frames]
    synthesized: list[dict[str, tuple[np.ndarray, tuple[str, ...]]]] = [{} for _ in frames]
    groups: dict[tuple[int, frozenset[str], str], list[int]] = defaultdict(list)
    for i, work in enumerate(frames):
        stream = streamed[i]
        if stream is not None:
            synthesized[i] = {m: (v, stream.sources[m]) for m, v in stream.outputs.items()}
            continue
        version = work.plan.link_version if work.plan else None
        linkset = linksets.get(version) if version is not None else None
        if linkset is None:
            continue
        for target in models:
            if target in executed[i] or target not in linkset.specs:
                continue
            sources = frozenset(s for s in linkset.sources_of(target) if s in executed[i])
            if sources:
                groups[(version, sources, target)].append(i)
    for (version, sources, target), rows in groups.items():
        linkset = linksets[version]
        ordered = tuple(s for s in linkset.sources_of(target) if s in sources)
        outputs = linkset.synthesize(
            target, {s: [executed[i][s] for i in rows] for s in ordered}, trusted=True
        )
        for i, out in zip(rows, outputs, strict=True):
            synthesized[i][target] = (np.asarray(out), ordered)
    return [
        _result(
            work,
            models,
            executed[i],
            synthesized[i],
            now,
            estimates,
            unusable,
            streamed[i].scores if streamed[i] is not None else {},  # type: ignore[union-attr]
        )
        for i, work in enumerate(frames)
    ]


def _result(
    work: FrameWork,
    models: Sequence[str],
    executed: Mapping[str, np.ndarray],
    synthesized: Mapping[str, tuple[np.ndarray, tuple[str, ...]]],
    now: float,
    estimates: Mapping[str, float],
    unusable: Mapping[int, str],
    scores: Mapping[str, float],
) -> FrameResult:
    plan = work.plan
    expected = set(plan.active) if plan else set(models)
    version = plan.link_version if plan else None
    broken = unusable.get(version) if version is not None else None
    results = []
    for model in models:
        outcome = work.outcomes.get(model)
        # a call that failed still took its time: results say so, so a summary can charge it
        failed = outcome if outcome is not None and model not in executed else None
        error = None
        if model in expected and model not in executed:
            error = outcome.error if outcome is not None else work.missing_reason or NO_OUTPUT
        elif broken is not None and model not in executed and model not in synthesized:
            error = f"link version {version} unusable: {broken}"
        # Every part was validated (outputs against their specs, ids and plans by their
        # records) before it got here, so the records are built without checking again.
        if model in executed:
            results.append(
                _model_result(
                    model,
                    executed[model],
                    "executed",
                    elapsed_ms=outcome.elapsed_ms if outcome else None,
                    cpu_ms=outcome.cpu_ms if outcome else None,
                    agreement=scores.get(model),  # a probe: what the plan would have made
                )
            )
        elif model in synthesized:
            output, sources = synthesized[model]
            estimate = estimates.get(model)
            results.append(
                _model_result(
                    model,
                    output,
                    "synthesized",
                    link_version=plan.link_version if plan else None,
                    sources=sources,
                    elapsed_ms=failed.elapsed_ms if failed else None,
                    cpu_ms=failed.cpu_ms if failed else None,
                    agreement=None if estimate is None else float(estimate),
                    error=error,
                )
            )
        else:
            results.append(
                _model_result(
                    model,
                    EMPTY,
                    "missing",
                    elapsed_ms=failed.elapsed_ms if failed else None,
                    cpu_ms=failed.cpu_ms if failed else None,
                    error=error,
                )
            )
    return FrameResult.trusted(
        frame_id=work.frame_id,
        stream_id=work.stream_id,
        seq=work.seq,
        epoch=plan.epoch if plan else 0,
        results=tuple(results),
        degraded=any(m not in executed for m in expected)
        or (broken is not None and len(synthesized) + len(executed) < len(models)),
        emitted_at=float(now),
        timestamp=None if work.timestamp is None else float(work.timestamp),
        probe=bool(plan and plan.probe),
    )


def _model_result(
    model: str,
    output: np.ndarray,
    status: str,
    *,
    link_version: int | None = None,
    sources: tuple[str, ...] = (),
    elapsed_ms: float | None = None,
    cpu_ms: float | None = None,
    agreement: float | None = None,
    error: str | None = None,
) -> ModelResult:
    return ModelResult.trusted(
        model=model,
        output=output,
        status=status,
        link_version=link_version,
        sources=sources,
        elapsed_ms=None if elapsed_ms is None else float(elapsed_ms),
        cpu_ms=None if cpu_ms is None else float(cpu_ms),
        agreement=agreement,
        error=None if error is None else clip_text(error),
    )


def _outcome(record: ModelOutput) -> Executed:
    """A model operator's output record as an outcome. The record's ``elapsed_ms`` is required
    on the wire, so a model that never ran (its frame could not be decoded) sends 0 with its
    error and no CPU time: that is no call, and costs nothing."""
    never_ran = record.error is not None and not record.elapsed_ms and record.cpu_ms is None
    return Executed(
        record.output if record.error is None else None,
        None if never_ran else record.elapsed_ms,
        record.error,
        record.cpu_ms,
    )


def is_training_sample(result: FrameResult) -> bool:
    """Probe frames on which every model really ran are link training pairs."""
    return (
        result.probe and not result.degraded and all(r.status == "executed" for r in result.results)
    )


# -- joining outputs that arrive on the outputs topic ---------------------------------------------


@dataclass(slots=True)
class PendingFrame:
    """Everything received so far for one frame on the outputs topic."""

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

    def work(self, missing_reason: str | None = None) -> FrameWork:
        """The frame as :func:`build_results` takes it."""
        first: Any = self.notice or next(iter(self.outputs.values()))
        return FrameWork(
            frame_id=self.frame_id,
            stream_id=first.stream_id,
            seq=first.seq,
            timestamp=self.notice.timestamp if self.notice else None,
            plan=self.notice.plan if self.notice else None,
            outcomes={m: _outcome(o) for m, o in self.outputs.items()},
            missing_reason=missing_reason,
        )


class JoinBuffer:
    """Unfinished frames, with the un-acked events that hold them, by frame id.

    Nothing here is persisted: the events stay un-acked until their frame's result is out, so
    after a crash or a rebalance the partition's next owner replays them from Kafka.
    """

    def __init__(self) -> None:
        self.frames: dict[str, PendingFrame] = {}
        self.events: dict[str, list[Any]] = {}
        self.partitions: dict[str, Any] = {}

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
