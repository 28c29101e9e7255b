"""Beyond MLink on streams: temporal links, and links combined with frame filtering.

MLink synthesizes an inactive model's output from the *current* outputs of the active models.
On a video stream consecutive outputs are highly redundant -- simply reusing a model's last
output is often right -- and plain links ignore that. This module measures four ways of spending
a per-frame compute budget, all planned on the training part (the head of each stream) and
measured on the rest, with the same accuracy (mean agreement with the real outputs, 1 where a
model ran) and the same cost accounting (models + links + change signals, per frame):

- :func:`reuse_schedule` -- frame filtering alone, periodic: model ``m`` runs every ``k_m``
  frames of its stream and its last output is reused in between (``k_m = 1``: always runs; or it
  never runs and outputs its prior). No links.
- :func:`change_filter` -- frame filtering alone, change-triggered: an active set runs every
  frame; another model re-runs when the change of one active model's output since that model's
  last run exceeds a threshold (or after ``max_lag + 1`` frames), else reuses. No links.
- :func:`temporal_mlink` -- *temporal links*: the active set runs every frame; each inactive
  target ``t`` is refreshed every ``k_t`` frames and synthesized in between by a temporal link
  whose input is ``t``'s last real output, one active source's current output and its change
  since ``t``'s refresh, and the frames elapsed (or reuses, or is synthesized by MLink's plain
  links and never refreshed, or outputs its prior -- whatever validates best per target).
- :func:`mlink_with_filtering` -- everything of :func:`temporal_mlink`, plus change-triggered
  refreshes where the trigger is either the raw change of an active model's output or the
  change a temporal link *predicts* for the target (the link says when its guess went stale).

:func:`plain_mlink` is the paper's method (exact selection over plain links) on the same split,
for comparison.

How choices are made. A temporal link is trained on pairs ``(then, now)`` of training frames of
one stream, ``1 <= now - then <= max_lag``, with the residual ``enc(t, now) - enc(t, then)`` as
the target for regression outputs (counts, boxes, linear), or ``t``'s output for class outputs.
All links into one target are one batched network (:func:`~mlink.linkstore.training.
train_stacked`). Neighbouring frames are near-duplicates, so a random validation split would
flatter any memoriser: temporal links are cross-fitted over ``folds`` *contiguous time blocks*
of each stream's training part, and every pair is scored by the model that did not train on its
block. Plain links are scored the same way (:class:`_BlockedOracle`). Those out-of-fold scores
give, per target, the accuracy of every option (periodic with period ``k`` and a synthesis mode;
triggered with a signal and a threshold, simulated in stream order; plain links; the prior), and
an exact multiple-choice knapsack per candidate active set picks the options with the best
training accuracy whose expected cost fits the budget (every active set that fits is tried).
Expected agreement ``d`` frames after a refresh is estimated per stream, made non-increasing in
``d`` and averaged over streams by length. At test time the links are the bag of the fold models,
and a regression link's output snaps back to the refresh's output unless it predicts a real change
(:func:`_snap`).

Budget. Periodic runs happen at ``k-1, 2k-1, ...`` frames after the last training frame of the
stream (all models ran during the training part, so that output is real), so a target with
period ``k`` runs at most ``n/k`` times in ``n`` frames. Triggered runs are rate-limited by a
token bucket per target (refilled at the planned run rate, plus a share of whatever budget the
plan left unused; it starts empty), so the per-frame budget also holds on the test frames
whatever the test's dynamics. Link and change-signal costs are measured per call, on one row.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from mlink.linkstore.baselines import MethodResult
from mlink.linkstore.experiment import TrainedWorkload, Workload, measure_plan, selection_problem
from mlink.linkstore.fast import activate_np
from mlink.linkstore.links import activate
from mlink.linkstore.linkset import AgreementOracle, LinkSet, decode_rows, prior_row
from mlink.linkstore.metrics import agreement
from mlink.linkstore.selection import select
from mlink.linkstore.training import (
    StackedVecLinks,
    TrainConfig,
    split_indices,
    torch_threads,
    train_stacked,
)
from mlink.topics.specs import BoxesSpec, SequenceSpec, VectorSpec, encode_batch

__all__ = [
    "MethodResult",
    "Policy",
    "TemporalConfig",
    "TemporalLinks",
    "change_filter",
    "mlink_with_filtering",
    "plain_mlink",
    "reuse_schedule",
    "temporal_mlink",
]

SELF = "<self>"  # the temporal link that sees only the target's own last output
REUSE = "<reuse>"  # no link: the target's last real output, as is


@dataclass(frozen=True, slots=True)
class TemporalConfig:
    """Settings of the temporal methods.

    ``links`` trains the plain links (the paper's recipe, as :func:`~mlink.linkstore.experiment.
    train_workload`); ``temporal_links`` trains the temporal links, once per fold.
    """

    links: TrainConfig = field(default_factory=TrainConfig)
    temporal_links: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=50))
    max_lag: int = 7  # temporal links see 1..max_lag frames since the refresh; k <= max_lag + 1
    reuse_max_period: int = 16  # longest period k of periodic reuse
    folds: int = 3  # contiguous time blocks per stream for cross-fitting temporal links
    quantiles: tuple[float, ...] = (0.3, 0.5, 0.7, 0.8, 0.9, 0.95)  # trigger thresholds
    bucket: float = 3.0  # most runs a target may save up for a burst of triggers
    max_subsets: int = 4096  # try every active set that fits up to this many, else greedy
    grid: int = 2000  # knapsack resolution in cost units (plans never exceed the budget)

    def __post_init__(self) -> None:
        if self.max_lag < 1 or self.reuse_max_period < 1 or self.folds < 2:
            raise ValueError("TemporalConfig: max_lag, reuse_max_period >= 1 and folds >= 2")


@dataclass(frozen=True, slots=True)
class Policy:
    """What one inactive model does between its real runs.

    ``kind``: ``"prior"`` (never runs, outputs its prior), ``"link"`` (never runs, MLink's plain
    links from the active set), ``"periodic"`` (runs every ``period`` frames), ``"trigger"``
    (runs when ``signal`` exceeds ``threshold`` or after ``period`` frames, at most ``rate`` runs
    per frame on average). Between runs ``mode`` synthesizes: :data:`REUSE`, :data:`SELF` or the
    name of the active source of a temporal link. ``signal`` is ``("raw", model)`` -- the change
    of an active model's output since the target's last run -- or ``("link", source)`` -- the
    change the temporal link from ``source`` predicts for the target.
    """

    kind: str
    period: int = 0
    mode: str = REUSE
    signal: tuple[str, str] | None = None
    threshold: float = 0.0
    rate: float = 0.0
    cost: float = 0.0  # expected ms per frame (model runs + links + signal)
    estimate: float = 0.0  # training (out-of-fold) agreement
    requires: frozenset[str] = frozenset()

    def describe(self) -> str:
        how = "reuse" if self.mode == REUSE else f"temporal link from {self.mode}"
        if self.kind == "prior":
            return "prior"
        if self.kind == "link":
            return "plain links"
        if self.kind == "periodic":
            return "always runs" if self.period == 1 else f"every {self.period}, {how}"
        kind, src = self.signal or ("", "")
        sig = f"change of {src}" if kind == "raw" else f"change predicted by link from {src}"
        return f"on {sig} > {self.threshold:.3g} (rate {self.rate:.2f}), {how}"


# ------------------------------------------------------------------------------ stream geometry


def _positions(streams: Sequence[str]) -> np.ndarray:
    """Each frame's position within its own stream."""
    seen: dict[str, int] = {}
    pos = np.empty(len(streams), dtype=np.int64)
    for i, s in enumerate(streams):
        pos[i] = seen.get(s, 0)
        seen[s] = pos[i] + 1
    return pos


def _segments(streams: Sequence[str], pos: np.ndarray, idx: Iterable[int]) -> list[np.ndarray]:
    """``idx`` cut into runs of consecutive frames of one stream, in time order."""
    by_stream: dict[str, list[int]] = {}
    for i in sorted(int(i) for i in idx):
        by_stream.setdefault(streams[i], []).append(i)
    out = []
    for frames in by_stream.values():
        frames.sort(key=lambda i: pos[i])
        start = 0
        for j in range(1, len(frames) + 1):
            if j == len(frames) or pos[frames[j]] != pos[frames[j - 1]] + 1:
                out.append(np.array(frames[start:j], dtype=np.int64))
                start = j
    return out


def _pairs(segments: Sequence[np.ndarray], max_lag: int) -> tuple[np.ndarray, np.ndarray]:
    """All ``(then, now)`` frame pairs within a segment, ``1 <= lag <= max_lag``, and the lags."""
    pairs, lags = [], []
    for seg in segments:
        for d in range(1, min(max_lag, len(seg) - 1) + 1):
            pairs.append(np.stack([seg[:-d], seg[d:]], axis=1))
            lags.append(np.full(len(seg) - d, d))
    if not pairs:
        return np.zeros((0, 2), dtype=np.int64), np.zeros(0, dtype=np.int64)
    return np.concatenate(pairs), np.concatenate(lags)


def _stack(spec, outputs: Sequence[Any]) -> Any:
    if isinstance(spec, VectorSpec):
        return np.asarray(outputs, dtype=np.float32).reshape(len(outputs), spec.size)
    return list(outputs)


def _vec(spec) -> bool:
    return not isinstance(spec, SequenceSpec)


def _distance(delta: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Root-mean-square standardised change per row."""
    return np.sqrt(np.mean(np.square(delta / scale), axis=-1))


# ------------------------------------------------------------------------------ temporal links


def _snap(spec, base: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """Keep the refresh's output exactly unless the link predicts a real change.

    A regression residual is never exactly zero, and a slightly moved box or value scores less
    than the exact old one when nothing changed. So boxes are kept as they were unless the
    predicted count differs, and values unless they moved by at least half their tolerance.
    """
    if isinstance(spec, BoxesSpec):
        same = np.rint(np.clip(pred[..., 0], 0, None)) == base[..., 0]
        return np.where(same[..., None], np.broadcast_to(base, pred.shape), pred)
    if isinstance(spec, VectorSpec) and spec.task in ("linear", "count"):
        tol = 0.5 if spec.task == "count" else spec.tolerance / 2
        return np.where(np.abs(pred - base) < tol, np.broadcast_to(base, pred.shape), pred)
    return pred


class _Bag:
    """The fold models of one target's stacked temporal links, as numpy arrays."""

    def __init__(self, models: Sequence[StackedVecLinks], task: str) -> None:
        self.task = task
        self.params = [
            tuple(
                t.detach().numpy().astype(np.float32)
                for t in (m.mean[:, 0], m.std[:, 0], m.w1, m.b1[:, 0], m.w2, m.b2[:, 0])
            )
            for m in models
        ]

    def __call__(self, link: int, x: np.ndarray) -> np.ndarray:
        """Activated outputs of link ``link`` on rows ``x`` (its own width), averaged over folds."""
        out = None
        for mean, std, w1, b1, w2, b2 in self.params:
            d = x.shape[1]
            h = (x - mean[link, :d]) / std[link, :d] @ w1[link, :d] + b1[link]
            y = activate_np(self.task, np.maximum(h, 0.0) @ w2[link] + b2[link])
            out = y if out is None else out + y
        return out / len(self.params)


class TemporalLinks:
    """Temporal links into every vector/boxes target, cross-fitted on the training part.

    For target ``t`` the links are ``SELF`` (input: ``t``'s output at the refresh and the lag)
    and one per other model ``s`` (input: ``s``'s output now, its change since the refresh, ``t``'s
    output at the refresh and the lag). ``oof[t]`` holds every training pair's out-of-fold
    prediction per link, ``oof_agree[t]`` its agreement with the real output.
    """

    def __init__(self, ctx: _Context) -> None:
        self.ctx = ctx
        cfg = ctx.config
        self.max_lag = cfg.max_lag
        self.pairs, self.lag = ctx.tpairs, ctx.tlag
        self.fold = ctx.fold[self.pairs[:, 1]]
        self.sources: dict[str, list[str]] = {}
        self.bags: dict[str, _Bag] = {}
        self.oof: dict[str, np.ndarray] = {}
        self.oof_agree: dict[str, np.ndarray] = {}
        self.link_ms: dict[str, float] = {}
        self.residual: dict[str, bool] = {}
        with torch_threads(1):
            for t in ctx.models:
                if _vec(ctx.specs[t]) and len(self.pairs) >= 8:
                    self._train_target(t)

    def _inputs(self, t: str, source: str, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        enc, pos = self.ctx.enc, self.ctx.pos
        lag = (np.minimum(pos[b] - pos[a], self.max_lag) / self.max_lag)[:, None]
        parts = [enc[t][a], lag.astype(np.float32)]
        if source != SELF:
            parts = [enc[source][b], enc[source][b] - enc[source][a], *parts]
        return np.concatenate(parts, axis=1).astype(np.float32)

    def _train_target(self, t: str) -> None:
        ctx = self.ctx
        spec = ctx.specs[t]
        task = spec.link_task
        residual = task not in ("softmax", "sigmoid")
        task = "linear" if residual else task
        sources = [SELF] + [s for s in ctx.models if s != t and _vec(ctx.specs[s])]
        a, b = self.pairs[:, 0], self.pairs[:, 1]
        inputs = [self._inputs(t, s, a, b) for s in sources]
        base = ctx.enc[t][a] if residual else 0.0
        y = ctx.enc[t][b] - base if residual else ctx.enc[t][b]
        oof = np.zeros((len(sources), len(a), spec.link_dim), dtype=np.float32)
        models = []
        link_cfg = ctx.config.temporal_links
        x_all = [torch.from_numpy(x) for x in inputs]
        for f in range(ctx.config.folds):
            hold = np.flatnonzero(self.fold == f)
            fit = np.flatnonzero(self.fold != f)
            if len(fit) < 4:
                continue
            tr, va = split_indices(len(fit), link_cfg.val_fraction, link_cfg.seed + f)
            model, _ = train_stacked(inputs, y, task, fit[tr], fit[va], link_cfg)
            models.append(model)
            if len(hold):
                with torch.no_grad():
                    for i, x in enumerate(x_all):
                        oof[i, hold] = activate(task, model.extract(i)(x[hold])).numpy()
        if not models:
            return
        if residual:
            oof = _snap(spec, ctx.enc[t][a][None], oof + ctx.enc[t][a][None])
        self.sources[t] = sources
        self.bags[t] = _Bag(models, task)
        self.residual[t] = residual
        self.oof[t] = oof
        truth = _stack(spec, [ctx.wl.outputs[t][i] for i in b])
        self.oof_agree[t] = np.stack([agreement(spec, decode_rows(spec, p), truth) for p in oof])
        self.link_ms[t] = self._time(t, sources[-1] if len(sources) > 1 else SELF)

    def _time(self, t: str, source: str, repeats: int = 50) -> float:
        a = self.pairs[:1, 0]
        b = self.pairs[:1, 1]
        self.predict(t, source, a, b)
        start = time.perf_counter()
        for _ in range(repeats):
            self.predict(t, source, a, b)
        return (time.perf_counter() - start) * 1000 / repeats

    def predict(self, t: str, source: str, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Encoded predictions of ``t`` on frames ``b`` from its refresh on frames ``a``."""
        if len(a) == 0:
            return np.zeros((0, self.ctx.specs[t].link_dim), dtype=np.float32)
        link = self.sources[t].index(source)
        out = self.bags[t](link, self._inputs(t, source, a, b))
        if not self.residual[t]:
            return out
        base = self.ctx.enc[t][a]
        return _snap(self.ctx.specs[t], base, out + base)

    def has(self, t: str) -> bool:
        return t in self.bags


class _BlockedOracle:
    """Plain links' agreement for any active set, estimated like the temporal links: every
    training frame is predicted by links trained on the other time blocks of its stream (same
    recipe as the plain links, combined by the plain link set's ensemble).

    The plain link set's own validation split is a random 20% of the training frames, whose
    neighbours (near-duplicates on video) it trained on; this estimate does not flatter a link
    that memorised them. Targets it cannot handle (sequences) fall back to that validation.
    """

    def __init__(self, ctx: _Context) -> None:
        self.ctx = ctx
        ls = ctx.linkset
        self.sources: dict[str, list[str]] = {}
        self.preds: dict[str, np.ndarray] = {}
        self.truth: dict[str, Any] = {}
        self._cache: dict[tuple[frozenset[str], str], float] = {}
        frames = ctx.train
        fold = ctx.fold[frames]
        cfg = ctx.config.links
        with torch_threads(1):
            for t in ctx.models:
                spec = ctx.specs[t]
                sources = ls.sources_of(t)
                if (
                    not sources
                    or t not in ls.ensembles
                    or not all(_vec(ctx.specs[m]) for m in [t, *sources])
                ):
                    continue
                inputs = [ctx.enc[m][frames] for m in sources]
                x_all = [torch.from_numpy(x) for x in inputs]
                preds = np.zeros((len(sources), len(frames), spec.link_dim), dtype=np.float32)
                ok = True
                for f in range(ctx.config.folds):
                    hold, fit = np.flatnonzero(fold == f), np.flatnonzero(fold != f)
                    if len(hold) == 0:
                        continue
                    if len(fit) < 4:
                        ok = False
                        break
                    tr, va = split_indices(len(fit), cfg.val_fraction, cfg.seed + f)
                    model, _ = train_stacked(
                        inputs, ctx.enc[t][frames], spec.link_task, fit[tr], fit[va], cfg
                    )
                    with torch.no_grad():
                        for i, x in enumerate(x_all):
                            link = model.extract(i)
                            preds[i, hold] = activate(spec.link_task, link(x[hold])).numpy()
                if ok:
                    self.sources[t] = sources
                    self.preds[t] = preds
                    self.truth[t] = _stack(spec, [ctx.wl.outputs[t][i] for i in frames])

    def __call__(self, active: frozenset[str], target: str) -> float:
        if target in active:
            return 1.0
        if target not in self.preds:
            return self.ctx.val_oracle(active, target)
        key = (frozenset(active), target)
        if key not in self._cache:
            spec = self.ctx.specs[target]
            preds = self.preds[target]
            mask = np.tile(
                np.array([s in active for s in self.sources[target]]), (preds.shape[1], 1)
            )
            rows = self.ctx.linkset.combine(target, preds, mask)
            score = agreement(spec, decode_rows(spec, rows), self.truth[target])
            self._cache[key] = float(score.mean())
        return self._cache[key]


# ------------------------------------------------------------------------------ the context


class _Context:
    """Everything learned from one workload's training part, shared by all methods and budgets."""

    def __init__(self, workload: Workload, train_idx: np.ndarray, config: TemporalConfig):
        self.wl = workload
        self.config = config
        self.models = workload.models
        self.specs = workload.specs
        self.ms = {m: float(workload.costs[m].get("ms", 0.0)) for m in self.models}
        self.full = sum(self.ms.values())
        self.train = np.sort(np.asarray(train_idx, dtype=np.int64))
        self.pos = _positions(workload.streams)
        self.enc = {m: encode_batch(s, workload.outputs[m]) for m, s in self.specs.items()}
        self.scale = {
            m: np.maximum(self.enc[m][self.train].std(axis=0), 1e-2)
            for m in self.models
            if _vec(self.specs[m])
        }
        self.segments = _segments(workload.streams, self.pos, self.train)
        self.seg_of = np.full(workload.n_frames, -1, dtype=np.int64)
        for k, seg in enumerate(self.segments):
            self.seg_of[seg] = k
        self.fold = np.full(workload.n_frames, -1, dtype=np.int64)
        for seg in self.segments:
            self.fold[seg] = np.minimum(
                np.arange(len(seg)) * config.folds // len(seg), config.folds - 1
            )
        self.pairs, self.pair_lag = _pairs(self.segments, config.reuse_max_period - 1)
        # the pairs temporal links and triggers work on: lag <= max_lag
        self.tkeep = self.pair_lag <= config.max_lag
        self.tpairs, self.tlag = self.pairs[self.tkeep], self.pair_lag[self.tkeep]
        self.trow = {(int(a), int(b)): r for r, (a, b) in enumerate(self.tpairs.tolist())}
        self._reuse: dict[str, np.ndarray] = {}
        priors = {
            m: decode_rows(s, prior_row(s, self.enc[m][self.train])[None])[0]
            for m, s in self.specs.items()
        }
        self.priors = priors
        self.prior_train = {m: self._prior_agreement(m, self.train).mean() for m in self.models}
        self._temporal: TemporalLinks | None = None
        self._linkset: LinkSet | None = None
        self._blocked: _BlockedOracle | None = None
        self._options: dict[tuple[str, str], list[Policy]] = {}
        self._test_oracles: dict[bytes, AgreementOracle] = {}
        self.seconds: dict[str, float] = {}

    # -- no-link pieces
    def _prior_agreement(self, m: str, idx: np.ndarray) -> np.ndarray:
        spec = self.specs[m]
        truth = _stack(spec, [self.wl.outputs[m][i] for i in idx])
        return agreement(spec, _stack(spec, [self.priors[m]] * len(idx)), truth)

    def reuse_agree(self, m: str, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        spec, outs = self.specs[m], self.wl.outputs[m]
        if len(a) == 0:
            return np.zeros(0)
        return agreement(
            spec, _stack(spec, [outs[i] for i in a]), _stack(spec, [outs[i] for i in b])
        )

    def reuse_pairs(self, m: str) -> np.ndarray:
        """Agreement of reusing ``m``'s output, for every training pair (lag <= reuse period)."""
        if m not in self._reuse:
            self._reuse[m] = self.reuse_agree(m, self.pairs[:, 0], self.pairs[:, 1])
        return self._reuse[m]

    def lag_curve(self, values: np.ndarray, pairs: np.ndarray, max_lag: int) -> np.ndarray:
        """Expected agreement of an output synthesized ``d`` frames after a refresh, ``d = 1 ..
        max_lag`` (index ``d``), from per-pair ``values`` over training ``pairs``.

        Per stream segment: the mean per lag, made non-increasing (staleness does not help on
        average) and carried forward past the segment's longest lag; then averaged over segments
        weighted by their length (a stream's share of the frames). Plain pooling would let the
        longest training heads alone decide the long lags.
        """
        lags = self.pos[pairs[:, 1]] - self.pos[pairs[:, 0]]
        seg = self.seg_of[pairs[:, 1]]
        total, weight = np.zeros(max_lag + 1), 0.0
        for k, frames in enumerate(self.segments):
            sel = seg == k
            if not sel.any():
                continue
            curve = np.full(max_lag + 1, np.nan)
            for d in range(1, max_lag + 1):
                here = sel & (lags == d)
                if here.any():
                    curve[d] = values[here].mean()
                elif d > 1:
                    curve[d] = curve[d - 1]
            if np.isnan(curve[1]):
                continue
            total += np.minimum.accumulate(np.nan_to_num(curve, nan=1.0)) * len(frames)
            weight += len(frames)
        out = total / weight if weight else np.full(max_lag + 1, np.nan)
        out[0] = 1.0
        return out

    # -- learned pieces, trained on first use
    @property
    def temporal(self) -> TemporalLinks:
        if self._temporal is None:
            start = time.perf_counter()
            self._temporal = TemporalLinks(self)
            self.seconds["temporal links"] = time.perf_counter() - start
        return self._temporal

    @property
    def linkset(self) -> LinkSet:
        if self._linkset is None:
            start = time.perf_counter()
            outputs = self.wl.subset(self.train)
            ls = LinkSet.train(self.specs, outputs, self.config.links, progress=False)
            self.val_oracle = ls.validation_oracle(outputs)
            self.link_costs = ls.measure_link_costs()
            self._linkset = ls
            self.seconds["plain links"] = time.perf_counter() - start
        return self._linkset

    @property
    def blocked_oracle(self) -> _BlockedOracle:
        if self._blocked is None:
            start = time.perf_counter()
            self._blocked = _BlockedOracle(self)
            self.seconds["plain links, blocked cross-fit"] = time.perf_counter() - start
        return self._blocked

    def test_oracle(self, test: np.ndarray) -> AgreementOracle:
        key = test.tobytes()
        if key not in self._test_oracles:
            self._test_oracles[key] = self.linkset.agreement_oracle(self.wl.subset(test))
        return self._test_oracles[key]

    def plain_link_cost(self, active: frozenset[str], t: str) -> float:
        self.linkset  # noqa: B018 -- trains on first use
        return sum(self.link_costs.get((s, t), {}).get("ms", 0.0) for s in active)

    # -- options, independent of the active set (``requires`` says which models must run)
    def options(self, t: str, family: str) -> list[Policy]:
        key = (t, family)
        if key not in self._options:
            self._options[key] = getattr(self, f"_options_{family}")(t)
        return self._options[key]

    def _options_reuse(self, t: str) -> list[Policy]:
        """Periodic reuse, k = 1 (always runs) .. reuse_max_period."""
        curve = self.lag_curve(self.reuse_pairs(t), self.pairs, self.config.reuse_max_period)
        out = []
        for k in range(1, self.config.reuse_max_period + 1):
            if k > 1 and np.isnan(curve[k - 1]):
                break
            est = (1.0 + np.nansum(curve[1:k])) / k
            out.append(Policy("periodic", k, REUSE, cost=self.ms[t] / k, estimate=est))
        return out

    def _options_temporal(self, t: str) -> list[Policy]:
        """Periodic refresh with a temporal link in between (out-of-fold accuracy)."""
        tl = self.temporal
        if not tl.has(t):
            return []
        out = []
        for i, src in enumerate(tl.sources[t]):
            curve = self.lag_curve(tl.oof_agree[t][i], tl.pairs, tl.max_lag)
            req = frozenset() if src == SELF else frozenset({src})
            for k in range(2, tl.max_lag + 2):
                if np.isnan(curve[k - 1]):
                    break
                est = (1.0 + np.nansum(curve[1:k])) / k
                cost = self.ms[t] / k + (k - 1) / k * tl.link_ms[t]
                out.append(Policy("periodic", k, src, cost=cost, estimate=est, requires=req))
        return out

    def _signal_values(self, t: str, signal: tuple[str, str]) -> np.ndarray:
        a, b = self.tpairs[:, 0], self.tpairs[:, 1]
        kind, src = signal
        if kind == "raw":
            return _distance(self.enc[src][b] - self.enc[src][a], self.scale[src])
        tl = self.temporal
        pred = tl.oof[t][tl.sources[t].index(src)]
        return _distance(pred - self.enc[t][a], self.scale[t])

    def _simulate(self, sigma: np.ndarray, theta: float, cap: int) -> tuple[int, int, np.ndarray]:
        """Trigger policy on the training segments, in stream order: runs, frames, and the
        training pairs (rows of ``tpairs``) whose ``now`` frame was synthesized."""
        row = self.trow
        runs = frames = 0
        synth = []
        for seg in self.segments:
            last = 0
            for j in range(1, len(seg)):
                frames += 1
                if j - last >= cap:
                    runs, last = runs + 1, j
                    continue
                r = row[(int(seg[last]), int(seg[j]))]
                if sigma[r] > theta:
                    runs, last = runs + 1, j
                else:
                    synth.append(r)
        return runs, frames, np.array(synth, dtype=np.int64)

    def _options_trigger_raw(self, t: str) -> list[Policy]:
        """Change-triggered refresh on an active model's raw output change; reuse in between."""
        return self._trigger_options(t, links=False)

    def _options_trigger_links(self, t: str) -> list[Policy]:
        """Change-triggered refresh (raw or link-predicted change), reuse or a temporal link."""
        return self._trigger_options(t, links=True)

    def _trigger_options(self, t: str, links: bool) -> list[Policy]:
        if not _vec(self.specs[t]) or len(self.tpairs) == 0:
            return []
        tl = self.temporal if links else None
        if links and not tl.has(t):
            return []
        cap = self.config.max_lag + 1
        agree = {REUSE: self.reuse_pairs(t)[self.tkeep]}
        if links:
            agree.update({s: tl.oof_agree[t][i] for i, s in enumerate(tl.sources[t])})
        signals = [("raw", s) for s in self.models if s != t and _vec(self.specs[s])]
        if links:
            signals += [("link", s) for s in tl.sources[t]]
        raw_ms = self.signal_ms
        out = []
        for signal in signals:
            kind, src = signal
            sigma = self._signal_values(t, signal)
            thetas = np.unique(np.quantile(sigma, self.config.quantiles))
            modes = [REUSE]
            if links:
                modes += [SELF] + ([src] if src != SELF and src in agree else [])
                modes = list(dict.fromkeys(modes))
            sig_req = frozenset() if src == SELF else frozenset({src})
            sig_ms = raw_ms if kind == "raw" else tl.link_ms[t]
            link_ms = tl.link_ms[t] if links else 0.0
            for theta in thetas.tolist():
                runs, frames, synth = self._simulate(sigma, theta, cap)
                if frames == 0:
                    continue
                rate = runs / frames
                for mode in modes:
                    est = (runs + agree[mode][synth].sum()) / frames
                    same = kind == "link" and mode == src
                    mode_ms = 0.0 if mode == REUSE or same else link_ms
                    mode_req = frozenset({mode}) - {REUSE, SELF}
                    req = sig_req | mode_req
                    cost = self.ms[t] * rate + sig_ms + mode_ms
                    out.append(Policy("trigger", cap, mode, signal, theta, rate, cost, est, req))
        return out

    @property
    def signal_ms(self) -> float:
        """Measured cost of one raw change signal (a standardised distance of two rows)."""
        if not hasattr(self, "_signal_ms"):
            m = max(self.scale, key=lambda m: self.enc[m].shape[1])
            x, y, s = self.enc[m][0], self.enc[m][-1], self.scale[m]
            start = time.perf_counter()
            for _ in range(200):
                _distance(x - y, s)
            self._signal_ms = (time.perf_counter() - start) * 1000 / 200
        return self._signal_ms


_CONTEXTS: dict[tuple, tuple[Workload, _Context]] = {}


def _context(workload: Workload, train_idx: Sequence[int], config: TemporalConfig) -> _Context:
    """One context per (workload, training split, config), kept for the next budget point."""
    train = np.sort(np.asarray(train_idx, dtype=np.int64))
    key = (id(workload), train.tobytes(), config)
    hit = _CONTEXTS.get(key)
    if hit is not None and hit[0] is workload:
        return hit[1]
    ctx = _Context(workload, train, config)
    if len(_CONTEXTS) >= 4:
        _CONTEXTS.pop(next(iter(_CONTEXTS)))
    _CONTEXTS[key] = (workload, ctx)
    return ctx


# ------------------------------------------------------------------------------ planning


def _pareto(options: list[Policy]) -> list[Policy]:
    """Options no other option beats on both cost and accuracy, cheapest first."""
    best: list[Policy] = []
    for p in sorted(options, key=lambda p: (p.cost, -p.estimate)):
        if not best or p.estimate > best[-1].estimate + 1e-12:
            best.append(p)
    return best


def _knapsack(groups: list[list[Policy]], capacity: float, grid: int) -> list[int] | None:
    """One option per group, most total estimate with total cost <= capacity; None when nothing
    fits. A DP over costs in units of ``capacity / grid``: first with costs rounded down (which
    admits plans that fill the budget exactly), kept if its real cost fits, else with costs
    rounded up (always fits)."""
    if capacity < 0:
        return None
    for rounding in (math.floor, math.ceil):
        chosen = _knapsack_dp(groups, capacity, grid, rounding)
        if chosen is None:
            return None
        cost = sum(g[o].cost for g, o in zip(groups, chosen, strict=True))
        if cost <= capacity * (1 + 1e-12) + 1e-12:
            return chosen
    return None


def _knapsack_dp(
    groups: list[list[Policy]], capacity: float, grid: int, rounding
) -> list[int] | None:
    unit = capacity / grid if capacity > 0 else 1.0
    size = grid + 1 if capacity > 0 else 1
    dp = np.zeros(size)
    picks, weights = [], []
    for group in groups:
        w = [max(0, rounding(p.cost / unit - 1e-9)) for p in group]
        new = np.full(size, -np.inf)
        pick = np.full(size, -1, dtype=np.int64)
        for o, (wo, p) in enumerate(zip(w, group, strict=True)):
            if wo >= size:
                continue
            cand = np.full(size, -np.inf)
            cand[wo:] = dp[: size - wo] + p.estimate
            better = cand > new + 1e-12
            new[better] = cand[better]
            pick[better] = o
        dp = new
        picks.append(pick)
        weights.append(w)
    if not np.isfinite(dp[-1]):
        return None
    chosen, c = [], size - 1
    for pick, w in zip(reversed(picks), reversed(weights), strict=True):
        o = int(pick[c])
        chosen.append(o)
        c -= w[o]
    return chosen[::-1]


@dataclass(slots=True)
class _Plan:
    active: frozenset[str]
    policies: dict[str, Policy]
    estimate: float
    cost: float


def _plan(ctx: _Context, budget: float, families: Sequence[str], plain: bool) -> _Plan:
    """The best active set and per-target policies on the training part within ``budget``."""
    models = ctx.models
    # per target: the Pareto front of the options needing each set of running models
    fronts: dict[str, dict[frozenset[str], list[Policy]]] = {}
    for t in models:
        by_req: dict[frozenset[str], list[Policy]] = {frozenset(): [_prior_policy(ctx, t)]}
        for f in families:
            for p in ctx.options(t, f):
                if p.period != 1:  # "always runs" is the active set's job here
                    by_req.setdefault(p.requires, []).append(p)
        fronts[t] = {req: _pareto(opts) for req, opts in by_req.items()}
    if plain:
        ctx.blocked_oracle  # noqa: B018 -- trains on first use

    def plan_for(active: frozenset[str]) -> _Plan | None:
        room = budget - sum(ctx.ms[m] for m in active)
        if room < 0:
            return None
        targets = [t for t in models if t not in active]
        groups = []
        for t in targets:
            opts = [p for req, front in fronts[t].items() if req <= active for p in front]
            if plain and active:
                est = ctx.blocked_oracle(active, t)
                opts.append(Policy("link", cost=ctx.plain_link_cost(active, t), estimate=est))
            groups.append(_pareto(opts))
        chosen = _knapsack(groups, room, ctx.config.grid)
        if chosen is None:
            return None
        policies = {t: g[o] for t, g, o in zip(targets, groups, chosen, strict=True)}
        est = (len(active) + sum(p.estimate for p in policies.values())) / len(models)
        cost = budget - room + sum(p.cost for p in policies.values())
        return _Plan(active, policies, est, cost)

    def better(a: _Plan | None, b: _Plan | None) -> bool:
        if b is None:
            return False
        if a is None:
            return True
        if b.estimate > a.estimate + 1e-9:
            return True
        return b.estimate > a.estimate - 1e-9 and b.cost < a.cost - 1e-9

    subsets = _subsets(models, ctx.ms, budget, ctx.config.max_subsets)
    best: _Plan | None = None
    if subsets is not None:
        for active in subsets:
            cand = plan_for(active)
            if better(best, cand):
                best = cand
    else:  # too many: greedy forward selection
        best = plan_for(frozenset())
        improved = True
        while improved:
            improved = False
            for m in models:
                if best is None or m in best.active:
                    continue
                cand = plan_for(best.active | {m})
                if better(best, cand):
                    best, improved = cand, True
    if best is None:
        raise ValueError(f"no plan fits a budget of {budget:g} ms/frame")
    return best


def _subsets(
    models: Sequence[str], ms: Mapping[str, float], budget: float, limit: int
) -> list[frozenset[str]] | None:
    """Every set of models whose own cost fits the budget, or None if there are over ``limit``."""
    order = sorted(models, key=lambda m: ms[m])
    out: list[frozenset[str]] = []

    def visit(k: int, chosen: list[str], cost: float) -> bool:
        out.append(frozenset(chosen))
        if len(out) > limit:
            return False
        for j in range(k, len(order)):
            m = order[j]
            if cost + ms[m] > budget + 1e-9:
                break  # sorted by cost: no later model fits either
            if not visit(j + 1, [*chosen, m], cost + ms[m]):
                return False
        return True

    return out if visit(0, [], 0.0) else None


# ------------------------------------------------------------------------------ evaluation


def _test_segments(ctx: _Context, test: np.ndarray) -> list[tuple[int, np.ndarray]]:
    """Test frames in runs of one stream, each with its seed: the stream's previous frame if it
    is a training frame (every model ran there), else -1 (the run starts with a refresh)."""
    train = set(ctx.train.tolist())
    streams = ctx.wl.streams
    prev = {(streams[i], int(ctx.pos[i])): i for i in train}
    out = []
    for seg in _segments(streams, ctx.pos, test):
        first = int(seg[0])
        seed = prev.get((streams[first], int(ctx.pos[first]) - 1), -1)
        out.append((seed, seg))
    return out


def _run_policy(
    ctx: _Context,
    t: str,
    policy: Policy,
    active: frozenset[str],
    test: np.ndarray,
    segments: list[tuple[int, np.ndarray]],
) -> tuple[np.ndarray, float, dict[str, Any]]:
    """Per-frame agreement of ``t`` on ``test`` (test order), its total ms, and what it did."""
    col = {int(i): c for c, i in enumerate(test.tolist())}
    score = np.ones(len(test))
    if policy.kind == "prior":
        return ctx._prior_agreement(t, test), 0.0, {"runs": 0}
    if policy.kind == "link":
        per = ctx.test_oracle(test).per_sample(active, t)
        return per, ctx.plain_link_cost(active, t) * len(test), {"runs": 0}
    tl = ctx._temporal
    link_ms = tl.link_ms.get(t, 0.0) if tl is not None else 0.0
    then, now = [], []  # synthesized frames and their refresh frames
    runs = 0
    total = 0.0
    deferred = 0
    if policy.kind == "periodic":
        k = policy.period
        for seed, seg in segments:
            last = seed
            for j, i in enumerate(seg.tolist()):
                due = (j + 1) % k == 0 if seed >= 0 else j % k == 0
                if due:
                    runs, last = runs + 1, i
                else:
                    then.append(last)
                    now.append(i)
        total = runs * ctx.ms[t] + (0.0 if policy.mode == REUSE else len(now) * link_ms)
    else:
        kind, src = policy.signal
        cap = policy.period
        sig_ms = ctx.signal_ms if kind == "raw" else link_ms
        same = kind == "link" and policy.mode == src
        for seed, seg in segments:
            tokens = 0.0
            last = seed
            for i in seg.tolist():
                tokens = min(tokens + policy.rate, max(ctx.config.bucket, 1.0))
                if last < 0:  # unseeded run of frames: refresh first
                    runs, last = runs + 1, i
                    continue
                total += sig_ms
                lag = int(ctx.pos[i] - ctx.pos[last])
                if kind == "raw":
                    sigma = _distance(ctx.enc[src][i] - ctx.enc[src][last], ctx.scale[src])
                else:
                    pred = tl.predict(t, src, np.array([last]), np.array([i]))[0]
                    sigma = _distance(pred - ctx.enc[t][last], ctx.scale[t])
                want = lag >= cap or sigma > policy.threshold
                if want and tokens >= 1.0:
                    tokens -= 1.0
                    runs, last = runs + 1, i
                    continue
                deferred += int(want)
                then.append(last)
                now.append(i)
                if policy.mode != REUSE and not same:
                    total += link_ms
        total += runs * ctx.ms[t]
    a, b = np.array(then, dtype=np.int64), np.array(now, dtype=np.int64)
    if len(b):
        if policy.mode == REUSE:
            agree = ctx.reuse_agree(t, a, b)
        else:
            spec = ctx.specs[t]
            pred = decode_rows(spec, tl.predict(t, policy.mode, a, b))
            agree = agreement(spec, pred, _stack(spec, [ctx.wl.outputs[t][i] for i in b]))
        score[[col[int(i)] for i in b]] = agree
    return score, total, {"runs": runs, "deferred": deferred}


def _spend_leftover(ctx: _Context, plan: _Plan, budget: float) -> _Plan:
    """Raise the token-bucket refill rates of triggered targets with the budget the plan left
    unused (shared in proportion to their planned model ms), so fewer triggers are deferred
    when the test part changes more often than the training part did."""
    triggered = {m: p for m, p in plan.policies.items() if p.kind == "trigger"}
    spend = {m: ctx.ms[m] * p.rate for m, p in triggered.items()}
    leftover = budget - plan.cost
    if leftover <= 0 or not sum(spend.values()):
        return plan
    policies = dict(plan.policies)
    for m, p in triggered.items():
        extra = leftover * spend[m] / sum(spend.values()) / ctx.ms[m]
        policies[m] = replace(p, rate=min(1.0, p.rate + extra * (1 - 1e-9)))
    return _Plan(plan.active, policies, plan.estimate, plan.cost)


def _measure(
    ctx: _Context,
    method: str,
    budget: float,
    plan: _Plan,
    test_idx: Sequence[int],
    started: float,
) -> MethodResult:
    test = np.sort(np.asarray(test_idx, dtype=np.int64))
    segments = _test_segments(ctx, test)
    plan = _spend_leftover(ctx, plan, budget)
    per_model, total, runs, notes, deferred = {}, 0.0, {}, [], {}
    for m in ctx.models:
        if m in plan.active:
            per_model[m], runs[m] = 1.0, len(test)
            total += ctx.ms[m] * len(test)
            continue
        policy = plan.policies[m]
        score, ms, info = _run_policy(ctx, m, policy, plan.active, test, segments)
        per_model[m] = float(score.mean()) if len(test) else 1.0
        runs[m] = info["runs"]
        if info.get("deferred"):
            deferred[m] = info["deferred"]
        total += ms
        notes.append(f"{m}: {policy.describe()}")
    cost = total / max(1, len(test))
    active = sorted(plan.active | {m for m, p in plan.policies.items() if p.period == 1})
    accuracy = float(np.mean(list(per_model.values())))
    return MethodResult(
        method=method,
        budget_ms=float(budget),
        accuracy=accuracy,
        compute_saved=float(1.0 - cost / ctx.full) if ctx.full else 0.0,
        cost_ms=float(cost),
        active=active,
        per_model=per_model,
        notes="; ".join(notes),
        seconds=time.perf_counter() - started,
        details={
            "train_estimate": plan.estimate,
            "planned_ms": plan.cost,
            "run_rate": {m: r / max(1, len(test)) for m, r in runs.items()},
            "deferred_triggers": deferred,
            "policies": {m: p.describe() for m, p in plan.policies.items()},
            "training_seconds": dict(ctx.seconds),
        },
    )


def _method(
    name: str,
    families: Sequence[str],
    plain: bool,
    enumerate_active: bool,
    workload: Workload,
    train_idx: Sequence[int],
    test_idx: Sequence[int],
    budget_ms: float,
    config: TemporalConfig | None,
) -> MethodResult:
    started = time.perf_counter()
    if not budget_ms > 0:
        raise ValueError(f"budget_ms must be > 0, got {budget_ms}")
    ctx = _context(workload, train_idx, config or TemporalConfig())
    if enumerate_active:
        plan = _plan(ctx, budget_ms, families, plain)
    else:  # every model is a knapsack group; k = 1 means it always runs
        groups = [_pareto([*ctx.options(t, "reuse"), _prior_policy(ctx, t)]) for t in ctx.models]
        chosen = _knapsack(groups, budget_ms, ctx.config.grid)
        if chosen is None:
            raise ValueError(f"no schedule fits a budget of {budget_ms:g} ms/frame")
        policies = {t: g[o] for t, g, o in zip(ctx.models, groups, chosen, strict=True)}
        est = float(np.mean([p.estimate for p in policies.values()]))
        plan = _Plan(frozenset(), policies, est, sum(p.cost for p in policies.values()))
    return _measure(ctx, name, budget_ms, plan, test_idx, started)


def _prior_policy(ctx: _Context, t: str) -> Policy:
    return Policy("prior", estimate=float(ctx.prior_train[t]))


# ------------------------------------------------------------------------------ public methods


def reuse_schedule(
    workload: Workload,
    train_idx: Sequence[int],
    test_idx: Sequence[int],
    budget_ms: float,
    config: TemporalConfig | None = None,
) -> MethodResult:
    """Frame filtering alone, periodic: model ``m`` runs every ``k_m`` frames of its stream and
    its last output is reused in between (or never runs and outputs its prior).

    ``k_m`` (1 .. ``reuse_max_period``) is chosen by an exact multiple-choice knapsack on the
    training part: the accuracy of period ``k`` is ``(1 + sum_{d<k} r_d) / k`` with ``r_d`` the
    mean agreement of an output reused ``d`` frames later over all training pairs, its cost
    ``ms / k``. No links.
    """
    return _method(
        "Reuse (periodic)", [], False, False, workload, train_idx, test_idx, budget_ms, config
    )


def change_filter(
    workload: Workload,
    train_idx: Sequence[int],
    test_idx: Sequence[int],
    budget_ms: float,
    config: TemporalConfig | None = None,
) -> MethodResult:
    """Frame filtering alone, change-triggered by model outputs: an active set runs every frame;
    each other model re-runs when one active model's output changed by more than a threshold
    since that model's last run (or every ``max_lag + 1`` frames), else reuses its last output.
    Periodic reuse and the prior are options too. No links."""
    return _method(
        "Reuse (change-triggered)",
        ["reuse", "trigger_raw"],
        False,
        True,
        workload,
        train_idx,
        test_idx,
        budget_ms,
        config,
    )


def temporal_mlink(
    workload: Workload,
    train_idx: Sequence[int],
    test_idx: Sequence[int],
    budget_ms: float,
    config: TemporalConfig | None = None,
) -> MethodResult:
    """Temporal links: the active set runs every frame; each inactive target is refreshed every
    ``k_t`` frames and synthesized in between by a temporal link (its last real output + one
    active source's current output and change + the lag), or reuses, or -- never refreshed --
    is synthesized by plain links or outputs its prior. Active set, ``k_t`` and mode are chosen
    on the training part (out-of-fold accuracy, exact knapsack per active set)."""
    return _method(
        "Temporal links",
        ["reuse", "temporal"],
        True,
        True,
        workload,
        train_idx,
        test_idx,
        budget_ms,
        config,
    )


def mlink_with_filtering(
    workload: Workload,
    train_idx: Sequence[int],
    test_idx: Sequence[int],
    budget_ms: float,
    config: TemporalConfig | None = None,
) -> MethodResult:
    """Links + frame filtering: everything :func:`temporal_mlink` may do, plus refreshes
    triggered when an active model's output changed, or when a temporal link predicts that the
    target's output changed, by more than a threshold (token-bucket rate limit per target)."""
    return _method(
        "Links + filtering",
        ["reuse", "temporal", "trigger_links"],
        True,
        True,
        workload,
        train_idx,
        test_idx,
        budget_ms,
        config,
    )


def plain_mlink(
    workload: Workload,
    train_idx: Sequence[int],
    test_idx: Sequence[int],
    budget_ms: float,
    config: TemporalConfig | None = None,
    *,
    selection: str = "validation",
) -> MethodResult:
    """The paper's MLink on the same split and links: exact selection over plain links
    (:func:`mlink.linkstore.experiment.compare_selectors`' exact selector).

    ``selection="validation"`` scores active sets on the plain link set's random validation
    split, as :func:`~mlink.linkstore.experiment.train_workload` does; ``"blocked"`` on blocked
    cross-fitted predictions of every training frame (what the temporal methods use for their
    plain-link options), which isolates the effect of the estimator from that of the links.
    """
    if selection not in ("validation", "blocked"):
        raise ValueError(f"selection must be 'validation' or 'blocked', got {selection!r}")
    started = time.perf_counter()
    ctx = _context(workload, train_idx, config or TemporalConfig())
    ls = ctx.linkset
    test = np.sort(np.asarray(test_idx, dtype=np.int64))
    oracle = ctx.val_oracle if selection == "validation" else ctx.blocked_oracle
    trained = TrainedWorkload(
        workload, ls, ctx.train, test, oracle, ctx.test_oracle(test), ctx.link_costs
    )
    budget = {"ms": float(budget_ms)}
    chosen = select(selection_problem(trained, budget))
    plan = measure_plan(trained, "MLink (exact)", budget, chosen)
    return MethodResult(
        method="MLink (plain links)" + (", blocked CV" if selection == "blocked" else ""),
        budget_ms=float(budget_ms),
        accuracy=plan.accuracy,
        compute_saved=plan.compute_saved,
        cost_ms=plan.cost.get("ms", 0.0),
        active=plan.active,
        per_model=plan.per_model,
        notes=f"{selection} accuracy {plan.predicted_accuracy:.3f}",
        seconds=time.perf_counter() - started,
        details={"train_estimate": plan.predicted_accuracy, "selection": selection},
    )
