"""Everything the temporal methods learn from one workload's training part, shared by all methods
and budgets: encoded outputs, stream geometry, reuse and prior agreement, the lazily trained
plain and temporal links, and every target's options (a :class:`~.policy.Policy` each).
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np

from mlink.eval.baselines.common import prior_outputs
from mlink.eval.temporal.geometry import (
    change_distance,
    is_vector,
    lag_pairs,
    positions,
    stream_segments,
)
from mlink.eval.temporal.links import TemporalLinks
from mlink.eval.temporal.policy import REUSE, SELF, Policy, TemporalConfig
from mlink.eval.workload import Workload
from mlink.linkstore.crossfit import CrossFit, contiguous_folds, cross_fit
from mlink.linkstore.linkcosts import synthesis_costs
from mlink.linkstore.linkset import LinkSet
from mlink.linkstore.metrics import agreement
from mlink.linkstore.oracle import AgreementOracle, SampleOracle
from mlink.topics.specs import encode_batch

__all__ = ["Context", "context_for"]


class Context:
    """Everything learned from one workload's training part, shared by all methods and budgets."""

    def __init__(self, workload: Workload, train_idx: np.ndarray, config: TemporalConfig):
        self.wl = workload
        self.config = config
        self.models = workload.models
        self.specs = workload.specs
        self.ms = {m: float(workload.costs[m].get("ms", 0.0)) for m in self.models}
        self.full = sum(self.ms.values())
        self.train = np.sort(np.asarray(train_idx, dtype=np.int64))
        self.pos = positions(workload.streams)
        self.enc = {m: encode_batch(s, workload.outputs[m]) for m, s in self.specs.items()}
        self.scale = {
            m: np.maximum(self.enc[m][self.train].std(axis=0), 1e-2)
            for m in self.models
            if is_vector(self.specs[m])
        }
        self.segments = stream_segments(workload.streams, self.pos, self.train)
        self.seg_of = np.full(workload.n_frames, -1, dtype=np.int64)
        for k, seg in enumerate(self.segments):
            self.seg_of[seg] = k
        self.fold = np.full(workload.n_frames, -1, dtype=np.int64)
        self.fold[self.train] = contiguous_folds(
            len(self.train), config.folds, self.seg_of[self.train].tolist()
        )
        self.pairs, self.pair_lag = lag_pairs(self.segments, config.reuse_max_period - 1)
        # the pairs temporal links and triggers work on: lag <= max_lag
        self.tkeep = self.pair_lag <= config.max_lag
        self.tpairs, self.tlag = self.pairs[self.tkeep], self.pair_lag[self.tkeep]
        self.trow = {(int(a), int(b)): r for r, (a, b) in enumerate(self.tpairs.tolist())}
        self._reuse: dict[str, np.ndarray] = {}
        self.priors = prior_outputs(workload, self.train)
        self.prior_train = {m: self.prior_agreement(m, self.train).mean() for m in self.models}
        self._temporal: TemporalLinks | None = None
        self._plain: CrossFit | None = None
        self._options: dict[tuple[str, str], list[Policy]] = {}
        self._test_oracles: dict[bytes, AgreementOracle] = {}
        self.seconds: dict[str, float] = {}

    # -- no-link pieces
    def prior_agreement(self, m: str, idx: np.ndarray) -> np.ndarray:
        spec = self.specs[m]
        truth = [self.wl.outputs[m][i] for i in idx]
        return agreement(spec, [self.priors[m]] * len(idx), truth)

    def reuse_agree(self, m: str, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        spec, outs = self.specs[m], self.wl.outputs[m]
        if len(a) == 0:
            return np.zeros(0)
        return agreement(spec, [outs[i] for i in a], [outs[i] for i in b])

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
    def trained_temporal(self) -> TemporalLinks | None:
        """The temporal links if a method has trained them already, else None (no training)."""
        return self._temporal

    @property
    def plain(self) -> CrossFit:
        """MLink's plain links on the training part, cross-fitted over the same time blocks as
        the temporal links (so both kinds of option are estimated alike), and what they cost."""
        if self._plain is None:
            start = time.perf_counter()
            outputs = self.wl.subset(self.train)
            fold_of = self.fold[self.train]
            self._plain = cross_fit(self.specs, outputs, self.config.links, fold_of=fold_of)
            self.link_costs, self.ensemble_costs = synthesis_costs(self._plain.linkset)
            self.seconds["plain links, cross-fitted"] = time.perf_counter() - start
        return self._plain

    @property
    def linkset(self) -> LinkSet:
        return self.plain.linkset

    @property
    def plain_oracle(self) -> SampleOracle:
        """Out-of-fold agreement of the plain links for any active set."""
        return self.plain.oracle

    def test_oracle(self, test: np.ndarray) -> AgreementOracle:
        key = test.tobytes()
        if key not in self._test_oracles:
            self._test_oracles[key] = self.linkset.agreement_oracle(self.wl.subset(test))
        return self._test_oracles[key]

    def plain_link_cost(self, active: frozenset[str], t: str) -> float:
        """ms per frame of synthesizing ``t`` from ``active`` (ensemble + one link per source)."""
        if not active:
            return 0.0
        self.plain  # noqa: B018 -- trains on first use
        links = sum(self.link_costs.get((s, t), {}).get("ms", 0.0) for s in active)
        return links + self.ensemble_costs.get(t, {}).get("ms", 0.0)

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
            return change_distance(self.enc[src][b] - self.enc[src][a], self.scale[src])
        tl = self.temporal
        pred = tl.oof[t][tl.sources[t].index(src)]
        return change_distance(pred - self.enc[t][a], self.scale[t])

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
        if not is_vector(self.specs[t]) or len(self.tpairs) == 0:
            return []
        tl = self.temporal if links else None
        if links and not tl.has(t):
            return []
        cap = self.config.max_lag + 1
        agree = {REUSE: self.reuse_pairs(t)[self.tkeep]}
        if links:
            agree.update({s: tl.oof_agree[t][i] for i, s in enumerate(tl.sources[t])})
        signals = [("raw", s) for s in self.models if s != t and is_vector(self.specs[s])]
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
                change_distance(x - y, s)
            self._signal_ms = (time.perf_counter() - start) * 1000 / 200
        return self._signal_ms


_CONTEXTS: dict[tuple, tuple[Workload, Context]] = {}


def context_for(workload: Workload, train_idx: Sequence[int], config: TemporalConfig) -> Context:
    """One context per (workload, training split, config), kept for the next budget point."""
    train = np.sort(np.asarray(train_idx, dtype=np.int64))
    key = (id(workload), train.tobytes(), config)
    hit = _CONTEXTS.get(key)
    if hit is not None and hit[0] is workload:
        return hit[1]
    ctx = Context(workload, train, config)
    if len(_CONTEXTS) >= 4:
        _CONTEXTS.pop(next(iter(_CONTEXTS)))
    _CONTEXTS[key] = (workload, ctx)
    return ctx
