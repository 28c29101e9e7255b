"""Planning on the training part: the best active set and one policy per other target.

Per candidate active set (every set that fits, up to ``max_subsets``; else greedy forward
selection), each inactive target's options that the set allows are cut to their Pareto front and
the shared multiple-choice knapsack (:mod:`mlink.eval.knapsack`) picks one per target.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from mlink.eval.temporal.context import Context
from mlink.eval.temporal.policy import Policy
from mlink.linkstore.knapsack import choose_options
from mlink.linkstore.streamplan import affordable_subsets

__all__ = ["Plan", "best_plan", "choose_policies", "pareto", "prior_policy"]


def pareto(options: list[Policy]) -> list[Policy]:
    """Options no other option beats on both cost and accuracy, cheapest first."""
    best: list[Policy] = []
    for p in sorted(options, key=lambda p: (p.cost, -p.estimate)):
        if not best or p.estimate > best[-1].estimate + 1e-12:
            best.append(p)
    return best


def choose_policies(groups: list[list[Policy]], capacity: float, grid: int) -> list[int] | None:
    """One policy per group: most total estimate with total cost <= ``capacity`` (None when
    nothing fits), by the shared multiple-choice knapsack."""
    return choose_options([[(p.cost, p.estimate) for p in g] for g in groups], capacity, grid)


def prior_policy(ctx: Context, t: str) -> Policy:
    return Policy("prior", estimate=float(ctx.prior_train[t]))


@dataclass(slots=True)
class Plan:
    active: frozenset[str]
    policies: dict[str, Policy]
    estimate: float
    cost: float


def best_plan(ctx: Context, budget: float, families: Sequence[str], plain: bool) -> Plan:
    """The best active set and per-target policies on the training part within ``budget``."""
    models = ctx.models
    # per target: the Pareto front of the options needing each set of running models
    fronts: dict[str, dict[frozenset[str], list[Policy]]] = {}
    for t in models:
        by_req: dict[frozenset[str], list[Policy]] = {frozenset(): [prior_policy(ctx, t)]}
        for f in families:
            for p in ctx.options(t, f):
                if p.period != 1:  # "always runs" is the active set's job here
                    by_req.setdefault(p.requires, []).append(p)
        fronts[t] = {req: pareto(opts) for req, opts in by_req.items()}
    if plain:
        ctx.plain  # noqa: B018 -- trains on first use

    def plan_for(active: frozenset[str]) -> Plan | None:
        room = budget - sum(ctx.ms[m] for m in active)
        if room < 0:
            return None
        targets = [t for t in models if t not in active]
        groups = []
        for t in targets:
            opts = [p for req, front in fronts[t].items() if req <= active for p in front]
            if plain and active:
                est = ctx.plain_oracle(active, t)
                opts.append(Policy("link", cost=ctx.plain_link_cost(active, t), estimate=est))
            groups.append(pareto(opts))
        chosen = choose_policies(groups, room, ctx.config.grid)
        if chosen is None:
            return None
        policies = {t: g[o] for t, g, o in zip(targets, groups, chosen, strict=True)}
        est = (len(active) + sum(p.estimate for p in policies.values())) / len(models)
        cost = budget - room + sum(p.cost for p in policies.values())
        return Plan(active, policies, est, cost)

    def better(a: Plan | None, b: Plan | None) -> bool:
        if b is None:
            return False
        if a is None:
            return True
        if b.estimate > a.estimate + 1e-9:
            return True
        return b.estimate > a.estimate - 1e-9 and b.cost < a.cost - 1e-9

    subsets = affordable_subsets(models, ctx.ms, budget + 1e-9, ctx.config.max_subsets)
    best: Plan | None = None
    if subsets is not None:
        for active in subsets:
            cand = plan_for(active)
            if better(best, cand):
                best = cand
    else:  # too many: greedy forward selection
        best = plan_for(frozenset())
        improved = True
        while improved:
            improved = False
            for m in models:
                if best is None or m in best.active:
                    continue
                cand = plan_for(best.active | {m})
                if better(best, cand):
                    best, improved = cand, True
    if best is None:
        raise ValueError(f"no plan fits a budget of {budget:g} ms/frame")
    return best
