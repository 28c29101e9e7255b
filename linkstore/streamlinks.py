"""Synthesis on a stream: each model's last real output, detector links, the paper's links.

Between two real runs of a model its output is synthesized by its :class:`~mlink.linkstore.
schedule.Mode`: reused, moved with a detector that runs on every frame, drawn from that
detector's boxes by a :class:`~mlink.linkstore.boxlinks.BoxHead`, or the paper's ensemble over
the models that ran. Two pieces live in the worker that owns the stream:

- :class:`StreamMemory`, per stream, each model's last real output and the outputs of every
  model that ran on that frame (what ``follow`` moves from). It is rebuilt from the next frames
  after a rebalance; until a model runs again its memory modes fall back (below).
- :class:`StreamLinks`, the trained part (heads, priors, optionally a
  :class:`~mlink.linkstore.linkset.LinkSet`), immutable per link version.

:meth:`StreamLinks.synthesize_frames` is the link operator's call: given a batch of frames in
stream order, each with the outputs of the models that really ran on it, it updates the memory
and returns every other model's synthesized output. When a mode's inputs are missing (no memory
yet, memory older than ``max_lag`` frames, or its source did not run) it falls back to the
source's head if that ran, else to the prior, and says so in the frame's ``fallbacks``.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from mlink.linkstore.boxlinks import BoxHead, as_boxes, follow, switch, track
from mlink.linkstore.motion import Pose, moved_since
from mlink.linkstore.rows import decode_rows
from mlink.linkstore.schedule import Mode, Schedule
from mlink.topics.specs import BoxesSpec, OutputSpec, encode_batch

if TYPE_CHECKING:
    from mlink.linkstore.linkset import LinkSet

__all__ = [
    "Refresh",
    "StreamFrame",
    "StreamLinks",
    "StreamMemory",
    "Synthesized",
    "decode_context",
    "encode_context",
]


@dataclass(frozen=True, slots=True)
class Refresh:
    """A model's last real run on a stream: its sequence number, its output, the outputs of
    every model that ran on that frame (``frame``, shared by the models that ran together), and
    the frame's :class:`~mlink.linkstore.motion.Pose` when motion was measured."""

    seq: int
    output: Any
    frame: Mapping[str, Any]
    pose: Pose | None = None


class StreamMemory:
    """Per stream, every model's last real runs: the per-stream state of the frame operator.

    Bounded to ``max_streams`` streams, least recently seen dropped first (a stream that comes
    back starts without memory, as after a rebalance), and to the ``history`` runs of each
    model that arrived last: the split layout's link operator sees frames finish out of order
    (a frame on which only cheap models ran overtakes one that waits for an expensive model),
    and a frame must be synthesized from the runs before it, not from a later one. Kept by
    arrival rather than by the largest sequence numbers: a camera that restarts its numbering,
    or one record with a huge ``seq``, would otherwise hold the history for good and every
    later run would be dropped on arrival.
    """

    def __init__(self, max_streams: int = 4096, history: int = 4) -> None:
        if max_streams < 1:
            raise ValueError(f"max_streams must be >= 1, got {max_streams}")
        if history < 1:
            raise ValueError(f"history must be >= 1, got {history}")
        self.max_streams, self.history = max_streams, history
        self._streams: OrderedDict[str, dict[str, list[Refresh]]] = OrderedDict()

    def observe(
        self, stream: str, seq: int, outputs: Mapping[str, Any], pose: Pose | None = None
    ) -> None:
        """Remember what really ran on frame ``seq`` of ``stream`` (and the frame's pose) as
        the model's latest arrival (a redelivered frame replaces its earlier copy)."""
        entry = self._streams.get(stream)
        if entry is None:
            entry = self._streams[stream] = {}
            while len(self._streams) > self.max_streams:
                self._streams.popitem(last=False)
        self._streams.move_to_end(stream)
        if not outputs:
            return
        frame = dict(outputs)
        for model, output in frame.items():
            runs = entry.setdefault(model, [])
            runs[:] = [r for r in runs if r.seq != seq]
            runs.append(Refresh(seq, output, frame, pose))
            del runs[: -self.history]

    def last(self, stream: str, model: str, at: int | None = None) -> Refresh | None:
        """``model``'s run on ``stream`` with the highest sequence number, or the highest at or
        before frame ``at``, among its remembered runs."""
        entry = self._streams.get(stream)
        runs = entry.get(model, ()) if entry is not None else ()
        before = [r for r in runs if at is None or r.seq <= at]
        return max(before, key=lambda r: r.seq) if before else None

    def forget(self, streams: Sequence[str] | None = None) -> None:
        """Drop the memory of ``streams`` (all when None), e.g. of partitions revoked."""
        if streams is None:
            self._streams.clear()
        for s in streams or ():
            self._streams.pop(s, None)

    def __len__(self) -> int:
        return len(self._streams)

    def __contains__(self, stream: object) -> bool:
        return stream in self._streams


@dataclass(frozen=True, slots=True)
class StreamFrame:
    """One frame to synthesize: its stream, its sequence number in the stream, the outputs of
    the models that really ran on it, and its pose when motion is measured (``flow`` mode)."""

    stream: str
    seq: int
    ran: Mapping[str, Any]
    pose: Pose | None = None


@dataclass(slots=True)
class Synthesized:
    """A frame's synthesized outputs, and which models fell back from their mode (and why).

    On a probe frame every model ran, so ``outputs`` is empty and ``shadow`` holds what the
    schedule would have synthesized there (from the models it runs on that frame anyway and the
    memory before the probe): scored against the probe's real outputs, it is the live
    agreement of the plan (:class:`~mlink.linkstore.liveguard.LiveAgreement`), and ``context``
    each model's last real run before the probe, which the trainer scores every mode on
    (:class:`~mlink.linkstore.streamfit.Sample`; :func:`encode_context` puts it on the wire).
    """

    outputs: dict[str, Any] = field(default_factory=dict)
    fallbacks: dict[str, str] = field(default_factory=dict)
    shadow: dict[str, Any] = field(default_factory=dict)
    context: dict[str, Refresh] = field(default_factory=dict)


@dataclass(slots=True)
class StreamLinks:
    """The trained pieces of stream synthesis for one link version.

    ``heads[(source, target)]`` are detector links between box models; ``priors[m]`` each
    model's prior output; ``linkset`` the paper's links for the ``links`` mode (optional);
    memory older than ``max_lag`` frames is not used.
    """

    specs: dict[str, OutputSpec]
    priors: dict[str, Any]
    heads: dict[tuple[str, str], BoxHead] = field(default_factory=dict)
    linkset: LinkSet | None = None
    max_lag: int = 16

    def __post_init__(self) -> None:
        missing = sorted(set(self.specs) - set(self.priors))
        if missing:
            raise ValueError(f"StreamLinks: no prior for {missing}")
        for s, t in self.heads:
            for m in (s, t):
                if not isinstance(self.specs.get(m), BoxesSpec):
                    raise ValueError(f"StreamLinks: head {s}->{t}: {m!r} is not a box model")

    # ----------------------------------------------------------------- one output
    def synthesize(
        self,
        target: str,
        mode: Mode,
        ran: Mapping[str, Any],
        last: Refresh | None,
        seq: int,
        pose: Pose | None = None,
    ) -> tuple[Any, str | None]:
        """``target``'s output on a frame where it did not run, and the fallback reason (None
        when ``mode`` applied). ``links`` is batched in :meth:`synthesize_frames` instead;
        ``pose`` is the frame's (``flow``: with the pose of the last run, how far it moved)."""
        fresh = last is not None and 0 <= seq - last.seq <= self.max_lag
        src = mode.source
        if mode.kind == "prior":
            return self.priors[target], None
        if mode.kind == "flow" and fresh and isinstance(self.specs[target], BoxesSpec):
            moved = moved_since(last.output, last.pose, pose)
            if moved is None:  # motion unknown (a new track, no pose): as it was
                return last.output, "no motion: reuse"
            return moved, None
        if mode.kind in ("reuse", "flow"):  # flow on a non-box model: nothing to move
            return (last.output, None) if fresh else self._fallback(target, None, ran, "memory")
        if src not in ran:
            why = f"{src} did not run"
            return (last.output, why) if fresh else self._fallback(target, None, ran, why)
        head = self.heads.get((src, target))
        now = ran[src]
        if mode.kind in ("head", "gate"):  # a gate's model did not run: its source found nothing
            if head is None:
                return self._fallback(target, None, ran, f"no head {src}->{target}")
            return head.predict(now), None
        if not fresh or src not in last.frame:
            return self._fallback(target, src, ran, "memory")
        followed = follow(last.output, last.frame[src], now)
        if mode.kind == "follow":
            return followed, None
        if head is None:
            return followed, f"no head {src}->{target}"
        if mode.kind == "track":
            return track(head.predict(now), followed), None
        return switch(followed, head.predict(now), last.frame[src], now, mode.threshold), None

    def _fallback(
        self, target: str, source: str | None, ran: Mapping[str, Any], why: str
    ) -> tuple[Any, str]:
        head = self.heads.get((source, target)) if source is not None else None
        if head is not None and source in ran:
            return head.predict(ran[source]), f"{why}: head"
        return self.priors[target], f"{why}: prior"

    # ----------------------------------------------------------------- a batch
    def synthesize_frames(
        self, schedule: Schedule, frames: Sequence[StreamFrame], memory: StreamMemory
    ) -> list[Synthesized]:
        """Every model that did not run on each frame, synthesized by its mode in ``schedule``.

        Frames must come in sequence order within each stream (the frame operator's batch
        order); each frame's real outputs go into ``memory`` before it is synthesized.
        """
        out = [Synthesized() for _ in frames]
        batched: dict[tuple[str, frozenset[str]], list[tuple[int, bool]]] = {}
        for i, frame in enumerate(frames):
            if schedule.is_probe(frame.seq):  # score the plan: synthesize before observing
                for m in self.specs:
                    if (last := memory.last(frame.stream, m, frame.seq - 1)) is not None:
                        out[i].context[m] = last
                planned = schedule.runs(frame.seq, probes=False)
                ran = {m: v for m, v in frame.ran.items() if m in planned}
                ran |= {m: frame.ran[m] for m in schedule.gated(ran) if m in frame.ran}
                self._frame(schedule, frame, ran, memory, out[i].shadow, {}, batched, i, True)
            memory.observe(frame.stream, frame.seq, frame.ran, frame.pose)
            self._frame(
                schedule, frame, frame.ran, memory, out[i].outputs, out[i].fallbacks, batched, i
            )
        for (target, ran), rows in batched.items():
            values = self._links(target, ran, [frames[i].ran for i, _ in rows])
            for (i, shadow), value in zip(rows, values, strict=True):
                (out[i].shadow if shadow else out[i].outputs)[target] = value
        return out

    def _frame(
        self,
        schedule: Schedule,
        frame: StreamFrame,
        ran: Mapping[str, Any],
        memory: StreamMemory,
        into: dict[str, Any],
        fallbacks: dict[str, str],
        batched: dict[tuple[str, frozenset[str]], list[tuple[int, bool]]],
        index: int,
        shadow: bool = False,
    ) -> None:
        for target in self.specs:
            if target in ran:
                continue
            mode = schedule.mode(target)
            # the paper's links from the models that run on every frame, as the plan priced and
            # estimated them, not also from a periodic model that happens to run on this one
            sources = frozenset(ran) & schedule.always
            if mode.kind == "links" and self.linkset is not None and sources:
                batched.setdefault((target, sources), []).append((index, shadow))
                continue
            if mode.kind == "links":
                mode = Mode("reuse")  # no link set in this version, or nothing ran
            last = memory.last(frame.stream, target, frame.seq)
            value, why = self.synthesize(target, mode, ran, last, frame.seq, frame.pose)
            into[target] = value
            if why is not None:
                fallbacks[target] = why

    def _links(self, target: str, ran: frozenset[str], frames: list[Mapping[str, Any]]) -> list:
        assert self.linkset is not None
        encoded = {
            m: encode_batch(self.specs[m], [f[m] for f in frames], trusted=True)
            for m in sorted(ran)
        }
        rows = self.linkset.synthesize_encoded(target, encoded)
        return list(decode_rows(self.specs[target], rows))

    # ----------------------------------------------------------------- bundle
    def to_meta(self) -> dict[str, Any]:
        """JSON-ready metadata (heads, priors, max_lag) for a link bundle; the link set, if any,
        is saved by its own bundle code."""
        return {
            "max_lag": self.max_lag,
            "heads": [
                {"source": s, "target": t, **head.to_meta()} for (s, t), head in self.heads.items()
            ],
            "priors": {m: _jsonable(self.specs[m], p) for m, p in self.priors.items()},
        }

    @classmethod
    def from_meta(
        cls,
        specs: Mapping[str, OutputSpec],
        meta: Mapping[str, Any],
        linkset: LinkSet | None = None,
    ) -> StreamLinks:
        priors = {
            m: decode_rows(spec, np.asarray(meta["priors"][m], dtype=np.float32)[None])[0]
            for m, spec in specs.items()
        }
        heads = {(h["source"], h["target"]): BoxHead.from_meta(h) for h in meta.get("heads", [])}
        return cls(dict(specs), priors, heads, linkset, int(meta.get("max_lag", 16)))


def encode_context(
    specs: Mapping[str, OutputSpec], context: Mapping[str, Refresh]
) -> dict[str, Any]:
    """A probe's context as JSON: the frames the models last ran on (each once, by seq), which
    frame each model's last run was, and those frames' poses where motion was measured."""
    frames: dict[int, dict[str, list[float]]] = {}
    poses: dict[str, Any] = {}
    for ref in context.values():
        if ref.seq not in frames:
            frames[ref.seq] = {m: _wire(specs[m], v) for m, v in ref.frame.items()}
            if ref.pose is not None:
                poses[str(ref.seq)] = ref.pose.to_json()
    out: dict[str, Any] = {
        "last": {m: ref.seq for m, ref in context.items()},
        "frames": {str(q): f for q, f in frames.items()},
    }
    if poses:
        out["poses"] = poses
    return out


def decode_context(specs: Mapping[str, OutputSpec], raw: Mapping[str, Any]) -> dict[str, Refresh]:
    """:func:`encode_context` back into :class:`Refresh` records."""
    frames = {
        int(q): {m: _unwire(specs[m], v) for m, v in f.items()}
        for q, f in raw.get("frames", {}).items()
    }
    poses = {int(q): Pose.from_json(p) for q, p in dict(raw.get("poses", {})).items()}
    return {
        m: Refresh(int(q), frames[int(q)][m], frames[int(q)], poses.get(int(q)))
        for m, q in raw["last"].items()
    }


def _wire(spec: OutputSpec, output: Any) -> list:
    """An output as JSON, whole (boxes are not cut to the link encoding's top ``max_boxes``)."""
    if isinstance(spec, BoxesSpec):
        return as_boxes(output).tolist()
    return np.asarray(output).reshape(-1).tolist()


def _unwire(spec: OutputSpec, value: list) -> Any:
    if isinstance(spec, BoxesSpec):
        return as_boxes(value)
    return spec.validate(value)


def _jsonable(spec: OutputSpec, output: Any) -> list[float]:
    if isinstance(spec, BoxesSpec):
        output = as_boxes(output)
    return [float(x) for x in encode_batch(spec, [output])[0]]
