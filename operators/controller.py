"""The controller's pure logic: from a link version, costs and a budget to the next active set.

Runs where the single-partition control topic is consumed, so exactly one worker decides; the
budget, the link version and the epoch it decides from come from the replayed control log
(:class:`~mlink.operators.state.ControlState`), so a controller that fails over to another worker
decides exactly as the old one would have.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import replace
from typing import Any

from mlink.linkstore.budget import BUDGET_KEYS, full_cost, resolve_budget
from mlink.linkstore.bundle import LoadedLinks
from mlink.linkstore.content_forecast import content_table
from mlink.linkstore.cost_headroom import active_set_headroom
from mlink.linkstore.problem import Evaluation
from mlink.linkstore.selection import InfeasibleBudget, Problem, select, select_paper_greedy
from mlink.linkstore.streamplan import agreement_targets
from mlink.linkstore.targets import select_for_targets
from mlink.operators.stream_decision import headroom_extra, stream_decision
from mlink.topics.records import ControlMessage

__all__ = [
    "UNMET",
    "InfeasibleBudget",
    "cost_bounds",
    "decide",
    "guard_decision",
    "model_costs",
    "unmet_models",
]

log = logging.getLogger("mlink.controller")


def model_costs(
    models: Sequence[str],
    declared: Mapping[str, Mapping[str, float]],
    measured: Mapping[str, Mapping[str, float]],
) -> dict[str, dict[str, float]]:
    """One cost table: declared costs win over measured ones; a model with neither costs 0 ms."""
    costs = {m: dict(measured.get(m, {})) for m in models}
    for m, cost in declared.items():
        if m in costs:
            costs[m].update(cost)
    for cost in costs.values():
        cost.setdefault("ms", 0.0)
    return costs


def _cost_table(models: Sequence[str], declared: Mapping[str, Mapping[str, float]]) -> str:
    """Which costs the plan was chosen on: ``declared``, ``measured`` live, or ``mixed``."""
    n = sum(1 for m in models if "ms" in declared.get(m, {}))
    return "declared" if n == len(models) else "measured" if n == 0 else "mixed"


def _choose(problem: Problem, selector: str) -> Evaluation:
    return select_paper_greedy(problem) if selector == "greedy" else select(problem, selector)


def decide(
    models: Sequence[str],
    declared: Mapping[str, Mapping[str, float]],
    links: LoadedLinks,
    budget: Mapping[str, float],
    epoch: int,
    selector: str = "auto",
    probe_every: int = 0,
    *,
    stream: bool = False,
    probe_stride: int = 0,
    corrections: Mapping[str, float] | None = None,
) -> ControlMessage:
    """Choose the active set for ``budget`` and wrap it as the control message of ``epoch``.

    ``budget`` bounds compute (``ms``, ``fraction``, ``memory_mb``) and/or sets accuracy
    targets (``target_agreement``, ``target_agreement:<model>``): with targets alone the
    cheapest plan whose every model is expected to reach its target wins, with a bound too the
    most accurate plan within it that meets them. With ``stream`` and a link version fitted
    for it, the plan is a per-frame schedule (:mod:`mlink.linkstore.streamplan`), published in
    ``extra["schedule"]``; ``corrections`` are what live probes said of each model's estimate.

    Raises :class:`InfeasibleBudget` (naming the cheapest feasible budget) if nothing fits.
    """
    costs = model_costs(models, declared, links.model_costs)
    targets = agreement_targets(budget, models)
    bounds = {k: v for k, v in budget.items() if k in BUDGET_KEYS}
    limits = resolve_budget(bounds, full_cost(costs)) if bounds else {}
    cost_table = _cost_table(models, declared)
    if stream and links.stream is not None and links.curves and set(limits) <= {"ms"}:
        return stream_decision(
            models,
            costs,
            links,
            budget,
            limits.get("ms"),
            targets,
            epoch,
            probe_every=probe_every,
            probe_stride=probe_stride,
            corrections=corrections,
            cost_table=cost_table,
        )
    if stream and links.stream is not None and "memory_mb" in limits:
        log.warning(
            "epoch %d: stream schedules are planned for compute (ms, fraction) only; with "
            "memory_mb this is a plan of the paper's active sets, without a schedule or the "
            "live check of accuracy targets",
            epoch,
        )
    problem = Problem(
        models=list(models),
        costs=costs,
        budget=limits,
        agreement=links.oracle,
        link_costs=links.link_costs,
        ensemble_costs=links.ensemble_costs,
    )
    plan = select_for_targets(problem, targets) if targets else _choose(problem, selector)
    log.info(
        "epoch %d: active=%s objective=%.3f cost=%s budget=%s",
        epoch,
        sorted(plan.active),
        plan.objective,
        plan.cost,
        limits or budget,
    )
    extra = {
        "objective": plan.objective,
        "cost": dict(plan.cost),
        "predicted": {m: links.oracle(frozenset(plan.active), m) for m in models},
        "cost_table": cost_table,
        # the costs and compute bound it was chosen on (a fraction resolved), as stream plans
        "model_ms": {m: float(costs[m].get("ms", 0.0)) for m in models},
        "budget_ms": limits.get("ms"),
    }
    try:  # what each synthesized model keeps per content signature, for the workers to weigh
        extra["content"] = content_table(links.oracle, plan.active, links.linkset.specs).to_meta()
    except (TypeError, ValueError) as exc:  # an oracle without per-frame scores
        log.info("epoch %d: no content table (%s)", epoch, exc)
    # a target plan is the cheapest that meets them: no budget edge; declared costs do not move
    if not targets and cost_table != "declared":
        again = functools.partial(_choose, selector=selector)
        extra.update(headroom_extra(epoch, lambda: active_set_headroom(problem, plan, again)))
    return ControlMessage(
        kind="active_set",
        epoch=epoch,
        issued_at=time.time(),
        active=tuple(sorted(plan.active)),
        budget=dict(budget),
        link_version=links.version,
        probe_every=probe_every,
        extra=extra,
    )


UNMET = "targets_unmet"
"""Plan extra: models left below their accuracy target because meeting it does not fit the
compute bound (the guard stops re-planning for them while the plan in force says so)."""


def guard_decision(
    decide_for: Callable[[Mapping[str, float]], ControlMessage],
    budget: Mapping[str, float],
    reason: str | None,
    missed: Collection[str],
    plan_extra: Mapping[str, Any],
) -> tuple[ControlMessage, str | None]:
    """``decide_for(budget)`` and ``reason``; but when the guard (``reason``, the ``missed``
    models) re-plans a budget of targets and a compute bound that no plan meets any more, the
    bound holds: the most accurate plan within it, its budget still naming the targets (so the
    guard watches the other models), the models left below target in ``extra["targets_unmet"]``
    and the reason saying so. The same holds without a guard reason (new links, a restated
    budget) while the plan in force already runs with targets unmet: its carried corrections
    make the targets as unmeetable as they were, and refusing would keep the old links for good.
    Otherwise, without a guard reason, :class:`InfeasibleBudget` propagates."""
    try:
        return decide_for(budget), reason
    except InfeasibleBudget as exc:
        within = cost_bounds(budget)
        carried = unmet_models(plan_extra)
        if (reason is None and not carried) or not within or within == dict(budget):
            raise
        decision = decide_for(within)
        unmet = sorted(set(missed) | set(carried))
        decision = replace(decision, budget=dict(budget), extra={**decision.extra, UNMET: unmet})
        why = f"{reason}; {exc}" if reason is not None else str(exc)
        return decision, (
            f"{why}: the most accurate plan within the compute bound instead, "
            f"{', '.join(unmet)} below target"
        )


def cost_bounds(budget: Mapping[str, float]) -> dict[str, float]:
    """The compute bounds of ``budget``, without its accuracy targets."""
    return {k: v for k, v in budget.items() if k in BUDGET_KEYS}


def unmet_models(extra: Mapping[str, Any]) -> list[str]:
    """The models a plan left below target because meeting it did not fit the compute bound."""
    unmet = extra.get(UNMET)
    return [m for m in unmet if isinstance(m, str)] if isinstance(unmet, list) else []
