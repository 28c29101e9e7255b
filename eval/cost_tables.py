"""The one model cost table a bench run prices compute on, and where it comes from.

A cached table lives with the output cache and is re-measured whenever the cache is rebuilt, on
whatever machine and load that happens: the plans, and every figure priced on them, then move
with it. Benchmarks that must be reproducible from a clean clone read a committed table instead,
written from the cache by this module's command::

    python -m mlink.eval.cost_tables deploy/configs/dnn.yaml > deploy/costs/dnn.json
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

import numpy as np

from mlink.deploy.config import PipelineConfig
from mlink.eval.config_workload import load_workload, measure_model_ms
from mlink.eval.motion_poses import source_poses
from mlink.eval.outputs import DEFAULT_CACHE
from mlink.eval.workload import Workload
from mlink.linkstore.budget import typical_ms
from mlink.topics.records import FrameResult

__all__ = [
    "COSTS_HELP",
    "CostTable",
    "cost_table_json",
    "jittered",
    "model_cost_table",
    "priced_workload",
    "read_cost_table",
    "reference_ms",
    "with_cost_table",
]

CostTable = Literal["now", "cached", "declared"] | str
"""``now``, ``cached``, ``declared``, or the path of a JSON table (:func:`read_cost_table`)."""
COSTS_HELP = "now, cached, declared, or a JSON cost table (e.g. deploy/costs/dnn.json)"


def with_cost_table(workload: Workload, config: PipelineConfig, costs: CostTable) -> Workload:
    """The workload with ONE model cost table: ``now`` (every model re-timed in this run on a
    sample of frames, under the same load as the links and features this run measures),
    ``cached`` (as measured when the outputs were computed), ``declared`` in the config (then
    every model must declare ``cost.ms``), or a JSON file (:func:`read_cost_table`)."""
    if costs == "cached":
        return workload
    if costs == "now":
        sample = 40
        ms = measure_model_ms(config, workload.n_frames, sample)
        when = time.strftime("%Y-%m-%d %H:%M")
        source = f"measured in this run ({when}, mean ms per call on {sample} frames, one thread)"
    elif costs == "declared":
        declared = config.declared_costs()
        missing = [m for m in workload.models if "ms" not in declared.get(m, {})]
        if missing:
            raise ValueError(
                f"--costs declared needs cost.ms on every model of {config.name}; missing on "
                f"{missing}. Declare them in the config or use --costs now"
            )
        table = {m: {**workload.costs[m], **declared[m]} for m in workload.models}
        source = f"declared in the config of {config.name}"
        return replace(workload, costs=table, cost_source=source)
    else:
        data = _read_json(Path(costs))
        ms = _table_from(data, Path(costs), workload.models)
        note = data.get("source") if isinstance(data, dict) else None
        source = f"read from {costs}" + (f" ({note})" if note else "")
    table = {m: {**workload.costs[m], "ms": ms[m]} for m in workload.models}
    return replace(workload, costs=table, cost_source=source)


def jittered(workload: Workload, sigma: float, seed: int) -> Workload:
    """The workload with each model's ms multiplied by its own log-normal factor (``sigma`` the
    standard deviation of its log): live timings move between runs by several percent a model
    (contention, caches), and a plan near its budget flips with them. Replays on jittered
    tables show how far that moves what a config keeps."""
    if sigma < 0:
        raise ValueError(f"cost noise must be >= 0, got {sigma}")
    rng = np.random.default_rng(seed)
    factors = np.exp(rng.normal(0.0, sigma, len(workload.models)))
    table = {
        m: {**workload.costs[m], "ms": workload.costs[m]["ms"] * float(f)}
        for m, f in zip(workload.models, factors, strict=True)
    }
    source = f"{workload.cost_source}, each model's ms times exp(N(0, {sigma:g})), seed {seed}"
    return replace(workload, costs=table, cost_source=source)


def priced_workload(
    config: PipelineConfig,
    costs: CostTable,
    progress: bool = False,
    cache_dir: Path | None = DEFAULT_CACHE,
    motion: bool = False,
) -> Workload:
    """The config's cached outputs priced on ``costs``: what every bench script starts from.
    ``motion``: also every frame's motion pose (the ``flow`` mode; measured once per source
    and cached, about 20 s for a video workload), for replays that use it."""
    workload = with_cost_table(load_workload(config, progress, cache_dir), config, costs)
    if not motion:
        return workload
    motion = source_poses(config, cache_dir, progress=progress)
    return replace(workload, poses=motion.poses, motion_ms=motion.ms)


def read_cost_table(path: Path, models: Sequence[str]) -> dict[str, float]:
    """ms per frame of each model from a JSON file: a ``mlink run --json`` summary (its
    ``model_ms``, the costs the live pipeline measured and planned on) or ``{model: ms}``.
    Pricing the bench on a live run's table compares the two on the same costs."""
    return _table_from(_read_json(path), path, models)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(
            f"--costs {path}: not now, cached, declared or a readable JSON cost table ({exc})"
        ) from None


def _table_from(data: Any, path: Path, models: Sequence[str]) -> dict[str, float]:
    table = data.get("model_ms", data) if isinstance(data, dict) else None
    if not isinstance(table, dict):
        raise ValueError(f"--costs {path}: expected a JSON object of ms per model")
    missing = [m for m in models if not isinstance(table.get(m), int | float)]
    if missing:
        raise ValueError(f"--costs {path}: no ms for {missing}; give every model of the config")
    return {m: float(table[m]) for m in models}


def cost_table_json(workload: Workload) -> str:
    """``workload``'s cost table as a JSON file :func:`read_cost_table` reads back, saying where
    it came from."""
    table = {m: round(float(workload.costs[m]["ms"]), 3) for m in workload.models}
    return json.dumps({"source": workload.cost_source, "model_ms": table}, indent=2) + "\n"


def model_cost_table(
    config: PipelineConfig, full: Workload, results: Iterable[FrameResult] = ()
) -> tuple[dict[str, float], str]:
    """ms per model from one table, and which: declared when every model declares ``cost.ms``;
    else measured live in this run (as the workers ran them: batched, on threads, next to each
    other; the CPU time of each call's thread where the workers measured it,
    :attr:`~mlink.topics.records.ModelResult.cost_ms`), on the frames where every model ran
    (warm-up and probes), which is what the controller plans on: the same frames for every
    model, because frames of different cameras differ in cost up to tenfold, and a model timed
    mostly on cheap ones would look cheap. Each model's ms is
    :func:`~mlink.linkstore.budget.typical_ms` of its timings. If no frame ran every model, each
    model's own executions; else (a model that never ran) what the offline reference run
    measured. Never a mix."""
    declared = config.declared_costs()
    names = config.model_names
    if all("ms" in declared.get(m, {}) for m in names):
        return {m: float(declared[m]["ms"]) for m in names}, "declared in the config"
    everywhere: dict[str, list[float]] = defaultdict(list)
    own: dict[str, list[float]] = defaultdict(list)
    clocks: set[str] = set()  # CPU time where the workers measured it, else wall time
    for result in results:
        ran = [r for r in result.results if r.status == "executed"]
        clocks |= {"CPU" if r.cpu_ms is not None else "wall" for r in ran}
        timed = {r.model: r.cost_ms for r in ran if r.cost_ms is not None}
        for m, ms in timed.items():
            own[m].append(ms)
            if len(timed) == len(names):
                everywhere[m].append(ms)
    for live, where in ((everywhere, "the frames where every model ran"), (own, "its executions")):
        if all(live.get(m) for m in names):
            table = {m: typical_ms(live[m]) for m in names}
            clock = " and ".join(sorted(clocks))
            return table, (
                f"measured live in this run (trimmed mean {clock} ms of each model's calls on "
                f"{where})"
            )
    return reference_ms(config, full), f"{full.cost_source}, by the offline reference run"


def reference_ms(config: PipelineConfig, full: Workload) -> dict[str, float]:
    """ms per model as the offline reference run timed it (each model alone)."""
    return {m: float(full.costs[m]["ms"]) for m in config.model_names}


def main(argv: Sequence[str] | None = None) -> None:
    import argparse

    from mlink.deploy.config import load_config
    from mlink.eval.config_workload import load_workload

    parser = argparse.ArgumentParser(description="Print a config's cached cost table as JSON.")
    parser.add_argument("config", help="a pipeline config, e.g. deploy/configs/dnn.yaml")
    args = parser.parse_args(argv)
    print(cost_table_json(load_workload(load_config(args.config))), end="")


if __name__ == "__main__":
    main()
