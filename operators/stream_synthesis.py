"""The frame operator's stream synthesis: a batch of frames through a link version's
:class:`~mlink.linkstore.streamlinks.StreamLinks` and the worker's per-stream memory.

Kept apart from :func:`~mlink.operators.joiner.build_results` so that the paper's path stays as
it was: frames planned without a stream schedule only feed the memory here (warm-up frames
then seed it), frames planned with one get every model that did not run synthesized by its mode,
and probe frames get, per model, the agreement of what the schedule would have synthesized
there with what really ran (the live agreement of the plan).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mlink.linkstore.metrics import agreement
from mlink.linkstore.schedule import Mode, Schedule
from mlink.linkstore.streamlinks import StreamFrame, StreamLinks, StreamMemory
from mlink.operators.joiner import FrameWork
from mlink.topics.specs import OutputSpec

__all__ = ["StreamOutcome", "synthesize_streams"]


@dataclass(slots=True)
class StreamOutcome:
    """One frame's stream synthesis: outputs with the models they came from (a model reused or
    drawn from its prior names itself), and on a probe frame each model's shadow agreement."""

    outputs: dict[str, np.ndarray] = field(default_factory=dict)
    sources: dict[str, tuple[str, ...]] = field(default_factory=dict)
    fallbacks: dict[str, str] = field(default_factory=dict)
    scores: dict[str, float] = field(default_factory=dict)


def synthesize_streams(
    works: Sequence[FrameWork],
    schedule: Schedule | None,
    stream_links: Callable[[int], StreamLinks | None],
    memory: StreamMemory,
    specs: Mapping[str, OutputSpec],
) -> list[StreamOutcome | None]:
    """Per frame, its :class:`StreamOutcome`, or None when it was not planned by a schedule
    (its real outputs still go into ``memory``). ``works`` are in stream order."""
    out: list[StreamOutcome | None] = [None] * len(works)
    groups: dict[int, list[int]] = {}
    loaded: dict[int, StreamLinks | None] = {}  # looked up once per version, not per frame
    executed = [{m: o.output for m, o in w.outcomes.items() if o.error is None} for w in works]
    for i, work in enumerate(works):
        version = work.plan.link_version if work.plan else None
        if schedule is not None and version is not None and version not in loaded:
            loaded[version] = stream_links(version)
        if version is None or loaded.get(version) is None:
            memory.observe(work.stream_id, work.seq, executed[i])
            continue
        groups.setdefault(version, []).append(i)
    for version, rows in groups.items():
        links = loaded[version]
        assert links is not None and schedule is not None
        frames = [StreamFrame(works[i].stream_id, works[i].seq, executed[i]) for i in rows]
        for i, synth in zip(rows, links.synthesize_frames(schedule, frames, memory), strict=True):
            outcome = StreamOutcome(fallbacks=dict(synth.fallbacks))
            for model, value in synth.outputs.items():
                if model in executed[i]:
                    continue
                outcome.outputs[model] = np.asarray(value)
                outcome.sources[model] = _sources(schedule.mode(model), model, executed[i])
            for model, value in synth.shadow.items():
                if model in executed[i]:
                    outcome.scores[model] = _score(specs[model], value, executed[i][model])
            out[i] = outcome
    return out


def _sources(mode: Mode, model: str, ran: Mapping[str, Any]) -> tuple[str, ...]:
    """The models a synthesized output came from: the ones that ran for the paper's links; its
    own earlier output (or prior) and, for detector modes, the detector."""
    if mode.kind == "links" and ran:
        return tuple(sorted(ran))
    return tuple(sorted({model} | ({mode.source} if mode.source else set())))


def _score(spec: OutputSpec, synthesized: Any, real: Any) -> float:
    return float(agreement(spec, [synthesized], [real])[0])
