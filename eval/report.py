"""What a pipeline run saved and kept, measured against a full run of every model.

The full run is every model's real output on the very frames the workers saw (after the same
JPEG/PNG round trip), computed offline and cached, so the comparison is exact. The figures:

- *agreement*, per model and overall: every result of the model scores its agreement with the
  full run, executed outputs 1 and missing ones 0 (what a consumer of the results gets);
- *synthesized only*: the same over synthesized results alone (how far a synthesized output can
  be trusted);
- *steady*: frames after warm-up (epoch > 0) that were not probes (a probe frame runs every model
  to train links and measure live agreement, so it would flatter both accuracy and cost);
- *compute saved*: ``1 - spent / full`` per frame, from ONE cost table for the models -- declared
  in the config when every model declares ``cost.ms``, else measured live in the run (on the
  frames where every model ran, as the controller plans; the offline reference run's timings
  only if a model never ran; :func:`mlink.eval.cost_tables.model_cost_table`) --
  ``cost_source`` says which --
  plus synthesis as the trainer measured it for the link version that synthesized each result
  (``synthesis_cost_source``): the target's ensemble and one link per source for the paper's
  links, the mode's own cost for a stream mode (:mod:`mlink.eval.synthesis_costs`);
- *compute saved, solo*: the same priced on the offline reference run's timings (each model
  alone, one call after another). Live timings are wall times of models that run concurrently,
  so a call also waits for the CPU, most on warm-up and probe frames where every model runs at
  once; that overstates what a budgeted frame saves, and the solo table does not.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mlink.deploy.config import PipelineConfig
from mlink.deploy.runner import RunReport
from mlink.eval.cost_tables import model_cost_table, reference_ms
from mlink.eval.live_forecasts import forecasts_in_force
from mlink.eval.plan_notes import plan_notes
from mlink.eval.synthesis_costs import SynthesisCosts, schedules_by_epoch, stored_synthesis_costs
from mlink.eval.workload import Workload
from mlink.linkstore.metrics import agreement
from mlink.linkstore.schedule import Schedule
from mlink.operators.relearn import RELEARN_KEY
from mlink.operators.state import ControlState
from mlink.topics.frames import decode_frame, encode_frame
from mlink.topics.records import ControlMessage, FrameResult

__all__ = [
    "RunSummary",
    "frame_ids",
    "summarize",
    "wire_frames",
]


@dataclass(slots=True)
class RunSummary:
    frames: int
    results: int
    degraded: int
    duplicates: int
    seconds: float
    throughput_fps: float
    latency_p50_ms: float
    latency_p99_ms: float
    # steady frames only: with a paced source, what a camera sees once the warm-up's backlog is
    # worked off (warm-up frames wait for the first links; probes run every model)
    steady_latency_p50_ms: float
    steady_latency_p99_ms: float
    executed: dict[str, int]
    synthesized: dict[str, int]
    missing: dict[str, int]
    agreement: dict[str, float]
    synthesized_agreement: dict[str, float | None]
    steady_agreement: dict[str, float]
    steady_synthesized_agreement: dict[str, float | None]
    accuracy: float
    synthesized_accuracy: float | None
    compute_saved: float
    steady_frames: int
    warmup_frames: int
    # per stream: a backlog's warm-up is not the cameras in turn (docs/stream-synthesis.md)
    warmup_streams: dict[str, int]
    probe_frames: int  # planned probes; the frames of a relearn plan are counted apart
    steady_accuracy: float
    steady_synthesized_accuracy: float | None
    steady_compute_saved: float
    steady_compute_saved_solo: float
    cost_source: str
    model_ms: dict[str, float]
    synthesis_cost_source: str
    link_versions: list[int]
    final_active: list[str]
    # the controller's forecasts for the frames planned under a plan with an estimate (probes
    # count every model as 1, as the plan's estimate does), beside what those frames kept
    forecast_frames: int = 0
    forecast_kept: float | None = None
    forecast_up_front: float | None = None
    forecast_with_probes: float | None = None
    forecast_bound: float | None = None  # what the plans promised (stream plans' bounds)
    # the paper's links: the estimate re-weighted to what the active detectors found before
    forecast_content: float | None = None
    # frames under a plan that ran every model because the store lost the links in force
    # (mlink.operators.relearn): not steady, and not the plan's probes either
    relearn_frames: int = 0
    # results for frame ids this run did not send: left out of every figure above
    unknown_results: int = 0
    # degraded results of frames that never got a plan (epoch 0, no probe): neither warm-up nor
    # steady
    unplanned_frames: int = 0
    # what the controller said about its plans: infeasible budgets, re-plans, unmet targets
    # (mlink.eval.plan_notes)
    plan_notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__slots__}


def wire_frames(config: PipelineConfig, frames: list[tuple[str, np.ndarray]]) -> list:
    """The frames as a worker decodes them (after the source's encoding round trip)."""
    src = config.source
    return [
        (stream, decode_frame(encode_frame(img, stream, 0, 0.0, src.encoding, src.jpeg_quality)))
        for stream, img in frames
    ]


def frame_ids(frames: list[tuple[str, np.ndarray]]) -> list[str]:
    seqs: dict[str, int] = defaultdict(int)
    ids = []
    for stream, _ in frames:
        ids.append(f"{stream}:{seqs[stream]}")
        seqs[stream] += 1
    return ids


def _mean(values: Iterable[float]) -> float:
    values = list(values)
    return float(np.mean(values)) if values else float("nan")


def _mean_or_none(values: Iterable[float]) -> float | None:
    values = list(values)
    return float(np.mean(values)) if values else None


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


@dataclass(slots=True)
class _Scored:
    """One frame's results scored against the full run."""

    cost: float
    solo_cost: float
    scores: dict[str, float]  # model -> agreement (executed 1, missing 0)
    synthesized: set[str]
    steady: bool


def _score(
    result: FrameResult,
    i: int,
    specs: Mapping[str, Any],
    full: Workload,
    model_ms: Mapping[str, float],
    synthesis: Mapping[int, SynthesisCosts],
    solo_ms: Mapping[str, float],
    schedule: Schedule | None,
) -> _Scored:
    cost, solo, scores, synthesized = 0.0, 0.0, {}, set()
    for r in result.results:
        if r.status == "executed":
            cost += model_ms[r.model]
            solo += solo_ms[r.model]
            scores[r.model] = 1.0
        elif r.status == "synthesized":
            mode = schedule.mode(r.model) if schedule is not None else None
            synth = synthesis.get(r.link_version, SynthesisCosts()).of(r.model, r.sources, mode)
            cost, solo = cost + synth, solo + synth
            truth = [full.outputs[r.model][i]]
            scores[r.model] = float(agreement(specs[r.model], [r.output], truth)[0])
            synthesized.add(r.model)
        else:
            scores[r.model] = 0.0
        if r.status != "executed" and r.cost_ms is not None:  # a call that failed still ran
            cost += model_ms[r.model]
            solo += solo_ms[r.model]
    return _Scored(cost, solo, scores, synthesized, result.epoch > 0 and not result.probe)


def summarize(
    config: PipelineConfig,
    report: RunReport,
    full: Workload,
    ids: list[str],
    synthesis: Mapping[int, SynthesisCosts] | None = None,
) -> RunSummary:
    """Compare every result with the full run (see the module docstring for the figures).

    ``synthesis`` gives the synthesis costs per link version (default: what the config's
    linkstore recorded).
    """
    specs = config.specs()
    index = {f: i for i, f in enumerate(ids)}
    # results of frames this run did not send (another source on the topic, a previous run's
    # backlog) are counted apart and left out of every figure, counts and costs too
    results = {f: r for f, r in report.results.items() if f in index}
    model_ms, cost_source = model_cost_table(config, full, results.values())
    if synthesis is None:
        synthesis = stored_synthesis_costs(config.links.store)
        synthesis_source = "measured by the trainer for each link version (linkstore metadata)"
    else:
        synthesis_source = "given"
    total_per_frame = sum(model_ms.values())
    solo_ms = reference_ms(config, full)
    schedules = schedules_by_epoch(config.model_names, report.control)
    scored = {
        fid: _score(
            result,
            index[fid],
            specs,
            full,
            model_ms,
            synthesis,
            solo_ms,
            schedules.get(result.epoch),
        )
        for fid, result in results.items()
    }
    steady = [s for s in scored.values() if s.steady]
    models = config.model_names

    def per_model(frames: list[_Scored], only_synthesized: bool) -> dict[str, list[float]]:
        out: dict[str, list[float]] = {m: [] for m in models}
        for s in frames:
            for m, v in s.scores.items():
                if not only_synthesized or m in s.synthesized:
                    out[m].append(v)
        return out

    def accuracy(frames: list[_Scored]) -> float:
        return _mean(_mean(s.scores.values()) for s in frames)

    def synthesized_accuracy(frames: list[_Scored]) -> float | None:
        return _mean_or_none(s.scores[m] for s in frames for m in s.synthesized)

    def share_saved(spent: float, full_cost: float) -> float:
        # a table that prices every model at 0 (calls below the clock's resolution) saves
        # nothing measurable: no figure, not a crash
        return 1 - spent / full_cost if full_cost > 0 else float("nan")

    def saved(frames: list[_Scored]) -> float:
        return share_saved(_mean(s.cost for s in frames), total_per_frame)

    def saved_solo(frames: list[_Scored]) -> float:
        return share_saved(_mean(s.solo_cost for s in frames), sum(solo_ms.values()))

    unpriced = sorted(
        {
            r.link_version
            for res in results.values()
            for r in res.results
            if r.status == "synthesized" and r.link_version not in synthesis
        },
        key=lambda v: -1 if v is None else v,
    )
    if unpriced:  # said, not hidden: their synthesis is counted as free
        synthesis_source += (
            f"; none recorded for link versions {unpriced}, whose synthesis is counted as 0 ms"
        )
    everything = list(scored.values())
    relearned = relearn_epochs(models, report.control)
    # a warm-up plan is a probe of every frame; a degraded result of epoch 0 without it is a
    # frame that never got a plan (the split layout's join timeout, operators/joiner.py)
    unplanned = {f for f, r in results.items() if r.epoch == 0 and r.degraded and not r.probe}
    warmup = Counter(r.stream_id for f, r in results.items() if r.epoch == 0 and f not in unplanned)
    forecasts = forecasts_in_force(models, report.control, results)
    forecast = sorted(forecasts.up_front)
    by_frame = {f: ms for f, ms in report.latency_ms().items() if f in results}
    lat = sorted(by_frame.values())
    steady_lat = [by_frame[f] for f, s in scored.items() if s.steady and f in by_frame]
    last = max(results.values(), key=lambda r: (r.epoch, r.emitted_at), default=None)
    statuses = [(r.model, r.status) for res in results.values() for r in res.results]
    return RunSummary(
        frames=report.frames,
        results=len(results),
        unknown_results=len(report.results) - len(results),
        degraded=sum(r.degraded for r in results.values()),
        duplicates=report.duplicates,
        seconds=report.seconds,
        throughput_fps=len(results) / report.seconds if report.seconds else 0.0,
        latency_p50_ms=_percentile(lat, 50),
        latency_p99_ms=_percentile(lat, 99),
        steady_latency_p50_ms=_percentile(steady_lat, 50),
        steady_latency_p99_ms=_percentile(steady_lat, 99),
        executed=_count(statuses, "executed"),
        synthesized=_count(statuses, "synthesized"),
        missing=_count(statuses, "missing"),
        agreement={m: _mean(v) for m, v in per_model(everything, False).items() if v},
        synthesized_agreement={m: _mean_or_none(v) for m, v in per_model(everything, True).items()},
        steady_agreement={m: _mean(v) for m, v in per_model(steady, False).items() if v},
        steady_synthesized_agreement={
            m: _mean_or_none(v) for m, v in per_model(steady, True).items()
        },
        accuracy=accuracy(everything),
        synthesized_accuracy=synthesized_accuracy(everything),
        compute_saved=saved(everything),
        steady_frames=len(steady),
        warmup_frames=sum(warmup.values()),
        warmup_streams=dict(sorted(warmup.items())),
        probe_frames=sum(
            r.probe and r.epoch > 0 and r.epoch not in relearned for r in results.values()
        ),
        relearn_frames=sum(r.epoch in relearned for r in results.values()),
        unplanned_frames=len(unplanned),
        steady_accuracy=accuracy(steady),
        steady_synthesized_accuracy=synthesized_accuracy(steady),
        steady_compute_saved=saved(steady),
        steady_compute_saved_solo=saved_solo(steady),
        cost_source=cost_source,
        model_ms=model_ms,
        synthesis_cost_source=synthesis_source,
        link_versions=sorted(
            {r.link_version for res in results.values() for r in res.results} - {None}
        ),
        final_active=_ran_on_every_steady_frame(results.values(), last),
        forecast_frames=len(forecast),
        forecast_kept=_mean_or_none(_mean(scored[f].scores.values()) for f in forecast),
        forecast_up_front=_mean_or_none(forecasts.up_front[f] for f in forecast),
        forecast_with_probes=(
            _mean_or_none(forecasts.with_probes[f] for f in forecast) if forecasts.reports else None
        ),
        # only when every planned frame's plan promised one: else the means cover other frames
        forecast_bound=(
            _mean_or_none(forecasts.bound[f] for f in forecast)
            if forecast and set(forecast) <= set(forecasts.bound)
            else None
        ),
        forecast_content=(
            _mean_or_none(forecasts.content[f] for f in forecast)
            if forecast and set(forecast) <= set(forecasts.content)
            else None
        ),
        plan_notes=plan_notes(report.control, report.started_at),
    )


def relearn_epochs(models: Iterable[str], control: Iterable[ControlMessage]) -> set[int]:
    """The epochs whose plan ran every model because the links in force were lost."""
    state = ControlState(tuple(sorted(models)))
    out = set()
    for message in control:
        applied = state.apply(message).status == "applied"
        if applied and message.kind == "active_set" and RELEARN_KEY in state.plan_extra:
            out.add(state.epoch)
    return out


def _count(statuses: list[tuple[str, str]], status: str) -> dict[str, int]:
    counts: dict[str, int] = defaultdict(int)
    for model, s in statuses:
        if s == status:
            counts[model] += 1
    return dict(counts)


def _ran_on_every_steady_frame(
    results: Iterable[FrameResult], last: FrameResult | None
) -> list[str]:
    """The models that ran on every steady frame of the last epoch (a stream schedule runs the
    others on some frames only), or on the last frame when the last epoch had no steady frame."""
    if last is None:
        return []
    steady = [r for r in results if r.epoch == last.epoch and r.epoch > 0 and not r.probe]
    frames = steady or [last]
    ran = [{m.model for m in r.results if m.status == "executed"} for r in frames]
    return sorted(set.intersection(*ran))
