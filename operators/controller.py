"""The controller's pure logic: from a linkstore version, costs and a budget to an active set.

Runs where the single-partition control topic is consumed, so exactly one worker decides.
"""

from __future__ import annotations

import functools
import logging
import time
from dataclasses import dataclass

from mlink.deploy.config import PipelineConfig
from mlink.linkstore.linkset import AgreementOracle, LinkSet
from mlink.linkstore.selection import InfeasibleBudget, Problem, select, select_paper_greedy
from mlink.linkstore.store import LinkStore
from mlink.operators.trainer import validation_outputs
from mlink.topics.records import ControlMessage

log = logging.getLogger("mlink.controller")


@dataclass(slots=True)
class LoadedLinks:
    """A linkstore version ready for selection and synthesis."""

    version: int
    linkset: LinkSet
    oracle: AgreementOracle
    model_costs: dict[str, dict[str, float]]
    link_costs: dict[tuple[str, str], dict[str, float]]


@functools.lru_cache(maxsize=8)
def _load(root: str, version: int) -> LoadedLinks:
    bundle = LinkStore(root).load(version)
    meta = bundle.meta.meta
    linkset = LinkSet.from_bundle(bundle.tensors, meta)
    oracle = linkset.agreement_oracle(validation_outputs(linkset.specs, bundle.tensors))
    link_costs = {
        (c["source"], c["target"]): {k: v for k, v in c.items() if k not in ("source", "target")}
        for c in meta.get("link_costs", [])
    }
    return LoadedLinks(version, linkset, oracle, meta.get("measured_costs", {}), link_costs)


def load_links(store: LinkStore, version: int) -> LoadedLinks:
    """Load (cached per process) a version: links, validation oracle and measured costs."""
    return _load(str(store.root), version)


def model_costs(config: PipelineConfig, measured: dict[str, dict[str, float]]) -> dict:
    """Declared costs win over measured ones; a model with neither costs what it measured."""
    costs = {m: dict(measured.get(m, {})) for m in config.model_names}
    for m, declared in config.declared_costs().items():
        costs[m].update(declared)
    missing = [m for m, c in costs.items() if "ms" not in c]
    for m in missing:
        costs[m]["ms"] = 0.0
    return costs


def resolve_budget(budget: dict[str, float], costs: dict[str, dict[str, float]]) -> dict:
    """``fraction`` becomes ms of running every model; other resources pass through."""
    out = {k: v for k, v in budget.items() if k != "fraction"}
    if "fraction" in budget:
        out["ms"] = budget["fraction"] * sum(c.get("ms", 0.0) for c in costs.values())
    return out


def decide(
    config: PipelineConfig,
    links: LoadedLinks,
    budget: dict[str, float],
    epoch: int,
    method: str | None = None,
) -> ControlMessage:
    """Choose the active set for ``budget`` and wrap it as the next control message.

    Raises :class:`InfeasibleBudget` (naming the cheapest feasible budget) if nothing fits.
    """
    costs = model_costs(config, links.model_costs)
    limits = resolve_budget(budget, costs)
    problem = Problem(
        models=config.model_names,
        costs=costs,
        budget=limits,
        agreement=links.oracle,
        link_costs=links.link_costs,
    )
    method = method or config.links.selector
    evaluation = select_paper_greedy(problem) if method == "greedy" else select(problem, method)
    log.info(
        "epoch %d: active=%s objective=%.3f cost=%s budget=%s",
        epoch,
        sorted(evaluation.active),
        evaluation.objective,
        evaluation.cost,
        limits,
    )
    return ControlMessage(
        kind="active_set",
        epoch=epoch,
        issued_at=time.time(),
        active=tuple(sorted(evaluation.active)),
        budget=dict(budget),
        link_version=links.version,
        probe_every=config.links.probe_every,
        extra={"objective": evaluation.objective, "cost": dict(evaluation.cost)},
    )


def config_budget(config: PipelineConfig) -> dict[str, float]:
    b = config.budget
    out = {}
    if b.ms is not None:
        out["ms"] = b.ms
    if b.fraction is not None:
        out["fraction"] = b.fraction
    if b.memory_mb is not None:
        out["memory_mb"] = b.memory_mb
    return out


__all__ = ["InfeasibleBudget", "LoadedLinks", "config_budget", "decide", "load_links"]
