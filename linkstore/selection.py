"""Budgeted active-set selection: which models run for real, and which are synthesized by links.

MLink (Yuan, Zhang, Li, AAAI 2022) runs several black-box models on every input. Under a resource
budget only an *active set* ``A`` runs; every inactive model's output is synthesized by an ensemble
of learned links from the active models. Choosing ``A`` is the optimisation this module solves:

    maximise  mean over all models m of  (1 if m in A else agreement(A, m))
    subject to, for every bounded resource r,
        sum_{s in A} cost[s][r] + sum_{t not in A} link_cost(A, t)[r] <= budget[r]

``agreement(A, t)`` is the validation agreement of ``t``'s ensemble built from ``A`` (with ``A``
empty the oracle returns the target's prior). Costs are vectors over named resources
(``{"memory_mb": 900, "ms": 12.5}``); a budget bounds any subset of them and the rest are free.

Link costs make the problem subtle: activating a model adds its own cost but removes the cost of
its ensemble, so a superset can be *cheaper* than a subset and feasibility is not monotone. The
searches never assume it is; they bound the cost of every completion from below instead.

The instance and its validation live in :mod:`mlink.linkstore.problem`, its compiled form and
cost bounds in :mod:`mlink.linkstore.instance`, the searches in :mod:`mlink.linkstore.solvers`;
this module is the public entry point.

Solvers (all return an :class:`Evaluation`):

- :func:`select_exact` -- branch and bound over subsets; the optimum for up to ~20 free models.
- :func:`select_paper_greedy` -- the paper's heuristic, kept as the baseline to beat.
- :func:`select_greedy_lookahead` -- cost-aware greedy with k-model lookahead and a swap local
  search, for large fleets; never worse than the paper's greedy.
- :func:`select` -- exact when small, lookahead otherwise.

When no plan fits at all, every solver raises :class:`InfeasibleBudget`, which names the cheapest
plan and the budget that would admit it (see :func:`cheapest_feasible_budget`).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

from mlink.linkstore.instance import Instance
from mlink.linkstore.problem import (
    AgreementOracle,
    Evaluation,
    InfeasibleBudget,
    Problem,
    check_names,
)
from mlink.linkstore.solvers import (
    branch_and_bound,
    cheapest_plan,
    heuristic,
    paper_greedy,
    valid_or_restart,
)

__all__ = [
    "AgreementOracle",
    "Evaluation",
    "InfeasibleBudget",
    "Method",
    "Problem",
    "cheapest_feasible_budget",
    "evaluate",
    "select",
    "select_exact",
    "select_greedy_lookahead",
    "select_paper_greedy",
]

Method = Literal["auto", "exact", "lookahead", "greedy"]
METHODS: tuple[str, ...] = ("auto", "exact", "lookahead", "greedy")
#: ``select(method="auto")`` solves exactly up to this many free (not pinned/excluded) models.
AUTO_EXACT_MAX_FREE = 16


def cheapest_feasible_budget(problem: Problem) -> dict[str, float]:
    """The smallest budget, per bounded resource, under which some valid plan fits.

    Valid means pinned models active, excluded ones not, at least ``min_active`` active. With
    several bounded resources "smallest" is the plan needing the least proportional raise of the
    current budget; the returned numbers are that plan's cost, so any budget at least as large in
    every bounded resource admits it. Returns ``{}`` when nothing is bounded.
    """
    inst = Instance(problem)
    mask = cheapest_plan(inst)
    return dict(zip(inst.bounded_names, inst.bounded_cost(mask), strict=True))


def evaluate(problem: Problem, active: Iterable[str]) -> Evaluation:
    """Score ``active`` against ``problem``: objective, cost per resource, and feasibility.

    Infeasible plans are still scored (``feasible=False`` with ``violations`` saying why), so a
    caller can see how far over budget a hand-picked plan is.
    """
    inst = Instance(problem)
    chosen = check_names(active, inst.index, "active")
    return inst.evaluation(inst.mask_of(chosen))


def select_paper_greedy(problem: Problem) -> Evaluation:
    """The paper's greedy heuristic: from the pinned set, repeatedly add the model with the
    largest objective gain among those that keep the plan in budget; stop when no addition
    improves the objective (additions are forced while fewer than ``min_active`` run).

    Kept as the baseline the other solvers are measured against.
    """
    inst = Instance(problem)

    def paper(start: int) -> int:
        return paper_greedy(inst, start)

    return inst.evaluation(valid_or_restart(inst, paper(inst.pinned), paper))


def select_greedy_lookahead(
    problem: Problem, depth: int = 2, *, pool_size: int = 8, max_rounds: int = 100
) -> Evaluation:
    """Heuristic for large fleets: cost-aware greedy with lookahead, then local search.

    Each step adds the single model or combination of up to ``depth`` models (drawn from the
    ``pool_size`` best single additions) with the best objective gain per normalised cost, where
    cost is the largest share of any bounded resource's budget the addition uses. Then up to
    ``max_rounds`` best-improvement rounds of add / drop / swap moves. The paper's greedy is run
    and polished the same way and the better plan returned, so this is never worse than
    :func:`select_paper_greedy`.
    """
    if depth < 1:
        raise ValueError(f"depth = {depth}; it must be >= 1 (1 means no lookahead)")
    if pool_size < 1:
        raise ValueError(f"pool_size = {pool_size}; it must be >= 1")
    if max_rounds < 0:
        raise ValueError(f"max_rounds = {max_rounds}; it must be >= 0")
    inst = Instance(problem)
    return inst.evaluation(heuristic(inst, depth, pool_size, max_rounds))


def select_exact(
    problem: Problem, *, assume_monotone: bool = True, max_free: int = 24
) -> Evaluation:
    """The optimal plan, by branch and bound seeded with the lookahead heuristic's plan.

    ``assume_monotone`` (default) lets the search prune with an objective bound that is valid
    when adding an active model never lowers any target's agreement, which holds for ensembles
    that can ignore a useless source. If your oracle is not monotone pass False: the search then
    prunes by cost only and stays exact, at exponential cost. ``max_free`` caps the number of
    free (not pinned/excluded) models, since the search is exponential in it.
    """
    free = len(problem.models) - len(problem.pinned) - len(problem.excluded)
    if free > max_free:
        raise ValueError(
            f"select_exact: {free} free models exceed max_free={max_free}; the search is "
            "exponential in them. Use select_greedy_lookahead, pin/exclude models, or raise "
            "max_free if you can wait"
        )
    inst = Instance(problem)
    incumbent = heuristic(inst, depth=2, pool_size=8, max_rounds=100)
    return inst.evaluation(branch_and_bound(inst, incumbent, assume_monotone))


def select(
    problem: Problem, method: Method = "auto", *, assume_monotone: bool = True
) -> Evaluation:
    """Pick the active set. ``"auto"`` solves exactly when at most 16 models are free (not pinned
    or excluded) and uses the lookahead heuristic beyond that; ``"exact"``, ``"lookahead"`` and
    ``"greedy"`` (the paper's) force a solver. ``assume_monotone`` is passed to the exact solver.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {list(METHODS)}")
    free = len(problem.models) - len(problem.pinned) - len(problem.excluded)
    if method == "exact" or (method == "auto" and free <= AUTO_EXACT_MAX_FREE):
        return select_exact(problem, assume_monotone=assume_monotone)
    if method == "greedy":
        return select_paper_greedy(problem)
    return select_greedy_lookahead(problem)
