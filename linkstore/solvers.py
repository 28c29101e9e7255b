"""The searches behind :mod:`mlink.linkstore.selection`, on a compiled
:class:`~mlink.linkstore.instance.Instance`: the cheapest plan (for infeasible budgets), the paper's
greedy, the lookahead greedy with local search, and exact branch and bound.

Plans are bitmasks over the problem's models. Link costs make feasibility non-monotone (activating
a model can be cheaper than its ensemble), so no search assumes a superset costs more; they bound
the cost of every completion from below instead (:meth:`CostTables.lower_bounds`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from itertools import combinations

from mlink.linkstore.instance import Instance, bits
from mlink.linkstore.problem import GAIN_EPS, InfeasibleBudget, fmt_set, fmt_vector

__all__ = ["branch_and_bound", "cheapest_plan", "heuristic", "paper_greedy", "valid_or_restart"]


# -- infeasibility ------------------------------------------------------------------------------


def cheapest_plan(inst: Instance) -> int:
    """The valid-ignoring-budget plan with the smallest largest cost/budget ratio (exact B&B).

    "Cheapest" needs one number when several resources are bounded; the largest ratio is the
    factor by which the whole budget must grow for the plan to fit, so the winner is the plan
    that needs the smallest proportional raise.
    """
    base = inst.pinned
    need = max(0, inst.min_active - base.bit_count())
    if not inst.bounded:
        return base | sum(1 << m for m in inst.free[:need])

    def structural(mask: int) -> bool:
        return mask.bit_count() >= inst.min_active

    singles = sorted(inst.free, key=lambda m: (inst.ratio(base | 1 << m), m))
    seeds = [base, base | sum(1 << m for m in singles[:need])]
    seeds += [base | 1 << m for m in singles]
    best_mask = -1
    best = math.inf
    for mask in seeds:
        if structural(mask) and inst.ratio(mask) < best:
            best, best_mask = inst.ratio(mask), mask
    if best_mask < 0:  # unreachable: min_active <= available models is validated
        raise AssertionError("no structurally valid plan")

    tables = inst.tables()
    order = singles
    suffix = [0] * (len(order) + 1)
    for k in range(len(order) - 1, -1, -1):
        suffix[k] = suffix[k + 1] | 1 << order[k]
    budget = tables.budget
    need_nonempty = inst.min_active >= 1

    def visit(k: int, inside: int, cost_in: list[float], incoming: list[list[float]]) -> None:
        nonlocal best, best_mask
        if inside.bit_count() + len(order) - k < inst.min_active:
            return
        lows = tables.lower_bounds(
            inside, suffix[k], cost_in, incoming, need_nonempty or inside != 0
        )
        lam = max(lo / b for lo, b in zip(lows, budget, strict=True))
        if lam >= best - GAIN_EPS:
            return
        if k == len(order):
            best, best_mask = lam, inside
            return
        s = order[k]
        visit(k + 1, inside | 1 << s, *tables.add(s, cost_in, incoming))
        visit(k + 1, inside, cost_in, incoming)

    visit(0, base, *tables.start(base))
    return best_mask


def infeasible(inst: Instance, plan: int) -> InfeasibleBudget:
    cheapest = dict(zip(inst.bounded_names, inst.bounded_cost(plan), strict=True))
    budget = dict(zip(inst.bounded_names, inst.budget, strict=True))
    raised = {r: max(budget[r], cheapest[r]) for r in budget}
    constraints = []
    if inst.pinned:
        constraints.append(f"pinned={fmt_set(inst.problem.pinned)}")
    if inst.min_active > 1:
        constraints.append(f"min_active={inst.min_active}")
    why = f" under {', '.join(constraints)}" if constraints else ""
    message = (
        f"budget {fmt_vector(budget)} is below the cheapest feasible plan "
        f"({fmt_vector(cheapest)} with active={fmt_set(inst.names_of(plan))}{why}); "
        f"raise the budget to at least {fmt_vector(raised)}"
    )
    if inst.pinned:
        message += " or pin fewer models"
    return InfeasibleBudget(
        message, budget=budget, cheapest_budget=cheapest, plan=inst.names_of(plan)
    )


def feasible_start(inst: Instance) -> int:
    """A valid plan to start a heuristic from, or :class:`InfeasibleBudget` if none exists."""
    plan = cheapest_plan(inst)
    if not inst.valid(plan):
        raise infeasible(inst, plan)
    return plan


# -- heuristics ---------------------------------------------------------------------------------


def paper_greedy(inst: Instance, start: int) -> int:
    """Add the best-gain model that keeps the plan within budget, until nothing improves."""
    current = start
    while True:
        need = current.bit_count() < inst.min_active
        base = inst.objective(current)
        best_mask, best_gain = -1, -math.inf
        for m in inst.free:
            if current >> m & 1:
                continue
            candidate = current | 1 << m
            if not inst.fits(candidate):
                continue
            gain = inst.objective(candidate) - base
            if gain > best_gain + GAIN_EPS:
                best_mask, best_gain = candidate, gain
        if best_mask < 0 or (not need and best_gain <= GAIN_EPS):
            return current
        current = best_mask


def _ratio_key(gain: float, delta: float) -> tuple[int, float]:
    """Rank additions: free ones (no normalised cost increase) first by gain, then gain/cost."""
    if delta <= GAIN_EPS:
        return (1, gain)
    return (0, gain / delta)


def _lookahead_greedy(inst: Instance, start: int, depth: int, pool_size: int) -> int:
    """Gain-per-cost greedy that also scores combinations of up to ``depth`` additions.

    Cost is normalised per resource by the budget and the largest share counts, so a model that
    eats the scarcest resource is judged by that. Combinations are drawn from a pool of the best
    single additions (by ratio and by raw gain): trying all k-subsets would not scale, and pairs
    matter exactly when two complementary models beat either alone.
    """
    current = start
    while True:
        need = current.bit_count() < inst.min_active
        base = inst.objective(current)
        base_cost = inst.bounded_cost(current)

        def score(candidate: int, base: float = base, base_cost: list[float] = base_cost):
            gain = inst.objective(candidate) - base
            new_cost = inst.bounded_cost(candidate)
            delta = max(
                ((c - b0) / b for c, b0, b in zip(new_cost, base_cost, inst.budget, strict=True)),
                default=0.0,
            )
            return gain, _ratio_key(gain, delta)

        scored: list[tuple[int, float, tuple[int, float]]] = []
        for m in inst.free:
            if current >> m & 1:
                continue
            candidate = current | 1 << m
            if inst.fits(candidate):
                scored.append((candidate, *score(candidate)))
        if depth >= 2 and len(scored) >= 2:
            by_ratio = sorted(scored, key=lambda item: item[2], reverse=True)[:pool_size]
            by_gain = sorted(scored, key=lambda item: item[1], reverse=True)[:pool_size]
            pool = sorted({c & ~current for c, _, _ in by_ratio + by_gain})
            for k in range(2, depth + 1):
                for combo in combinations(pool, k):
                    candidate = current | sum(combo)
                    if inst.fits(candidate):
                        scored.append((candidate, *score(candidate)))
        if need:
            pick = max(scored, key=lambda item: item[1], default=None)
        else:
            improving = [item for item in scored if item[1] > GAIN_EPS]
            pick = max(improving, key=lambda item: item[2], default=None)
        if pick is None:
            return current
        current = pick[0]


def _local_search(inst: Instance, start: int, max_rounds: int) -> int:
    """Best-improvement over add / drop / swap moves that keep the plan valid.

    Greedy construction cannot undo an early choice; one swap often repairs it (e.g. a costly
    model added first that two cheaper ones would beat once the budget is nearly full).
    """
    current = start
    for _ in range(max_rounds):
        value = inst.objective(current)
        best_mask, best_value = -1, value + GAIN_EPS
        inside = [m for m in inst.free if current >> m & 1]
        outside = [m for m in inst.free if not current >> m & 1]
        moves = [current | 1 << b for b in outside]
        if current.bit_count() > inst.min_active:
            moves += [current & ~(1 << a) for a in inside]
        moves += [current & ~(1 << a) | 1 << b for a in inside for b in outside]
        for candidate in moves:
            if inst.fits(candidate):
                v = inst.objective(candidate)
                if v > best_value:
                    best_mask, best_value = candidate, v
        if best_mask < 0:
            break
        current = best_mask
    return current


def valid_or_restart(inst: Instance, mask: int, heuristic: Callable[[int], int]) -> int:
    """Heuristics only move through in-budget sets; if that strands them (e.g. the pinned set is
    over budget and no single addition fixes it), restart from the cheapest valid plan."""
    if inst.valid(mask):
        return mask
    result = heuristic(feasible_start(inst))
    if not inst.valid(result):  # defensive: heuristics never leave a valid start invalid
        raise AssertionError("heuristic left a valid plan")
    return result


def heuristic(inst: Instance, depth: int, pool_size: int, max_rounds: int) -> int:
    def paper(start: int) -> int:
        return paper_greedy(inst, start)

    def look(start: int) -> int:
        return _lookahead_greedy(inst, start, depth, pool_size)

    results = []
    for construct in (look, paper):
        mask = valid_or_restart(inst, construct(inst.pinned), construct)
        results.append(_local_search(inst, mask, max_rounds))
    # max() keeps the first on ties, so the lookahead's plan wins draws.
    return max(results, key=inst.objective)


# -- exact --------------------------------------------------------------------------------------


def _search_order(inst: Instance, incumbent: int) -> list[int]:
    """Branch on the incumbent's models first, then on the best single additions: including
    them first finds strong plans early, which tightens the bound for the rest of the search."""
    base = inst.pinned
    return sorted(
        inst.free,
        key=lambda m: (not incumbent >> m & 1, -inst.objective(base | 1 << m), m),
    )


def branch_and_bound(inst: Instance, incumbent: int, assume_monotone: bool) -> int:
    """Depth-first include/exclude search over the free models.

    Prunes a node when (a) the cost lower bound of every completion exceeds the budget, (b) even
    activating all undecided models cannot reach ``min_active``, or (c) with ``assume_monotone``,
    an optimistic objective bound cannot beat the incumbent. The bound: each decided-inactive
    target gets its agreement from *all* possibly-active models; each undecided one either runs
    (1) or is synthesized (agreement from all others), and which ones may run is a fractional
    knapsack over the remaining budget, per bounded resource (the smallest is kept).
    Without monotonicity only (a) and (b) prune, which is exhaustive but still exact.
    """
    n = inst.n
    tables = inst.tables()
    nr = len(tables.budget)
    order = _search_order(inst, incumbent)
    depth = len(order)
    suffix = [0] * (depth + 1)
    for k in range(depth - 1, -1, -1):
        suffix[k] = suffix[k + 1] | 1 << order[k]
    need_nonempty = inst.min_active >= 1
    agreement = inst.agreement
    best_value = inst.objective(incumbent) if incumbent >= 0 else -math.inf
    best_mask = incumbent

    def bound(
        inside: int,
        undecided: int,
        lows: list[float],
        incoming: list[list[float]],
        nonempty: bool,
    ) -> float:
        everything = inside | undecided
        total = float(inside.bit_count())
        for t in range(n):
            if not everything >> t & 1:
                total += agreement(everything, t)
        items = []
        for t in bits(undecided):
            g = agreement(everything & ~(1 << t), t)
            total += g
            if g < 1.0:
                items.append((t, 1.0 - g))
        if not items:
            return total / n
        if nr == 0:
            return (total + sum(v for _, v in items)) / n
        knapsack = math.inf
        for r in range(nr):
            capacity = tables.limit[r] - lows[r]
            Cr, Er, Ir = tables.C[r], tables.E[r], incoming[r]
            gained = 0.0
            weighted = []
            for t, v in items:
                x = Ir[t] + Er[t] if nonempty else Ir[t]
                w = Cr[t] - x
                if w <= 0.0:
                    gained += v
                else:
                    weighted.append((v / w, v, w))
            weighted.sort(reverse=True)
            for density, v, w in weighted:
                if w <= capacity:
                    gained += v
                    capacity -= w
                else:
                    gained += density * capacity
                    break
            knapsack = min(knapsack, gained)
        return (total + knapsack) / n

    def visit(k: int, inside: int, cost_in: list[float], incoming: list[list[float]]) -> None:
        nonlocal best_value, best_mask
        count = inside.bit_count()
        if count + depth - k < inst.min_active:
            return
        undecided = suffix[k]
        nonempty = need_nonempty or inside != 0
        lows = tables.lower_bounds(inside, undecided, cost_in, incoming, nonempty)
        for lo, lim in zip(lows, tables.limit, strict=True):
            if lo > lim:
                return
        if k == depth:  # the lower bound is the exact cost here, so the plan fits
            value = inst.objective(inside)
            if value > best_value + GAIN_EPS:
                best_value, best_mask = value, inside
            return
        if assume_monotone and bound(inside, undecided, lows, incoming, nonempty) <= (
            best_value + GAIN_EPS
        ):
            return
        s = order[k]
        visit(k + 1, inside | 1 << s, *tables.add(s, cost_in, incoming))
        visit(k + 1, inside, cost_in, incoming)

    visit(0, inst.pinned, *tables.start(inst.pinned))
    return best_mask
