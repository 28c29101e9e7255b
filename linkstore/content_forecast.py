"""A plan's accuracy re-weighted to the content its active models see: a forecast without labels.

A plan's estimate is the synthesized models' agreement on the scored training frames, the head
of each stream. When the rest of a stream shows other content (faces that the warm-up never
showed), the estimate is an average over the wrong mix of frames. The active models run on every
frame, so how often they find something is known as the stream goes, without running any
synthesized model. The forecast here splits the scored frames by that *content signature*
(how many active detectors find anything, capped at :data:`MAX_FIRING`), takes each synthesized
model's agreement per signature (:class:`ContentTable`, which travels in the plan's control
message), and weighs the signatures by their share of the frames seen.

Signatures the scored frames had fewer than :data:`MIN_SAMPLES` of carry the model's overall
agreement, and their share is reported as ``unseen``: the part of the run that no estimate has
scored, which a wider warm-up or probes can cover and nothing computed from the warm-up can.
``floor`` is the forecast with the synthesized models scoring 0 on those frames: what the plan
keeps if synthesis fails outright on content it was never scored on.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from mlink.linkstore.boxlinks import finds_anything
from mlink.linkstore.crossfit import MixedOracle, PooledOracle
from mlink.linkstore.oracle import AgreementOracle, SampleOracle
from mlink.topics.specs import BoxesSpec, OutputSpec

__all__ = [
    "MAX_FIRING",
    "MIN_SAMPLES",
    "ContentForecast",
    "ContentTable",
    "content_table",
    "frame_signature",
    "plan_content_forecast",
    "signatures",
]

#: Signatures count firing detectors up to this many; more would split ~60 warm-up frames thin.
MAX_FIRING = 3
#: Fewest scored frames of a signature whose own mean is used; fewer count as unseen.
MIN_SAMPLES = 3
_SIGNATURES = MAX_FIRING + 1


@dataclass(frozen=True, slots=True)
class ContentForecast:
    """``value``: the re-weighted agreement over all models; ``unseen``: the share of frames
    seen whose signature the scored frames (nearly) never had, forecast by the overall mean;
    ``floor``: ``value`` with those frames' synthesized agreement 0 instead."""

    value: float
    unseen: float
    floor: float


def frame_signature(outputs: Mapping[str, Any], detectors: Iterable[str]) -> int:
    """How many of ``detectors`` found anything in one frame's ``outputs`` (a detector that
    did not run, failed or returned something that is not boxes finds nothing), capped at
    :data:`MAX_FIRING`."""
    return min(sum(_fired(outputs.get(m)) for m in detectors), MAX_FIRING)


def _fired(output: Any) -> bool:
    if output is None:
        return False
    try:
        return finds_anything(output)
    except (ValueError, TypeError):  # not (n, 5) boxes: a count is never worth a crash
        return False


def _detectors(active: Iterable[str], specs: Mapping[str, OutputSpec]) -> tuple[str, ...]:
    """The active models with box outputs: models with other outputs do not count, so the
    signature is cheap and means the same on every workload."""
    return tuple(sorted(m for m in active if isinstance(specs[m], BoxesSpec)))


def signatures(
    outputs: Mapping[str, Sequence[Any]], active: Iterable[str], specs: Mapping[str, OutputSpec]
) -> np.ndarray:
    """:func:`frame_signature` of every frame of aligned ``outputs`` (all zeros when no active
    model is a detector)."""
    detectors = _detectors(active, specs)
    n = len(next(iter(outputs.values()))) if outputs else 0
    fired = np.zeros(n, dtype=np.int64)
    for m in detectors:
        fired += np.fromiter((finds_anything(o) for o in outputs[m]), dtype=np.int64, count=n)
    return np.minimum(fired, MAX_FIRING)


@dataclass(frozen=True, slots=True)
class ContentTable:
    """What a plan expects of each synthesized model per content signature.

    ``overall[m]`` is the plan's estimate for ``m`` (the mean over scored frames);
    ``by_signature[m][s]`` its mean over the scored frames of signature ``s`` (``overall[m]``
    where ``seen[s]`` is False); ``runs`` the number of models the plan runs, which count 1.
    """

    detectors: tuple[str, ...]
    runs: int
    overall: dict[str, float]
    by_signature: dict[str, tuple[float, ...]]
    seen: tuple[bool, ...]

    def __post_init__(self) -> None:
        """Refuse any table :meth:`forecast` could not divide by or would turn into NaN: it
        travels in control messages, and a table that raises there would crash every worker
        replaying it."""
        if len(self.seen) != _SIGNATURES or not all(type(s) is bool for s in self.seen):
            raise ValueError(f"a content table needs {_SIGNATURES} seen flags, got {self.seen}")
        if type(self.runs) is not int or self.runs < 0:
            raise ValueError(f"a content table needs runs: an int >= 0, got {self.runs!r}")
        if self.runs + len(self.overall) == 0:
            raise ValueError(
                "a content table with runs 0 and no synthesized model forecasts nothing; "
                "a plan with no models carries no table"
            )
        if set(self.overall) != set(self.by_signature):
            raise ValueError(
                f"a content table needs one by_signature row per synthesized model: overall "
                f"has {sorted(self.overall)}, by_signature {sorted(self.by_signature)}"
            )
        for m, row in self.by_signature.items():
            values = (self.overall[m], *row)
            if len(row) != _SIGNATURES or not all(
                isinstance(v, float) and math.isfinite(v) and 0.0 <= v <= 1.0 for v in values
            ):
                raise ValueError(f"{m}: agreements must be {_SIGNATURES + 1} numbers in [0, 1]")

    def forecast(self, counts: Sequence[int] | np.ndarray) -> ContentForecast:
        """The plan's agreement over all models on frames whose signatures were counted
        ``counts[s]`` times; with none counted yet, its estimate."""
        counts = np.asarray(counts, dtype=float)
        total = self.runs + len(self.overall)
        if counts.sum() <= 0:
            estimate = (self.runs + sum(self.overall.values())) / total
            return ContentForecast(estimate, 0.0, estimate)
        share = counts / counts.sum()
        seen = np.asarray(self.seen)
        rows = np.array([self.by_signature[m] for m in self.overall]).reshape(-1, _SIGNATURES)
        synthesized = rows @ share
        known = rows @ (share * seen)
        return ContentForecast(
            float((self.runs + synthesized.sum()) / total),
            float(share[~seen].sum()),
            float((self.runs + known.sum()) / total),
        )

    def to_meta(self) -> dict[str, Any]:
        """JSON-ready form for an ``active_set`` message's ``extra["content"]``."""
        return {
            "detectors": list(self.detectors),
            "runs": self.runs,
            "overall": {m: round(v, 6) for m, v in self.overall.items()},
            "by_signature": {m: [round(v, 6) for v in r] for m, r in self.by_signature.items()},
            "seen": list(self.seen),
        }

    @classmethod
    def from_meta(cls, meta: Any, models: Iterable[str]) -> ContentTable:
        """Read a table from a control message; ValueError when it is malformed or names a
        model outside ``models`` (a record may say anything)."""
        known = set(models)
        try:
            detectors = tuple(str(m) for m in meta["detectors"])
            overall = {str(m): float(v) for m, v in meta["overall"].items()}
            rows = {str(m): tuple(float(v) for v in r) for m, r in meta["by_signature"].items()}
            seen = tuple(bool(s) for s in meta["seen"][: _SIGNATURES + 1])
            runs = meta["runs"]
        except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as exc:
            raise ValueError(f"malformed content table: {exc!r}") from exc
        if type(runs) is not int:  # 2.5 or True would pass int() and count models wrongly
            raise ValueError(f"content table runs must be an int, got {runs!r}")
        if not {*detectors, *overall} <= known:
            raise ValueError("content table names models this pipeline does not have")
        if runs + len(overall) > len(known):  # the run and the synthesized models are disjoint
            raise ValueError(
                f"content table counts {runs} run and {len(overall)} synthesized models; this "
                f"pipeline has {len(known)}"
            )
        return cls(detectors, runs, overall, rows, seen)


def _scored(
    oracle: SampleOracle, active: frozenset[str], target: str, specs: Mapping[str, OutputSpec]
) -> list[tuple[np.ndarray, np.ndarray]]:
    """(per-frame scores, signatures) for each estimate the oracle averages."""
    if isinstance(oracle, MixedOracle):
        return [pair for e in oracle.estimates for pair in _scored(e, active, target, specs)]
    if isinstance(oracle, PooledOracle):
        parts = [_scored(p, active, target, specs)[0] for p in oracle.parts]
        return [(np.concatenate([s for s, _ in parts]), np.concatenate([g for _, g in parts]))]
    if isinstance(oracle, AgreementOracle):
        return [(oracle.per_sample(active, target), signatures(oracle.outputs, active, specs))]
    raise TypeError(f"{type(oracle).__name__} keeps no per-frame scores to re-weight")


def content_table(
    oracle: SampleOracle, active: Iterable[str], specs: Mapping[str, OutputSpec]
) -> ContentTable:
    """The :class:`ContentTable` of the plan that runs ``active``, from the oracle it was chosen
    with; a mixed oracle's estimates are split one by one and averaged, as it averages them.
    TypeError for an oracle that keeps no per-frame scores."""
    active = frozenset(active)
    synthesized = [m for m in oracle.models if m not in active]
    seen = np.ones(_SIGNATURES, dtype=bool)
    overall, rows = {}, {}
    for m in synthesized:
        means, fulls = [], []
        for scores, sig in _scored(oracle, active, m, specs):
            if len(scores) == 0:
                raise ValueError(f"no scored frames for {m}")
            n = np.bincount(sig, minlength=_SIGNATURES)
            sums = np.bincount(sig, weights=scores, minlength=_SIGNATURES)
            mean = float(scores.mean())
            ok = n >= MIN_SAMPLES
            seen &= ok
            means.append(mean)
            fulls.append(np.where(ok, sums / np.maximum(n, 1), mean))
        overall[m] = float(np.mean(means))
        rows[m] = tuple(float(v) for v in np.clip(np.mean(fulls, axis=0), 0.0, 1.0))
    runs = len(oracle.models) - len(synthesized)
    detectors = _detectors(active & set(oracle.models), specs)
    return ContentTable(detectors, runs, overall, rows, tuple(bool(s) for s in seen))


def plan_content_forecast(
    oracle: SampleOracle,
    active: Iterable[str],
    seen_outputs: Mapping[str, Sequence[Any]],
    specs: Mapping[str, OutputSpec],
) -> ContentForecast:
    """The plan's agreement over all models re-weighted to the content of ``seen_outputs``: the
    active models' outputs on the frames the plan ran on, the only outputs a running plan has."""
    table = content_table(oracle, active, specs)
    seen = signatures(seen_outputs, table.detectors, specs)
    return table.forecast(np.bincount(seen, minlength=_SIGNATURES))
