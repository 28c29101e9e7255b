"""Standalone: the models that fit run, every other model outputs its prior; no links.

The paper's weakest baseline, made as strong as it can be without links: which models run is a
knapsack on prior agreement (a model is worth running by how badly its constant prior agrees with
it on the training part), solved exactly, rather than simply the cheapest models that fit.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from mlink.eval.baselines.common import (
    MethodResult,
    check_budget,
    evaluate_outputs,
    method_result,
    model_ms,
    prior_agreement,
    prior_outputs,
)
from mlink.eval.workload import Workload
from mlink.linkstore.selection import Problem, select

__all__ = ["standalone"]


def standalone(
    workload: Workload, train_idx: Sequence[int], test_idx: Sequence[int], budget_ms: float
) -> MethodResult:
    """Run the models that fit, no links: every other model outputs its constant prior.

    The active set maximises training accuracy (1 per active model, the prior's training
    agreement per inactive one) within ``budget_ms``, solved exactly by
    :func:`mlink.linkstore.selection.select`; running nothing is allowed.
    """
    started = time.perf_counter()
    check_budget(workload, budget_ms)
    priors = prior_outputs(workload, train_idx)
    train_agree = {m: prior_agreement(workload, m, priors[m], train_idx) for m in workload.models}
    ms = model_ms(workload)
    problem = Problem(
        models=workload.models,
        costs={m: {"ms": ms[m]} for m in workload.models},
        budget={"ms": float(budget_ms)},
        agreement=lambda active, target: train_agree[target],
        min_active=0,
    )
    plan = select(problem)
    inactive = [m for m in workload.models if m not in plan.active]
    _, per_model = evaluate_outputs(
        workload, test_idx, {m: [priors[m]] * len(test_idx) for m in inactive}
    )
    cost = sum(ms[m] for m in plan.active)
    return method_result(
        workload,
        "Standalone",
        budget_ms,
        cost,
        plan.active,
        per_model,
        f"inactive models output their prior; training accuracy {plan.objective:.3f}",
        started,
        {"train_accuracy": plan.objective, "prior_train_agreement": train_agree},
        predicted=plan.objective,
    )
