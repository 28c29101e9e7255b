"""What a cascade costs follows the content: how often its source fires, watched as frames run.

A ``gate`` mode (:class:`~mlink.linkstore.schedule.Mode`) runs its model on the frames where its
source finds anything. The trainer prices it at the share of warm-up frames where the source
fired (:attr:`~mlink.linkstore.streamfit.Curve.runs`), but the warm-up is not the stream: on the
DNN workload faces are on 20% of warm-up frames and 39% of the rest, so a plan priced on the
warm-up overran its budget by a tenth of the frame's cost. The source runs on every frame
anyway, so how often it fires now is known for free. :class:`FireRates` keeps the recent share
per model, :func:`fire_drift` says when a plan's gates were priced on a share the stream has
left, and :func:`retarget` re-prices the curves so the controller can plan again.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from mlink.linkstore.boxlinks import as_boxes
from mlink.linkstore.schedule import Schedule
from mlink.linkstore.streamfit import Curve

__all__ = [
    "MIN_FRAMES",
    "TOLERANCE",
    "WINDOW",
    "FireRates",
    "assumed_rates",
    "fire_drift",
    "retarget",
]

WINDOW = 64  # recent frames per source: about a clip's worth on the workloads, so a new scene
# shows within a few dozen frames
MIN_FRAMES = 16  # frames seen since the plan before its prices are judged
TOLERANCE = 0.05  # a share that moved less than this (or than 2 standard errors) is noise


class FireRates:
    """The share of recent frames (``window`` per model) on which each box model found
    anything, counted on the frames it ran on."""

    def __init__(self, models: Iterable[str], window: int = WINDOW) -> None:
        if window < 1:
            raise ValueError(f"FireRates window must be >= 1, got {window}")
        self.recent: dict[str, deque[bool]] = {m: deque(maxlen=window) for m in models}
        self.seen: dict[str, int] = dict.fromkeys(self.recent, 0)

    def observe(self, ran: Mapping[str, Any]) -> None:
        """One frame's real outputs (any models; only the box models watched count)."""
        for m, output in ran.items():
            if m in self.recent:
                self.recent[m].append(as_boxes(output).size > 0)
                self.seen[m] += 1

    def rate(self, model: str) -> tuple[float, int] | None:
        """The recent share and how many frames it is over, or None before any."""
        window = self.recent.get(model)
        if not window:
            return None
        return float(np.mean(window)), len(window)

    def rates(self) -> dict[str, float]:
        return {m: r[0] for m in self.recent if (r := self.rate(m)) is not None}


def fire_drift(
    schedule: Schedule,
    assumed: Mapping[str, float],
    rates: FireRates,
    since: Mapping[str, int],
    tolerance: float = TOLERANCE,
    min_frames: int = MIN_FRAMES,
) -> str | None:
    """Why the gates of ``schedule`` are mispriced, or None: a gate's source fired on a recent
    share that differs from the ``assumed`` one (per source, what the plan was priced on) by
    more than ``tolerance`` and two standard errors, over at least ``min_frames`` frames seen
    since the plan (``since``: each model's :attr:`FireRates.seen` when it was made)."""
    why = []
    for source in sorted({schedule.mode(m).source for m in schedule.cascaded} - {None}):
        assert source is not None
        got = rates.rate(source)
        if got is None or source not in assumed:
            continue
        share, n = got
        fresh = rates.seen.get(source, 0) - since.get(source, 0)
        if fresh < min_frames:
            continue
        before = assumed[source]
        error = 2.0 * np.sqrt(max(before * (1.0 - before), 0.01) / min(n, fresh))
        if abs(share - before) > max(tolerance, error):
            why.append(f"{source} fires on {share:.0%} of recent frames, priced at {before:.0%}")
    return "; ".join(why) if why else None


def retarget(
    curves: Mapping[str, Sequence[Curve]], rates: Mapping[str, float]
) -> dict[str, list[Curve]]:
    """``curves`` with each gate re-priced on its source's share in ``rates``: it runs on that
    share and is its head elsewhere, whose agreement there is what the trainer estimated."""
    out: dict[str, list[Curve]] = {}
    for t, cs in curves.items():
        out[t] = []
        gates = {c.mode.source: c for c in cs if c.mode.kind == "gate"}
        for c in cs:
            source = c.mode.source
            g = gates.get(source)
            if c.mode.kind == "head" and g is not None and source in rates and 0 < g.runs < 1:
                import os

                if os.environ.get("RW") == "1":
                    nofire = (g.agree[1] - g.runs) / (1.0 - g.runs)
                    onfire = (c.agree[1] - (1.0 - g.runs) * nofire) / g.runs
                    f = min(max(float(rates[source]), 0.0), 1.0)
                    a = f * onfire + (1 - f) * nofire
                    out[t].append(replace(c, agree=(1.0,) + (a,) * (len(c.agree) - 1)))
                    continue
            if c.mode.kind != "gate" or source not in rates or c.runs >= 1.0:
                out[t].append(c)
                continue
            fired = min(max(float(rates[source]), 0.0), 1.0)
            head = [(a - c.runs) / (1.0 - c.runs) for a in c.agree[1:]]
            agree = (1.0, *(fired + (1.0 - fired) * h for h in head))
            out[t].append(replace(c, agree=agree, runs=fired))
    return out


def assumed_rates(curves: Mapping[str, Sequence[Curve]]) -> dict[str, float]:
    """Per gate source, the share the curves price it at."""
    return {
        c.mode.source: c.runs
        for cs in curves.values()
        for c in cs
        if c.mode.kind == "gate" and c.mode.source
    }
