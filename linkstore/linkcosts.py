"""What synthesizing a frame costs, measured on this machine, for the selector's cost model."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
from torch import nn

from mlink.linkstore.linkset import LinkSet, Pair
from mlink.topics.specs import BoxesSpec, OutputSpec, SequenceSpec

__all__ = ["synthesis_costs"]


def synthesis_costs(
    linkset: LinkSet, repeats: int = 100, batches: int = 5, fill: int = 1
) -> tuple[dict[Pair, dict[str, float]], dict[str, dict[str, float]]]:
    """What synthesizing one frame costs, as the link operator does it
    (:meth:`~mlink.linkstore.linkset.LinkSet.synthesize_encoded`): ``(link_costs,
    ensemble_costs)`` for :class:`~mlink.linkstore.selection.Problem`.

    ``fill``: frames per call, as the worker's batches held them when the models' costs were
    measured. A batch model's cost per frame is its call's over the frames in it, and the link
    operator synthesizes a batch's frames in one call too; timed on one frame only, links
    priced against models measured on a backlog's 64-frame batches looked 30 times dearer, and
    a plan from links relearned on a backlog was refused as infeasible (a helper's re-audit).

    Per target, the call is timed with one source and with every source available (the fastest
    of ``batches`` runs of ``repeats`` calls, the two interleaved); the difference per extra
    source is each link's ``ms``, the rest (ensemble, call overhead) the target's ensemble
    ``ms``. ``memory_mb`` is the parameter memory of each link and ensemble.

    The fastest run, not the median: other load on the machine only ever adds time, so the
    fastest run is the one closest to the call's own cost, and a difference of two medians
    taken at different moments of a loaded machine could come out zero or negative.
    """
    links: dict[Pair, dict[str, float]] = {}
    ensembles: dict[str, dict[str, float]] = {}
    fill = max(1, int(fill))
    repeats = max(5, repeats // fill)  # about as many frames timed whatever the fill
    rows = {
        m: np.repeat(spec.encode(_example(spec))[None], fill, axis=0)
        for m, spec in linkset.specs.items()
    }
    for t in linkset.specs:
        sources = linkset.sources_of(t)
        if not sources:
            continue
        one, every = _fastest_ms(
            (
                lambda t=t, s=sources: linkset.synthesize_encoded(t, {s[0]: rows[s[0]]}),
                lambda t=t, s=sources: linkset.synthesize_encoded(t, {m: rows[m] for m in s}),
            ),
            repeats,
            batches,
        )
        one, every = one / fill, every / fill
        per = max(0.0, (every - one) / (len(sources) - 1)) if len(sources) > 1 else 0.0
        for src in sources:
            links[(src, t)] = {"ms": per, "memory_mb": _params_mb(linkset.links[(src, t)])}
        ens = linkset.ensembles.get(t)
        ensembles[t] = {
            "ms": max(0.0, one - per),
            "memory_mb": _params_mb(ens) if ens is not None else 0.0,
        }
    return links, ensembles


def _params_mb(module: nn.Module) -> float:
    return sum(p.numel() * p.element_size() for p in module.parameters()) / 1e6


def _fastest_ms(
    calls: tuple[Callable[[], Any], ...], repeats: int, batches: int
) -> tuple[float, ...]:
    """Per call, the lowest over ``batches`` of the mean ms of ``repeats`` calls (after one
    warm-up call); the calls take turns, so each sees the same spells of load."""
    for call in calls:
        call()
    best = [float("inf")] * len(calls)
    for _ in range(batches):
        for i, call in enumerate(calls):
            start = time.perf_counter()
            for _ in range(repeats):
                call()
            best[i] = min(best[i], (time.perf_counter() - start) * 1000 / repeats)
    return tuple(best)


def _example(spec: OutputSpec) -> Any:
    """A valid output of ``spec``, to time a link on."""
    if isinstance(spec, BoxesSpec):
        return np.zeros((0, 5), dtype=np.float32)
    if isinstance(spec, SequenceSpec):
        return np.zeros(min(3, spec.max_length), dtype=np.int64)
    if spec.task == "softmax":
        return np.eye(spec.size, dtype=np.float32)[0]
    return np.zeros(spec.size, dtype=np.float32)
