"""The trainer's side of stream synthesis: fit the detector links and estimate every mode.

The trainer sees frames on which every model ran: the warm-up frames and, afterwards, the probe
frames (:class:`Sample`: stream, sequence number, every model's output). From them it fits
:class:`~mlink.linkstore.streamlinks.StreamLinks` (a :class:`~mlink.linkstore.boxlinks.BoxHead`
per pair of box models, priors) and estimates, per model and per way of synthesizing it
(:class:`~mlink.linkstore.schedule.Mode`), the expected agreement ``d`` frames after its last
real run: a :class:`Curve`. The controller plans schedules from those curves
(:mod:`mlink.linkstore.streamplan`).

Estimates must not flatter: neighbouring frames are near-duplicates, so a head is scored on
frames of a contiguous time block of each stream that it was not fitted on (cross-fitting over
``folds`` blocks), and a memory mode on pairs ``(then, now)`` of samples of one stream ``d``
frames apart, scored at ``now`` by the head of ``now``'s block. Per stream the agreement is
averaged per lag and made non-increasing in the lag (staleness does not help on average), then
the streams are averaged weighted by their samples, so one long stream does not decide alone.
Lags with no pair in a stream carry its last value forward.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from mlink.linkstore.boxlinks import (
    BoxHead,
    as_boxes,
    finds_anything,
    fit_box_head,
    follow,
    track,
)
from mlink.linkstore.crossfit import contiguous_folds
from mlink.linkstore.metrics import agreement, box_agreement
from mlink.linkstore.motion import moved_since
from mlink.linkstore.rows import prior_output
from mlink.linkstore.schedule import Mode
from mlink.linkstore.streamcurve import Curve, constant_curve
from mlink.linkstore.streamerror import between_streams, stream_mean
from mlink.linkstore.streamlinks import StreamLinks
from mlink.linkstore.streampairs import LagEstimator, Pairs, Sample, lag_pairs, target_pairs
from mlink.topics.specs import BoxesSpec, OutputSpec

__all__ = [
    "GATE_Z",
    "Curve",
    "Sample",
    "StreamFit",
    "constant_curve",
    "fit_stream",
    "head_folds",
    "lag_pairs",
]

GATE_Z = 1.0  # a cascade's run share is priced this many standard errors high (the planner's z)


@dataclass(slots=True)
class StreamFit:
    """What the trainer saves: the synthesis pieces and every model's curves."""

    links: StreamLinks
    curves: dict[str, list[Curve]]
    n_samples: int
    seconds: dict[str, float] = field(default_factory=dict)

    def to_meta(self) -> dict[str, Any]:
        """JSON-ready metadata for a link bundle (``meta["stream"]``)."""
        return {
            **self.links.to_meta(),
            "curves": [c.to_meta() for cs in self.curves.values() for c in cs],
            "n_samples": self.n_samples,
        }

    @staticmethod
    def curves_from_meta(meta: Mapping[str, Any]) -> dict[str, list[Curve]]:
        curves: dict[str, list[Curve]] = {}
        for raw in meta.get("curves", []):
            curve = Curve.from_meta(raw)
            curves.setdefault(curve.target, []).append(curve)
        return curves


def fit_stream(
    specs: Mapping[str, OutputSpec],
    samples: Sequence[Sample],
    *,
    max_lag: int = 16,
    folds: int = 3,
    thresholds: Sequence[float] = (0.5,),
    sources: Mapping[str, Sequence[str]] | None = None,
    min_gain: float = 0.01,
    gates: bool = False,
    motion_ms: float = 0.0,
    balanced: bool = False,
) -> StreamFit:
    """Fit heads and priors on ``samples`` and estimate a :class:`Curve` per model and mode.

    Modes estimated: ``reuse`` and ``prior`` for every model; for every pair of box models
    (``sources[target]`` limits the sources) ``head``, ``follow``, ``track`` and ``switch`` at
    each of ``thresholds``, and with ``gates`` the cascade ``gate`` (when the source fires on
    some samples but not all), and ``flow`` when the samples carry poses (``motion_ms``: what
    measuring a frame's motion costs, charged once per frame). Samples need not be
    consecutive: warm-up frames give the short lags; a probe carrying its ``context`` (each
    model's last real run before it) gives a pair at whatever lag the running schedule left
    each model.

    ``balanced``: every stream weighs the same in the estimates, whatever share of the samples
    it has (the live trainer: a warm-up fetched from a backlog is not the cameras in turn;
    :func:`~mlink.linkstore.streamerror.stream_weights`); else every sample does.

    A detector mode is kept only if at some lag it beats both reuse and the prior by
    ``min_gain``: among dozens of sources, one that merely ties them on the training frames is
    more likely lucky than useful (a spurious count pattern in a short warm-up).
    """
    if not samples:
        raise ValueError("fit_stream needs at least one sample on which every model ran")
    missing = sorted({m for s in samples for m in specs if m not in s.outputs})
    if missing:
        raise ValueError(f"samples lack outputs of {missing}: every model must run on a sample")
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    models = list(specs)
    outs = {m: [s.outputs[m] for s in samples] for m in models}
    boxes = [m for m in models if isinstance(specs[m], BoxesSpec)]
    box_outs = {m: [as_boxes(o) for o in outs[m]] for m in boxes}
    priors = {m: prior_output(specs[m], outs[m]) for m in models}
    pairs_of = {
        t: [s for s in (sources or {}).get(t, boxes) if s != t and s in boxes] for t in boxes
    }
    lit = {m for m in boxes if any(len(b) for b in box_outs[m])}  # sources that ever fire
    heads = {
        (s, t): fit_box_head(box_outs[s], box_outs[t])
        for t in boxes
        for s in pairs_of[t]
        if s in lit
    }
    links = StreamLinks(dict(specs), priors, heads, None, max_lag)
    seconds["heads"] = time.perf_counter() - start

    start = time.perf_counter()
    n = len(samples)
    groups = [s.stream for s in samples]
    fold = head_folds(groups, folds)
    fold_heads: dict[tuple[str, str, int], BoxHead] = {}
    for (s, t), head in heads.items():
        for f in range(int(fold.max()) + 1):
            fit = np.flatnonzero(fold != f)
            fold_heads[(s, t, f)] = (
                fit_box_head([box_outs[s][i] for i in fit], [box_outs[t][i] for i in fit])
                if len(fit)
                else head
            )
    consecutive = lag_pairs(samples, max_lag)
    curves: dict[str, list[Curve]] = {}
    for t in models:
        spec = specs[t]
        pairs = target_pairs(samples, t, max_lag, consecutive)
        est = LagEstimator(samples, pairs, max_lag, balanced)
        truth = [outs[t][b] for b in pairs.now]
        then = [f[t] for f in pairs.then]
        reuse = agreement(spec, then, truth) if then else np.zeros(0)
        prior = agreement(spec, [priors[t]] * n, outs[t])
        curves[t] = [
            est.curve(t, Mode("reuse"), reuse, 0.0),
            constant_curve(t, Mode("prior"), prior, max_lag, streams=groups, balanced=balanced),
        ]
        if t in boxes:
            base = np.maximum(np.asarray(curves[t][0].agree), curves[t][1].agree[1])
            flow = _flow_curve(t, pairs, samples, truth, est, motion_ms)
            curves[t] += [
                c
                for c in [
                    *flow,
                    *_box_curves(
                        t,
                        pairs_of[t],
                        box_outs,
                        fold_heads,
                        fold,
                        pairs,
                        est,
                        thresholds,
                        groups,
                        gates,
                        balanced,
                    ),
                ]
                if np.any(np.asarray(c.agree[1:]) >= base[1:] + min_gain)
            ]
    seconds["curves"] = time.perf_counter() - start
    return StreamFit(links, curves, n, seconds)


def _flow_curve(
    t: str,
    pairs: Pairs,
    samples: Sequence[Sample],
    truth: list[Any],
    est: LagEstimator,
    motion_ms: float,
) -> list[Curve]:
    """``t``'s ``flow`` curve when the pairs carry poses: its boxes at ``then`` moved as the
    picture moved to ``now``, or left as they were where the motion is unknown (what the frame
    operator does then)."""
    if not any(p is not None for p in pairs.poses):
        return []
    start = time.perf_counter()
    moved = []
    for f, pose, b in zip(pairs.then, pairs.poses, pairs.now, strict=True):
        flowed = moved_since(f[t], pose, samples[b].pose)
        moved.append(as_boxes(f[t]) if flowed is None else flowed)
    ms = (time.perf_counter() - start) * 1000.0 / max(len(moved), 1)
    scores = np.array([box_agreement(p, q) for p, q in zip(moved, truth, strict=True)])
    return [replace(est.curve(t, Mode("flow"), scores, ms), frame_ms=float(motion_ms))]


def head_folds(groups: Sequence[str], folds: int) -> np.ndarray:
    """Fold id per sample for scoring detector heads on samples that did not fit them:
    contiguous blocks of each stream (up to ``folds``, no more than its fewest samples allow).
    When that leaves one fold (every stream has one sample, or there are fewer than four), the
    pooled samples are split in contiguous halves instead: one fold would score the head fitted
    on every sample on those same samples."""
    n = len(groups)
    k = max(2, min(folds, min((groups.count(g) for g in set(groups)), default=0)))
    fold = contiguous_folds(n, k, groups) if n >= 2 * k else np.zeros(n, dtype=np.int64)
    if fold.max(initial=0) == 0 and n >= 2:
        fold = contiguous_folds(n, 2)
    return fold


def _gate_curve(
    t: str,
    s: str,
    head: np.ndarray,
    fires: np.ndarray,
    head_ms: float,
    max_lag: int,
    groups: Sequence[str],
    balanced: bool = False,
) -> Curve:
    """The cascade of ``t`` on ``s``: it runs where ``s`` fires, its head elsewhere. The share it
    runs on is priced at ``GATE_Z`` between-stream standard errors above the samples' share:
    what a cascade costs follows the content, and priced on the warm-up's share alone it
    overran its budget by up to 7 points of compute (BENCHMARKS.md, "Cascades"). Its agreement
    stays at the share seen: the margin that makes the cost cautious would make the agreement
    bold (more real runs, more frames that count 1)."""
    share = stream_mean(fires.astype(float), groups, balanced)
    priced = min(1.0, share + GATE_Z * between_streams(fires.astype(float), groups, 0.0, balanced))
    elsewhere = stream_mean(np.where(fires, np.nan, head), groups, balanced)
    curve = constant_curve(
        t, Mode("gate", s), np.where(fires, 1.0, head), max_lag, head_ms, groups, balanced
    )
    agree = (1.0,) + (share + (1.0 - share) * elsewhere,) * max_lag
    return replace(curve, agree=agree, runs=share, priced_runs=priced)


def _box_curves(
    t: str,
    sources: Sequence[str],
    box_outs: Mapping[str, list[np.ndarray]],
    fold_heads: Mapping[tuple[str, str, int], BoxHead],
    fold: np.ndarray,
    pairs: Pairs,
    est: LagEstimator,
    thresholds: Sequence[float],
    groups: Sequence[str],
    gates: bool,
    balanced: bool = False,
) -> list[Curve]:
    """The head, follow, track, switch and gate curves of box target ``t`` from each source.
    Each curve's ``synth_ms`` is the measured time of the predictions it scores, per output."""
    target = box_outs[t]
    now = pairs.now
    truth = [target[j] for j in now]
    n, m = len(target), len(now)
    out = []
    for s in sources:
        src = box_outs[s]
        if (s, t, 0) not in fold_heads:  # the source never fired: its modes equal reuse/prior
            continue
        start = time.perf_counter()
        heads = [fold_heads[(s, t, int(fold[i]))].predict(src[i]) for i in range(n)]
        head_ms = (time.perf_counter() - start) * 1000.0 / max(n, 1)
        scores = np.array([box_agreement(p, target[i]) for i, p in enumerate(heads)])
        out.append(
            constant_curve(t, Mode("head", s), scores, est.max_lag, head_ms, groups, balanced)
        )
        if gates:  # a cascade: run where the source fires (when it fires on some samples)
            fires = np.array([finds_anything(b) for b in src])
            if 0.0 < fires.mean() < 1.0:
                out.append(_gate_curve(t, s, scores, fires, head_ms, est.max_lag, groups, balanced))
        usable = [i for i, f in enumerate(pairs.then) if s in f]
        if not usable:
            continue
        then_t = [as_boxes(pairs.then[i][t]) for i in usable]
        then_s = [as_boxes(pairs.then[i][s]) for i in usable]
        now_u = [now[i] for i in usable]
        start = time.perf_counter()
        followed = [follow(a, b, src[j]) for a, b, j in zip(then_t, then_s, now_u, strict=True)]
        follow_ms = (time.perf_counter() - start) * 1000.0 / len(usable)
        truth_u = [truth[i] for i in usable]

        def curve(
            mode: Mode, predicted: list[np.ndarray], ms: float, usable=usable, truth_u=truth_u
        ) -> Curve:
            scores = np.full(m, np.nan)
            scores[usable] = [box_agreement(p, q) for p, q in zip(predicted, truth_u, strict=True)]
            return est.curve(t, mode, scores, ms)

        out.append(curve(Mode("follow", s), followed, follow_ms))
        start = time.perf_counter()
        tracked = [track(heads[j], f) for j, f in zip(now_u, followed, strict=True)]
        track_ms = (time.perf_counter() - start) * 1000.0 / len(usable) + follow_ms + head_ms
        out.append(curve(Mode("track", s), tracked, track_ms))
        start = time.perf_counter()
        stable = [box_agreement(b, src[j]) for b, j in zip(then_s, now_u, strict=True)]
        switch_ms = (time.perf_counter() - start) * 1000.0 / len(usable) + follow_ms + head_ms
        for tau in thresholds:
            picked = [
                f if st >= tau else heads[j]
                for f, st, j in zip(followed, stable, now_u, strict=True)
            ]
            out.append(curve(Mode("switch", s, float(tau)), picked, switch_ms))
    return out
