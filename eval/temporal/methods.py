"""Beyond MLink on streams: temporal links, and links combined with frame filtering.

MLink synthesizes an inactive model's output from the *current* outputs of the active models.
On a video stream consecutive outputs are highly redundant -- simply reusing a model's last
output is often right -- and plain links ignore that. This module measures four ways of spending
a per-frame compute budget, all planned on the training part (the head of each stream) and
measured on the rest, with the same accuracy (mean agreement with the real outputs, 1 where a
model ran) and the same cost accounting (models + links + change signals, per frame):

- :data:`reuse_schedule` -- frame filtering alone, periodic: model ``m`` runs every ``k_m``
  frames of its stream and its last output is reused in between (``k_m = 1``: always runs; or it
  never runs and outputs its prior). No links.
- :data:`change_filter` -- frame filtering alone, change-triggered: an active set runs every
  frame; another model re-runs when the change of one active model's output since that model's
  last run exceeds a threshold (or after ``max_lag + 1`` frames), else reuses. No links.
- :data:`temporal_mlink` -- *temporal links*: the active set runs every frame; each inactive
  target ``t`` is refreshed every ``k_t`` frames and synthesized in between by a temporal link
  whose input is ``t``'s last real output, one active source's current output and its change
  since ``t``'s refresh, and the frames elapsed (or reuses, or is synthesized by MLink's plain
  links and never refreshed, or outputs its prior -- whatever validates best per target).
- :data:`mlink_with_filtering` -- everything of :data:`temporal_mlink`, plus change-triggered
  refreshes where the trigger is either the raw change of an active model's output or the
  change a temporal link *predicts* for the target (the link says when its guess went stale).

:func:`plain_mlink` is the paper's method (exact selection over plain links) on the same split,
for comparison.

How choices are made. A temporal link is trained on pairs ``(then, now)`` of training frames of
one stream, ``1 <= now - then <= max_lag``, with the residual ``enc(t, now) - enc(t, then)`` as
the target for regression outputs (counts, boxes, linear), or ``t``'s output for class outputs.
All links into one target are one batched network (:func:`~mlink.linkstore.training.
train_stacked`). Neighbouring frames are near-duplicates, so a random validation split would
flatter any memoriser: temporal links are cross-fitted over ``folds`` *contiguous time blocks*
of each stream's training part, and every pair is scored by the model that did not train on its
block. Plain links are scored the same way (:class:`BlockedOracle`). Those out-of-fold scores
give, per target, the accuracy of every option (periodic with period ``k`` and a synthesis mode;
triggered with a signal and a threshold, simulated in stream order; plain links; the prior), and
an exact multiple-choice knapsack per candidate active set picks the options with the best
training accuracy whose expected cost fits the budget (every active set that fits is tried).
Expected agreement ``d`` frames after a refresh is estimated per stream, made non-increasing in
``d`` and averaged over streams by length. At test time the links are the bag of the fold models,
and a regression link's output snaps back to the refresh's output unless it predicts a real change
(:func:`snap`).

Budget. Periodic runs happen at ``k-1, 2k-1, ...`` frames after the last training frame of the
stream (all models ran during the training part, so that output is real), so a target with
period ``k`` runs at most ``n/k`` times in ``n`` frames. Triggered runs are rate-limited by a
token bucket per target (refilled at the planned run rate, plus a share of whatever budget the
plan left unused; it starts empty), so the per-frame budget also holds on the test frames
whatever the test's dynamics. Link and change-signal costs are measured per call, on one row.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from mlink.eval.baselines.common import MethodResult
from mlink.eval.experiment import TrainedWorkload, measure_plan, selection_problem
from mlink.eval.temporal.context import context_for
from mlink.eval.temporal.planning import Plan, best_plan, choose_policies, pareto, prior_policy
from mlink.eval.temporal.policy import TemporalConfig
from mlink.eval.temporal.simulate import measure
from mlink.eval.workload import Workload
from mlink.linkstore.selection import select

__all__ = [
    "TemporalMethod",
    "change_filter",
    "mlink_with_filtering",
    "plain_mlink",
    "reuse_schedule",
    "temporal_mlink",
]


@dataclass(frozen=True, slots=True)
class TemporalMethod:
    """One way of spending the budget, callable as
    ``method(workload, train_idx, test_idx, budget_ms, config=None) -> MethodResult``.

    ``families`` are the option kinds an inactive target may use (see
    :meth:`~mlink.eval.temporal.context.Context.options`), ``plain`` whether MLink's plain links
    are one of them, ``enumerate_active`` whether an active set runs every frame (else every model
    is scheduled on its own and "always runs" is one of its options).
    """

    name: str
    families: tuple[str, ...]
    plain: bool
    enumerate_active: bool
    description: str

    def __call__(
        self,
        workload: Workload,
        train_idx: Sequence[int],
        test_idx: Sequence[int],
        budget_ms: float,
        config: TemporalConfig | None = None,
    ) -> MethodResult:
        started = time.perf_counter()
        if not budget_ms > 0:
            raise ValueError(f"budget_ms must be > 0, got {budget_ms}")
        ctx = context_for(workload, train_idx, config or TemporalConfig())
        if self.enumerate_active:
            plan = best_plan(ctx, budget_ms, self.families, self.plain)
        else:  # every model is a knapsack group; k = 1 means it always runs
            groups = [pareto([*ctx.options(t, "reuse"), prior_policy(ctx, t)]) for t in ctx.models]
            chosen = choose_policies(groups, budget_ms, ctx.config.grid)
            if chosen is None:
                raise ValueError(f"no schedule fits a budget of {budget_ms:g} ms/frame")
            policies = {t: g[o] for t, g, o in zip(ctx.models, groups, chosen, strict=True)}
            est = float(np.mean([p.estimate for p in policies.values()]))
            plan = Plan(frozenset(), policies, est, sum(p.cost for p in policies.values()))
        return measure(ctx, self.name, budget_ms, plan, test_idx, started)


reuse_schedule = TemporalMethod(
    "Reuse (periodic)",
    families=(),
    plain=False,
    enumerate_active=False,
    description="""Frame filtering alone, periodic: model ``m`` runs every ``k_m`` frames of its
    stream and its last output is reused in between (or never runs and outputs its prior).
    ``k_m`` (1 .. ``reuse_max_period``) is chosen by an exact multiple-choice knapsack on the
    training part: the accuracy of period ``k`` is ``(1 + sum_{d<k} r_d) / k`` with ``r_d`` the
    mean agreement of an output reused ``d`` frames later over all training pairs, its cost
    ``ms / k``. No links.""",
)

change_filter = TemporalMethod(
    "Reuse (change-triggered)",
    families=("reuse", "trigger_raw"),
    plain=False,
    enumerate_active=True,
    description="""Frame filtering alone, change-triggered by model outputs: an active set runs
    every frame; each other model re-runs when one active model's output changed by more than a
    threshold since that model's last run (or every ``max_lag + 1`` frames), else reuses its last
    output. Periodic reuse and the prior are options too. No links.""",
)

temporal_mlink = TemporalMethod(
    "Temporal links",
    families=("reuse", "temporal"),
    plain=True,
    enumerate_active=True,
    description="""Temporal links: the active set runs every frame; each inactive target is
    refreshed every ``k_t`` frames and synthesized in between by a temporal link (its last real
    output + one active source's current output and change + the lag), or reuses, or -- never
    refreshed -- is synthesized by plain links or outputs its prior. Active set, ``k_t`` and mode
    are chosen on the training part (out-of-fold accuracy, exact knapsack per active set).""",
)

mlink_with_filtering = TemporalMethod(
    "Links + filtering",
    families=("reuse", "temporal", "trigger_links"),
    plain=True,
    enumerate_active=True,
    description="""Links + frame filtering: everything :data:`temporal_mlink` may do, plus
    refreshes triggered when an active model's output changed, or when a temporal link predicts
    that the target's output changed, by more than a threshold (token-bucket rate limit per
    target).""",
)


def plain_mlink(
    workload: Workload,
    train_idx: Sequence[int],
    test_idx: Sequence[int],
    budget_ms: float,
    config: TemporalConfig | None = None,
) -> MethodResult:
    """The paper's MLink on the same split and links as the temporal methods: exact selection over
    plain links, scored by the same cross-fitted estimates the temporal methods plan with."""
    started = time.perf_counter()
    ctx = context_for(workload, train_idx, config or TemporalConfig())
    test = np.sort(np.asarray(test_idx, dtype=np.int64))
    trained = TrainedWorkload(
        workload,
        ctx.linkset,
        ctx.train,
        test,
        ctx.plain_oracle,
        ctx.test_oracle(test),
        ctx.link_costs,
        ctx.ensemble_costs,
    )
    budget = {"ms": float(budget_ms)}
    plan = measure_plan(
        trained, "MLink (exact)", budget, select(selection_problem(trained, budget))
    )
    return MethodResult(
        method="MLink (plain links)",
        budget_ms=float(budget_ms),
        accuracy=plan.accuracy,
        compute_saved=plan.compute_saved,
        cost_ms=plan.cost_ms,
        active=plan.active,
        per_model=plan.per_model,
        run_rate=plan.run_rate,
        predicted_accuracy=plan.predicted_accuracy,
        notes=f"cross-fitted estimate {plan.predicted_accuracy:.3f}",
        seconds=time.perf_counter() - started,
        details={"train_estimate": plan.predicted_accuracy},
    )
