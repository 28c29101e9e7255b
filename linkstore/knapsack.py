"""The multiple-choice knapsack that plans schedules and filters: one option per group.

Frame filtering picks one filter per model, the temporal methods and the stream planner
(:mod:`mlink.linkstore.streamplan`) one policy per model; all want the options with the most total
value (expected accuracy) whose total cost (expected ms per frame) fits the budget. Costs are real
numbers, so the dynamic programme runs on a grid of ``capacity / grid`` cost units: first with
costs rounded down (which admits plans that fill the budget exactly), kept if the plan's real cost
fits, else again within the budget less the overshoot, and last with costs rounded up (always
fits).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

__all__ = ["choose_options"]

Option = tuple[float, float]  # (cost, value)


def choose_options(
    groups: Sequence[Sequence[Option]], capacity: float, grid: int = 2000
) -> list[int] | None:
    """The chosen option index per group, or None when even the cheapest options do not fit.

    Maximises the total value with total cost <= ``capacity``; exact when costs are multiples of
    ``capacity / grid``.
    """
    if capacity < 0:
        return None
    fits = capacity * (1 + 1e-12) + 1e-12
    chosen = _dp(groups, capacity, grid, math.floor)
    if chosen is None:
        return None
    if _cost(groups, chosen) <= fits:  # rounded down it may fill the budget exactly
        return chosen
    # it overshot by under a grid step: rounded up always fits what it returns, but can miss
    # every plan within a step of the budget, so also plan within the budget less the overshoot
    candidates = [_dp(groups, capacity, grid, math.ceil)]
    within = capacity
    for _ in range(_SHRINKS):
        within -= _cost(groups, chosen) - capacity
        chosen = _dp(groups, within, grid, math.floor) if within > 0 else None
        if chosen is None or _cost(groups, chosen) <= fits:
            candidates.append(chosen)
            break
    feasible = [c for c in candidates if c is not None and _cost(groups, c) <= fits]
    return max(feasible, key=lambda c: _value(groups, c), default=None)


#: Floor-rounded passes, each within the budget less the last one's overshoot.
_SHRINKS = 3


def _cost(groups: Sequence[Sequence[Option]], chosen: list[int]) -> float:
    return sum(g[o][0] for g, o in zip(groups, chosen, strict=True))


def _value(groups: Sequence[Sequence[Option]], chosen: list[int]) -> float:
    return sum(g[o][1] for g, o in zip(groups, chosen, strict=True))


def _dp(
    groups: Sequence[Sequence[Option]],
    capacity: float,
    grid: int,
    rounding: Callable[[float], int],
) -> list[int] | None:
    unit = capacity / grid if capacity > 0 else 1.0
    size = grid + 1 if capacity > 0 else 1
    best = np.zeros(size)  # best[c]: most value with (rounded) cost <= c
    picks, weights = [], []
    for group in groups:
        w = [max(0, rounding(cost / unit - 1e-9)) for cost, _ in group]
        new = np.full(size, -np.inf)
        pick = np.full(size, -1, dtype=np.int64)
        for o, (wo, (_, value)) in enumerate(zip(w, group, strict=True)):
            if wo >= size:
                continue
            cand = np.full(size, -np.inf)
            cand[wo:] = best[: size - wo] + value
            better = cand > new + 1e-12
            new[better] = cand[better]
            pick[better] = o
        best = new
        picks.append(pick)
        weights.append(w)
    if not np.isfinite(best[-1]):
        return None
    chosen, c = [], size - 1
    for pick, w in zip(reversed(picks), reversed(weights), strict=True):
        o = int(pick[c])
        chosen.append(o)
        c -= w[o]
    return chosen[::-1]
