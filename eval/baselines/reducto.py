"""Frame filtering, Reducto-style (Li et al., SIGCOMM 2020): a model skips a frame whose cheap
low-level features barely changed since the last frame it ran on, and its last output is reused.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

import numpy as np

from mlink.eval.baselines.common import (
    MethodResult,
    PairAgreement,
    check_budget,
    method_result,
    model_ms,
)
from mlink.eval.baselines.frames import FEATURES, feature_diff
from mlink.eval.workload import Workload
from mlink.linkstore.knapsack import choose_options

__all__ = ["frame_filtering"]


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
    check_budget(workload, budget_ms)
    streams = workload.streams
    train = np.asarray(train_idx, dtype=np.int64)
    test = np.asarray(test_idx, dtype=np.int64)
    ms = model_ms(workload)
    models = workload.models
    pairs = PairAgreement(workload)

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
    chosen = choose_options(options, budget_ms - feature_ms)
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
    return method_result(
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
        run_rate=run_rate,
        predicted=train_acc,
    )
