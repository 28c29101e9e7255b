"""Stream synthesis replayed offline: the runtime pieces of :mod:`mlink.linkstore` on a workload.

The same calls the live pipeline makes, in the same order, on cached outputs: the trainer fits
:func:`~mlink.linkstore.streamfit.fit_stream` on frames where every model ran (the training part,
then the probes), the controller plans with :mod:`mlink.linkstore.streamplan`, and each frame
runs the models its :class:`~mlink.linkstore.schedule.Schedule` names and synthesizes the rest
with :meth:`~mlink.linkstore.streamlinks.StreamLinks.synthesize_frames`. Frames arrive in the
workload's order (the time order of the source: clip after clip, or interleaved streams), and a
frame's sequence number is its position in its stream.

What is counted: every real run at its model's cost from the workload's one cost table, probes
included; synthesis at its time measured here, per frame; agreement with the real outputs of
every model on every evaluation frame (1 where it ran). *Steady* figures leave out the probe
frames, as the live summary does. Training is the trainer's, off the frame path, and not counted
in the per-frame cost (its wall time is reported).

Online (``StreamConfig.refit_every``): after every ``refit_every`` new probes, the trainer refits on
the training part plus every probe so far and the controller re-plans; the new schedule applies
from the next frame (a hot swap, as a new link version would).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from mlink.eval.baselines.common import MethodResult
from mlink.eval.figures import synthesized_agreement
from mlink.eval.temporal.geometry import positions
from mlink.eval.workload import Workload
from mlink.linkstore.budget import next_plan_budget, non_probe_overrun, payback_frames
from mlink.linkstore.liveguard import LiveAgreement
from mlink.linkstore.metrics import agreement
from mlink.linkstore.schedule import Schedule
from mlink.linkstore.streamfit import Sample, StreamFit, fit_stream
from mlink.linkstore.streamlinks import StreamFrame, StreamMemory
from mlink.linkstore.streamplan import (
    DEFAULT_PERIODS,
    LinksEstimate,
    StreamPlan,
    plan_for_budget,
    plan_for_targets,
)

__all__ = ["StreamConfig", "StreamRun", "simulate", "summarise"]

MAX_PROBE_EVERY, QUIET_PROBES = 64, 4


@dataclass(frozen=True, slots=True)
class StreamConfig:
    """Settings of stream synthesis (trainer, controller and runtime alike).

    ``probe_every``: every model runs on every such frame of a stream (0: no probes after the
    training part). ``refit_every``: refit and re-plan after this many new probes (0: never, the
    offline protocol). ``warmup``: frames of each stream that train before planning, when the
    caller does not give a training split (the live protocol).
    """

    probe_every: int = 0
    probe_stride: int = 0
    refit_every: int = 0
    max_lag: int = 16
    folds: int = 3
    thresholds: tuple[float, ...] = (0.5,)
    periods: tuple[int, ...] = DEFAULT_PERIODS
    z: float = 1.645
    links: bool = False
    objective: str = "estimate"
    corr: float = 1.0
    guard: bool = False
    guard_probes: int = 2
    guard_z: float = 1.0
    guard_tolerance: float = 0.05
    # budget mode: re-plan on "drift" (live moved more than guard_tolerance either way) or on a
    # "miss" (live below the plan's forecast even at the upper bound, mlink status's flag)
    guard_trigger: str = "drift"
    guard_carry: bool = False  # keep a model's probe evidence across re-plans that keep its option
    guard_decay: float = 1.0  # weight of each earlier probe relative to the next (1: plain mean)
    # double probe_every after QUIET_PROBES quiet probes, halve it on drift, never below the
    # configured rate (probing more often than the plan paid for starved it: at 20-50% budgets
    # the probes alone overran, and every model ran on every frame)
    adaptive_probes: bool = False
    detector_links: bool = True  # False: reuse, prior and the paper's links only (ablation)
    gates: bool = False  # cascades: a model also runs where its source fires (links.cascades)
    between_streams: bool = True  # False: margins from frame counts alone (ablation)
    motion: bool = False  # the flow mode, from the workload's poses (when it carries them)
    balanced: bool = False  # every stream weighs the same in the estimates (the live trainer)


@dataclass(slots=True)
class StreamRun:
    """What a replay kept and spent, per model and frame, and the plans it used."""

    result: MethodResult
    plans: list[StreamPlan]
    per_frame: dict[str, np.ndarray]  # model -> agreement per evaluation frame (1 where it ran)
    ran: dict[str, np.ndarray]  # model -> bool per evaluation frame
    probe: np.ndarray  # bool per evaluation frame
    cost_ms: np.ndarray  # per evaluation frame: real runs + synthesis
    fits: list[StreamFit] = field(default_factory=list)
    full_ms: float = 0.0
    in_force: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))  # plan index

    def steady(self) -> dict[str, float | None]:
        """All-models and synthesized-only agreement and compute saved on non-probe frames."""
        return summarise(self.per_frame, self.ran, self.cost_ms, ~self.probe, self.full_ms)


def summarise(
    per_frame: Mapping[str, np.ndarray],
    ran: Mapping[str, np.ndarray],
    cost_ms: np.ndarray,
    keep: np.ndarray,
    full_ms: float,
) -> dict[str, float | None]:
    """All-models and synthesized-only agreement and compute saved on the frames ``keep``."""
    if not keep.any():
        return {"accuracy": None, "synthesized_accuracy": None, "compute_saved": None}
    per_model = {m: float(v[keep].mean()) for m, v in per_frame.items()}
    rate = {m: float(v[keep].mean()) for m, v in ran.items()}
    return {
        "accuracy": float(np.mean(list(per_model.values()))),
        "synthesized_accuracy": synthesized_agreement(per_model, rate),
        "compute_saved": float(1.0 - cost_ms[keep].mean() / full_ms) if full_ms else None,
        "frames": int(keep.sum()),
    }


Planner = Callable[[StreamFit], StreamPlan]


def simulate(
    workload: Workload,
    train_idx: Sequence[int],
    test_idx: Sequence[int],
    *,
    budget_ms: float | None = None,
    targets: Mapping[str, float] | None = None,
    config: StreamConfig = StreamConfig(),
    links: LinksEstimate | None = None,
    linkset: Any = None,
    method: str = "MLink stream",
    fit_idx: Sequence[int] | None = None,
) -> StreamRun:
    """Replay stream synthesis: fit on ``train_idx`` (every model ran there), plan for
    ``budget_ms`` or for per-model ``targets``, run on ``test_idx`` (see the module docstring).

    ``links``/``linkset``: the paper's links as one more mode (their estimate and the trained
    set), e.g. from :func:`mlink.eval.experiment.train_workload`. ``fit_idx``: fit heads and
    curves on these frames instead (e.g. every frame: an oracle that has seen the evaluation
    frames, to tell what the estimates miss from what the synthesis modes cannot do); the
    runtime memory still starts from ``train_idx`` only.
    """
    if (budget_ms is None) == (targets is None):
        raise ValueError("give exactly one of budget_ms and targets")
    started = time.perf_counter()
    models, specs = workload.models, workload.specs
    ms = {m: float(workload.costs[m].get("ms", 0.0)) for m in models}
    full = sum(ms.values())
    seq = positions(workload.streams)
    streams = workload.streams
    train = sorted(int(i) for i in train_idx)
    test = np.sort(np.asarray(test_idx, dtype=np.int64))
    fit_on = train if fit_idx is None else sorted(int(i) for i in fit_idx)
    if config.motion and workload.poses is None:
        raise ValueError(
            f"the flow mode needs every frame's motion, and workload {workload.name} carries "
            "none: price it with priced_workload(..., motion=True) (a shuffled workload has none)"
        )
    poses = workload.poses if config.motion else None

    def pose(i: int) -> Any:
        return None if poses is None else poses[i]

    motion_ms = float(workload.motion_ms) if poses is not None else 0.0
    samples = [Sample(streams[i], int(seq[i]), _outputs(workload, i), pose=pose(i)) for i in fit_on]

    corrections: dict[str, float] = {}
    probe_every, quiet = config.probe_every, 0
    plan_budget = float(budget_ms) if budget_ms is not None else 0.0
    plan_start = 0  # the first evaluation frame of the plan in force
    payback_end = 0  # the frame by which the run's overrun is to be paid back

    def fit_and_plan(refit: bool) -> tuple[StreamFit, StreamPlan]:
        fit = fits[-1] if fits and not refit else _fit(specs, samples, config, motion_ms)
        if config.links and linkset is not None:
            fit.links.linkset = linkset
        common = {
            "probe_every": probe_every,
            "probe_stride": config.probe_stride,
            "periods": config.periods,
            "links": links if config.links else None,
            "z": config.z,
            "corr": config.corr,
            "corrections": corrections,
        }
        if targets is not None:
            plan = plan_for_targets(fit.curves, ms, targets, **common)
        else:
            plan = plan_for_budget(
                fit.curves, ms, plan_budget, objective=config.objective, **common
            )
            if not plan.feasible and plan_budget < budget_ms:
                # paying an overrun back must not fall to the fallback of every model on every
                # frame: that plan synthesizes nothing, so no probe could end it
                plan = plan_for_budget(
                    fit.curves, ms, float(budget_ms), objective=config.objective, **common
                )
        return fit, plan

    fits: list[StreamFit] = []
    plans: list[StreamPlan] = []
    fit_start = time.perf_counter()
    fit, plan = fit_and_plan(refit=True)
    train_seconds = time.perf_counter() - fit_start
    fits.append(fit)
    plans.append(plan)
    live = LiveAgreement(plan, factors=dict(corrections), decay=config.guard_decay)
    memory = StreamMemory()
    for i in train:
        memory.observe(streams[i], int(seq[i]), _outputs(workload, i), pose(i))
    n = len(test)
    predicted: dict[str, list[Any]] = {m: [] for m in models}
    where: dict[str, list[int]] = {m: [] for m in models}
    ran = {m: np.zeros(n, dtype=bool) for m in models}
    probe = np.zeros(n, dtype=bool)
    cost = np.zeros(n)
    fallbacks: dict[str, int] = {}
    reasons: list[str] = []
    new_probes = 0
    schedule: Schedule = plan.schedule
    in_force = np.zeros(n, dtype=np.int64)  # index into plans of the plan each frame ran under
    forecast = np.zeros(n)  # the probe-corrected forecast in force before each frame
    forecast_now = live.forecast()  # changes only with a probe or a new plan
    for col, i in enumerate(test.tolist()):
        in_force[col] = len(plans) - 1
        forecast[col] = forecast_now
        s, q = streams[i], int(seq[i])
        runs = schedule.runs(q)
        probe[col] = schedule.is_probe(q)
        real = {m: workload.outputs[m][i] for m in runs}
        runs |= schedule.gated(real)  # a cascade runs its model where its source fired
        real |= {m: workload.outputs[m][i] for m in runs - real.keys()}
        t0 = time.perf_counter()
        frame = StreamFrame(s, q, real, pose(i))
        out = fit.links.synthesize_frames(schedule, [frame], memory)[0]
        cost[col] = sum(ms[m] for m in runs) + (time.perf_counter() - t0) * 1000.0
        if schedule.uses_motion:  # the frame operator measures every frame's motion
            cost[col] += motion_ms
        for m in runs:
            ran[m][col] = True
        for m, value in out.outputs.items():
            predicted[m].append(value)
            where[m].append(col)
        for m, why in out.fallbacks.items():
            key = f"{m}: {why}"
            fallbacks[key] = fallbacks.get(key, 0) + 1
        if not probe[col]:
            continue
        samples.append(Sample(s, q, real, out.context, pose(i)))
        new_probes += 1
        for m, value in out.shadow.items():
            live.add(m, float(agreement(specs[m], [value], [real[m]])[0]))
        forecast_now = live.forecast()
        why = _replan_reason(live, targets, config, new_probes)
        if config.adaptive_probes and config.probe_every:
            quiet = 0 if why else quiet + 1
            if why:
                probe_every = max(config.probe_every, probe_every // 2)
            elif quiet >= QUIET_PROBES and probe_every < MAX_PROBE_EVERY:
                probe_every, quiet = probe_every * 2, 0
                why = f"{QUIET_PROBES} quiet probes: probe every {probe_every} frames"
        if why is None:
            continue
        reasons.append(f"frame {col}: {why}")
        corrections = live.corrections() if config.guard else corrections
        if budget_ms is not None:
            overrun = non_probe_overrun(
                cost[: col + 1], probe[: col + 1], float(budget_ms), full, probe_every
            )
            frames = payback_frames(col, plan_start, payback_end)
            plan_budget = next_plan_budget(float(budget_ms), overrun, frames)
            plan_start, payback_end = col + 1, col + frames
        refit = new_probes > 0  # new probes since the last fit: retrain, then swap
        new_probes = 0
        fit_start = time.perf_counter()
        fit, plan = fit_and_plan(refit)
        train_seconds += time.perf_counter() - fit_start
        if refit:
            fits.append(fit)
        plans.append(plan)
        live = (
            live.next_plan(plan, corrections)
            if config.guard_carry
            else LiveAgreement(plan, factors=dict(corrections), decay=config.guard_decay)
        )
        schedule = plan.schedule
        forecast_now = live.forecast()
    per_frame = {m: np.ones(n) for m in models}
    for m in models:
        if where[m]:
            truth = [workload.outputs[m][int(test[c])] for c in where[m]]
            per_frame[m][where[m]] = agreement(specs[m], predicted[m], truth)
    per_model = {m: float(v.mean()) if n else 1.0 for m, v in per_frame.items()}
    run_rate = {m: float(v.mean()) if n else 1.0 for m, v in ran.items()}
    mean_cost = float(cost.mean()) if n else 0.0
    model_ms = np.array([sum(ms[m] for m in models if ran[m][c]) for c in range(n)])
    first = plans[0]
    result = MethodResult(
        method=method,
        budget_ms=float(budget_ms) if budget_ms is not None else float(first.cost_ms),
        accuracy=float(np.mean(list(per_model.values()))),
        compute_saved=float(1.0 - mean_cost / full) if full else 0.0,
        cost_ms=mean_cost,
        active=sorted(first.active),
        per_model=per_model,
        run_rate=run_rate,
        predicted_accuracy=first.estimate,
        predicted_lower=float(np.mean(list(first.lower().values()))),
        predicted_forecast=float(np.mean(list(first.forecast().values()))),
        predicted_in_force=_in_force(plans, in_force),
        predicted_live=float(forecast.mean()) if n else None,
        notes="; ".join(f"{m}: {first.describe(m)}" for m in models),
        seconds=time.perf_counter() - started,
        details={
            "plan": {m: first.describe(m) for m in models},
            "estimates": first.per_model(),
            "lower_bounds": first.lower(),
            "forecast_bounds": first.forecast(),
            "planned_ms": first.cost_ms,
            "feasible_plan": first.feasible,
            "plan_reason": first.reason,
            "replans": len(plans) - 1,
            "replan_reasons": reasons,
            "corrections": corrections,
            "probes": int(probe.sum()),
            "probe_share": float(probe.mean()) if n else None,
            "fallbacks": fallbacks,
            "train_seconds": train_seconds,
            "synthesis_ms": float(np.mean(cost - model_ms)) if n else 0.0,
        },
    )
    return StreamRun(result, plans, per_frame, ran, probe, cost, fits, full, in_force)


def _fit(
    specs: Mapping[str, Any], samples: list[Sample], config: StreamConfig, motion_ms: float
) -> StreamFit:
    fit = fit_stream(
        specs,
        samples,
        max_lag=config.max_lag,
        folds=config.folds,
        thresholds=config.thresholds,
        sources=None if config.detector_links else dict.fromkeys(specs, ()),
        gates=config.gates,
        motion_ms=motion_ms,
        balanced=config.balanced,
    )
    if not config.between_streams:
        fit.curves = {t: [replace(c, between=0.0) for c in cs] for t, cs in fit.curves.items()}
    return fit


def _in_force(plans: Sequence[StreamPlan], in_force: np.ndarray) -> float | None:
    """The mean over the frames of the estimate of the plan each frame ran under: what the
    controller predicted for them, re-plans included (each estimate was made before the frames
    it governs; a plan's estimate counts its probes as runs, as the accuracy here does)."""
    if not len(in_force):
        return None
    return float(np.mean([plans[k].estimate for k in in_force]))


def _replan_reason(
    live: LiveAgreement,
    targets: Mapping[str, float] | None,
    config: StreamConfig,
    new_probes: int,
) -> str | None:
    """Why the controller re-plans after this probe, or None: a periodic refit is due, or
    (with the guard) a model misses its target or drifted from its estimate."""
    if config.refit_every and new_probes >= config.refit_every:
        return f"refit after {new_probes} probes"
    if not config.guard:
        return None
    if targets is not None:
        failing = live.failing(targets, z=config.guard_z, min_probes=config.guard_probes)
        return "; ".join(failing.values()) if failing else None
    if config.guard_trigger not in ("drift", "miss"):
        raise ValueError(f"guard_trigger must be 'drift' or 'miss', got {config.guard_trigger!r}")
    if config.guard_trigger == "miss":
        below = live.below_forecast(config.guard_z, config.guard_probes)
        return "below forecast: " + "; ".join(below.values()) if below else None
    drifted = live.drifted(config.guard_tolerance, config.guard_probes)
    return "drift: " + "; ".join(drifted.values()) if drifted else None


def _outputs(workload: Workload, i: int) -> dict[str, Any]:
    return {m: workload.outputs[m][i] for m in workload.models}
