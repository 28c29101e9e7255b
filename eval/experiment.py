"""Offline experiments: train links on the head of each stream, pick an active set under a budget,
and measure what it saves and keeps on the rest, as the paper's protocol does.

Works on a :class:`~mlink.eval.workload.Workload` (every model's real outputs on every frame, plus
a cost table), so it needs no broker and no models at run time: outputs are collected and cached
once elsewhere.

Selection never sees the evaluation frames: it scores plans with an oracle built on the training
frames only, by the scheme of :func:`mlink.linkstore.crossfit.fit_and_score` (by default the mean
of cross-fitting within and across streams, so no plan is scored on samples that fitted its links
or ensembles). The evaluation
oracle only reports. Synthesis is costed as the link operator runs it
(:func:`~mlink.linkstore.linkcosts.synthesis_costs`: a fixed part per synthesized
target plus a part per active source), measured in this process.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mlink.eval.figures import synthesized_agreement
from mlink.eval.workload import Workload, stream_split
from mlink.linkstore.content_forecast import ContentForecast, plan_content_forecast
from mlink.linkstore.crossfit import (
    Scheme,
    fit_and_score,
)
from mlink.linkstore.ensemble import EnsembleKind
from mlink.linkstore.linkcosts import synthesis_costs
from mlink.linkstore.linkset import LinkSet
from mlink.linkstore.oracle import AgreementOracle, SampleOracle
from mlink.linkstore.selection import Evaluation, Problem, select, select_paper_greedy
from mlink.linkstore.training import TrainConfig

__all__ = [
    "SELECTORS",
    "PlanResult",
    "TrainedWorkload",
    "compare_selectors",
    "measure_plan",
    "selection_problem",
    "train_workload",
    "training_ratio_table",
]

Costs = dict[str, dict[str, float]]


@dataclass(slots=True)
class PlanResult:
    """One active set, measured on the evaluation frames.

    ``predicted_accuracy`` is what selection expected (its oracle's objective), ``accuracy`` what
    the plan kept; ``run_rate`` is 1 for active models and 0 for synthesized ones. ``content``
    is the expectation re-weighted to what the active models saw on the evaluation frames
    (:mod:`mlink.linkstore.content_forecast`): a forecast a running plan can make without labels.
    """

    method: str
    budget: dict[str, float]
    active: list[str]
    accuracy: float
    compute_saved: float
    cost: dict[str, float]
    per_model: dict[str, float]
    predicted_accuracy: float
    feasible: bool = True
    predicted_per_model: dict[str, float] = field(default_factory=dict)
    content: ContentForecast | None = None

    @property
    def predicted_content(self) -> float | None:
        return None if self.content is None else self.content.value

    @property
    def run_rate(self) -> dict[str, float]:
        return {m: 1.0 if m in self.active else 0.0 for m in self.per_model}

    @property
    def synthesized_accuracy(self) -> float | None:
        return synthesized_agreement(self.per_model, self.run_rate)

    @property
    def cost_ms(self) -> float:
        return float(self.cost.get("ms", 0.0))


@dataclass(slots=True)
class TrainedWorkload:
    """Links trained on the head of the streams, the oracle selection scores plans with, the
    evaluation oracle, and what synthesis costs."""

    workload: Workload
    linkset: LinkSet
    train_idx: np.ndarray
    test_idx: np.ndarray
    val_oracle: SampleOracle
    test_oracle: AgreementOracle
    link_costs: Costs
    ensemble_costs: dict[str, dict[str, float]]
    scheme: Scheme = "mixed"


def train_workload(
    workload: Workload,
    train_fraction: float = 0.1,
    config: TrainConfig | None = None,
    ensemble: EnsembleKind = "weighted",
    scheme: Scheme = "mixed",
    folds: int = 5,
) -> TrainedWorkload:
    """Train links on the first ``train_fraction`` of each stream and build both oracles.

    ``scheme`` picks the selection oracle (see :func:`mlink.linkstore.crossfit.fit_and_score`);
    folds are contiguous time blocks of each stream's training frames.
    """
    config = config or TrainConfig()
    train_idx, test_idx = stream_split(workload.streams, train_fraction)
    outputs = workload.subset(train_idx)
    groups = [workload.streams[i] for i in train_idx]
    fit = fit_and_score(workload.specs, outputs, config, ensemble, scheme, folds, groups)
    link_costs, ensemble_costs = synthesis_costs(fit.linkset)
    return TrainedWorkload(
        workload,
        fit.linkset,
        train_idx,
        test_idx,
        fit.oracle,
        fit.linkset.agreement_oracle(workload.subset(test_idx)),
        link_costs,
        ensemble_costs,
        scheme,
    )


def selection_problem(trained: TrainedWorkload, budget: Mapping[str, float]) -> Problem:
    """The selection instance: the workload's cost table, synthesis costs, the honest oracle."""
    wl = trained.workload
    return Problem(
        models=wl.models,
        costs={m: dict(wl.costs[m]) for m in wl.models},
        budget=dict(budget),
        agreement=trained.val_oracle,
        link_costs=trained.link_costs,
        ensemble_costs=trained.ensemble_costs,
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
        feasible=evaluation.feasible,
        predicted_per_model=dict(evaluation.per_model),
        content=plan_content_forecast(
            trained.val_oracle, active, trained.test_oracle.outputs, wl.specs
        ),
    )


SELECTORS = {
    "MLink (paper greedy)": select_paper_greedy,
    "MLink (exact)": lambda problem: select(problem, "auto"),
}


def compare_selectors(
    trained: TrainedWorkload, budget: Mapping[str, float], names: Sequence[str] | None = None
) -> list[PlanResult]:
    """Run the paper's greedy and our selector (or ``names`` of :data:`SELECTORS`) on the same
    links and budget."""
    problem = selection_problem(trained, budget)
    chosen = names or list(SELECTORS)
    return [measure_plan(trained, name, budget, SELECTORS[name](problem)) for name in chosen]


def training_ratio_table(
    workload: Workload, ratios: Sequence[float], config: TrainConfig, test_idx: np.ndarray
) -> list[dict[str, Any]]:
    """Link agreement vs share of each stream used for training (the paper's link tables).

    Always evaluated on the same frames (those after the largest training share), so the rows
    compare like with like.
    """
    rows = []
    for ratio in ratios:
        train_idx, _ = stream_split(workload.streams, ratio)
        linkset = LinkSet.train(workload.specs, workload.subset(train_idx), config, progress=False)
        oracle = linkset.agreement_oracle(workload.subset(test_idx))
        singles = [oracle(frozenset({s}), t) for (s, t) in linkset.links]
        ensembles = [oracle(frozenset(workload.models) - {t}, t) for t in workload.models]
        priors = [oracle(frozenset(), t) for t in workload.models]
        rows.append(
            {
                "ratio": ratio,
                "train_frames": len(train_idx),
                "mean_link_agreement": float(np.mean(singles)),
                "best_link_agreement": float(np.max(singles)),
                "mean_ensemble_agreement": float(np.mean(ensembles)),
                "mean_prior_agreement": float(np.mean(priors)),
            }
        )
    return rows
