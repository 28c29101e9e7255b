"""The pairs a stream fit scores memory modes on: samples of one stream some frames apart.

A memory mode (``reuse``, ``follow``, ``flow`` ...) is scored on pairs ``(then, now)``: a frame
where the model really ran and a later sample of the same stream, ``d`` frames apart. They come
from consecutive warm-up samples and from each probe's context (the model's last run before it).
:class:`LagEstimator` turns per-pair agreements into a per-lag :class:`~mlink.linkstore.
streamcurve.Curve`, stream by stream (see :mod:`mlink.linkstore.streamfit`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mlink.linkstore.motion import Pose
from mlink.linkstore.schedule import Mode
from mlink.linkstore.streamcurve import Curve
from mlink.linkstore.streamerror import PSEUDO_STREAMS, between_streams
from mlink.linkstore.streamlinks import Refresh

__all__ = ["LagEstimator", "Pairs", "Sample", "lag_pairs", "target_pairs"]


@dataclass(frozen=True, slots=True)
class Sample:
    """A frame on which every model ran (a warm-up or probe frame).

    ``context`` (optional, probes): each model's last real run on the stream before this frame,
    as the worker's :class:`~mlink.linkstore.streamlinks.StreamMemory` held it. ``pose``: the
    frame's :class:`~mlink.linkstore.motion.Pose` when the worker measured motion.
    """

    stream: str
    seq: int
    outputs: Mapping[str, Any]
    context: Mapping[str, Refresh] = field(default_factory=dict)
    pose: Pose | None = None


def lag_pairs(samples: Sequence[Sample], max_lag: int) -> tuple[np.ndarray, np.ndarray]:
    """Index pairs ``(then, now)`` of samples of one stream with ``1 <= seq gap <= max_lag``,
    and their gaps."""
    by_stream: dict[str, list[int]] = {}
    for i, s in enumerate(samples):
        by_stream.setdefault(s.stream, []).append(i)
    pairs, lags = [], []
    for idx in by_stream.values():
        idx.sort(key=lambda i: samples[i].seq)
        for a_pos, a in enumerate(idx):
            for b in idx[a_pos + 1 :]:
                gap = samples[b].seq - samples[a].seq
                if gap > max_lag:
                    break
                if gap >= 1:
                    pairs.append((a, b))
                    lags.append(gap)
    if not pairs:
        return np.zeros((0, 2), dtype=np.int64), np.zeros(0, dtype=np.int64)
    return np.asarray(pairs, dtype=np.int64), np.asarray(lags, dtype=np.int64)


@dataclass(slots=True)
class Pairs:
    """One target's scored pairs: the frame of its last real run (``then``: every output that ran
    there, its own included), the sample now, the lag, and the stream."""

    then: list[Mapping[str, Any]] = field(default_factory=list)
    now: list[int] = field(default_factory=list)
    lags: list[int] = field(default_factory=list)
    poses: list[Pose | None] = field(default_factory=list)  # the pose of ``then``

    def add(self, then: Mapping[str, Any], now: int, lag: int, pose: Pose | None = None) -> None:
        self.then.append(then)
        self.now.append(now)
        self.lags.append(lag)
        self.poses.append(pose)


def target_pairs(
    samples: Sequence[Sample], target: str, max_lag: int, consecutive: tuple[np.ndarray, np.ndarray]
) -> Pairs:
    """Pairs of samples of one stream, plus each sample's probe context for ``target`` (its last
    real run before the sample, when that was no sample itself)."""
    out = Pairs()
    pairs, lags = consecutive
    for (a, b), d in zip(pairs.tolist(), lags.tolist(), strict=True):
        out.add(samples[a].outputs, b, d, samples[a].pose)
    known = {(x.stream, x.seq) for x in samples}
    for b, x in enumerate(samples):
        ref = x.context.get(target)
        if ref is None or (x.stream, ref.seq) in known or not 1 <= x.seq - ref.seq <= max_lag:
            continue
        out.add(ref.frame, b, x.seq - ref.seq, ref.pose)
    return out


class LagEstimator:
    """Per-lag curves from per-pair agreements, stream by stream (see the module docstring).
    A NaN score means the pair does not apply to the mode (its source did not run then)."""

    def __init__(
        self, samples: Sequence[Sample], pairs: Pairs, max_lag: int, balanced: bool = False
    ):
        self.max_lag = max_lag
        self.balanced = balanced
        self.lags = np.asarray(pairs.lags, dtype=np.int64)
        names = list(dict.fromkeys(s.stream for s in samples))
        self.weight = {s: 1 if balanced else sum(x.stream == s for x in samples) for s in names}
        index = {name: k for k, name in enumerate(names)}
        self.stream_of = np.array([index[samples[b].stream] for b in pairs.now], dtype=np.int64)
        self.names = names

    def curve(self, target: str, mode: Mode, scores: np.ndarray, synth_ms: float) -> Curve:
        total = np.zeros(self.max_lag + 1)
        support = np.zeros(self.max_lag + 1, dtype=np.int64)
        weight = 0.0
        valid = ~np.isnan(scores)
        for k, name in enumerate(self.names):
            sel = (self.stream_of == k) & valid
            if not sel.any():
                continue
            per = np.full(self.max_lag + 1, np.nan)
            for d in range(1, self.max_lag + 1):
                here = sel & (self.lags == d)
                support[d] += int(here.sum())
                if here.any():
                    per[d] = scores[here].mean()
                elif d > 1:
                    per[d] = per[d - 1]
            first = np.flatnonzero(~np.isnan(per[1:]))
            if not len(first):
                continue
            per[1 : first[0] + 1] = per[first[0] + 1]  # lags shorter than any pair: the first
            per[0] = 1.0
            total += np.minimum.accumulate(per) * self.weight[name]
            weight += self.weight[name]
        agree = total / weight if weight else np.zeros(self.max_lag + 1)
        agree[0] = 1.0
        spread = float(np.nanstd(scores)) if valid.sum() > 1 else 0.5
        return Curve(
            target,
            mode,
            tuple(float(a) for a in agree),
            tuple(int(n) for n in support),
            spread,
            synth_ms,
            between_streams(scores, self.stream_of, balanced=self.balanced),
            predictive=between_streams(scores, self.stream_of, PSEUDO_STREAMS, self.balanced),
        )
