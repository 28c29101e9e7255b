"""Accuracy-target mode for the paper's active sets: the cheapest set whose synthesized models
each reach their target on the cross-fitted selection oracle.

The budget then follows from the targets instead of the other way round (``target_agreement``
and ``target_agreement:<model>`` budget keys). Every subset is tried, cheapest first, so the
answer is exact; the search is bounded like the exact selector's.
"""

from __future__ import annotations

from collections.abc import Mapping
from itertools import combinations

from mlink.linkstore.problem import Evaluation, InfeasibleBudget, Problem
from mlink.linkstore.selection import evaluate

__all__ = ["MAX_TARGET_MODELS", "select_for_targets"]

MAX_TARGET_MODELS = 16


def select_for_targets(
    problem: Problem, targets: Mapping[str, float], resource: str = "ms"
) -> Evaluation:
    """The cheapest (in ``resource``) feasible active set whose every synthesized model has an
    oracle agreement of at least its target (models without a target take whatever they get).

    Raises :class:`InfeasibleBudget` naming the targets when no set meets them within the
    problem's budget (running every model always meets them, unless the budget forbids it).
    """
    models = list(problem.models)
    if len(models) > MAX_TARGET_MODELS:
        raise ValueError(
            f"{len(models)} models: the target search tries 2**{len(models)} active sets; "
            f"at most {MAX_TARGET_MODELS} are supported"
        )
    best: Evaluation | None = None
    for size in range(max(1, problem.min_active), len(models) + 1):
        for combo in combinations(models, size):
            plan = evaluate(problem, combo)
            if not plan.feasible:
                continue
            if any(plan.per_model[m] < t - 1e-12 for m, t in targets.items()):
                continue
            cost = plan.cost.get(resource, 0.0)
            if best is None or cost < best.cost.get(resource, 0.0) - 1e-12:
                best = plan
    if best is None:
        raise InfeasibleBudget(
            f"no active set meets the accuracy targets {dict(targets)} within the budget "
            f"{dict(problem.budget)}",
            budget=problem.budget,
            cheapest_budget={},
            plan=frozenset(models),
        )
    return best
