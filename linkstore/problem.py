"""The selection problem: models, costs, a budget and an agreement oracle, validated once.

:class:`Problem` is what every solver in :mod:`mlink.linkstore.selection` reads; :class:`Evaluation`
is what they return; :class:`InfeasibleBudget` is raised when nothing fits.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from numbers import Real
from typing import Protocol, runtime_checkable

__all__ = [
    "BUDGET_TOL",
    "GAIN_EPS",
    "AgreementOracle",
    "Evaluation",
    "InfeasibleBudget",
    "Problem",
    "check_names",
    "fmt_set",
    "fmt_value",
    "fmt_vector",
]

#: Relative slack on budget comparisons, so float round-off never flips a plan to infeasible.
BUDGET_TOL = 1e-9
#: Objective improvements below this are ties (keeps the searches deterministic under round-off).
GAIN_EPS = 1e-12


@runtime_checkable
class AgreementOracle(Protocol):
    """Validation agreement of ``target``'s synthesized output when ``active`` runs.

    Must return a fraction in ``[0, 1]``. ``target`` is never in ``active``. With ``active`` empty
    nothing can be synthesized, so the oracle returns the target's prior (e.g. the agreement of a
    constant majority-class output); the caller decides what that prior is.
    """

    def __call__(self, active: frozenset[str], target: str) -> float: ...


class InfeasibleBudget(ValueError):
    """No plan (respecting pins, exclusions and ``min_active``) fits the budget.

    ``cheapest_budget`` is the bounded-resource cost of the cheapest plan ``plan``: a budget at
    least that large in every resource admits it.
    """

    def __init__(
        self,
        message: str,
        *,
        budget: Mapping[str, float],
        cheapest_budget: Mapping[str, float],
        plan: frozenset[str],
    ) -> None:
        super().__init__(message)
        self.budget = dict(budget)
        self.cheapest_budget = dict(cheapest_budget)
        self.plan = plan


@dataclass(frozen=True, slots=True)
class Evaluation:
    """One active set scored against a :class:`Problem`.

    ``cost`` covers every known resource (bounded or not) so callers can report what a plan uses;
    ``per_model`` is 1.0 for active models and the oracle's agreement for synthesized ones;
    ``violations`` says why ``feasible`` is False (empty when it is True).
    """

    active: frozenset[str]
    objective: float
    cost: dict[str, float]
    feasible: bool
    per_model: dict[str, float]
    violations: tuple[str, ...] = ()


def fmt_value(value: float) -> str:
    return f"{value:g}"


def fmt_vector(vector: Mapping[str, float]) -> str:
    return ", ".join(f"{name}={fmt_value(v)}" for name, v in sorted(vector.items())) or "(nothing)"


def fmt_set(names: Iterable[str]) -> str:
    return "{" + ", ".join(repr(n) for n in sorted(names)) + "}"


def _check_cost_vector(raw: object, what: str) -> dict[str, float]:
    """Validate one ``{resource: amount}`` mapping; amounts must be finite and non-negative."""
    if not isinstance(raw, Mapping):
        raise TypeError(
            f"{what} must be a mapping of resource name to amount, got {type(raw).__name__}"
        )
    out: dict[str, float] = {}
    for resource, amount in raw.items():
        if not isinstance(resource, str) or not resource:
            raise ValueError(f"{what}: resource names must be non-empty strings, got {resource!r}")
        if isinstance(amount, bool) or not isinstance(amount, Real):
            raise TypeError(f"{what}[{resource!r}] must be a number, got {amount!r}")
        value = float(amount)
        if not math.isfinite(value) or value < 0:
            raise ValueError(
                f"{what}[{resource!r}] = {amount!r}; costs must be finite and >= 0 "
                "(a cost is what running something uses up, never a refund)"
            )
        out[resource] = value
    return out


def check_names(names: Iterable[str], known: Mapping[str, int], what: str) -> frozenset[str]:
    if isinstance(names, str):
        raise TypeError(f"{what} must be a collection of model names, not the string {names!r}")
    chosen = frozenset(names)
    unknown = sorted(n for n in chosen if n not in known)
    if unknown:
        raise ValueError(f"{what} names unknown models {unknown}; known models are {sorted(known)}")
    return chosen


@dataclass(frozen=True, eq=False, kw_only=True)
class Problem:
    """A selection instance. Built once, validated on construction, read by every solver.

    ``models`` names every model (order only breaks ties). ``costs[m]`` is what running ``m``
    uses, per resource; every model needs an entry (``{}`` for a free one). Running the ensemble of
    an inactive target ``t`` costs ``ensemble_costs[t]`` (a fixed overhead, paid only when at least
    one model is active) plus ``link_costs[(s, t)]`` for every active source ``s``; missing entries
    cost nothing. ``budget`` bounds any subset of the resources named by those costs; budgets must
    be positive (to forbid a resource, exclude the models that need it). ``pinned`` models are
    always active, ``excluded`` never. ``min_active`` (default 1) is the fewest active models a
    plan may have: with none active nothing is synthesized and every output is just a prior.

    Inputs are copied on construction (``models`` becomes a tuple, ``pinned``/``excluded``
    frozensets), so mutating them later changes nothing here.
    """

    models: Sequence[str]
    costs: Mapping[str, Mapping[str, float]]
    budget: Mapping[str, float]
    agreement: AgreementOracle
    link_costs: Mapping[tuple[str, str], Mapping[str, float]] = field(default_factory=dict)
    ensemble_costs: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    pinned: AbstractSet[str] = frozenset()
    excluded: AbstractSet[str] = frozenset()
    min_active: int = 1

    def __post_init__(self) -> None:
        models = self.models
        if isinstance(models, str) or not isinstance(models, Sequence):
            raise TypeError(f"models must be a list or tuple of model names, got {models!r}")
        models = tuple(models)
        if not models:
            raise ValueError("models is empty; a selection problem needs at least one model")
        for name in models:
            if not isinstance(name, str) or not name:
                raise ValueError(f"model names must be non-empty strings, got {name!r}")
        duplicates = sorted({n for n in models if models.count(n) > 1})
        if duplicates:
            raise ValueError(f"models lists {duplicates} more than once; names must be unique")
        index = {name: i for i, name in enumerate(models)}

        if not isinstance(self.costs, Mapping):
            raise TypeError("costs must be a mapping of model name to {resource: amount}")
        check_names(self.costs.keys(), index, "costs")
        missing = [n for n in models if n not in self.costs]
        if missing:
            raise ValueError(
                f"costs has no entry for models {missing}; give every model a cost vector "
                "({} for a model that uses nothing)"
            )
        costs = {n: _check_cost_vector(self.costs[n], f"costs[{n!r}]") for n in models}

        if not isinstance(self.link_costs, Mapping):
            raise TypeError(
                "link_costs must be a mapping of (source, target) to {resource: amount}"
            )
        link_costs: dict[tuple[str, str], dict[str, float]] = {}
        for key, vector in self.link_costs.items():
            if not (isinstance(key, tuple) and len(key) == 2):
                raise ValueError(f"link_costs keys must be (source, target) pairs, got {key!r}")
            source, target = key
            check_names(key, index, f"link_costs key {key!r}")
            if source == target:
                raise ValueError(
                    f"link_costs has a link from {source!r} to itself; a model is never "
                    "synthesized from its own output"
                )
            link_costs[(source, target)] = _check_cost_vector(vector, f"link_costs[{key!r}]")

        if not isinstance(self.ensemble_costs, Mapping):
            raise TypeError("ensemble_costs must be a mapping of target name to {resource: amount}")
        check_names(self.ensemble_costs.keys(), index, "ensemble_costs")
        ensemble_costs = {
            t: _check_cost_vector(v, f"ensemble_costs[{t!r}]")
            for t, v in self.ensemble_costs.items()
        }

        resources = sorted(
            {r for v in costs.values() for r in v}
            | {r for v in link_costs.values() for r in v}
            | {r for v in ensemble_costs.values() for r in v}
        )
        if not isinstance(self.budget, Mapping):
            raise TypeError("budget must be a mapping of resource name to limit")
        budget: dict[str, float] = {}
        for resource, limit in self.budget.items():
            if resource not in resources:
                raise ValueError(
                    f"budget names resource {resource!r}, which no model, link or ensemble cost "
                    f"uses (known resources: {resources}); fix the spelling or drop it"
                )
            if isinstance(limit, bool) or not isinstance(limit, Real):
                raise TypeError(f"budget[{resource!r}] must be a number, got {limit!r}")
            value = float(limit)
            if not math.isfinite(value) or value <= 0:
                raise ValueError(
                    f"budget[{resource!r}] = {limit!r}; budgets must be finite and > 0 "
                    "(omit a resource to leave it unbounded; exclude models to forbid it)"
                )
            budget[resource] = value

        if not callable(self.agreement):
            raise TypeError(
                "agreement must be callable as agreement(active: frozenset[str], target: str)"
            )
        pinned = check_names(self.pinned, index, "pinned")
        excluded = check_names(self.excluded, index, "excluded")
        both = sorted(pinned & excluded)
        if both:
            raise ValueError(f"models {both} are both pinned and excluded; choose one")
        if isinstance(self.min_active, bool) or not isinstance(self.min_active, int):
            raise TypeError(f"min_active must be an int, got {self.min_active!r}")
        if self.min_active < 0:
            raise ValueError(f"min_active = {self.min_active}; it must be >= 0")
        available = len(models) - len(excluded)
        if self.min_active > available:
            raise ValueError(
                f"min_active = {self.min_active} but only {available} models are not excluded; "
                "lower min_active or exclude fewer models"
            )

        object.__setattr__(self, "models", models)
        object.__setattr__(self, "costs", costs)
        object.__setattr__(self, "link_costs", link_costs)
        object.__setattr__(self, "ensemble_costs", ensemble_costs)
        object.__setattr__(self, "budget", budget)
        object.__setattr__(self, "pinned", pinned)
        object.__setattr__(self, "excluded", excluded)

    @property
    def resources(self) -> tuple[str, ...]:
        """Every resource any cost names, sorted (budgets may bound any subset of these)."""
        names: set[str] = set()
        for table in (self.costs, self.link_costs, self.ensemble_costs):
            for vector in table.values():
                names.update(vector)
        return tuple(sorted(names))

    def link_cost(self, active: frozenset[str], target: str) -> dict[str, float]:
        """What synthesizing inactive ``target`` from ``active`` costs, per resource.

        The ensemble overhead plus one link per active source; nothing when ``active`` is empty
        (the target then takes its prior, which is free).
        """
        index = {name: i for i, name in enumerate(self.models)}
        active = check_names(active, index, "active")
        if target not in index:
            raise ValueError(f"unknown target {target!r}; known models are {sorted(index)}")
        if target in active:
            raise ValueError(f"{target!r} is active; only inactive models have link costs")
        total = dict.fromkeys(self.resources, 0.0)
        if not active:
            return total
        for r, v in self.ensemble_costs.get(target, {}).items():
            total[r] += v
        for source in active:
            for r, v in self.link_costs.get((source, target), {}).items():
                total[r] += v
        return total
