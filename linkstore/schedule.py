"""Which models run on which frame of a stream: a pure function of the plan and ``(stream, seq)``.

A worker owns whole streams and plans, runs and synthesizes each frame in one step, but every
worker must plan a frame alike, and a restarted one must plan it as the one before it did. So the
plan of a frame depends only on the published schedule and the frame's sequence number in its
stream: model ``m`` runs on the frames with ``seq % period[m] == phase[m]`` (period 1: every
frame; period 0: never, it is always synthesized), and every model runs on probe frames
(one per block of ``probe_every``, see :func:`is_probe`), which score the synthesized outputs and
feed the trainer.

The controller publishes a schedule in ``ControlMessage.extra["schedule"]``
(:meth:`Schedule.to_extra`); workers read it back with :meth:`Schedule.from_extra`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np

from mlink.linkstore.boxlinks import finds_anything

__all__ = [
    "EXTRA_KEY",
    "MAX_PERIOD",
    "MAX_PROBE_EVERY",
    "MODE_KINDS",
    "Mode",
    "Schedule",
    "is_probe",
    "lag_histogram",
    "run_share",
]

EXTRA_KEY = "schedule"
#: How a model is synthesized on frames it does not run (see :class:`Mode`).
MODE_KINDS = ("reuse", "prior", "links", "head", "follow", "track", "switch", "gate", "flow")
_SOURCED = frozenset({"head", "follow", "track", "switch", "gate"})
_MEMORY = frozenset({"reuse", "follow", "track", "switch", "flow"})
#: Longest period a schedule may give a model: 16 times the planner's longest
#: (:data:`~mlink.linkstore.streamplan.DEFAULT_PERIODS`), about 8 s of 30 fps video, past the
#: lags any warm-up measures. It bounds :func:`lag_histogram`'s ``O(period**2)`` work; a
#: control message with more (a record may say anything) is refused.
MAX_PERIOD = 256
#: Largest ``probe_every`` (and ``probe_stride``, which only counts modulo it): 500 times the
#: default 20, a probe every 5 minutes of 30 fps video. It bounds :func:`run_share`'s
#: ``O(probe_every)`` work on what a control message says.
MAX_PROBE_EVERY = 10_000


@dataclass(frozen=True, slots=True)
class Mode:
    """How one model is synthesized on the frames it does not run.

    - ``reuse``: its output at its last real run;
    - ``prior``: its constant prior;
    - ``links``: the paper's links, an ensemble over the models that ran on the frame;
    - ``head``: a :class:`~mlink.linkstore.boxlinks.BoxHead` from ``source``'s boxes now;
    - ``follow``: its boxes at its last run, moved as ``source``'s boxes moved since;
    - ``track``: the head's boxes, drawn as the followed ones where they overlap;
    - ``switch``: ``follow`` while ``source`` agrees with itself since the last run by at
      least ``threshold`` (matched IoU), else ``head``;
    - ``gate`` (a cascade): the model also runs on every frame where ``source`` finds
      anything, and is ``head`` where it finds nothing (:meth:`Schedule.gated`);
    - ``flow``: its boxes at its last run, moved as the picture moved since
      (:mod:`mlink.linkstore.motion`; the frame operator measures the motion of every frame
      while a schedule has such a mode).

    The detector modes need ``source`` to run on the frame (the planner only picks them
    when it runs on every frame).
    """

    kind: str
    source: str | None = None
    threshold: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in MODE_KINDS:
            raise ValueError(f"mode kind {self.kind!r} is unknown; choose one of {MODE_KINDS}")
        if (self.kind in _SOURCED) != (self.source is not None):
            need = "needs" if self.kind in _SOURCED else "takes no"
            raise ValueError(f"mode {self.kind!r} {need} a source model")
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"mode threshold must lie in [0, 1], got {self.threshold!r}")

    @property
    def requires(self) -> frozenset[str]:
        """Models that must run on the frame for this mode to apply."""
        return frozenset() if self.source is None else frozenset({self.source})

    @property
    def uses_memory(self) -> bool:
        """Whether the mode needs the model's own output at its last real run."""
        return self.kind in _MEMORY

    def key(self) -> str:
        """A readable, unique name, e.g. ``switch(face_fast, 0.5)``."""
        if self.source is None:
            return self.kind
        if self.kind == "switch":
            return f"{self.kind}({self.source}, {self.threshold:g})"
        return f"{self.kind}({self.source})"

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind}
        if self.source is not None:
            out["source"] = self.source
        if self.kind == "switch":
            out["threshold"] = self.threshold
        return out

    @classmethod
    def from_json(cls, raw: Any) -> Mode:
        if isinstance(raw, str):
            return cls(raw)
        if not isinstance(raw, Mapping):
            raise ValueError(f"a mode is a kind or a dict with 'kind', got {raw!r}")
        return cls(str(raw.get("kind")), raw.get("source"), float(raw.get("threshold", 0.0)))


def is_probe(seq: int, probe_every: int, probe_stride: int = 0) -> bool:
    """Whether frame ``seq`` of a stream is a probe: one frame in each block of ``probe_every``,
    at offset ``(block * probe_stride) % probe_every`` in block ``seq // probe_every``.

    Stride 0 probes the first frame of every block (``seq % probe_every == 0``). A stride
    coprime with ``probe_every`` moves the probe through every offset in turn, so the probes of
    a model scheduled every ``k`` frames land at every lag since its last run, and their
    agreement is an unbiased sample of what it synthesizes (with stride 0 and ``k`` dividing
    ``probe_every`` they always land at the same lag).
    """
    if probe_every <= 0:
        return False
    return seq % probe_every == (seq // probe_every) * probe_stride % probe_every


def _probes(probe_every: int, probe_stride: int) -> np.ndarray:
    """The probe frames of one cycle of the probe pattern, which repeats after
    ``probe_every * len(result)`` frames (one probe per block, ``probe_every`` > 0)."""
    blocks = probe_every // math.gcd(probe_stride, probe_every) if probe_stride else 1
    block = np.arange(blocks, dtype=np.int64)
    return block * probe_every + block * probe_stride % probe_every


def _gaps(probes: np.ndarray, probe_every: int) -> np.ndarray:
    """Frames from each probe to the next one, the last wrapping round to the next cycle."""
    return np.diff(np.append(probes, probes[0] + probe_every * len(probes)))


@lru_cache(maxsize=4096)
def lag_histogram(
    period: int, phase: int, probe_every: int, probe_stride: int = 0
) -> tuple[int, ...]:
    """How many frames of one steady cycle lie ``d`` frames after the model's last real run
    (index ``d``; 0 counts the frames where it runs, probes included). A model that never runs
    (period 0, no probes) has the empty histogram.

    The cycle repeats after ``lcm(period, probe cycle)`` frames, up to ``period *
    probe_every**2``: far too many to lay out for a schedule at the caps. Counted instead from
    the probe gaps per residue (:func:`_lags_with_probes`): memory ``O(period**2)``, time
    ``O(period**2 + probe_every)``.
    """
    if probe_every <= 0:
        return (1,) * period if period > 0 else ()  # each lag once per period
    probes = _probes(probe_every, probe_stride)
    gaps = _gaps(probes, probe_every)
    if period <= 0:  # lag d follows every probe whose gap is longer than d
        longer = np.cumsum(np.bincount(gaps)[::-1])[::-1]
        return tuple(int(c) for c in longer[1:])
    hist = _lags_with_probes(period, phase, probes, gaps, probe_every * len(probes))
    return tuple(int(c) for c in np.trim_zeros(hist, "b"))


def _lags_with_probes(
    period: int, phase: int, probes: np.ndarray, gaps: np.ndarray, cycle: int
) -> np.ndarray:
    """:func:`lag_histogram` of a model with ``period`` > 0 and probes (a pattern of ``cycle``
    frames), without laying out the ``lcm(period, cycle)`` frames of the joint cycle.

    By the Chinese remainder theorem, the joint cycle's frames are exactly the pairs (``a``
    mod ``period``, ``b`` mod ``cycle``) with ``a = b`` mod ``g = gcd(period, cycle)``, once
    each; a frame's lag is the smaller of its lag behind the period's run (from ``a``) and
    behind the last probe (from ``b``). So per residue ``r`` mod ``g``, count the ``a`` and
    the ``b`` whose lag is at least ``d``; their products summed over ``r`` count the frames
    whose lag is at least ``d``. Lags stay below ``period``, so only those are counted.
    """
    g = math.gcd(period, cycle)
    lag = np.arange(period)
    residue = np.arange(g)[:, None]
    # probes at each residue whose gap outlasts each lag, then the b behind them by that lag
    starts = np.zeros((g, period + 1), dtype=np.int64)
    np.add.at(starts, (probes % g, np.minimum(gaps, period)), 1)
    outlast = np.cumsum(starts[:, ::-1], axis=1)[:, ::-1][:, 1:]
    probe_lags = outlast[(residue - lag) % g, lag]
    b_at_least = cycle // g - np.cumsum(probe_lags, axis=1) + probe_lags
    # a = phase + lag (mod period), at residue r where (phase + lag - r) % g == 0
    a_lags = ((phase + lag - residue) % g == 0).astype(np.int64)
    a_at_least = np.cumsum(a_lags[:, ::-1], axis=1)[:, ::-1]
    at_least = np.append((a_at_least * b_at_least).sum(axis=0), 0)
    return at_least[:-1] - at_least[1:]


def run_share(period: int, phase: int, probe_every: int, probe_stride: int = 0) -> float:
    """The share of a stream's frames on which a model with this period and phase really runs,
    probes included (period 0: probes only; never: 0): lag 0 of :func:`lag_histogram`, which
    counts the joint cycle without laying it out, so a schedule a control message carries is
    priced in bounded work."""
    hist = lag_histogram(period, phase, probe_every, probe_stride)
    return hist[0] / sum(hist) if hist else 0.0


def _check_count(what: str, value: Any, cap: int) -> None:
    """ValueError naming ``what`` unless ``value`` is an int in ``[0, cap]``: the caps keep
    what a schedule costs to price bounded, whoever wrote it."""
    if type(value) is not int or not 0 <= value <= cap:
        raise ValueError(
            f"schedule {what} must be an int in [0, {cap}], got {value!r}: past the cap a "
            "schedule costs too much to price; plan with a smaller one"
        )


@dataclass(frozen=True, slots=True)
class Schedule:
    """Per model: the period and phase of its real runs, and how it is synthesized in between.

    ``modes[m]`` says how ``m`` is synthesized on the frames it does not run (models without
    one reuse their last output); models with period 1 need none. ``probe_every`` 0 disables
    probes; ``probe_stride`` places them (:func:`is_probe`).
    """

    periods: Mapping[str, int]
    phases: Mapping[str, int] = field(default_factory=dict)
    modes: Mapping[str, Mode] = field(default_factory=dict)
    probe_every: int = 0
    probe_stride: int = 0

    def __post_init__(self) -> None:
        _check_count("probe_every", self.probe_every, MAX_PROBE_EVERY)
        _check_count("probe_stride", self.probe_stride, MAX_PROBE_EVERY)
        for m, k in self.periods.items():
            _check_count(f"period of {m!r}", k, MAX_PERIOD)
            r = self.phases.get(m, 0)
            if type(r) is not int or not 0 <= r < max(k, 1):
                raise ValueError(f"schedule phase of {m!r} must be an int in [0, {k}), got {r!r}")
        unknown = sorted(set(self.phases) - set(self.periods))
        unknown += sorted(set(self.modes) - set(self.periods))
        if unknown:
            raise ValueError(f"schedule phases or modes name models without a period: {unknown}")
        for m, mode in self.modes.items():
            missing = sorted(mode.requires - set(self.periods))
            if missing:
                raise ValueError(f"schedule mode of {m!r} needs unknown models {missing}")

    def mode(self, model: str) -> Mode:
        return self.modes.get(model, Mode("reuse"))

    @property
    def models(self) -> list[str]:
        return sorted(self.periods)

    @property
    def always(self) -> frozenset[str]:
        """The models that run on every frame (the classic active set)."""
        return frozenset(m for m, k in self.periods.items() if k == 1)

    def is_probe(self, seq: int) -> bool:
        return is_probe(seq, self.probe_every, self.probe_stride)

    def runs(self, seq: int, probes: bool = True) -> frozenset[str]:
        """The models that really run on the frame with sequence number ``seq`` of its stream
        (``probes=False``: the ones the schedule itself runs there, as if it were no probe),
        before a ``gate`` mode adds its own (:meth:`gated`)."""
        if probes and self.is_probe(seq):
            return frozenset(self.periods)
        return frozenset(
            m for m, k in self.periods.items() if k > 0 and seq % k == self.phases.get(m, 0)
        )

    def gated(self, ran: Mapping[str, Any]) -> frozenset[str]:
        """The models a ``gate`` mode runs on a frame besides the scheduled ones: those whose
        source is among the frame's outputs ``ran`` and found at least one box there. The
        frame operator runs them after the scheduled models, on the same frame."""
        return frozenset(
            m
            for m, mode in self.modes.items()
            if mode.kind == "gate"
            and m not in ran
            and mode.source in ran
            and finds_anything(ran[mode.source])
        )

    @property
    def uses_motion(self) -> bool:
        """Whether some model is synthesized by ``flow``: the frame operator then measures
        every frame's motion (:class:`~mlink.linkstore.motion.MotionTracker`)."""
        return any(
            mode.kind == "flow" and self.periods.get(m) != 1 for m, mode in self.modes.items()
        )

    @property
    def cascaded(self) -> frozenset[str]:
        """The models with a ``gate`` mode (a layout that plans a frame before any model has run
        on it cannot know where they run, and runs them on every frame)."""
        return frozenset(m for m, mode in self.modes.items() if mode.kind == "gate")

    def describe(self, model: str) -> str:
        """What ``model`` does, in words: ``always runs``, ``probes only, prior`` or
        ``every 4 (phase 1), follow(face)``."""
        period = self.periods[model]
        if period == 1:
            return "always runs"
        phase = self.phases.get(model, 0)
        when = "probes only" if period == 0 else f"every {period} (phase {phase})"
        mode = self.mode(model)
        if mode.kind == "gate":
            return f"{when} and where {mode.source} finds anything, head({mode.source})"
        return f"{when}, {mode.key()}"

    def share(self, model: str) -> float:
        """:func:`run_share` of ``model`` under this schedule."""
        period, phase = self.periods[model], self.phases.get(model, 0)
        return run_share(period, phase, self.probe_every, self.probe_stride)

    def cost(self, costs: Mapping[str, float]) -> float:
        """Expected per-frame cost of the scheduled runs (probes included), e.g. in ms; a
        ``gate`` mode's runs follow the content and are not in it."""
        return float(sum(costs.get(m, 0.0) * self.share(m) for m in self.periods))

    def to_extra(self) -> dict[str, Any]:
        """JSON-ready value for ``ControlMessage.extra["schedule"]``."""
        return {
            "periods": dict(sorted(self.periods.items())),
            "phases": {m: r for m, r in sorted(self.phases.items()) if r},
            "modes": {m: mode.to_json() for m, mode in sorted(self.modes.items())},
            "probe_every": self.probe_every,
            "probe_stride": self.probe_stride,
        }

    @classmethod
    def from_extra(cls, extra: Mapping[str, Any], models: Sequence[str] | None = None) -> Schedule:
        """The schedule a control message carries; with ``models``, it must cover exactly them.

        Raises ``ValueError`` naming what is wrong, so the control replay can reject the message.
        """
        raw = extra.get(EXTRA_KEY) if EXTRA_KEY in extra else extra
        if not isinstance(raw, Mapping) or not isinstance(raw.get("periods"), Mapping):
            raise ValueError("a schedule needs 'periods': a dict of model name to int")
        schedule = cls(
            periods=dict(raw["periods"]),
            phases=dict(raw.get("phases", {})),
            modes={m: Mode.from_json(v) for m, v in dict(raw.get("modes", {})).items()},
            probe_every=raw.get("probe_every", 0),
            probe_stride=raw.get("probe_stride", 0),
        )
        if models is not None and set(models) != set(schedule.periods):
            raise ValueError(
                f"schedule covers {schedule.models}, the pipeline's models are {sorted(models)}"
            )
        return schedule
