"""Live agreement: how well the links synthesize each inactive model on real probe frames.

Validation agreement is measured once, on the frames the links were trained around. Probe
frames keep arriving with every model executed, so each one shows what the current plan would
have synthesized next to what the real model said. The running mean per model is the honest
runtime signal of link quality (and of drift): the trainer publishes it on the control topic and
``mlink status`` shows it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from mlink.linkstore.linkset import LinkSet
from mlink.linkstore.liveguard import ProbeTally
from mlink.linkstore.metrics import agreement
from mlink.topics.control import MAX_FACTOR
from mlink.topics.records import FrameResult


def probe_agreement(
    result: FrameResult, linkset: LinkSet, active: Sequence[str]
) -> dict[str, float]:
    """Per inactive model: agreement of its synthesis from ``active`` with its real output."""
    executed = {r.model: r.output for r in result.results if r.status == "executed"}
    sources = {m: [executed[m]] for m in active if m in executed}
    scores: dict[str, float] = {}
    if not sources:
        return scores
    for model, actual in executed.items():
        if model in active or model not in linkset.specs:
            continue
        synthesized = linkset.synthesize(model, sources, trusted=True)
        scores[model] = float(agreement(linkset.specs[model], synthesized, [actual])[0])
    return scores


class LiveAgreement:
    """Probe agreement per model for the current plan (epoch, link version).

    Under stream synthesis (``decay`` < 1, ``options`` given) it is the target guard's tally
    (:mod:`mlink.linkstore.liveguard`): earlier probes weigh ``decay`` of the next, and a model
    whose option (period and mode) survives a new plan keeps its evidence and the correction
    factor its option started with; ``counts`` are then effective probes. Otherwise a new plan
    starts a plain mean over again.
    """

    def __init__(self, decay: float = 1.0) -> None:
        self.tally = ProbeTally(decay)
        self.key: tuple[int, int | None] | None = None
        self.options: dict[str, str] = {}
        self.started: dict[str, float] = {}
        self.probes = 0

    def add(
        self,
        key: tuple[int, int | None],
        scores: Mapping[str, float],
        options: Mapping[str, str] | None = None,
        factors: Mapping[str, Any] | None = None,
    ) -> None:
        """One probe's scores under the plan ``key``, whose schedule synthesizes each model by
        ``options`` (:func:`~mlink.linkstore.liveguard.option_keys`) with correction
        ``factors``."""
        if key != self.key:  # a new plan: keep only what it synthesizes the same way
            options = dict(options or {})
            factors = factors if isinstance(factors, Mapping) else {}
            keep = {m for m, o in options.items() if self.options.get(m) == o}
            self.tally.keep(keep)
            self.started = {m: f for m, f in self.started.items() if m in keep}
            for m in set(options) - keep:
                self.started[m] = _factor(factors.get(m))
            self.key, self.options, self.probes = key, options, 0
        self.probes += 1
        for model, score in scores.items():
            self.tally.add(model, score)

    def means(self) -> dict[str, float]:
        return self.tally.means()

    def report(self) -> dict[str, Any]:
        """The ``extra`` of an ``agreement`` control message."""
        extra: dict[str, Any] = {"live_agreement": self.means(), "probes": self.probes}
        if self.options:
            counts = self.tally.counts
            extra["live_counts"] = {m: round(counts[m], 6) for m in sorted(counts)}
            extra["live_started"] = {
                m: self.started[m] for m in sorted(counts) if m in self.started
            }
        return extra


def _factor(value: Any) -> float:
    """A correction factor from a control message, or 1 when it is not a positive number;
    capped at what an ``agreement`` message may carry (topics.control)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return 1.0
    return min(float(value), MAX_FACTOR) if 0.0 < value < float("inf") else 1.0
