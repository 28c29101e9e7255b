"""The paper's baselines (Table 4), on any :class:`~mlink.linkstore.experiment.Workload`.

MLink is compared against three ways of running many models under a per-frame compute budget:

- :func:`standalone` -- run the most valuable models that fit; every other model gets its *prior*
  (the best constant guess from the training part), no links.
- :func:`frame_filtering` -- Reducto (Li et al., SIGCOMM 2020): a model skips a frame whose cheap
  low-level features barely changed since the last frame it ran on, and its last output is reused.
- :func:`multitask` -- one small multi-task CNN on a thumbnail, with a head per model, trained on
  the models' outputs; it replaces all (or all inactive) models on the evaluation frames.

Everything follows the protocol of :mod:`mlink.linkstore.experiment`: the first part of each
stream (``train_idx``) is all a method may learn or tune on; it is measured on ``test_idx``.
*Accuracy* is the mean over all models of the agreement with the real model's output
(:func:`mlink.linkstore.metrics.agreement`; 1 where the model really ran). *Compute saved* is
``1 - cost_ms / full`` where ``cost_ms`` is the measured per-frame cost of everything the method
ran on the evaluation frames (models, features, CNN, thumbnails) and ``full`` the cost of every
model on every frame. Each method plans within ``budget_ms`` per frame on average; ``cost_ms``
is what it actually spent and :attr:`MethodResult.feasible` says whether that fit.

Frames arrive as arrays (8x8 grayscale digits, 720p BGR video, ...): this module needs neither
OpenCV nor a broker. :func:`prepare_frames` turns a frame source into Reducto features and
CNN thumbnails in one pass and times both.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from mlink.linkstore.experiment import Workload
from mlink.linkstore.links import activate
from mlink.linkstore.linkset import decode_rows, prior_row
from mlink.linkstore.losses import vector_loss
from mlink.linkstore.metrics import agreement
from mlink.linkstore.selection import Problem, select
from mlink.linkstore.training import split_indices, torch_threads
from mlink.topics.specs import BoxesSpec, OutputSpec, SequenceSpec, encode_batch

__all__ = [
    "FEATURES",
    "MethodResult",
    "MultiTaskNet",
    "PreparedFrames",
    "evaluate_outputs",
    "feature_diff",
    "frame_features",
    "frame_filtering",
    "multitask",
    "prepare_frames",
    "prior_outputs",
    "standalone",
    "thumbnails",
]


@dataclass(slots=True)
class MethodResult:
    """One baseline at one budget, measured on the evaluation frames.

    ``active`` are the models that always run (for frame filtering: none -- every model runs on
    the frames its filter lets through); ``per_model`` is each model's mean agreement; ``cost_ms``
    the measured average per-frame cost; ``seconds`` the wall time the method took (fit + plan +
    evaluation).
    """

    method: str
    budget_ms: float
    accuracy: float
    compute_saved: float
    cost_ms: float
    active: list[str]
    per_model: dict[str, float]
    notes: str = ""
    seconds: float = 0.0
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def feasible(self) -> bool:
        """Whether the measured average per-frame cost fits the budget."""
        return self.cost_ms <= self.budget_ms * (1 + 1e-9)


def _check_budget(workload: Workload, budget_ms: float) -> float:
    full = workload.total_cost("ms")
    if not budget_ms > 0:
        raise ValueError(f"budget_ms must be > 0, got {budget_ms}")
    if full <= 0:
        raise ValueError(f"workload {workload.name}: models cost nothing ({full} ms/frame)")
    return full


def _result(
    workload: Workload,
    method: str,
    budget_ms: float,
    cost_ms: float,
    active: Iterable[str],
    per_model: Mapping[str, float],
    notes: str,
    started: float,
    details: Mapping[str, Any] | None = None,
) -> MethodResult:
    full = workload.total_cost("ms")
    per_model = {m: float(per_model[m]) for m in workload.models}
    return MethodResult(
        method=method,
        budget_ms=float(budget_ms),
        accuracy=float(np.mean(list(per_model.values()))),
        compute_saved=float(np.clip(1.0 - cost_ms / full, 0.0, 1.0)),
        cost_ms=float(cost_ms),
        active=sorted(active),
        per_model=per_model,
        notes=notes,
        seconds=time.perf_counter() - started,
        details=dict(details or {}),
    )


def _model_ms(workload: Workload) -> dict[str, float]:
    return {m: float(workload.costs[m].get("ms", 0.0)) for m in workload.models}


# ------------------------------------------------------------------------------ agreement


def _stack(spec: OutputSpec, outputs: Sequence[Any]) -> Any:
    """Outputs as :func:`agreement` takes them: an ``(n, size)`` array for vectors, else a list."""
    if isinstance(spec, (BoxesSpec, SequenceSpec)):
        return list(outputs)
    return np.asarray(outputs, dtype=np.float32).reshape(len(outputs), -1)


def evaluate_outputs(
    workload: Workload, idx: Sequence[int], predicted: Mapping[str, Sequence[Any]]
) -> tuple[float, dict[str, float]]:
    """Mean agreement of ``predicted[m]`` (aligned with ``idx``) with model ``m``'s real outputs.

    Models absent from ``predicted`` ran for real (agreement 1). Returns the mean over all models
    of the workload and the per-model agreements.
    """
    idx = np.asarray(idx, dtype=np.int64)
    unknown = sorted(set(predicted) - set(workload.models))
    if unknown:
        raise ValueError(f"predictions for unknown models {unknown}")
    per_model = {}
    for m in workload.models:
        if m not in predicted:
            per_model[m] = 1.0
            continue
        if len(predicted[m]) != len(idx):
            raise ValueError(f"{m}: {len(predicted[m])} predictions for {len(idx)} frames")
        spec = workload.specs[m]
        actual = [workload.outputs[m][i] for i in idx]
        scores = agreement(spec, _stack(spec, predicted[m]), _stack(spec, actual))
        per_model[m] = float(scores.mean()) if len(idx) else 1.0
    return float(np.mean(list(per_model.values()))), per_model


class _PairAgreement:
    """Memoised per-frame agreement of model ``m``'s output on frame ``src`` with frame ``dst``:
    what reusing a stale output scores. Filters with different thresholds share most pairs."""

    def __init__(self, workload: Workload) -> None:
        self.workload = workload
        self._memo: dict[str, dict[tuple[int, int], float]] = {m: {} for m in workload.models}

    def __call__(self, model: str, src: np.ndarray, dst: np.ndarray) -> np.ndarray:
        memo = self._memo[model]
        pairs = list(zip(src.tolist(), dst.tolist(), strict=True))
        todo = sorted({p for p in pairs if p[0] != p[1] and p not in memo})
        if todo:
            spec = self.workload.specs[model]
            outs = self.workload.outputs[model]
            scores = agreement(
                spec,
                _stack(spec, [outs[s] for s, _ in todo]),
                _stack(spec, [outs[d] for _, d in todo]),
            )
            memo.update(zip(todo, scores.tolist(), strict=True))
        return np.array([1.0 if s == d else memo[(s, d)] for s, d in pairs], dtype=np.float64)


# ------------------------------------------------------------------------------ standalone


def prior_outputs(workload: Workload, train_idx: Sequence[int]) -> dict[str, Any]:
    """Each model's prior as an output it could have emitted: the majority class / label
    frequencies, the modal count or the median over the training frames
    (:func:`mlink.linkstore.linkset.prior_row`, decoded)."""
    out = {}
    for m, spec in workload.specs.items():
        enc = encode_batch(spec, [workload.outputs[m][i] for i in train_idx])
        out[m] = decode_rows(spec, prior_row(spec, enc)[None])[0]
    return out


def _prior_agreement(workload: Workload, model: str, prior: Any, idx: Sequence[int]) -> float:
    _, per_model = evaluate_outputs(workload, idx, {model: [prior] * len(idx)})
    return per_model[model]


def standalone(
    workload: Workload, train_idx: Sequence[int], test_idx: Sequence[int], budget_ms: float
) -> MethodResult:
    """Run the models that fit, no links: every other model outputs its constant prior.

    The active set maximises training accuracy (1 per active model, the prior's training
    agreement per inactive one) within ``budget_ms``, solved exactly by
    :func:`mlink.linkstore.selection.select`; running nothing is allowed.
    """
    started = time.perf_counter()
    _check_budget(workload, budget_ms)
    priors = prior_outputs(workload, train_idx)
    train_agree = {m: _prior_agreement(workload, m, priors[m], train_idx) for m in workload.models}
    ms = _model_ms(workload)
    problem = Problem(
        models=workload.models,
        costs={m: {"ms": ms[m]} for m in workload.models},
        budget={"ms": float(budget_ms)},
        agreement=lambda active, target: train_agree[target],
        min_active=0,
    )
    plan = select(problem)
    inactive = [m for m in workload.models if m not in plan.active]
    _, per_model = evaluate_outputs(
        workload, test_idx, {m: [priors[m]] * len(test_idx) for m in inactive}
    )
    cost = sum(ms[m] for m in plan.active)
    return _result(
        workload,
        "Standalone",
        budget_ms,
        cost,
        plan.active,
        per_model,
        f"inactive models output their prior; training accuracy {plan.objective:.3f}",
        started,
        {"train_accuracy": plan.objective, "prior_train_agreement": train_agree},
    )


# ------------------------------------------------------------------------------ frames

#: Thumbnail side of the Reducto features (grayscale, GRID x GRID).
GRID = 32
#: A thumbnail pixel "changed" when its gray level moved by more than this (of 1.0).
PIXEL_DELTA = 0.06
#: A thumbnail pixel is an edge when its Sobel gradient magnitude exceeds this (on a 0..1 image;
#: a unit step gives 4).
EDGE_THRESHOLD = 0.5
HIST_BINS = 16
#: The kinds of feature difference, in :func:`feature_diff`'s column order.
FEATURES: tuple[str, ...] = ("pixel", "edge", "area", "hist")
_CELLS = GRID * GRID


def _unit_float(frame: np.ndarray) -> np.ndarray:
    if np.issubdtype(frame.dtype, np.integer):
        return frame.astype(np.float32) / float(np.iinfo(frame.dtype).max)
    return frame.astype(np.float32)


def _resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Area-average (shrinking) or nearest-neighbour (growing) resize of ``(H, W[, C])``."""
    out = image
    for axis, size in ((0, height), (1, width)):
        n = out.shape[axis]
        if n >= size:
            starts = (np.arange(size) * n) // size
            counts = np.diff(np.append(starts, n)).astype(np.float32)
            shape = [1] * out.ndim
            shape[axis] = size
            out = np.add.reduceat(out, starts, axis=axis) / counts.reshape(shape)
        else:
            out = np.take(out, ((np.arange(size) + 0.5) * n / size).astype(np.int64), axis=axis)
    return out


def _shrink(frame: np.ndarray, height: int, width: int) -> np.ndarray:
    """Strided subsample to at most ~4x the target size before averaging: a 720p frame is then
    averaged from ~1/16 of its pixels, which is plenty for thumbnails and change detection."""
    sy = max(1, frame.shape[0] // (4 * height))
    sx = max(1, frame.shape[1] // (4 * width))
    return frame[::sy, ::sx]


def _gray(frame: np.ndarray) -> np.ndarray:
    frame = np.asarray(frame)
    if frame.ndim == 3 and frame.shape[2] == 1:
        frame = frame[:, :, 0]
    if frame.ndim == 2:
        return _unit_float(frame)
    if frame.ndim == 3 and frame.shape[2] in (3, 4):  # BGR(A), as OpenCV decodes
        return _unit_float(frame[:, :, :3]) @ np.array([0.114, 0.587, 0.299], dtype=np.float32)
    raise ValueError(f"frames must be (H, W) or (H, W, 1|3|4) arrays, got shape {frame.shape}")


def _sobel_magnitude(gray: np.ndarray) -> np.ndarray:
    p = np.pad(gray, 1, mode="edge")
    gx = (p[:-2, 2:] + 2 * p[1:-1, 2:] + p[2:, 2:]) - (p[:-2, :-2] + 2 * p[1:-1, :-2] + p[2:, :-2])
    gy = (p[2:, :-2] + 2 * p[2:, 1:-1] + p[2:, 2:]) - (p[:-2, :-2] + 2 * p[:-2, 1:-1] + p[:-2, 2:])
    return np.hypot(gx, gy)


def _features_one(frame: np.ndarray) -> np.ndarray:
    gray = _resize(_gray(_shrink(np.asarray(frame), GRID, GRID)), GRID, GRID)
    edges = (_sobel_magnitude(gray) > EDGE_THRESHOLD).astype(np.float32)
    hist = np.bincount(
        np.minimum((gray * HIST_BINS).astype(np.int64), HIST_BINS - 1).ravel(),
        minlength=HIST_BINS,
    ).astype(np.float32)
    return np.concatenate([gray.ravel(), edges.ravel(), hist / hist.sum()])


def frame_features(frames: Iterable[np.ndarray]) -> np.ndarray:
    """Reducto-style low-level features of each frame, as an ``(n, 2 * 32 * 32 + 16)`` array.

    Per frame: a 32x32 grayscale thumbnail (area-averaged, values in [0, 1]), its binary Sobel
    edge map, and a 16-bin gray histogram. :func:`feature_diff` turns two rows into the four
    differences Reducto thresholds (see :data:`FEATURES`). Frames may be ``(H, W)`` grayscale or
    ``(H, W, 3)`` BGR arrays of any size (smaller ones are upsampled), ``uint8`` or floats in
    [0, 1]. Costs ~0.1-1 ms per frame (720p included): the frame is strided down first.
    """
    rows = [_features_one(f) for f in frames]
    if not rows:
        return np.zeros((0, 2 * _CELLS + HIST_BINS), dtype=np.float32)
    return np.stack(rows).astype(np.float32)


def feature_diff(features: np.ndarray, i: Any, j: Any) -> np.ndarray:
    """The differences between frames ``i`` and ``j`` (indices or index arrays), one column per
    :data:`FEATURES` kind, each in [0, 1]:

    - ``pixel``: share of thumbnail pixels whose gray level changed by more than 0.06;
    - ``edge``: share of thumbnail pixels that became or stopped being an edge;
    - ``area``: change in the share of the frame covered by edges (objects entering or leaving);
    - ``hist``: total-variation distance of the gray histograms (global lighting/scene change).
    """
    a = np.atleast_2d(features[i])
    b = np.atleast_2d(features[j])
    ga, gb = a[:, :_CELLS], b[:, :_CELLS]
    ea, eb = a[:, _CELLS : 2 * _CELLS], b[:, _CELLS : 2 * _CELLS]
    out = np.stack(
        [
            (np.abs(ga - gb) > PIXEL_DELTA).mean(axis=1),
            (ea != eb).mean(axis=1),
            np.abs(ea.mean(axis=1) - eb.mean(axis=1)),
            0.5 * np.abs(a[:, 2 * _CELLS :] - b[:, 2 * _CELLS :]).sum(axis=1),
        ],
        axis=1,
    )
    return out[0] if np.ndim(i) == 0 and np.ndim(j) == 0 else out


def _thumbnail_one(frame: np.ndarray, width: int, height: int) -> np.ndarray:
    frame = np.asarray(frame)
    if frame.ndim == 2:
        frame = frame[:, :, None]
    small = _resize(_unit_float(_shrink(frame[:, :, :3], height, width)), height, width)
    return np.ascontiguousarray(small.transpose(2, 0, 1), dtype=np.float32)


def thumbnails(frames: Iterable[np.ndarray], width: int = 64, height: int = 48) -> np.ndarray:
    """``(n, C, height, width)`` float32 thumbnails in [0, 1] (C = 1 for gray, 3 for BGR)."""
    rows = [_thumbnail_one(f, width, height) for f in frames]
    return np.stack(rows) if rows else np.zeros((0, 1, height, width), dtype=np.float32)


@dataclass(slots=True)
class PreparedFrames:
    """What the baselines need from the frames, with the measured per-frame cost of each."""

    features: np.ndarray
    thumbs: np.ndarray
    feature_ms: float
    thumb_ms: float
    streams: list[str]


def prepare_frames(
    frames: Iterable[np.ndarray | tuple[str, np.ndarray]], width: int = 64, height: int = 48
) -> PreparedFrames:
    """One pass over a frame source (arrays, or ``(stream, array)`` pairs as the video source
    yields): Reducto features and CNN thumbnails, each timed per frame (mean ms)."""
    feats, thumbs, streams = [], [], []
    t_feat = t_thumb = 0.0
    for item in frames:
        stream, frame = item if isinstance(item, tuple) else ("stream", item)
        start = time.perf_counter()
        feats.append(_features_one(frame))
        mid = time.perf_counter()
        thumbs.append(_thumbnail_one(frame, width, height))
        t_feat += mid - start
        t_thumb += time.perf_counter() - mid
        streams.append(stream)
    n = max(1, len(streams))
    return PreparedFrames(
        np.stack(feats).astype(np.float32),
        np.stack(thumbs),
        1000 * t_feat / n,
        1000 * t_thumb / n,
        streams,
    )


# ------------------------------------------------------------------------------ Reducto


def _by_stream(streams: Sequence[str], idx: np.ndarray) -> np.ndarray:
    """For each position of ``idx``, whether it is the first frame of its stream within ``idx``."""
    seen: set[str] = set()
    first = np.zeros(len(idx), dtype=bool)
    for t, i in enumerate(idx.tolist()):
        if streams[i] not in seen:
            seen.add(streams[i])
            first[t] = True
    return first


def _filter_sources(
    features: np.ndarray, streams: Sequence[str], idx: np.ndarray, kind: int, threshold: float
) -> np.ndarray:
    """Which frame's output each frame of ``idx`` uses under one filter: itself when the feature
    difference to the last frame run (same stream) reaches ``threshold``, else that frame."""
    last: dict[str, int] = {}
    src = np.empty(len(idx), dtype=np.int64)
    for t, i in enumerate(idx.tolist()):
        s = streams[i]
        j = last.get(s)
        if j is None or feature_diff(features, i, j)[kind] >= threshold:
            last[s] = j = i
        src[t] = j
    return src


def _thresholds(
    features: np.ndarray, streams: Sequence[str], idx: np.ndarray, first: np.ndarray
) -> list[np.ndarray]:
    """Per feature kind: 0 (always run), quantiles of consecutive-frame differences, multiples of
    the largest one (long skips: the reference frame drifts), and inf (first frame only)."""
    prev = np.array([idx[t - 1] for t in range(1, len(idx))], dtype=np.int64)
    cur = idx[1:]
    keep = ~first[1:]
    diffs = feature_diff(features, cur[keep], prev[keep]) if keep.any() else np.zeros((0, 4))
    grids = []
    for k in range(len(FEATURES)):
        d = diffs[:, k]
        d = d[d > 0]
        values = [0.0, math.inf]
        if d.size:
            values += list(np.quantile(d, [0.1, 0.25, 0.4, 0.55, 0.7, 0.8, 0.9, 0.95]))
            values += [d.max() * f for f in (1.01, 1.5, 2.0, 3.0, 5.0)]
        grids.append(np.unique(np.array(values, dtype=np.float64)))
    return grids


def _choose_options(
    options: Sequence[Sequence[tuple[float, float]]], capacity: float, grid: int = 2000
) -> list[int] | None:
    """Multiple-choice knapsack: one ``(cost, value)`` option per group, maximising total value
    with total cost <= capacity (costs rounded *up* to ``capacity / grid``, so the plan fits).
    Returns the chosen option per group, or None when even the cheapest options do not fit."""
    if capacity <= 0:
        return None
    unit = capacity / grid
    dp = np.zeros(grid + 1)
    choices = []
    for group in options:
        new = np.full(grid + 1, -np.inf)
        pick = np.full(grid + 1, -1, dtype=np.int64)
        for o, (cost, value) in enumerate(group):
            w = math.ceil(cost / unit - 1e-9)
            if w > grid:
                continue
            cand = np.full(grid + 1, -np.inf)
            cand[w:] = dp[: grid + 1 - w] + value
            better = cand > new + 1e-12
            new[better] = cand[better]
            pick[better] = o
        dp = new
        choices.append(pick)
    if not np.isfinite(dp[grid]):
        return None
    chosen, w = [], grid
    for group, pick in zip(reversed(options), reversed(choices), strict=True):
        o = int(pick[w])
        chosen.append(o)
        w -= math.ceil(group[o][0] / unit - 1e-9)
    return chosen[::-1]


def frame_filtering(
    workload: Workload,
    features: np.ndarray,
    train_idx: Sequence[int],
    test_idx: Sequence[int],
    budget_ms: float,
    feature_ms: float,
    enforce_budget: bool = True,
) -> MethodResult:
    """Reducto: each model skips frames whose features barely changed, reusing its last output.

    Per model, a filter is a feature kind (:data:`FEATURES`) and a threshold; the model runs on a
    frame when the difference to the last frame it ran on (same stream) reaches the threshold.
    On the training part every filter of a grid is simulated for every model, giving its run
    rate and its accuracy (agreement of reused outputs), both over the frames after each
    stream's first. The filters are then chosen jointly by an exact multiple-choice knapsack: most
    training accuracy with expected cost (features on every frame + each model's ms times its run
    rate, forced first frames included) within ``budget_ms``.

    On the evaluation frames the first frame of each stream runs every model. Run rates drift
    from training, so with ``enforce_budget`` a running account keeps the average within budget:
    a model whose filter fires runs only when the cost charged so far plus its own stays within
    ``budget_ms`` times the frames so far (otherwise it reuses and asks again next frame); models
    are served in order of value per ms (how much reusing a one-frame-old output loses on
    training, per ms). A stream's forced first frame is charged in instalments over that stream's
    evaluation frames, so the guarantee holds whenever ``feature_ms`` plus one instalment
    (full cost / frames of the stream) fits the budget, i.e. for streams of at least
    ``full / (budget_ms - feature_ms)`` frames. ``cost_ms`` includes ``feature_ms`` on every
    frame.
    """
    started = time.perf_counter()
    _check_budget(workload, budget_ms)
    streams = workload.streams
    train = np.asarray(train_idx, dtype=np.int64)
    test = np.asarray(test_idx, dtype=np.int64)
    ms = _model_ms(workload)
    models = workload.models
    pairs = _PairAgreement(workload)

    first_train = _by_stream(streams, train)
    later = ~first_train
    first_test = _by_stream(streams, test)
    forced = float(first_test.mean()) if len(test) else 0.0

    # Simulate every (kind, threshold) filter on the training frames.
    candidates: list[tuple[int, float, np.ndarray]] = []  # kind, threshold, sources
    for k, grid in enumerate(_thresholds(features, streams, train, first_train)):
        for thr in grid.tolist():
            candidates.append((k, thr, _filter_sources(features, streams, train, k, thr)))
    options: list[list[tuple[float, float]]] = []
    labels: list[list[tuple[int, float]]] = []
    for m in models:
        seen: dict[tuple[float, float], tuple[int, float]] = {}
        for k, thr, src in candidates:
            ran = src == train
            rate = float(ran[later].mean()) if later.any() else 1.0
            acc = float(pairs(m, src, train)[later].mean()) if later.any() else 1.0
            cost = ms[m] * (forced + (1.0 - forced) * rate)
            key = (round(cost, 9), round(acc, 9))
            if key not in seen or thr < seen[key][1]:
                seen[key] = (k, thr)
        ordered = sorted(seen.items())
        options.append([key for key, _ in ordered])
        labels.append([lab for _, lab in ordered])
    chosen = _choose_options(options, budget_ms - feature_ms)
    notes = []
    if chosen is None:  # even first-frame-only filters do not fit: take the cheapest everywhere
        chosen = [0] * len(models)
        notes.append("no filter combination fits the budget on training; cheapest filters used")
    plan = {m: labels[g][o] for g, (m, o) in enumerate(zip(models, chosen, strict=True))}
    train_acc = float(np.mean([options[g][o][1] for g, o in enumerate(chosen)]))
    planned = feature_ms + sum(options[g][o][0] for g, o in enumerate(chosen))

    # Serve order under the running budget: value of fresh output per ms.
    consecutive = np.array([t if first_train[t] else t - 1 for t in range(len(train))])
    value = {m: 1.0 - float(pairs(m, train[consecutive], train).mean()) for m in models}
    order = sorted(models, key=lambda m: (-value[m] / max(ms[m], 1e-9), models.index(m)))

    # The budget account: what has been charged may never exceed budget_ms per frame so far. A
    # stream's forced first frame is charged in equal instalments over that stream's evaluation
    # frames (so it does not block the frames right after it), and fully by the stream's end.
    full_ms = sum(ms.values())
    length = {s: int(np.sum([streams[i] == s for i in test.tolist()])) for s in set(streams)}
    last: dict[tuple[str, str], int] = {}
    src = {m: np.empty(len(test), dtype=np.int64) for m in models}
    spent = charged = 0.0
    runs = dict.fromkeys(models, 0)
    denied = 0
    for t, i in enumerate(test.tolist()):
        s = streams[i]
        spent += feature_ms
        charged += feature_ms + full_ms / length[s]
        allowance = budget_ms * (t + 1)
        for m in order:
            j = last.get((m, s))
            kind, thr = plan[m]
            if j is None:  # the stream's first frame: every model runs (charged in instalments)
                spent += ms[m]
            elif feature_diff(features, i, j)[kind] < thr:
                src[m][t] = j
                continue
            elif not enforce_budget or charged + ms[m] <= allowance:
                spent += ms[m]
                charged += ms[m]
            else:
                denied += 1
                src[m][t] = j
                continue
            runs[m] += 1
            last[(m, s)] = src[m][t] = i
    cost = spent / max(1, len(test))
    per_model = {m: float(pairs(m, src[m], test).mean()) if len(test) else 1.0 for m in models}
    run_rate = {m: runs[m] / max(1, len(test)) for m in models}
    notes.append(
        f"training accuracy {train_acc:.3f} at planned {planned:.3f} ms/frame; "
        f"{denied} filter-triggered runs deferred by the budget account"
    )
    filters = {m: (FEATURES[k], thr) for m, (k, thr) in plan.items()}
    return _result(
        workload,
        "Frame filtering (Reducto)",
        budget_ms,
        cost,
        [m for m in models if run_rate[m] >= 1.0],
        per_model,
        "; ".join(notes),
        started,
        {
            "filters": filters,
            "run_rate": run_rate,
            "train_accuracy": train_acc,
            "planned_ms": planned,
            "deferred": denied,
            "feature_ms": feature_ms,
        },
    )


# ------------------------------------------------------------------------------ multi-task


class MultiTaskNet(nn.Module):
    """A small CNN: three 3x3 conv layers (16, 32, 32 channels; stride 2 while the map is at
    least 16 px), pooled to 4x4, a 64-unit shared layer, and one linear head per model."""

    def __init__(self, channels: int, height: int, width: int, head_dims: Sequence[int]) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in, side = channels, min(height, width)
        for c_out in (16, 32, 32):
            stride = 2 if side >= 16 else 1
            layers += [nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1), nn.ReLU()]
            c_in, side = c_out, (side + stride - 1) // stride
        self.trunk = nn.Sequential(
            *layers,
            nn.AdaptiveAvgPool2d(4),
            nn.Flatten(),
            nn.Linear(c_in * 16, 64),
            nn.ReLU(),
            nn.Dropout(0.2),
        )
        self.heads = nn.ModuleList(nn.Linear(64, d) for d in head_dims)
        self.register_buffer("mean", torch.zeros(1, channels, 1, 1))
        self.register_buffer("std", torch.ones(1, channels, 1, 1))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        h = self.trunk((x - self.mean) / self.std)
        return [head(h) for head in self.heads]


@dataclass(slots=True)
class _Head:
    model: str
    spec: OutputSpec
    task: str
    mean: np.ndarray
    std: np.ndarray

    def target(self, encoded: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(((encoded - self.mean) / self.std).astype(np.float32))

    def decode(self, logits: torch.Tensor) -> Any:
        rows = activate(self.task, logits).numpy()
        return decode_rows(self.spec, rows * self.std + self.mean)


def _heads(workload: Workload, train: np.ndarray) -> tuple[list[_Head], dict[str, np.ndarray]]:
    heads, encoded = [], {}
    for m, spec in workload.specs.items():
        if isinstance(spec, SequenceSpec):
            continue  # no sequence decoder here: such models fall back to their prior
        enc = encode_batch(spec, workload.outputs[m])
        encoded[m] = enc
        task = spec.link_task
        if task in ("softmax", "sigmoid"):
            mean, std = np.zeros(enc.shape[1]), np.ones(enc.shape[1])
        else:  # regression (linear, count, boxes): standardise on the training frames
            mean = enc[train].mean(axis=0)
            std = np.maximum(enc[train].std(axis=0), 1e-3)
        heads.append(_Head(m, spec, task, mean.astype(np.float32), std.astype(np.float32)))
    return heads, encoded


def _mtl_loss(
    heads: Sequence[_Head], outputs: Sequence[torch.Tensor], targets: Sequence[torch.Tensor]
) -> torch.Tensor:
    return sum(
        vector_loss(h.task, o[None], y[None])[0]
        for h, o, y in zip(heads, outputs, targets, strict=True)
    )


def _cnn_ms(net: nn.Module, thumb: np.ndarray, repeats: int = 100) -> float:
    """Single-frame forward on one thread, thumbnail-to-tensor included: median ms per call."""
    net.eval()
    times = []
    with torch_threads(1), torch.no_grad():
        for r in range(repeats + 10):
            start = time.perf_counter()
            net(torch.from_numpy(thumb[None]))
            if r >= 10:
                times.append(time.perf_counter() - start)
    return 1000 * float(np.median(times))


def _train_mtl(
    thumbs: np.ndarray,
    heads: Sequence[_Head],
    encoded: Mapping[str, np.ndarray],
    fit: np.ndarray,
    val: np.ndarray,
    epochs: int,
    seed: int,
    batch_size: int = 32,
    lr: float = 3e-3,
) -> MultiTaskNet:
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    _, c, h, w = thumbs.shape
    net = MultiTaskNet(c, h, w, [hd.spec.link_dim for hd in heads])
    x = torch.from_numpy(thumbs)
    with torch.no_grad():
        net.mean.copy_(x[fit].mean(dim=(0, 2, 3), keepdim=True))
        net.std.copy_(x[fit].std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-3))
    targets = [hd.target(encoded[hd.model]) for hd in heads]
    opt = torch.optim.Adam(net.parameters(), lr=lr, weight_decay=1e-4)
    best, best_state = math.inf, copy.deepcopy(net.state_dict())
    for _ in range(epochs):
        net.train()
        for batch in np.array_split(rng.permutation(fit), max(1, math.ceil(len(fit) / batch_size))):
            b = torch.from_numpy(batch)
            loss = _mtl_loss(heads, net(x[b]), [y[b] for y in targets])
            opt.zero_grad()
            loss.backward()
            opt.step()
        net.eval()
        with torch.no_grad():
            v = torch.from_numpy(val)
            val_loss = float(_mtl_loss(heads, net(x[v]), [y[v] for y in targets]))
        if val_loss < best:
            best, best_state = val_loss, copy.deepcopy(net.state_dict())
    net.load_state_dict(best_state)
    return net.eval()


def _mtl_predict(net: nn.Module, heads: Sequence[_Head], thumbs: np.ndarray, idx: np.ndarray):
    with torch.no_grad():
        outs = net(torch.from_numpy(thumbs[idx]))
    return {hd.model: list(hd.decode(o)) for hd, o in zip(heads, outs, strict=True)}


def multitask(
    workload: Workload,
    thumbs: np.ndarray,
    train_idx: Sequence[int],
    test_idx: Sequence[int],
    budget_ms: float,
    epochs: int = 150,
    seed: int = 0,
    thumb_ms: float = 0.0,
    val_fraction: float = 0.2,
    threads: int = 1,
) -> MethodResult:
    """The paper's multi-task baseline: one small CNN (:class:`MultiTaskNet`) on ``thumbs``
    (``(n, C, H, W)`` float32 in [0, 1], one per workload frame), a head per model trained on the
    models' encoded outputs over the training part (soft cross-entropy for softmax, BCE for
    sigmoid, Huber on standardised values for linear, count and boxes), best epoch by validation
    loss on ``val_fraction`` of the training frames.

    Its cost is the measured single-frame, one-thread CNN forward plus ``thumb_ms``. The active set
    runs for real alongside it: chosen by the exact selector with each inactive model scored by
    its head's validation agreement, within what the budget leaves after the CNN. An empty set
    (the CNN replaces every model) is allowed, so the selector compares "MTL for all" with "MTL
    for the models not in an active set" on validation. Sequence outputs have no head and get
    their prior. When the CNN alone exceeds the budget the result is reported as it is, over
    budget (``feasible`` is False).

    Training uses ``threads`` intra-op threads (default 1: the net is small, and on a loaded
    machine OpenMP threads that wait on each other made 2 threads up to 10x slower than 1).
    """
    started = time.perf_counter()
    _check_budget(workload, budget_ms)
    thumbs = np.ascontiguousarray(thumbs, dtype=np.float32)
    if thumbs.ndim != 4 or thumbs.shape[0] != workload.n_frames:
        raise ValueError(
            f"thumbs must be (n_frames={workload.n_frames}, C, H, W), got {thumbs.shape}"
        )
    train = np.asarray(train_idx, dtype=np.int64)
    test = np.asarray(test_idx, dtype=np.int64)
    fit_local, val_local = split_indices(len(train), val_fraction, seed)
    fit, val = train[fit_local], train[val_local]
    heads, encoded = _heads(workload, fit)
    priors = prior_outputs(workload, train)
    with torch_threads(threads):
        net = _train_mtl(thumbs, heads, encoded, fit, val, epochs, seed)
    train_seconds = time.perf_counter() - started
    overhead = _cnn_ms(net, thumbs[test[0] if len(test) else 0]) + thumb_ms

    val_pred = _mtl_predict(net, heads, thumbs, val)
    for m in workload.models:
        val_pred.setdefault(m, [priors[m]] * len(val))
    _, val_agree = evaluate_outputs(workload, val, val_pred)
    ms = _model_ms(workload)
    room = budget_ms - overhead
    if room > 0:
        plan = select(
            Problem(
                models=workload.models,
                costs={m: {"ms": ms[m]} for m in workload.models},
                budget={"ms": room},
                agreement=lambda active, target: val_agree[target],
                min_active=0,
            )
        )
        active, val_acc = sorted(plan.active), plan.objective
        note = "MTL for all models" if not active else "MTL for the models not in the active set"
    else:
        active, val_acc = [], float(np.mean(list(val_agree.values())))
        note = f"over budget: the CNN + thumbnail alone cost {overhead:.3f} ms/frame"
    test_pred = _mtl_predict(net, heads, thumbs, test)
    for m in workload.models:
        test_pred.setdefault(m, [priors[m]] * len(test))
    _, per_model = evaluate_outputs(
        workload, test, {m: p for m, p in test_pred.items() if m not in active}
    )
    heads_only, heads_per_model = evaluate_outputs(workload, test, test_pred)
    cost = overhead + sum(ms[m] for m in active)
    return _result(
        workload,
        "Multi-task learning",
        budget_ms,
        cost,
        active,
        per_model,
        f"{note}; CNN+thumbnail {overhead:.3f} ms/frame; validation accuracy {val_acc:.3f}; "
        f"trained in {train_seconds:.1f} s",
        started,
        {
            "cnn_ms": overhead - thumb_ms,
            "thumb_ms": thumb_ms,
            "val_agreement": val_agree,
            "val_accuracy": val_acc,
            "train_seconds": train_seconds,
            # For reference (not a plan the budget chose): the CNN replacing every model.
            "heads_only_accuracy": heads_only,
            "heads_only_per_model": heads_per_model,
        },
    )
