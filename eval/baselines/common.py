"""What every baseline shares: its result record, how outputs are scored, and priors.

The protocol is :mod:`mlink.eval.experiment`'s: the first part of each stream (``train_idx``) is
all a method may learn or tune on; it is measured on ``test_idx``. *Accuracy* is the mean over all
models of the agreement with the real model's output (:func:`mlink.linkstore.metrics.agreement`;
1 where the model really ran). *Compute saved* is ``1 - cost_ms / full`` where ``cost_ms`` is the
measured per-frame cost of everything the method ran on the evaluation frames (models, features,
CNN, thumbnails) and ``full`` the cost of every model on every frame. Each method plans within
``budget_ms`` per frame on average; ``cost_ms`` is what it actually spent and
:attr:`MethodResult.feasible` says whether that fit.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mlink.eval.figures import synthesized_agreement
from mlink.eval.workload import Workload
from mlink.linkstore.metrics import agreement
from mlink.linkstore.rows import prior_output

__all__ = [
    "MethodResult",
    "PairAgreement",
    "check_budget",
    "evaluate_outputs",
    "method_result",
    "model_ms",
    "prior_agreement",
    "prior_outputs",
]


@dataclass(slots=True)
class MethodResult:
    """One baseline at one budget, measured on the evaluation frames.

    ``active`` are the models that always run (for frame filtering: none -- every model runs on
    the frames its filter lets through); ``per_model`` is each model's mean agreement; ``run_rate``
    the share of evaluation frames on which each model really ran; ``cost_ms`` the measured
    average per-frame cost; ``predicted_accuracy`` what the method expected from the training part
    (None when it plans without an estimate), ``predicted_lower`` its lower confidence bound where
    the method has one (stream synthesis; what its plan was chosen on), ``predicted_forecast``
    its forecast bound (what the plan promises,
    :attr:`~mlink.linkstore.streamoptions.Choice.bound`), ``predicted_in_force`` the mean over
    the frames of the estimate of the plan each ran under, for methods that re-plan as they go
    (stream synthesis); ``predicted_live`` the mean over the frames of the forecast in force
    before each, the plan's estimate corrected by the probes seen so far, starting from its
    forecast bound (stream synthesis; :func:`~mlink.linkstore.liveguard.forecast`);
    ``seconds`` the wall time the method took (fit + plan + evaluation).
    """

    method: str
    budget_ms: float
    accuracy: float
    compute_saved: float
    cost_ms: float
    active: list[str]
    per_model: dict[str, float]
    run_rate: dict[str, float] = field(default_factory=dict)
    predicted_accuracy: float | None = None
    notes: str = ""
    predicted_lower: float | None = None
    predicted_forecast: float | None = None
    predicted_in_force: float | None = None
    predicted_live: float | None = None
    seconds: float = 0.0
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def feasible(self) -> bool:
        """Whether the measured average per-frame cost fits the budget."""
        return self.cost_ms <= self.budget_ms * (1 + 1e-9)

    @property
    def synthesized_accuracy(self) -> float | None:
        """Agreement of the outputs no real model computed (see :mod:`mlink.eval.figures`)."""
        return synthesized_agreement(self.per_model, self.run_rate)


def check_budget(workload: Workload, budget_ms: float) -> float:
    full = workload.total_cost("ms")
    if not budget_ms > 0:
        raise ValueError(f"budget_ms must be > 0, got {budget_ms}")
    if full <= 0:
        raise ValueError(f"workload {workload.name}: models cost nothing ({full} ms/frame)")
    return full


def method_result(
    workload: Workload,
    method: str,
    budget_ms: float,
    cost_ms: float,
    active: Iterable[str],
    per_model: Mapping[str, float],
    notes: str,
    started: float,
    details: Mapping[str, Any] | None = None,
    run_rate: Mapping[str, float] | None = None,
    predicted: float | None = None,
) -> MethodResult:
    """The result record; ``run_rate`` defaults to 1 for ``active`` models and 0 for the rest."""
    full = workload.total_cost("ms")
    per_model = {m: float(per_model[m]) for m in workload.models}
    active = sorted(active)
    if run_rate is None:
        run_rate = {m: 1.0 if m in active else 0.0 for m in workload.models}
    return MethodResult(
        method=method,
        budget_ms=float(budget_ms),
        accuracy=float(np.mean(list(per_model.values()))),
        compute_saved=float(np.clip(1.0 - cost_ms / full, 0.0, 1.0)),
        cost_ms=float(cost_ms),
        active=active,
        per_model=per_model,
        run_rate={m: float(run_rate[m]) for m in workload.models},
        predicted_accuracy=None if predicted is None else float(predicted),
        notes=notes,
        seconds=time.perf_counter() - started,
        details=dict(details or {}),
    )


def model_ms(workload: Workload) -> dict[str, float]:
    return {m: float(workload.costs[m].get("ms", 0.0)) for m in workload.models}


def evaluate_outputs(
    workload: Workload, idx: Sequence[int], predicted: Mapping[str, Sequence[Any]]
) -> tuple[float, dict[str, float]]:
    """Mean agreement of ``predicted[m]`` (aligned with ``idx``) with model ``m``'s real outputs.

    Models absent from ``predicted`` ran for real (agreement 1). Returns the mean over all models
    of the workload and the per-model agreements.
    """
    idx = np.asarray(idx, dtype=np.int64)
    unknown = sorted(set(predicted) - set(workload.models))
    if unknown:
        raise ValueError(f"predictions for unknown models {unknown}")
    per_model = {}
    for m in workload.models:
        if m not in predicted:
            per_model[m] = 1.0
            continue
        if len(predicted[m]) != len(idx):
            raise ValueError(f"{m}: {len(predicted[m])} predictions for {len(idx)} frames")
        spec = workload.specs[m]
        actual = [workload.outputs[m][i] for i in idx]
        scores = agreement(spec, list(predicted[m]), actual)
        per_model[m] = float(scores.mean()) if len(idx) else 1.0
    return float(np.mean(list(per_model.values()))), per_model


class PairAgreement:
    """Memoised per-frame agreement of model ``m``'s output on frame ``src`` with frame ``dst``:
    what reusing a stale output scores. Filters with different thresholds share most pairs."""

    def __init__(self, workload: Workload) -> None:
        self.workload = workload
        self._memo: dict[str, dict[tuple[int, int], float]] = {m: {} for m in workload.models}

    def __call__(self, model: str, src: np.ndarray, dst: np.ndarray) -> np.ndarray:
        memo = self._memo[model]
        pairs = list(zip(src.tolist(), dst.tolist(), strict=True))
        todo = sorted({p for p in pairs if p[0] != p[1] and p not in memo})
        if todo:
            spec = self.workload.specs[model]
            outs = self.workload.outputs[model]
            scores = agreement(spec, [outs[s] for s, _ in todo], [outs[d] for _, d in todo])
            memo.update(zip(todo, scores.tolist(), strict=True))
        return np.array([1.0 if s == d else memo[(s, d)] for s, d in pairs], dtype=np.float64)


def prior_outputs(workload: Workload, train_idx: Sequence[int]) -> dict[str, Any]:
    """Each model's prior over the training frames, as an output it could have emitted: the
    majority class / label frequencies, the modal count or the median
    (:func:`mlink.linkstore.linkset.prior_output`)."""
    return {
        m: prior_output(spec, [workload.outputs[m][i] for i in train_idx])
        for m, spec in workload.specs.items()
    }


def prior_agreement(workload: Workload, model: str, prior: Any, idx: Sequence[int]) -> float:
    """Mean agreement of a constant ``prior`` output with ``model``'s real outputs on ``idx``."""
    _, per_model = evaluate_outputs(workload, idx, {model: [prior] * len(idx)})
    return per_model[model]
