"""A mode's expected agreement by frames since its model last ran: what the trainer estimates
(:mod:`mlink.linkstore.streamfit`) and the controller plans from
(:mod:`mlink.linkstore.streamplan`), saved in a link version's metadata."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from mlink.linkstore.schedule import Mode
from mlink.linkstore.streamerror import PSEUDO_STREAMS, between_streams, stream_mean

__all__ = ["Curve", "constant_curve"]


@dataclass(frozen=True, slots=True)
class Curve:
    """Estimated agreement of synthesizing ``target`` by ``mode``, by frames since its last run.

    ``agree[d]`` for ``d = 0 .. max_lag`` (``agree[0] = 1``: the model ran); modes that use no
    memory (``head``, ``prior``, ``links``) have the same value at every ``d >= 1``.
    ``support[d]`` is the number of scored samples behind ``agree[d]``, ``spread`` the standard
    deviation of per-sample agreement (for a confidence bound), ``synth_ms`` the measured cost of
    one synthesized output, ``between`` the standard error of the mean from how it differs
    between streams (:func:`~mlink.linkstore.streamerror.between_streams`; a floor under the
    confidence margin, 0 for one stream). ``runs`` is the share of the frames the schedule does
    not run the model on where the mode runs it anyway (a ``gate``: how often its source fires;
    those frames count 1 in ``agree``); ``priced_runs`` is the share its cost is priced at,
    higher than ``runs`` by a margin because what a cascade costs follows the content (None:
    ``runs``). ``predictive`` is ``between`` for a forecast rather
    than a plan's choice: with :data:`~mlink.linkstore.streamerror.PSEUDO_STREAMS` more streams
    of the largest variance (None in curves saved before it: ``between``). ``frame_ms`` is a
    per-frame cost the mode adds once however many models use it (``flow``: measuring every
    frame's motion), which the planner charges once per plan.
    """

    target: str
    mode: Mode
    agree: tuple[float, ...]
    support: tuple[int, ...]
    spread: float = 0.5
    synth_ms: float = 0.0
    between: float = 0.0
    runs: float = 0.0
    predictive: float | None = None
    frame_ms: float = 0.0
    priced_runs: float | None = None

    @property
    def cost_runs(self) -> float:
        return self.runs if self.priced_runs is None else self.priced_runs

    @property
    def forecast_between(self) -> float:
        return self.between if self.predictive is None else self.predictive

    @property
    def max_lag(self) -> int:
        return len(self.agree) - 1

    def to_meta(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "mode": self.mode.to_json(),
            "agree": [round(a, 6) for a in self.agree],
            "support": list(self.support),
            "spread": round(self.spread, 6),
            "synth_ms": self.synth_ms,
            "between": round(self.between, 6),
            "runs": round(self.runs, 6),
            **({} if self.predictive is None else {"predictive": round(self.predictive, 6)}),
            **({"frame_ms": self.frame_ms} if self.frame_ms else {}),
            **({} if self.priced_runs is None else {"priced_runs": round(self.priced_runs, 6)}),
        }

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any]) -> Curve:
        return cls(
            str(meta["target"]),
            Mode.from_json(meta["mode"]),
            tuple(float(a) for a in meta["agree"]),
            tuple(int(n) for n in meta["support"]),
            float(meta.get("spread", 0.5)),
            float(meta.get("synth_ms", 0.0)),
            float(meta.get("between", 0.0)),
            float(meta.get("runs", 0.0)),
            None if meta.get("predictive") is None else float(meta["predictive"]),
            float(meta.get("frame_ms", 0.0)),
            None if meta.get("priced_runs") is None else float(meta["priced_runs"]),
        )


def constant_curve(
    target: str,
    mode: Mode,
    scores: np.ndarray,
    max_lag: int,
    synth_ms: float = 0.0,
    streams: Sequence[str] | None = None,
    balanced: bool = False,
) -> Curve:
    """The curve of a mode that uses no memory, from per-sample agreements (``streams``: each
    sample's stream, for the between-stream error; ``balanced``: every stream weighs the same,
    :func:`~mlink.linkstore.streamerror.stream_weights`)."""
    balanced = balanced and streams is not None
    groups = streams if streams is not None else [0] * len(scores)
    mean = stream_mean(scores, groups, balanced) if len(scores) else 0.0
    spread = float(np.std(scores)) if len(scores) > 1 else 0.5
    between = between_streams(scores, groups, balanced=balanced) if streams is not None else 0.0
    ahead = (
        between_streams(scores, groups, PSEUDO_STREAMS, balanced) if streams is not None else 0.0
    )
    return Curve(
        target,
        mode,
        (1.0,) + (mean,) * max_lag,
        (0,) + (len(scores),) * max_lag,
        spread,
        synth_ms,
        between,
        predictive=ahead,
    )
