"""`mlink bench CONFIG`: the paper's Table 4 on any pipeline config, offline, without a broker.

Protocol (the paper's): every model's real output on every frame is computed once and cached;
the first ``train_fraction`` (10%) of each stream, in time order, trains links, ensembles and
every baseline; the rest is evaluated. Accuracy is the mean over all models of agreement with
the real model's output (1 for executed models); compute saved is 1 - (cost of what ran,
including links, features or the multi-task CNN) / (cost of running every model), on measured
ms per frame. Every method sees the same frames, outputs and budgets in the same run.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mlink.deploy.config import PipelineConfig
from mlink.eval import baselines, temporal
from mlink.eval.config_workload import SourceFrames, load_workload
from mlink.eval.experiment import (
    PlanResult,
    TrainedWorkload,
    Workload,
    compare_selectors,
    stream_split,
    train_workload,
)
from mlink.eval.outputs import DEFAULT_CACHE
from mlink.linkstore.linkset import LinkSet
from mlink.linkstore.selection import InfeasibleBudget

DEFAULT_FRACTIONS = (0.2, 0.33, 0.5)
TRAIN_RATIOS = (0.01, 0.05, 0.1, 0.2)


@dataclass(slots=True)
class BenchReport:
    workload: str
    frames: int
    train_frames: int
    full_cost_ms: float
    rows: list[dict[str, Any]] = field(default_factory=list)
    training_ratios: list[dict[str, Any]] = field(default_factory=list)
    ensembles: dict[str, Any] = field(default_factory=dict)
    link_cost: dict[str, float] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__slots__}


def _row(method: str, budget_ms: float, full: float, result: Any) -> dict[str, Any]:
    if isinstance(result, InfeasibleBudget):  # nothing of this method fits: say so, no numbers
        return {
            "method": method,
            "budget": budget_ms,
            "budget_fraction": budget_ms / full,
            "feasible": False,
            "accuracy": None,
            "compute_saved": None,
            "cost_ms": None,
            "active": [],
            "note": str(result),
        }
    return {
        "method": method,
        "budget": budget_ms,
        "budget_fraction": budget_ms / full,
        "accuracy": float(result.accuracy),
        "compute_saved": float(result.compute_saved),
        "cost_ms": float(
            result.cost_ms if hasattr(result, "cost_ms") else result.cost.get("ms", 0.0)
        ),
        "active": list(result.active),
        "per_model": {m: float(v) for m, v in result.per_model.items()},
        "feasible": True,
    }


def _plan_row(
    method: str, budget_ms: float, full: float, plan: PlanResult | InfeasibleBudget
) -> dict[str, Any]:
    row = _row(method, budget_ms, full, plan)
    if isinstance(plan, PlanResult):
        row["predicted_accuracy"] = plan.predicted_accuracy
    return row


def training_ratio_table(
    workload: Workload, ratios: Sequence[float], config: Any, test_idx: np.ndarray
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


def run_bench(
    config: PipelineConfig,
    fractions: Sequence[float] | None = None,
    train_fraction: float = 0.1,
    ratios: Sequence[float] = TRAIN_RATIOS,
    progress: bool = True,
    log: Callable[[str], None] = print,
    cache_dir: Path | None = DEFAULT_CACHE,
) -> BenchReport:
    """Every method at every budget on the config's models and source."""
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    workload = load_workload(config, progress, cache_dir)
    seconds["outputs"] = time.perf_counter() - start
    start = time.perf_counter()
    prepared = baselines.prepare_frames(SourceFrames(config))
    seconds["frame_features"] = time.perf_counter() - start
    full = workload.total_cost("ms")
    if fractions:
        budgets = [f * full for f in fractions]
    else:
        budgets = [config.budget.resolve({"ms": full}).get("ms", full)]
    train_config = config.links.train_config()
    start = time.perf_counter()
    trained = train_workload(workload, train_fraction, train_config, "weighted", progress)
    fused = train_workload(workload, train_fraction, train_config, "fusion", progress=False)
    seconds["links"] = time.perf_counter() - start
    train_idx, test_idx = trained.train_idx, trained.test_idx
    report = BenchReport(workload.name, workload.n_frames, len(train_idx), full)
    link_ms = [c["ms"] for c in trained.link_costs.values()]
    report.link_cost = {"mean_ms_per_link": float(np.mean(link_ms)), "links": len(link_ms)}
    for budget in budgets:
        log(f"budget {budget:.2f} ms/frame ({budget / full:.0%} of {full:.2f})")
        report.rows += _methods_at(
            workload, trained, fused, prepared, train_idx, test_idx, budget, full, seconds
        )
    start = time.perf_counter()
    report.training_ratios = training_ratio_table(
        workload, ratios, train_config, stream_split(workload.streams, max(ratios))[1]
    )
    seconds["training_ratios"] = time.perf_counter() - start
    report.ensembles = _ensemble_winner(report.rows)
    report.seconds = seconds
    return report


def _methods_at(
    workload: Workload,
    trained: TrainedWorkload,
    fused: TrainedWorkload,
    prepared: baselines.PreparedFrames,
    train_idx: np.ndarray,
    test_idx: np.ndarray,
    budget: float,
    full: float,
    seconds: dict[str, float],
) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []

    def timed(name: str, fn: Callable[[], Any]) -> Any:
        start = time.perf_counter()
        try:
            return fn()
        except InfeasibleBudget as exc:
            return exc
        finally:
            seconds[name] = seconds.get(name, 0.0) + time.perf_counter() - start

    budget_map = {"ms": budget}
    rows.append(
        _row(
            "Standalone",
            budget,
            full,
            timed(
                "standalone", lambda: baselines.standalone(workload, train_idx, test_idx, budget)
            ),
        )
    )
    rows.append(
        _row(
            "Frame filtering (Reducto)",
            budget,
            full,
            timed(
                "reducto",
                lambda: baselines.frame_filtering(
                    workload, prepared.features, train_idx, test_idx, budget, prepared.feature_ms
                ),
            ),
        )
    )
    rows.append(
        _row(
            "Multi-task CNN",
            budget,
            full,
            timed(
                "multitask",
                lambda: baselines.multitask(
                    workload,
                    prepared.thumbs,
                    train_idx,
                    test_idx,
                    budget,
                    thumb_ms=prepared.thumb_ms,
                ),
            ),
        )
    )
    plans = timed("mlink", lambda: compare_selectors(trained, budget_map))
    fusion = timed("mlink", lambda: compare_selectors(fused, budget_map))
    if isinstance(plans, InfeasibleBudget):
        plans = (plans, plans)
    rows.append(_plan_row("MLink (paper greedy)", budget, full, plans[0]))
    rows.append(_plan_row("MLink (exact selection)", budget, full, plans[1]))
    fusion = fusion if isinstance(fusion, InfeasibleBudget) else fusion[1]
    rows.append(_plan_row("MLink (exact, fusion ensemble)", budget, full, fusion))
    rows.append(
        _row(
            "Reuse schedule",
            budget,
            full,
            timed(
                "temporal", lambda: temporal.reuse_schedule(workload, train_idx, test_idx, budget)
            ),
        )
    )
    rows.append(
        _row(
            "MLink + temporal links",
            budget,
            full,
            timed(
                "temporal", lambda: temporal.temporal_mlink(workload, train_idx, test_idx, budget)
            ),
        )
    )
    rows.append(
        _row(
            "MLink + frame filtering",
            budget,
            full,
            timed(
                "temporal",
                lambda: temporal.mlink_with_filtering(workload, train_idx, test_idx, budget),
            ),
        )
    )
    return rows


def _ensemble_winner(rows: list[dict[str, Any]]) -> dict[str, Any]:
    weighted = [r for r in rows if r["method"] == "MLink (exact selection)"]
    fusion = [r for r in rows if r["method"] == "MLink (exact, fusion ensemble)"]
    diffs = [
        f["accuracy"] - w["accuracy"]
        for w, f in zip(weighted, fusion, strict=True)
        if w["feasible"] and f["feasible"]
    ]
    mean = float(np.mean(diffs)) if diffs else 0.0
    return {
        "fusion_minus_weighted_accuracy": diffs,
        "winner": "fusion" if mean > 0 else "weighted",
    }


def to_json(report: BenchReport) -> str:
    return json.dumps(report.as_dict(), default=float)


def plot(report: BenchReport, path: Path) -> None:
    """Accuracy vs compute saved, one line per method across the budgets."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 5))
    methods = list(dict.fromkeys(r["method"] for r in report.rows))
    markers = "osD^v<>ph*"
    for i, method in enumerate(methods):
        rows = sorted(
            (r for r in report.rows if r["method"] == method and r["feasible"]),
            key=lambda r: r["compute_saved"],
        )
        ax.plot(
            [r["compute_saved"] for r in rows],
            [r["accuracy"] for r in rows],
            marker=markers[i % len(markers)],
            label=method,
        )
    ax.set_xlabel("compute saved (share of running every model)")
    ax.set_ylabel("accuracy (mean agreement with the real models)")
    ax.set_title(f"{report.workload}: {report.frames} frames, {report.train_frames} train")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
