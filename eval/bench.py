"""`mlink bench CONFIG`: the paper's Table 4 on any pipeline config, offline, without a broker.

Protocol (the paper's): every model's real output on every frame is computed once and cached;
the first ``train_fraction`` (10%) of each stream trains links, ensembles and every baseline; the
rest is evaluated. Every method sees the same frames, outputs, cost table and budgets in the same
run. What each row reports:

- *accuracy*: mean over all models and evaluation frames of the agreement with the real model's
  output, executed outputs scoring 1; *synthesized*: the same over only the outputs no real model
  computed on that frame (:mod:`mlink.eval.figures`);
- *compute saved*: ``1 - cost / full`` in ms per frame, from ONE cost table for the models
  (by default re-timed in this run, so under the same load as everything else it measures; or
  as cached when the outputs were computed; or declared in the config: ``report.cost_table``
  says which and when), plus what the method itself runs, measured in this run: link and
  ensemble inference, frame features, the multi-task CNN, change signals;
- *predicted*: what the method expected from the training part; for MLink rows the selection
  oracle's objective (cross-fitted by default), to compare with what the plan kept;
- *feasible*: the method's own verdict (its measured cost fits the budget; for MLink the plan's).

Stream order: sources whose frames are independent samples (``independent_frames`` on the source
factory, e.g. the digits images) are shuffled within each stream with the seed (``order="auto"``);
video stays in time order. With ``seeds > 1`` every figure that moves between runs (link training
seed, the shuffled split, the CNN seed, measured link costs) is reported as mean and spread.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np

from mlink.deploy.config import PipelineConfig, load_object
from mlink.eval import baselines, temporal
from mlink.eval.baselines.frames import PreparedFrames
from mlink.eval.config_workload import SourceFrames
from mlink.eval.cost_tables import CostTable, priced_workload
from mlink.eval.experiment import (
    TrainedWorkload,
    compare_selectors,
    train_workload,
    training_ratio_table,
)
from mlink.eval.figures import mean_spread
from mlink.eval.outputs import DEFAULT_CACHE
from mlink.eval.streaming import method as streaming
from mlink.eval.workload import Workload, shuffled_order, stream_split
from mlink.linkstore.crossfit import Scheme
from mlink.linkstore.selection import InfeasibleBudget
from mlink.linkstore.training import TrainConfig

__all__ = [
    "DEFAULT_FRACTIONS",
    "METHODS",
    "BenchReport",
    "aggregate",
    "plot",
    "run_bench",
    "to_json",
    "training_ratio_table",
]

DEFAULT_FRACTIONS = (0.2, 0.33, 0.5)
TRAIN_RATIOS = (0.01, 0.05, 0.1, 0.2)
Order = Literal["auto", "file", "shuffled"]

STANDALONE = "Standalone (knapsack on prior agreement)"
REDUCTO = "Frame filtering (Reducto)"
MULTITASK = "Multi-task CNN"
GREEDY = "MLink (paper greedy)"
EXACT = "MLink (exact selection)"
FUSION = "MLink (exact, fusion ensemble)"
REUSE = "Reuse schedule"
TEMPORAL = "MLink + temporal links"
FILTERING = "MLink + frame filtering"
STREAM = "MLink stream (offline)"
STREAM_ONLINE = "MLink stream + probes (online)"
METHODS = (
    STANDALONE,
    REDUCTO,
    MULTITASK,
    GREEDY,
    EXACT,
    FUSION,
    REUSE,
    TEMPORAL,
    FILTERING,
    STREAM,
    STREAM_ONLINE,
)
#: Rows whose predicted accuracy is the MLink selector's (the issue's within-3-points target).
SELECTOR_ROWS = (GREEDY, EXACT, FUSION, STREAM, STREAM_ONLINE)
METRICS = (
    "accuracy",
    "synthesized_accuracy",
    "compute_saved",
    "cost_ms",
    "predicted_accuracy",
    "predicted_lower",
    "predicted_forecast",
    "predicted_in_force",
    "predicted_live",
    "predicted_content",
    "probe_share",
)
#: Each forecast a row may carry, with the key of its gap to realised accuracy in a cell: the
#: method's prediction, the stream plans' forecast bound (what they promise; the lower bound
#: they were chosen on is in the cells too), the estimate of the plan in force on each frame
#: (re-plans included), that estimate rescaled by the probes so far, and the paper rows' estimate
#: re-weighted to the content their active models saw (no labels).
FORECASTS = (
    ("predicted_accuracy", "prediction_gap"),
    ("predicted_forecast", "forecast_gap"),
    ("predicted_lower", "lower_gap"),
    ("predicted_in_force", "in_force_gap"),
    ("predicted_live", "live_gap"),
    ("predicted_content", "content_gap"),
)


@dataclass(slots=True)
class BenchReport:
    """Every method at every budget and seed (``rows``), and their mean and spread (``cells``)."""

    workload: str
    frames: int
    train_frames: int
    full_cost_ms: float
    order: str
    seeds: int
    scheme: str
    cost_table: dict[str, Any] = field(default_factory=dict)
    rows: list[dict[str, Any]] = field(default_factory=list)
    cells: list[dict[str, Any]] = field(default_factory=list)
    targets: list[dict[str, Any]] = field(default_factory=list)
    training_ratios: list[dict[str, Any]] = field(default_factory=list)
    ensembles: dict[str, Any] = field(default_factory=dict)
    link_cost: dict[str, float] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__slots__}


def _row(method: str, budget_ms: float, full: float, seed: int, result: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "method": method,
        "budget": budget_ms,
        "budget_fraction": budget_ms / full,
        "seed": seed,
    }
    if isinstance(result, InfeasibleBudget):  # nothing of this method fits: say so, no numbers
        return row | {
            "feasible": False,
            **dict.fromkeys(METRICS),
            "active": [],
            "note": str(result),
        }
    return row | {
        "feasible": bool(result.feasible),
        "accuracy": float(result.accuracy),
        "synthesized_accuracy": result.synthesized_accuracy,
        "compute_saved": float(result.compute_saved),
        "cost_ms": float(result.cost_ms),
        "predicted_accuracy": result.predicted_accuracy,
        "predicted_lower": getattr(result, "predicted_lower", None),
        "predicted_forecast": getattr(result, "predicted_forecast", None),
        "predicted_in_force": getattr(result, "predicted_in_force", None),
        "predicted_live": getattr(result, "predicted_live", None),
        "predicted_content": getattr(result, "predicted_content", None),
        "probe_share": (getattr(result, "details", None) or {}).get("probe_share"),
        "active": list(result.active),
        "per_model": {m: float(v) for m, v in result.per_model.items()},
        "run_rate": {m: float(v) for m, v in result.run_rate.items()},
    }


def aggregate(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One cell per (method, budget): mean and spread (sample std) of every metric over seeds.

    ``prediction_gap`` is predicted minus realised accuracy per seed, averaged; ``forecast_gap``
    and ``lower_gap`` the same for the plan's forecast bound and lower bound, ``in_force_gap``
    for the estimate of the plan in force on each frame, ``live_gap`` for that estimate
    rescaled by the probes so far, ``content_gap`` for the paper rows' estimate re-weighted to
    the content their active models saw.
    """
    cells = []
    keys = list(dict.fromkeys((r["method"], r["budget"]) for r in rows))
    for method, budget in keys:
        group = [r for r in rows if r["method"] == method and r["budget"] == budget]
        cell: dict[str, Any] = {
            "method": method,
            "budget": budget,
            "budget_fraction": group[0]["budget_fraction"],
            "runs": len(group),
            "feasible": all(r["feasible"] for r in group),
            "infeasible_runs": sum(not r["feasible"] for r in group),
            # a run with figures that went over its budget, and one where nothing fitted at all
            "over_budget_runs": sum(not r["feasible"] and r["accuracy"] is not None for r in group),
            "nothing_fits_runs": sum(r["accuracy"] is None for r in group),
        }
        for metric in METRICS:
            cell[metric], cell[f"{metric}_spread"] = mean_spread(r[metric] for r in group)
        for key, gap in FORECASTS:
            gaps = [
                r[key] - r["accuracy"]
                for r in group
                if r.get(key) is not None and r["accuracy"] is not None
            ]
            cell[gap], cell[f"{gap}_spread"] = mean_spread(gaps)
        cells.append(cell)
    return cells


def resolve_order(config: PipelineConfig, order: Order) -> Literal["file", "shuffled"]:
    """``auto``: shuffled when the source factory says its frames are independent samples."""
    if order != "auto":
        return order
    factory = load_object(config.source.factory) if config.source.factory else None
    return "shuffled" if getattr(factory, "independent_frames", False) else "file"


def _reorder_frames(prepared: PreparedFrames, order: np.ndarray) -> PreparedFrames:
    return replace(
        prepared,
        features=prepared.features[order],
        thumbs=prepared.thumbs[order],
        streams=[prepared.streams[i] for i in order],
    )


def run_bench(
    config: PipelineConfig,
    fractions: Sequence[float] | None = None,
    train_fraction: float = 0.1,
    ratios: Sequence[float] = TRAIN_RATIOS,
    progress: bool = True,
    log: Callable[[str], None] = print,
    cache_dir: Path | None = DEFAULT_CACHE,
    order: Order = "auto",
    seeds: int = 1,
    costs: CostTable = "now",
    scheme: Scheme = "mixed",
    stream_targets: Sequence[float] = streaming.TARGETS,
) -> BenchReport:
    """Every method at every budget and seed on the config's models and source, and the
    accuracy-target mode at each of ``stream_targets``."""
    if seeds < 1:
        raise ValueError(f"seeds = {seeds}; run at least one")
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    base = priced_workload(config, costs, progress, cache_dir)
    seconds["outputs"] = time.perf_counter() - start
    start = time.perf_counter()
    frames = baselines.prepare_frames(SourceFrames(config))
    seconds["frame_features"] = time.perf_counter() - start
    full = base.total_cost("ms")
    if fractions:
        budgets = [f * full for f in fractions]
    else:
        budgets = [config.budget.resolve({"ms": full}).get("ms", full)]
    stream_order = resolve_order(config, order)
    train_config = config.links.train_config()
    cascades = config.links.cascades  # the stream rows plan as the config's workers would
    report = BenchReport(
        base.name,
        base.n_frames,
        len(stream_split(base.streams, train_fraction)[0]),
        full,
        stream_order,
        seeds,
        scheme,
    )
    report.cost_table = {
        "models": base.cost_source,
        "model_ms": {m: base.costs[m].get("ms", 0.0) for m in base.models},
        "full_ms": full,
        "measured_in_this_run": "link and ensemble inference (fixed part per synthesized target "
        "+ part per active source, as the link operator runs it), Reducto features "
        f"({frames.feature_ms:.3f} ms/frame), CNN thumbnails ({frames.thumb_ms:.3f} ms/frame) and "
        "the CNN itself, temporal links and change signals",
    }
    link_ms: list[float] = []
    for seed in range(seeds):
        log(f"seed {seed} ({stream_order} order)")
        workload, prepared = base, frames
        if stream_order == "shuffled":
            perm = shuffled_order(base.streams, seed)
            workload, prepared = base.reordered(perm), _reorder_frames(frames, perm)
        seeded = replace(train_config, seed=seed)
        start = time.perf_counter()
        trained = train_workload(workload, train_fraction, seeded, "weighted", scheme)
        fused = train_workload(workload, train_fraction, seeded, "fusion", scheme)
        seconds["links"] = seconds.get("links", 0.0) + time.perf_counter() - start
        link_ms += [c["ms"] for c in trained.link_costs.values()]
        tconfig = temporal.TemporalConfig(
            links=seeded, temporal_links=TrainConfig(epochs=50, seed=seed)
        )
        for budget in budgets:
            log(f"  budget {budget:.2f} ms/frame ({budget / full:.0%} of {full:.2f})")
            report.rows += _methods_at(
                workload, trained, fused, prepared, tconfig, budget, full, seed, seconds, cascades
            )
        if stream_targets:
            start = time.perf_counter()
            log(f"  accuracy targets {', '.join(f'{t:.2f}' for t in stream_targets)}")
            report.targets += streaming.target_rows(trained, seed, stream_targets, cascades)
            seconds["targets"] = seconds.get("targets", 0.0) + time.perf_counter() - start
        if seed == 0:
            start = time.perf_counter()
            report.training_ratios = training_ratio_table(
                workload, ratios, seeded, stream_split(workload.streams, max(ratios))[1]
            )
            seconds["training_ratios"] = time.perf_counter() - start
    report.cells = aggregate(report.rows)
    report.link_cost = {"mean_ms_per_source": float(np.mean(link_ms)), "links": len(link_ms)}
    report.ensembles = _ensemble_winner(report.cells)
    report.seconds = seconds
    return report


def _methods_at(
    workload: Workload,
    trained: TrainedWorkload,
    fused: TrainedWorkload,
    prepared: PreparedFrames,
    tconfig: temporal.TemporalConfig,
    budget: float,
    full: float,
    seed: int,
    seconds: dict[str, float],
    cascades: bool = False,
) -> list[dict[str, Any]]:
    train_idx, test_idx = trained.train_idx, trained.test_idx

    def timed(name: str, fn: Callable[[], Any]) -> Any:
        start = time.perf_counter()
        try:
            return fn()
        except InfeasibleBudget as exc:
            return exc
        finally:
            seconds[name] = seconds.get(name, 0.0) + time.perf_counter() - start

    split = (workload, train_idx, test_idx, budget)
    results: dict[str, Any] = {
        STANDALONE: timed("standalone", lambda: baselines.standalone(*split)),
        REDUCTO: timed(
            "reducto",
            lambda: baselines.frame_filtering(
                workload, prepared.features, train_idx, test_idx, budget, prepared.feature_ms
            ),
        ),
        MULTITASK: timed(
            "multitask",
            lambda: baselines.multitask(
                workload,
                prepared.thumbs,
                train_idx,
                test_idx,
                budget,
                seed=seed,
                thumb_ms=prepared.thumb_ms,
            ),
        ),
    }
    budget_map = {"ms": budget}
    plans = timed("mlink", lambda: compare_selectors(trained, budget_map))
    fusion = timed("mlink", lambda: compare_selectors(fused, budget_map, ["MLink (exact)"]))
    results[GREEDY] = plans if isinstance(plans, InfeasibleBudget) else plans[0]
    results[EXACT] = plans if isinstance(plans, InfeasibleBudget) else plans[1]
    results[FUSION] = fusion if isinstance(fusion, InfeasibleBudget) else fusion[0]
    for name, fn in (
        (REUSE, temporal.reuse_schedule),
        (TEMPORAL, temporal.temporal_mlink),
        (FILTERING, temporal.mlink_with_filtering),
    ):
        results[name] = timed("temporal", lambda fn=fn: fn(*split, tconfig))
    for name, cfg in ((STREAM, streaming.OFFLINE), (STREAM_ONLINE, streaming.ONLINE)):
        cfg = replace(cfg, gates=cascades)
        results[name] = timed(
            "stream", lambda cfg=cfg, name=name: streaming.stream_mlink(trained, budget, cfg, name)
        )
        if not isinstance(results[name], InfeasibleBudget):
            results[name] = results[name].result
    return [_row(m, budget, full, seed, results[m]) for m in METHODS]


def _ensemble_winner(cells: list[dict[str, Any]]) -> dict[str, Any]:
    weighted = {c["budget"]: c for c in cells if c["method"] == EXACT}
    diffs = [
        c["accuracy"] - weighted[c["budget"]]["accuracy"]
        for c in cells
        if c["method"] == FUSION and c["feasible"] and weighted[c["budget"]]["feasible"]
    ]
    mean = float(np.mean(diffs)) if diffs else 0.0
    return {
        "fusion_minus_weighted_accuracy": diffs,
        "winner": "fusion" if mean > 0 else "weighted",
    }


def to_json(report: BenchReport) -> str:
    return json.dumps(report.as_dict(), default=float)


def plot(report: BenchReport, path: Path) -> None:
    """All-models and synthesized-only accuracy vs compute saved (see
    :func:`mlink.eval.bench_table.plot_report`)."""
    from mlink.eval.bench_table import plot_report

    plot_report(report, path)
