"""Budgets as users write them, resolved to the per-resource limits the selector takes.

A budget bounds ``ms`` (per-frame compute of active models + links), ``memory_mb``, or gives
``fraction``: a share of running every model, in ms. A fraction only becomes a number once the
models' costs are known (declared or measured), so it is resolved here, in one place, by the
controller, the config and the offline bench alike.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

__all__ = ["BUDGET_KEYS", "full_cost", "resolve_budget"]

BUDGET_KEYS = ("ms", "memory_mb", "fraction")


def full_cost(costs: Mapping[str, Mapping[str, float]], resource: str = "ms") -> float:
    """What running every model once costs in ``resource`` (models without it count 0)."""
    return float(sum(c.get(resource, 0.0) for c in costs.values()))


def resolve_budget(budget: Mapping[str, float], full_ms: float) -> dict[str, float]:
    """Concrete limits: ``fraction`` becomes ``fraction * full_ms`` ms; other keys pass through.

    ``fraction`` and ``ms`` together are ambiguous and rejected, as are unknown keys and values
    that are not positive numbers (a fraction must be at most 1).
    """
    unknown = sorted(set(budget) - set(BUDGET_KEYS))
    if unknown:
        raise ValueError(f"budget names {unknown}; allowed keys are {list(BUDGET_KEYS)}")
    if "ms" in budget and "fraction" in budget:
        raise ValueError("budget sets both ms and fraction; give one of them")
    for key, value in budget.items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"budget[{key!r}] = {value!r}; it must be a number")
        if not math.isfinite(value) or value <= 0:
            raise ValueError(f"budget[{key!r}] = {value!r}; it must be finite and > 0")
    if budget.get("fraction", 0.0) > 1:
        raise ValueError(f"budget fraction {budget['fraction']} is above 1 (all models)")
    out = {k: float(v) for k, v in budget.items() if k != "fraction"}
    if "fraction" in budget:
        out["ms"] = float(budget["fraction"]) * float(full_ms)
    return out
