"""Accuracy-target mode for the paper's active sets: the cheapest set whose synthesized models
each reach their target on the cross-fitted selection oracle; with a compute bound too, the
most accurate set within it that meets them.

The budget then follows from the targets instead of the other way round (``target_agreement``
and ``target_agreement:<model>`` budget keys). Every subset is tried, cheapest first, so the
answer is exact; the search is bounded like the exact selector's.
"""

from __future__ import annotations

from collections.abc import Mapping
from itertools import combinations

from mlink.linkstore.problem import Evaluation, InfeasibleBudget, Problem
from mlink.linkstore.selection import evaluate
from mlink.topics.control import budget_problem, target_model

__all__ = [
    "MAX_TARGET_MODELS",
    "budget_fit_problem",
    "select_for_targets",
    "target_count_problem",
]

MAX_TARGET_MODELS = 16


def target_count_problem(has_targets: bool, n_models: int) -> str | None:
    """Why accuracy targets cannot be planned for ``n_models`` models, or None. Both target
    searches are exact (every active set), so a config or a budget request is refused up front:
    a controller would otherwise only find out when it first plans."""
    if has_targets and n_models > MAX_TARGET_MODELS:
        return (
            f"accuracy targets are planned by trying every active set, for at most "
            f"{MAX_TARGET_MODELS} models; this pipeline has {n_models}: give a compute budget "
            "(ms or fraction) instead"
        )
    return None


def budget_fit_problem(
    budget: Mapping[str, float], costs: Mapping[str, Mapping[str, float]]
) -> str | None:
    """Why ``budget`` cannot be planned for models with declared ``costs`` (``{model: {"ms":
    .., "memory_mb": ..}}``, every model a key), or None: a malformed budget or a target naming
    no model (:func:`~mlink.topics.control.budget_problem`), a memory budget without every
    model's memory (a worker cannot tell one model's share of its RSS), or targets over too
    many models. A config, an embedded app's settings and ``mlink budget`` are checked alike,
    up front: a controller would find out only when it plans, or plan every model at 0 MB."""
    if problem := budget_problem(budget, list(costs)):
        return problem
    if "memory_mb" in budget:
        missing = [m for m, cost in costs.items() if "memory_mb" not in cost]
        if missing:
            return f"memory_mb needs cost.memory_mb on every model; missing on {missing}"
    targets = any(k == "target_agreement" or target_model(k) for k in budget)
    return target_count_problem(targets, len(costs))


def select_for_targets(
    problem: Problem, targets: Mapping[str, float], resource: str = "ms"
) -> Evaluation:
    """The cheapest (in ``resource``) feasible active set whose every synthesized model has an
    oracle agreement of at least its target. With a compute bound in the problem's budget the
    targets are floors instead: the set with the best objective within the bound that meets
    them, so the bound is spent on the models without a target rather than left unspent
    (the cheapest set left another model at 26% under a per-model target in stop 45's audit).

    Raises :class:`InfeasibleBudget` naming the targets when no set meets them within the
    problem's budget (running every model always meets them, unless the budget forbids it).
    """
    models = list(problem.models)
    if (too_many := target_count_problem(True, len(models))) is not None:
        raise ValueError(too_many)
    best: Evaluation | None = None
    for size in range(max(1, problem.min_active), len(models) + 1):
        for combo in combinations(models, size):
            plan = evaluate(problem, combo)
            if not plan.feasible:
                continue
            if any(plan.per_model[m] < t - 1e-12 for m, t in targets.items()):
                continue
            if best is None or _better(plan, best, resource, spend=bool(problem.budget)):
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


def _better(plan: Evaluation, best: Evaluation, resource: str, *, spend: bool) -> bool:
    """With a bound to ``spend``: more objective, then less cost; else less cost, then more
    objective."""
    cost, best_cost = plan.cost.get(resource, 0.0), best.cost.get(resource, 0.0)
    if spend and abs(plan.objective - best.objective) > 1e-12:
        return plan.objective > best.objective
    if abs(cost - best_cost) > 1e-12:
        return cost < best_cost
    return plan.objective > best.objective + 1e-12
