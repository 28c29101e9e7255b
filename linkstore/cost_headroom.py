"""Whether a budget plan has room for the few percent that live model timings move.

A budget search fills its budget, so the plan it returns usually costs within a percent of it.
When the next plan down is much worse, a small rise in the measured costs (contention, another
process, a warmer cache) makes the next decision pick it: in the demo at a 37% budget the plan
that ran ``eyes`` on every frame cost 99% of the budget, and one run in thirteen flipped to one
that kept 88.4% (BENCHMARKS.md, "The demo's budget and cost noise"). :func:`cost_headroom`
plans again as if every cost had risen by ``rise`` and reports the plan that would follow, so
the controller can say so before it happens; :func:`active_set_headroom` does the same for the
paper's links' active sets.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from mlink.linkstore.problem import Evaluation, InfeasibleBudget, Problem
from mlink.linkstore.streamfit import Curve
from mlink.linkstore.streamplan import StreamPlan, plan_for_budget

__all__ = ["COST_RISE", "MAX_LOSS", "Fragile", "active_set_headroom", "cost_headroom"]

#: Costs this much higher: live timings of one model moved 6.4% between two demo runs (the
#: standard deviation of the log ratio); a plan's total moves less, as its models average out.
COST_RISE = 0.05
#: A plan is fragile when the next one loses more than this much mean lower-bound agreement.
#: In replays of the demo config, plans that stopped running ``eyes`` on every frame lost
#: 1.3-2.0 points; plans that only ran ``face_default`` less often lost 0.4-0.8.
MAX_LOSS = 0.01


@dataclass(frozen=True, slots=True)
class Fragile:
    """The plan a ``cost_rise`` would switch to, and what it would give up."""

    cost_rise: float
    lower_now: float  # mean lower bound of the plan in force
    lower_then: float | None  # of the plan that would follow (None: no plan would fit)
    estimate_then: float | None
    changes: dict[str, str]  # model -> what it would do instead
    basis: str = "lower bound"  # what lower_now/then are: a stream plan's mean lower bound, or
    # the paper's links' "expected agreement" (their selection oracle's estimate)

    def to_extra(self) -> dict[str, Any]:
        """JSON-ready value for ``ControlMessage.extra["fragile"]``."""
        return {
            "cost_rise": float(self.cost_rise),
            "lower_now": float(self.lower_now),
            "lower_then": None if self.lower_then is None else float(self.lower_then),
            "estimate_then": None if self.estimate_then is None else float(self.estimate_then),
            "changes": dict(self.changes),
            "basis": self.basis,
        }


def _mean_lower(plan: StreamPlan) -> float:
    lower = plan.lower()
    return float(sum(lower.values()) / len(lower)) if lower else 0.0


def cost_headroom(
    plan: StreamPlan,
    curves: Mapping[str, Sequence[Curve]],
    costs_ms: Mapping[str, float],
    budget_ms: float,
    *,
    rise: float = COST_RISE,
    max_loss: float = MAX_LOSS,
    **search: Any,
) -> Fragile | None:
    """What ``plan`` (chosen by :func:`plan_for_budget` for ``budget_ms`` with ``search``)
    would become if every cost rose by ``rise``, when that loses more than ``max_loss`` of mean
    lower-bound agreement or fits nothing; None when the plan has room."""
    if rise <= 0:
        raise ValueError(f"cost rise must be > 0, got {rise}")
    tighter = plan_for_budget(curves, costs_ms, budget_ms / (1.0 + rise), **search)
    now = _mean_lower(plan)
    if not tighter.feasible:
        return Fragile(rise, now, None, None, {})
    then = _mean_lower(tighter)
    if now - then <= max_loss:
        return None
    changes = {
        m: tighter.schedule.describe(m)
        for m in plan.schedule.models
        if tighter.schedule.describe(m) != plan.schedule.describe(m)
    }
    return Fragile(rise, now, then, float(tighter.estimate), changes)


def active_set_headroom(
    problem: Problem,
    plan: Evaluation,
    choose: Callable[[Problem], Evaluation],
    *,
    rise: float = COST_RISE,
    max_loss: float = MAX_LOSS,
) -> Fragile | None:
    """:func:`cost_headroom` for the paper's links: the active set ``choose`` would pick if
    every model's and link's ms rose by ``rise`` (the ms budget shrunk by as much), when that
    loses more than ``max_loss`` of expected agreement or fits nothing; None when ``plan`` has
    room or the problem has no ms budget. A live run of the demo's cameras planned at 98.9% of
    its budget saved 0.7 points less than the budget allows (BENCHMARKS.md, "The paper's links
    under a backlog")."""
    if rise <= 0:
        raise ValueError(f"cost rise must be > 0, got {rise}")
    ms = problem.budget.get("ms")
    if ms is None:
        return None
    tighter = replace(problem, budget={**problem.budget, "ms": ms / (1.0 + rise)})
    basis = "expected agreement"
    try:
        then: Evaluation | None = choose(tighter)
    except InfeasibleBudget:
        then = None
    if then is None or not then.feasible:
        return Fragile(rise, plan.objective, None, None, {}, basis)
    if plan.objective - then.objective <= max_loss:
        return None
    changes = {
        m: "runs" if m in then.active else "synthesized"
        for m in problem.models
        if (m in then.active) != (m in plan.active)
    }
    return Fragile(rise, plan.objective, then.objective, then.objective, changes, basis)
