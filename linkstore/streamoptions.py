"""A model's options in a stream plan: each mode at each period, with its expected agreement.

:func:`option` turns one :class:`~mlink.linkstore.streamfit.Curve` and a period into a
:class:`Choice`: the expectation is exact over one steady cycle of the model's runs and the
probes (:func:`~mlink.linkstore.schedule.lag_histogram`), and its lower confidence bound treats
the lags' estimates as moving together (they come from the same frames). :class:`Options`
computes every model's choices once per plan search (:mod:`mlink.linkstore.streamplan`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from mlink.linkstore.schedule import Mode, lag_histogram
from mlink.linkstore.streamfit import Curve

__all__ = ["LINKS_MIN_GAIN", "PSEUDO", "Choice", "LinksEstimate", "Options", "option"]

PSEUDO = 2.0  # pseudo-samples of the largest variance (0.25) in every confidence bound
LINKS_MIN_GAIN = 0.01  # 0: never scheduled (probes only); 1 is the active set
#: ``links(active, target) -> (mean agreement, samples, ms per synthesized output)`` for the
#: paper's links (an ensemble over the active set).
LinksEstimate = Callable[[frozenset[str], str], tuple[float, int, float]]


@dataclass(frozen=True, slots=True)
class Choice:
    """What one model does: runs with ``period`` and ``phase`` and is synthesized by ``mode`` in
    between. ``estimate`` and ``lower`` (a lower confidence bound) are its expected agreement
    over a steady cycle, runs counting 1; ``cost_ms`` its expected ms per frame (runs, probes
    included, plus synthesis). ``forecast`` is the lower bound a forecast of the option gives
    (the curve's :attr:`~mlink.linkstore.streamcurve.Curve.forecast_between` in place of its
    between-stream error; never above ``lower``): plans choose on ``lower``, and what they
    promise is ``forecast`` (docs/stream-synthesis.md, "The forecast")."""

    model: str
    period: int
    phase: int
    mode: Mode
    estimate: float
    lower: float
    cost_ms: float
    runs: float = 1.0  # share of frames on which the model really runs (probes included)
    forecast: float | None = None  # None: ``lower``

    @property
    def bound(self) -> float:
        """The lower bound to forecast with: ``forecast`` where there is one, else ``lower``."""
        return self.lower if self.forecast is None else self.forecast

    @property
    def synthesized(self) -> float | None:
        """Expected agreement on the frames it is synthesized (None if it always runs)."""
        return None if self.runs >= 1.0 else (self.estimate - self.runs) / (1.0 - self.runs)


def option(
    curve: Curve,
    period: int,
    probe_every: int,
    model_ms: float,
    z: float = 1.645,
    probe_stride: int = 0,
    corr: float = 1.0,
    factor: float = 1.0,
) -> Choice | None:
    """``curve``'s mode with ``period``, at its best phase; None when the cycle reaches lags the
    curve does not cover (memory older than it was estimated for). ``factor`` scales the
    synthesized agreement (a live correction, see :mod:`mlink.linkstore.liveguard`)."""
    best: Choice | None = None
    # the factor corrects what is synthesized, not a gate's runs (which count 1)
    fired = curve.runs
    agree = fired + (1.0 - fired) * np.minimum(
        (np.asarray(curve.agree) - fired) / max(1.0 - fired, 1e-9) * factor, 1.0
    )
    agree[0] = 1.0
    support = np.asarray(curve.support)
    for phase in range(max(period, 1)) if probe_every else (0,):
        hist = np.asarray(lag_histogram(period, phase, probe_every, probe_stride), dtype=float)
        if not curve.mode.uses_memory:  # the same agreement at every lag
            hist = np.array([hist[0], hist[1:].sum()]) if len(hist) else np.array([0.0, 1.0])
        elif len(hist) == 0 or len(hist) > len(agree):
            return None
        scheduled = hist[0] / hist.sum()
        # a gate also runs the model on a share of the other frames (those count 1 in agree),
        # and is priced at a higher share than it was seen to run (Curve.priced_runs)
        share = scheduled + (1.0 - scheduled) * curve.runs
        priced = scheduled + (1.0 - scheduled) * curve.cost_runs
        synth = hist[1:].sum()
        if synth:
            weights = hist[1:] / synth
            mean_synth = float(weights @ agree[1 : len(hist)])
            n_eff = np.maximum(support[1 : len(hist)] / corr, 1.0)
            var = (curve.spread**2 * n_eff + 0.25 * PSEUDO) / (n_eff + PSEUDO)
            # the lags' estimates come from the same frames, so their errors move together:
            # the margin of their mix is the mix of their margins (treating them as independent
            # shrank it by up to sqrt(period) and made long periods look safe); and it is never
            # narrower than the streams' disagreement allows (mlink.linkstore.streamerror)
            frames = float(weights @ np.sqrt(var / n_eff))
            margin = z * max(frames, curve.between)
            ahead = z * max(frames, curve.between, curve.forecast_between)
            lower = scheduled + (1.0 - scheduled) * max(0.0, mean_synth - margin)
            forecast = scheduled + (1.0 - scheduled) * max(0.0, mean_synth - ahead)
            estimate = scheduled + (1.0 - scheduled) * mean_synth
        else:
            lower = estimate = forecast = 1.0
        cost = model_ms * priced + curve.synth_ms * (1.0 - priced)
        cand = Choice(
            curve.target, period, phase, curve.mode, estimate, lower, cost, share, forecast
        )
        if best is None or cand.estimate > best.estimate + 1e-12:
            best = cand
    return best


class Options:
    """Every model's options, computed once per search, grouped by the models they need."""

    def __init__(
        self,
        curves: Mapping[str, Sequence[Curve]],
        costs_ms: Mapping[str, float],
        probe_every: int,
        periods: Sequence[int],
        z: float,
        probe_stride: int = 0,
        corr: float = 1.0,
        corrections: Mapping[str, float] | None = None,
    ) -> None:
        self.models = sorted(costs_ms)
        missing = sorted(set(self.models) - set(curves))
        if missing:
            raise ValueError(f"no curves for {missing}: the trainer estimates every model")
        self.ms = {m: float(costs_ms[m]) for m in self.models}
        self.probe_every = probe_every
        self.probe_stride = probe_stride
        self.corr = corr
        self.factor = {m: float((corrections or {}).get(m, 1.0)) for m in self.models}
        self.periods = [p for p in periods if p != 1]
        self.z = z
        self.by_need: dict[str, dict[frozenset[str], list[Choice]]] = {}
        for t in self.models:
            groups: dict[frozenset[str], list[Choice]] = {}
            for curve in curves[t]:
                if curve.mode.kind == "links" or t in curve.mode.requires:
                    continue
                for k in self.periods:
                    c = option(
                        curve, k, probe_every, self.ms[t], z, probe_stride, corr, self.factor[t]
                    )
                    if c is not None:
                        groups.setdefault(curve.mode.requires, []).append(c)
            self.by_need[t] = groups
        self.max_lag = max((c.max_lag for cs in curves.values() for c in cs), default=16)
        # the best any constant mode does without running the model (a gate runs it on some
        # frames): links must beat it to be worth asking about
        self.constant = {
            t: max(
                (c.agree[1] for c in curves[t] if not c.mode.uses_memory and c.mode.kind != "gate"),
                default=0.0,
            )
            for t in self.models
        }
        self._links_useful: dict[str, bool] = {}

    def links_useful(self, t: str, links: LinksEstimate) -> bool:
        """Whether the paper's links into ``t`` can beat its best constant mode at all: asked
        once, with every other model active (an ensemble can ignore a useless source, so more
        sources do not hurt). On video they rarely can, and skipping them saves thousands of
        oracle queries per plan."""
        if t not in self._links_useful:
            best, _, _ = links(frozenset(self.models) - {t}, t)
            self._links_useful[t] = best > self.constant[t] + LINKS_MIN_GAIN
        return self._links_useful[t]

    def always(self, t: str) -> Choice:
        return Choice(t, 1, 0, Mode("reuse"), 1.0, 1.0, self.ms[t])

    def choices(self, t: str, active: frozenset[str], links: LinksEstimate | None) -> list[Choice]:
        out = [c for need, cs in self.by_need[t].items() if need <= active for c in cs]
        if links is not None and active and self.links_useful(t, links):
            mean, n, ms = links(active, t)
            spread = math.sqrt(max(mean * (1.0 - mean), 1e-6))
            curve = Curve(t, Mode("links"), (1.0,) + (mean,) * self.max_lag,
                          (0,) + (n,) * self.max_lag, spread, ms)  # fmt: skip
            for k in self.periods:
                c = option(
                    curve,
                    k,
                    self.probe_every,
                    self.ms[t],
                    self.z,
                    self.probe_stride,
                    self.corr,
                    self.factor[t],
                )
                if c is not None:
                    out.append(c)
        return out
