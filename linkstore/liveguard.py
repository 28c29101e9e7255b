"""Live agreement from probes: drift detection, corrections, and turning models back on.

A plan's estimates come from the warm-up (and earlier probes); the stream may then change. On
every probe frame the worker synthesizes what the plan would have synthesized there
(:attr:`~mlink.linkstore.streamlinks.Synthesized.shadow`) and scores it against the real
outputs; the controller folds those scores into a :class:`LiveAgreement` per plan:

- :meth:`LiveAgreement.failing`: the models whose agreement over the run (real runs count 1) is,
  with confidence, below their accuracy target. The controller re-plans with
  :meth:`LiveAgreement.corrections` (which turns such a model back on, or runs it more often,
  because its options now promise less) and says why on the control topic.
- :meth:`LiveAgreement.drifted`: in budget mode, the models whose live agreement moved away
  from the plan's estimate by more than a tolerance: a signal to refit and re-plan (hot swap).
- :meth:`LiveAgreement.forecast`: the plan's expected agreement with each synthesized model
  rescaled by what its probes saw, starting from the plan's forecast bound (:func:`forecast`), a
  forecast that needs no re-plan.
- :meth:`LiveAgreement.below_forecast`: the models whose synthesized outputs agree less than the
  plan forecast for them even at the upper confidence bound (:func:`below_forecast`, the flag of
  ``mlink status``).

Corrections are multiplicative factors on a model's synthesized agreement, shrunk towards 1 by
``prior_probes`` pseudo-probes so one unlucky probe does not swing the plan. A model whose option
(period and mode) survives a re-plan keeps its probe evidence (:meth:`LiveAgreement.next_plan`):
otherwise every re-plan caused by another model would start its count from zero, and a model a
little below its target could stay there for a whole run. Its correction is then recomputed from
all that evidence on top of the factor in force when the option was first chosen, so no probe is
counted twice.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from mlink.linkstore.schedule import Mode, Schedule
from mlink.linkstore.streamplan import Choice, StreamPlan

__all__ = [
    "DECAY",
    "PRIOR_PROBES",
    "LiveAgreement",
    "ProbeTally",
    "below_forecast",
    "corrected",
    "correction",
    "forecast",
    "miss_reason",
    "option_key",
    "option_keys",
    "same_option",
    "unseen_share",
    "upper_bound",
]

#: Weight of each earlier probe relative to the next in the guard's tally: about the last five
#: probes count, so a model that slumps after a good start is noticed (docs/stream-synthesis.md).
DECAY = 0.8
#: Pseudo-probes behind every correction (at the plan's estimate: one unlucky probe does not
#: swing a plan) and every forecast (at its forecast bound, :func:`unseen_share`).
PRIOR_PROBES = 2.0


def upper_bound(runs: float, live: float, probes: float, z: float) -> float:
    """Upper confidence bound of a model's agreement over the run: real runs (a ``runs``
    share of frames) count 1, synthesized frames the ``live`` mean of ``probes`` probe scores."""
    spread = math.sqrt(max(live * (1.0 - live), 0.01) / probes)
    return runs + (1.0 - runs) * min(1.0, live + z * spread)


def below_forecast(
    live: float, probes: float, forecast: float, z: float, min_probes: float = 2
) -> bool:
    """Whether probes that saw ``live`` on a model's synthesized frames say, with confidence,
    that it keeps less than the ``forecast`` for those frames: the upper bound is below it, after
    at least ``min_probes`` (effective) probes."""
    return probes >= min_probes and upper_bound(0.0, live, probes, z) < forecast


def correction(live: float, planned: float, probes: float, prior_probes: float) -> float:
    """Factor on a model's synthesized agreement: live over planned, shrunk towards 1 by
    ``prior_probes`` pseudo-probes."""
    return (probes * live / planned + prior_probes) / (probes + prior_probes)


def miss_reason(
    model: str, runs: float, live: float, probes: float, target: float, z: float
) -> str | None:
    """Why ``model`` is below its ``target`` with confidence (the upper bound of its agreement
    over the run is below it), or None: the reason the controller publishes."""
    upper = upper_bound(runs, live, probes, z)
    if upper >= target:
        return None
    achieved = runs + (1.0 - runs) * live
    return (  # both figures: `mlink status` shows the one on synthesized frames beside it
        f"{model}: live agreement {achieved:.3f} over the run ({live:.3f} where synthesized, "
        f"{probes:.3g} probes; upper bound {upper:.3f}) is below its target {target:.3f}"
    )


def corrected(
    live: float, planned: float, probes: float, prior_probes: float, now: float, start: float
) -> float:
    """The next factor of a model whose plan (made with factor ``now``) expected ``planned``
    and whose probes saw ``live``, on top of the factor its option started with (``start``):
    the evidence behind ``now`` is part of the tally, so it must not count twice."""
    return start * correction(live, planned / now * start, probes, prior_probes)


def forecast(
    estimates: Mapping[str, float],
    runs: Mapping[str, float],
    synthesized: Mapping[str, float],
    scale: Mapping[str, float],
    lower: Mapping[str, float] | None = None,
    unseen: Mapping[str, float] | None = None,
) -> float:
    """A plan's expected agreement over all models (runs count 1) after probes: each model in
    ``synthesized`` keeps its run share ``runs`` and has its synthesized agreement multiplied by
    ``scale`` (what its probes saw over what the plan expected, shrunk towards 1 by
    pseudo-probes, capped at 1); the others keep their estimate.

    The up-front estimate comes from the warm-up and over-promises where the content changes
    after it, so the part of a model's forecast that still rests on the warm-up (``unseen``: the
    pseudo-probes' share of its evidence, 1 before its first probe; 0 for an estimate a re-plan
    already corrected from probes) is taken at the plan's forecast bound (``lower``, runs
    counting 1; :attr:`~mlink.linkstore.streamoptions.Choice.bound`) rather than at its
    estimate; without ``lower`` it counts at the estimate. This follows the probes without
    changing the plan (BENCHMARKS.md, "A forecast that follows the probes", "A forecast that
    starts from the lower bound" and "A forecast bound for content the warm-up did not show")."""
    if not estimates:
        raise ValueError("a forecast needs the plan's estimates of at least one model")
    total = 0.0
    for model, estimate in estimates.items():
        synth = synthesized.get(model)
        if synth is None:
            total += estimate
            continue
        share = runs[model]
        value = synth * scale.get(model, 1.0)
        if lower is not None and model in lower and share < 1.0:
            floor = max(0.0, (lower[model] - share) / (1.0 - share))
            value -= (unseen or {}).get(model, 1.0) * max(0.0, synth - floor)
        total += share + (1.0 - share) * min(1.0, max(0.0, value))
    return total / len(estimates)


def unseen_share(probes: float, prior_probes: float, corrected: bool = False) -> float:
    """The share of a forecast's evidence that is the warm-up's: ``prior_probes`` pseudo-probes
    against ``probes`` (effective) probes seen; none when the plan was ``corrected`` from the
    model's probes (its estimate already follows them)."""
    if corrected or prior_probes <= 0:
        return 0.0
    return prior_probes / (max(probes, 0.0) + prior_probes)


def option_key(period: int, mode: Mode) -> str:
    """How a plan synthesizes a model (period and mode; the phase may move): probe scores carry
    over a re-plan that keeps it."""
    return f"{period}:{mode.key()}"


def option_keys(schedule: Schedule) -> dict[str, str]:
    """:func:`option_key` of every model the schedule synthesizes somewhere."""
    return {m: option_key(k, schedule.mode(m)) for m, k in schedule.periods.items() if k != 1}


def same_option(a: Choice | None, b: Choice | None) -> bool:
    """Whether two plans synthesize a model the same way, so probe scores of one are evidence
    about the other."""
    if a is None or b is None or a.period == 1 or b.period == 1:
        return False
    return option_key(a.period, a.mode) == option_key(b.period, b.mode)


class ProbeTally:
    """Probe scores per model as a running mean in which each earlier probe weighs ``decay`` of
    the next (1: a plain mean); ``counts`` are then effective probes. The controller's guard and
    the trainer's published figures keep the same tally, so they agree on what the probes saw."""

    __slots__ = ("counts", "decay", "sums")

    def __init__(self, decay: float = 1.0) -> None:
        if not 0.0 < decay <= 1.0:
            raise ValueError(f"decay must lie in (0, 1], got {decay}")
        self.decay = decay
        self.sums: dict[str, float] = {}
        self.counts: dict[str, float] = {}

    def add(self, model: str, score: float) -> None:
        self.sums[model] = self.sums.get(model, 0.0) * self.decay + float(score)
        self.counts[model] = self.counts.get(model, 0.0) * self.decay + 1.0

    def mean(self, model: str) -> float | None:
        n = self.counts.get(model, 0.0)
        return self.sums[model] / n if n else None

    def means(self) -> dict[str, float]:
        return {m: self.sums[m] / n for m, n in sorted(self.counts.items()) if n}

    def carry(self, source: ProbeTally, model: str) -> None:
        """Take ``model``'s evidence from ``source`` (a re-plan that keeps its option)."""
        self.sums[model], self.counts[model] = source.sums[model], source.counts[model]

    def keep(self, models: Iterable[str]) -> None:
        """Forget every model but ``models``."""
        for m in set(self.counts) - set(models):
            del self.sums[m], self.counts[m]


@dataclass(slots=True)
class LiveAgreement:
    """Probe scores of one plan's synthesized outputs, per model (carried over from earlier plans
    for the models whose option did not change). ``factors`` are the corrections the plan was
    made with; ``started`` each carried model's factor when its option was first chosen.
    ``decay`` < 1 weighs each earlier probe by that much less (counts are then effective
    probes), so the tally follows a stream whose content changes instead of averaging it away."""

    plan: StreamPlan
    prior_probes: float = PRIOR_PROBES
    factors: dict[str, float] = field(default_factory=dict)
    started: dict[str, float] = field(default_factory=dict)
    decay: float = 1.0
    tally: ProbeTally = field(init=False)

    def __post_init__(self) -> None:
        self.tally = ProbeTally(self.decay)

    @property
    def counts(self) -> dict[str, float]:
        """Effective probes per model."""
        return self.tally.counts

    def next_plan(self, plan: StreamPlan, factors: Mapping[str, float]) -> LiveAgreement:
        """The tally for the plan that replaces this one (made with ``factors``): models whose
        option is unchanged keep their evidence and the factor they started with."""
        nxt = LiveAgreement(plan, self.prior_probes, dict(factors), decay=self.decay)
        for model, n in self.counts.items():
            if n and same_option(self.plan.choices.get(model), plan.choices.get(model)):
                nxt.tally.carry(self.tally, model)
                nxt.started[model] = self.started.get(model, self.factors.get(model, 1.0))
        return nxt

    def add(self, model: str, score: float) -> None:
        """One probe's agreement of what the plan synthesized for ``model``."""
        if not 0.0 <= score <= 1.0:
            raise ValueError(f"agreement of {model!r} must lie in [0, 1], got {score}")
        self.tally.add(model, score)

    def add_scores(self, scores: Mapping[str, float]) -> None:
        for model, score in scores.items():
            self.add(model, score)

    def mean(self, model: str) -> float | None:
        return self.tally.mean(model)

    def planned(self, model: str) -> float | None:
        """The plan's expected agreement of ``model`` where it is synthesized."""
        choice = self.plan.choices.get(model)
        return None if choice is None else choice.synthesized

    def corrections(self) -> dict[str, float]:
        """Factors on each model's synthesized agreement for the next plan: live over planned,
        shrunk towards 1, times the factor the model's option started with (the plan itself was
        made with :attr:`factors`)."""
        out = dict(self.factors)
        for model, n in self.counts.items():
            planned = self.planned(model)
            live = self.mean(model)
            if not n or not planned or live is None:
                continue
            now = self.factors.get(model, 1.0)
            start = self.started.get(model, now)
            out[model] = corrected(live, planned, n, self.prior_probes, now, start)
        return out

    def forecast(self) -> float:
        """The plan's expected agreement with each synthesized model rescaled by what its probes
        saw, the warm-up's part at the plan's forecast bound (:func:`forecast`): for the frames
        still to come, without a re-plan."""
        factors = self.corrections()
        choices = self.plan.choices
        return forecast(
            {m: c.estimate for m, c in choices.items()},
            {m: c.runs for m, c in choices.items()},
            {m: c.synthesized for m, c in choices.items() if c.synthesized is not None},
            {m: factors.get(m, 1.0) / self.factors.get(m, 1.0) for m in choices},
            {m: c.bound for m, c in choices.items()},
            {
                m: unseen_share(self.counts.get(m, 0.0), self.prior_probes, m in self.factors)
                for m in choices
            },
        )

    def failing(
        self, targets: Mapping[str, float], z: float = 1.0, min_probes: float = 2
    ) -> dict[str, str]:
        """Models whose live agreement over the run is below their target with confidence
        (upper bound below the target), each with the reason for the control topic."""
        out = {}
        for model, target in targets.items():
            n = self.counts.get(model, 0)
            live = self.mean(model)
            if n < min_probes or live is None or model not in self.plan.choices:
                continue
            why = miss_reason(model, self.plan.choices[model].runs, live, n, target, z)
            if why:
                out[model] = why
        return out

    def below_forecast(self, z: float = 1.0, min_probes: float = 2) -> dict[str, str]:
        """Models whose synthesized outputs agree less than the plan forecast even at the upper
        confidence bound, with the reason."""
        out = {}
        for model, n in self.counts.items():
            planned, live = self.planned(model), self.mean(model)
            if (
                planned is None
                or live is None
                or not below_forecast(live, n, planned, z, min_probes)
            ):
                continue
            out[model] = (
                f"{model}: synthesized outputs agree {live:.3f} over {n:.3g} probes (upper bound "
                f"{upper_bound(0.0, live, n, z):.3f}), forecast {planned:.3f}"
            )
        return out

    def drifted(self, tolerance: float = 0.05, min_probes: int = 3) -> dict[str, str]:
        """Models whose live synthesized agreement differs from the plan's by more than
        ``tolerance`` after at least ``min_probes`` probes, with the reason."""
        out = {}
        for model, n in self.counts.items():
            planned, live = self.planned(model), self.mean(model)
            if n < min_probes or planned is None or live is None:
                continue
            if abs(live - planned) > tolerance:
                out[model] = (
                    f"{model}: live agreement {live:.3f} over {n:.3g} probes, planned {planned:.3f}"
                )
        return out
