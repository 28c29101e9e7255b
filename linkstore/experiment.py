"""Offline experiments: train links on the head of each stream, pick an active set under a budget,
and measure what it saves and keeps on the rest, as the paper's protocol does.

Works on a :class:`Workload` (every model's real outputs on every frame, plus measured costs), so
it needs no broker and no models at run time: outputs are collected and cached once elsewhere.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mlink.linkstore.ensemble import EnsembleKind
from mlink.linkstore.linkset import AgreementOracle, LinkSet
from mlink.linkstore.selection import Evaluation, Problem, select, select_paper_greedy
from mlink.linkstore.training import TrainConfig
from mlink.topics.specs import OutputSpec


@dataclass(slots=True)
class Workload:
    """Aligned real outputs of every model on every frame, in stream (time) order."""

    name: str
    specs: dict[str, OutputSpec]
    outputs: dict[str, list[Any]]
    costs: dict[str, dict[str, float]]
    streams: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        n = {m: len(v) for m, v in self.outputs.items()}
        if set(n) != set(self.specs):
            raise ValueError(
                f"workload {self.name}: outputs cover {sorted(n)}, specs {sorted(self.specs)}"
            )
        if len(set(n.values())) > 1:
            raise ValueError(f"workload {self.name}: models have different frame counts {n}")
        if not self.streams:
            self.streams = ["stream"] * self.n_frames
        if len(self.streams) != self.n_frames:
            raise ValueError(
                f"workload {self.name}: {len(self.streams)} stream ids for {self.n_frames} frames"
            )

    @property
    def models(self) -> list[str]:
        return list(self.specs)

    @property
    def n_frames(self) -> int:
        return len(next(iter(self.outputs.values()))) if self.outputs else 0

    def subset(self, index: Sequence[int]) -> dict[str, list[Any]]:
        return {m: [v[i] for i in index] for m, v in self.outputs.items()}

    def total_cost(self, resource: str = "ms") -> float:
        return float(sum(c.get(resource, 0.0) for c in self.costs.values()))


def stream_split(streams: Sequence[str], train_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """The paper's protocol: the first ``train_fraction`` of *each* stream (in time order) trains,
    the rest evaluates. At least two frames per stream train so a validation split exists."""
    if not 0.0 < train_fraction < 1.0:
        raise ValueError(f"train_fraction must be in (0, 1), got {train_fraction}")
    train, test = [], []
    positions: dict[str, list[int]] = {}
    for i, s in enumerate(streams):
        positions.setdefault(s, []).append(i)
    for idx in positions.values():
        k = min(len(idx) - 1, max(2, round(len(idx) * train_fraction)))
        train += idx[:k]
        test += idx[k:]
    return np.array(sorted(train)), np.array(sorted(test))


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
