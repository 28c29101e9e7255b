"""Stream synthesis as bench rows: offline, online with probes, and the accuracy-target mode.

Every row replays the runtime pieces (:func:`~mlink.eval.streaming.simulate.simulate`) on the
bench's split, with the paper's links trained by the bench (the weighted ensemble and its
cross-fitted selection oracle) as one more mode besides reuse and the detector links:

- :data:`OFFLINE` -- the paper's protocol: everything is learned on the first part of each
  stream; no probes afterwards. Plans maximise the *lower* confidence bound of the expected
  agreement, not its estimate: the estimates come from a few dozen frames and over-promise,
  most for the options with the least data behind them.
- :data:`ONLINE` -- the live protocol: probes every 16th frame of each stream (their cost
  counted), scored against what the plan would have synthesized there; a model whose live
  agreement drifts from its estimate triggers a refit on every frame seen so far and a new plan
  (a hot swap), planned under the budget by whatever the run so far overran it
  (:func:`~mlink.linkstore.budget.next_plan_budget`).
- :data:`TARGET` -- accuracy-target mode: the cheapest plan whose every model's lower bound
  meets the target, with the probes and the guard of :data:`ONLINE`, which turns a model that
  misses its target back on (it re-plans with that model's options corrected by what the probes
  saw). A model keeps its probe evidence across re-plans that keep its option, and earlier probes
  weigh 0.8 of the next one: the evidence follows the stream, and a re-plan caused by another
  model does not reset it (before both, a model 6 points under its target went unnoticed for a
  whole DNN run).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from mlink.eval.experiment import TrainedWorkload
from mlink.eval.streaming.simulate import StreamConfig, StreamRun, simulate
from mlink.linkstore.liveguard import DECAY
from mlink.linkstore.streamplan import LinksEstimate

__all__ = [
    "OFFLINE",
    "ONLINE",
    "TARGET",
    "TARGETS",
    "links_estimate",
    "stream_mlink",
    "stream_target",
]

OFFLINE = StreamConfig(objective="lower", z=1.0, corr=4.0, links=True)
ONLINE = replace(OFFLINE, probe_every=16, probe_stride=7, guard=True)
TARGET = replace(ONLINE, guard_probes=2, guard_z=1.0, guard_carry=True, guard_decay=DECAY)
TARGETS = (0.90, 0.95)


def links_estimate(trained: TrainedWorkload, evaluated: bool = False) -> LinksEstimate:
    """The paper's links as a mode: the bench's selection oracle (cross-fitted on the training
    part), its sample count, and the measured cost of one ensemble over the active set.
    ``evaluated``: their agreement on the evaluation frames instead (for an oracle only)."""
    n = len(trained.test_idx if evaluated else trained.train_idx)
    scores = trained.test_oracle if evaluated else trained.val_oracle

    def estimate(active: frozenset[str], target: str) -> tuple[float, int, float]:
        ms = sum(trained.link_costs.get((s, target), {}).get("ms", 0.0) for s in active)
        ms += trained.ensemble_costs.get(target, {}).get("ms", 0.0)
        return float(scores(active, target)), n, ms

    return estimate


def stream_mlink(
    trained: TrainedWorkload,
    budget_ms: float,
    config: StreamConfig = OFFLINE,
    method: str = "",
    oracle: bool = False,
) -> StreamRun:
    """Stream synthesis within ``budget_ms`` on the bench's split. ``oracle``: plan from heads,
    curves and link estimates measured on every frame, the evaluated ones included: what the
    synthesis modes keep when the estimates are right (no deployment has them)."""
    every = range(len(trained.workload.streams))
    return simulate(
        trained.workload,
        trained.train_idx,
        trained.test_idx,
        budget_ms=budget_ms,
        config=config,
        links=links_estimate(trained, evaluated=oracle),
        linkset=trained.linkset,
        method=method or "MLink stream",
        fit_idx=every if oracle else None,
    )


def stream_target(
    trained: TrainedWorkload, target: float, config: StreamConfig = TARGET
) -> dict[str, Any]:
    """One accuracy-target row: every model's target is ``target``; what each achieved over the
    run (real runs count 1) and on its synthesized outputs only, and what was saved."""
    wl = trained.workload
    run = simulate(
        wl,
        trained.train_idx,
        trained.test_idx,
        targets=dict.fromkeys(wl.models, target),
        config=config,
        links=links_estimate(trained),
        linkset=trained.linkset,
        method=f"MLink stream, target {target:.2f}",
    )
    r = run.result
    synthesized = [m for m in wl.models if r.run_rate[m] < 1.0]
    achieved = {m: r.per_model[m] for m in wl.models}
    synth_only = {m: (r.per_model[m] - r.run_rate[m]) / (1.0 - r.run_rate[m]) for m in synthesized}
    return {
        "target": target,
        "accuracy": r.accuracy,
        "synthesized_accuracy": r.synthesized_accuracy,
        "compute_saved": r.compute_saved,
        "cost_ms": r.cost_ms,
        "synthesized_models": synthesized,
        "achieved": achieved,
        "achieved_synthesized_only": synth_only,
        "min_achieved": min((achieved[m] for m in synthesized), default=None),
        "misses": sorted(m for m in synthesized if achieved[m] < target - 0.02),
        "replans": r.details["replans"],
        "replan_reasons": r.details["replan_reasons"],
        "plan": r.details["plan"],
        "run_rate": r.run_rate,
    }


def target_rows(
    trained: TrainedWorkload,
    seed: int,
    targets: Sequence[float] = TARGETS,
    cascades: bool = False,
) -> list[dict[str, Any]]:
    config = replace(TARGET, gates=cascades)
    return [{"seed": seed, **stream_target(trained, t, config)} for t in targets]
