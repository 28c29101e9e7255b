"""Offline experiments: train links on the head of each stream, pick an active set under a budget,
and measure what it saves and keeps on the rest, as the paper's protocol does.

Works on a :class:`~mlink.eval.workload.Workload` (every model's real outputs on every frame, plus
measured costs), so it needs no broker and no models at run time: outputs are collected and cached
once elsewhere.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from mlink.eval.workload import Workload, stream_split
from mlink.linkstore.ensemble import EnsembleKind
from mlink.linkstore.linkset import AgreementOracle, LinkSet
from mlink.linkstore.selection import Evaluation, Problem, select, select_paper_greedy
from mlink.linkstore.training import TrainConfig


@dataclass(slots=True)
class PlanResult:
    """One active set, measured on the evaluation frames."""

    method: str
    budget: dict[str, float]
    active: list[str]
    accuracy: float
    compute_saved: float
    cost: dict[str, float]
    per_model: dict[str, float]
    predicted_accuracy: float


@dataclass(slots=True)
class TrainedWorkload:
    """Links trained on the head of the streams, and oracles on validation and evaluation data."""

    workload: Workload
    linkset: LinkSet
    train_idx: np.ndarray
    test_idx: np.ndarray
    val_oracle: AgreementOracle
    test_oracle: AgreementOracle
    link_costs: dict[tuple[str, str], dict[str, float]]


def train_workload(
    workload: Workload,
    train_fraction: float = 0.1,
    config: TrainConfig | None = None,
    ensemble: EnsembleKind = "weighted",
    progress: bool = True,
) -> TrainedWorkload:
    """Train links on the first ``train_fraction`` of each stream; build agreement oracles.

    Selection must not peek at the evaluation frames, so its oracle uses the training frames'
    held-out validation split; the evaluation oracle is only used to report.
    """
    config = config or TrainConfig()
    train_idx, test_idx = stream_split(workload.streams, train_fraction)
    train_outputs = workload.subset(train_idx)
    linkset = LinkSet.train(workload.specs, train_outputs, config, ensemble, progress)
    return TrainedWorkload(
        workload,
        linkset,
        train_idx,
        test_idx,
        linkset.validation_oracle(train_outputs),
        linkset.agreement_oracle(workload.subset(test_idx)),
        linkset.measure_link_costs(),
    )


def selection_problem(trained: TrainedWorkload, budget: Mapping[str, float]) -> Problem:
    """The selection instance: measured model and link costs, validation agreement."""
    wl = trained.workload
    return Problem(
        models=wl.models,
        costs={m: dict(wl.costs[m]) for m in wl.models},
        budget=dict(budget),
        agreement=trained.val_oracle,
        link_costs=trained.link_costs,
    )


def measure_plan(
    trained: TrainedWorkload, method: str, budget: Mapping[str, float], evaluation: Evaluation
) -> PlanResult:
    """Evaluate a chosen active set on the evaluation frames."""
    wl = trained.workload
    active = frozenset(evaluation.active)
    per_model = {m: trained.test_oracle(active, m) for m in wl.models}
    full = wl.total_cost("ms")
    return PlanResult(
        method=method,
        budget=dict(budget),
        active=sorted(active),
        accuracy=float(np.mean(list(per_model.values()))),
        compute_saved=1.0 - evaluation.cost.get("ms", full) / full if full else 0.0,
        cost=dict(evaluation.cost),
        per_model=per_model,
        predicted_accuracy=evaluation.objective,
    )


SELECTORS = {
    "MLink (paper greedy)": select_paper_greedy,
    "MLink (exact)": lambda problem: select(problem, "auto"),
}


def compare_selectors(trained: TrainedWorkload, budget: Mapping[str, float]) -> list[PlanResult]:
    """Run the paper's greedy and our selector on the same links and budget."""
    problem = selection_problem(trained, budget)
    return [measure_plan(trained, name, budget, fn(problem)) for name, fn in SELECTORS.items()]
