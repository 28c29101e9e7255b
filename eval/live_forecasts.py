"""The controller's forecasts of a live run, frame by frame, beside what the frames kept.

A stream plan's up-front estimate comes from the warm-up; ``mlink status`` also shows a forecast
that follows the probes (:func:`~mlink.operators.stream_decision.live_forecast`). To check both
on a finished run, :func:`forecasts_in_force` replays the control log the workers obeyed and
gives each planned frame the forecasts in force when its result was emitted: its epoch's
estimate and forecast bound (what the plan promised), and the forecast from the newest probe
report of the epoch issued before (the plan's forecast bound before the first). A frame's own
probe can count in the report only if the report was issued before the frame's result, i.e.
never for the frame itself. Plans of the paper's links also get their content-weighted forecast
(:mod:`mlink.linkstore.content_forecast`) over the results of their epoch emitted before the
frame's, all workers' together: what each worker's ``mlink_forecast{basis="content"}`` shows
for its own frames.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from mlink.operators.content_tally import ContentTally
from mlink.operators.state import ControlState
from mlink.operators.stream_decision import (
    live_forecast,
    plan_estimate,
    plan_promise,
    state_forecast,
)
from mlink.topics.records import ControlMessage, FrameResult

__all__ = ["Forecasts", "forecasts_in_force"]


@dataclass(frozen=True, slots=True)
class Forecasts:
    """Per planned frame (frame id -> forecast) the plan's estimate, the one with probes (the
    plan's forecast bound until a probe report, or its estimate for a plan that carries no
    bound; ``reports`` counts the reports that gave one: none for the paper's links, whose
    plans carry no run shares), what the plan promised (``bound``: its forecast bound, only for
    frames whose plan carries one), and the content-weighted forecast (``content``, only for
    frames whose plan carries a content table)."""

    up_front: dict[str, float]
    with_probes: dict[str, float]
    reports: int = 0
    bound: dict[str, float] = field(default_factory=dict)
    content: dict[str, float] = field(default_factory=dict)


def forecasts_in_force(
    models: Iterable[str],
    control: Sequence[ControlMessage],
    results: Mapping[str, FrameResult],
) -> Forecasts:
    """The forecasts each frame planned under a plan with an estimate ran with (see the module
    docstring); frames of the warm-up (epoch 0) and of plans without an estimate get none."""
    state = ControlState(tuple(sorted(models)))
    objective: dict[int, float] = {}
    unprobed: dict[int, float] = {}  # epoch -> its forecast before any probe report
    promised: dict[int, float] = {}  # epoch -> its forecast bound (plans that carry one)
    timeline: dict[int, tuple[list[float], list[float]]] = {}  # epoch -> (issued_at, forecast)
    tallies: dict[int, ContentTally] = {}  # epoch -> its plan's content count (paper's links)
    for message in control:
        if state.apply(message).status != "applied":
            continue
        estimate = plan_estimate(state.plan_extra)
        if message.kind == "active_set" and state.content is not None:
            tallies[state.epoch] = tally = ContentTally()
            tally.plan(state.content, state.epoch)
        if message.kind == "active_set" and estimate is not None:
            objective[state.epoch] = estimate
            promise = plan_promise(state.plan_extra)
            if promise is not None:
                promised[state.epoch] = promise
            bound = promise if promise is not None else live_forecast(state.plan_extra, {}, 0)
            unprobed[state.epoch] = estimate if bound is None else bound
        if message.kind != "agreement" or state.epoch not in objective:
            continue
        if (value := state_forecast(state)) is not None:
            times, values = timeline.setdefault(state.epoch, ([], []))
            times.append(max(message.issued_at, times[-1] if times else 0.0))  # log order
            values.append(value)
    up_front, with_probes, bounds = {}, {}, {}
    for frame_id, result in results.items():
        if result.epoch not in objective:
            continue
        up_front[frame_id] = objective[result.epoch]
        with_probes[frame_id] = unprobed[result.epoch]
        if result.epoch in promised:
            bounds[frame_id] = promised[result.epoch]
        times, values = timeline.get(result.epoch, ([], []))
        k = bisect.bisect_left(times, result.emitted_at)  # reports issued before the result
        if k:
            with_probes[frame_id] = values[k - 1]
    reports = sum(len(t) for t, _ in timeline.values())
    return Forecasts(up_front, with_probes, reports, bounds, _content(tallies, results))


def _content(
    tallies: Mapping[int, ContentTally], results: Mapping[str, FrameResult]
) -> dict[str, float]:
    """Each frame's content-weighted forecast over its epoch's results emitted before it."""
    content = {}
    for frame_id, result in sorted(results.items(), key=lambda kv: kv[1].emitted_at):
        tally = tallies.get(result.epoch)
        if tally is not None and (forecast := tally.forecast()) is not None:
            content[frame_id] = forecast.value
            tally.add(result)
    return content
