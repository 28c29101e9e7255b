"""Budgeted active-set selection: which models run for real, and which are synthesized by links.

MLink (Yuan, Zhang, Li, AAAI 2022) runs several black-box models on every input. Under a resource
budget only an *active set* ``A`` runs; every inactive model's output is synthesized by an ensemble
of learned links from the active models. Choosing ``A`` is the optimisation this module solves:

    maximise  mean over all models m of  (1 if m in A else agreement(A, m))
    subject to, for every bounded resource r,
        sum_{s in A} cost[s][r] + sum_{t not in A} link_cost(A, t)[r] <= budget[r]

``agreement(A, t)`` is the validation agreement of ``t``'s ensemble built from ``A`` (with ``A``
empty the oracle returns the target's prior). Costs are vectors over named resources
(``{"memory_mb": 900, "ms": 12.5}``); a budget bounds any subset of them and the rest are free.

Link costs make the problem subtle: activating a model adds its own cost but removes the cost of
its ensemble, so a superset can be *cheaper* than a subset and feasibility is not monotone. The
searches below never assume it is; they bound the cost of every completion from below instead.

Solvers (all return an :class:`Evaluation`):

- :func:`select_exact` -- branch and bound over subsets; the optimum for up to ~20 free models.
- :func:`select_paper_greedy` -- the paper's heuristic, kept as the baseline to beat.
- :func:`select_greedy_lookahead` -- cost-aware greedy with k-model lookahead and a swap local
  search, for large fleets; never worse than the paper's greedy.
- :func:`select` -- exact when small, lookahead otherwise.

When no plan fits at all, every solver raises :class:`InfeasibleBudget`, which names the cheapest
plan and the budget that would admit it (see :func:`cheapest_feasible_budget`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from itertools import combinations
from numbers import Real
from typing import Literal, Protocol, runtime_checkable

import numpy as np

__all__ = [
    "AgreementOracle",
    "Evaluation",
    "InfeasibleBudget",
    "Method",
    "Problem",
    "cheapest_feasible_budget",
    "evaluate",
    "select",
    "select_exact",
    "select_greedy_lookahead",
    "select_paper_greedy",
]

Method = Literal["auto", "exact", "lookahead", "greedy"]
METHODS: tuple[str, ...] = ("auto", "exact", "lookahead", "greedy")

#: Relative slack on budget comparisons, so float round-off never flips a plan to infeasible.
_BUDGET_TOL = 1e-9
#: Objective improvements below this are ties (keeps the searches deterministic under round-off).
_GAIN_EPS = 1e-12
#: ``select(method="auto")`` solves exactly up to this many free (not pinned/excluded) models.
AUTO_EXACT_MAX_FREE = 16


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


def _fmt(value: float) -> str:
    return f"{value:g}"


def _fmt_vector(vector: Mapping[str, float]) -> str:
    return ", ".join(f"{name}={_fmt(v)}" for name, v in sorted(vector.items())) or "(nothing)"


def _fmt_set(names: Iterable[str]) -> str:
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


def _check_names(names: Iterable[str], known: Mapping[str, int], what: str) -> frozenset[str]:
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
        _check_names(self.costs.keys(), index, "costs")
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
            _check_names(key, index, f"link_costs key {key!r}")
            if source == target:
                raise ValueError(
                    f"link_costs has a link from {source!r} to itself; a model is never "
                    "synthesized from its own output"
                )
            link_costs[(source, target)] = _check_cost_vector(vector, f"link_costs[{key!r}]")

        if not isinstance(self.ensemble_costs, Mapping):
            raise TypeError("ensemble_costs must be a mapping of target name to {resource: amount}")
        _check_names(self.ensemble_costs.keys(), index, "ensemble_costs")
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
        pinned = _check_names(self.pinned, index, "pinned")
        excluded = _check_names(self.excluded, index, "excluded")
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
        active = _check_names(active, index, "active")
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


def _bits(mask: int) -> Iterable[int]:
    while mask:
        low = mask & -mask
        yield low.bit_length() - 1
        mask ^= low


class _Instance:
    """A :class:`Problem` compiled to indices, bitmasks and arrays, with memoised evaluation.

    Solvers probe the same sets many times (a greedy step re-scores the previous step's winner, a
    local search revisits neighbours), and a real oracle may be costly, so every oracle answer,
    objective and cost is cached for the lifetime of one solve.
    """

    def __init__(self, problem: Problem) -> None:
        self.problem = problem
        self.names = tuple(problem.models)
        self.n = n = len(self.names)
        self.index = {name: i for i, name in enumerate(self.names)}
        self.resources = problem.resources
        res_index = {r: i for i, r in enumerate(self.resources)}
        nr = len(self.resources)
        self.C = np.zeros((nr, n))
        self.E = np.zeros((nr, n))
        for name, vector in problem.costs.items():
            for r, v in vector.items():
                self.C[res_index[r], self.index[name]] = v
        for name, vector in problem.ensemble_costs.items():
            for r, v in vector.items():
                self.E[res_index[r], self.index[name]] = v
        self.L: np.ndarray | None = None
        if problem.link_costs:
            self.L = np.zeros((nr, n, n))
            for (s, t), vector in problem.link_costs.items():
                for r, v in vector.items():
                    self.L[res_index[r], self.index[s], self.index[t]] = v
        self.bounded_names = tuple(sorted(problem.budget))
        self.bounded = [res_index[r] for r in self.bounded_names]
        self.budget = [problem.budget[r] for r in self.bounded_names]
        self.limit = [b + _BUDGET_TOL * max(1.0, b) for b in self.budget]
        self.pinned = sum(1 << self.index[m] for m in problem.pinned)
        self.excluded = sum(1 << self.index[m] for m in problem.excluded)
        self.free = [i for i in range(n) if not (self.pinned | self.excluded) >> i & 1]
        self.min_active = problem.min_active
        self._oracle = problem.agreement
        self._agreement: dict[int, float] = {}
        self._objective: dict[int, float] = {}
        self._cost: dict[int, np.ndarray] = {}
        self._sets: dict[int, frozenset[str]] = {}
        self.oracle_calls = 0

    # -- conversions -------------------------------------------------------------------------

    def mask_of(self, names: Iterable[str]) -> int:
        return sum(1 << self.index[m] for m in names)

    def names_of(self, mask: int) -> frozenset[str]:
        found = self._sets.get(mask)
        if found is None:
            found = frozenset(self.names[i] for i in _bits(mask))
            self._sets[mask] = found
        return found

    # -- memoised evaluation -----------------------------------------------------------------

    def agreement(self, mask: int, target: int) -> float:
        key = mask * self.n + target
        value = self._agreement.get(key)
        if value is None:
            active = self.names_of(mask)
            name = self.names[target]
            raw = self._oracle(active, name)
            self.oracle_calls += 1
            try:
                value = float(raw)
            except (TypeError, ValueError):
                value = math.nan
            if not 0.0 <= value <= 1.0:  # also rejects NaN
                raise ValueError(
                    f"agreement oracle returned {raw!r} for target {name!r} with active="
                    f"{_fmt_set(active)}; it must return a fraction in [0, 1]"
                )
            self._agreement[key] = value
        return value

    def objective(self, mask: int) -> float:
        value = self._objective.get(mask)
        if value is None:
            total = float(mask.bit_count())
            for t in range(self.n):
                if not mask >> t & 1:
                    total += self.agreement(mask, t)
            value = total / self.n
            self._objective[mask] = value
        return value

    def cost(self, mask: int) -> np.ndarray:
        """Cost vector over all resources (model costs + ensembles of inactive targets)."""
        value = self._cost.get(mask)
        if value is None:
            active = np.zeros(self.n)
            active[list(_bits(mask))] = 1.0
            value = self.C @ active
            if mask:
                inactive = 1.0 - active
                value = value + self.E @ inactive
                if self.L is not None:
                    value = value + (self.L @ inactive) @ active
            self._cost[mask] = value
        return value

    def bounded_cost(self, mask: int) -> list[float]:
        cost = self.cost(mask)
        return [float(cost[r]) for r in self.bounded]

    def fits(self, mask: int) -> bool:
        cost = self.cost(mask)
        return all(cost[r] <= lim for r, lim in zip(self.bounded, self.limit, strict=True))

    def valid(self, mask: int) -> bool:
        """Fits the budget and respects pins, exclusions and ``min_active``."""
        return (
            mask & self.pinned == self.pinned
            and not mask & self.excluded
            and mask.bit_count() >= self.min_active
            and self.fits(mask)
        )

    def ratio(self, mask: int) -> float:
        """Largest cost/budget ratio over bounded resources (<= 1 means the plan fits)."""
        cost = self.bounded_cost(mask)
        return max((c / b for c, b in zip(cost, self.budget, strict=True)), default=0.0)

    # -- plain tables for the branch-and-bound inner loops --------------------------------------

    def tables(self) -> _Tables:
        Cb = [self.C[r].tolist() for r in self.bounded]
        Eb = [self.E[r].tolist() for r in self.bounded]
        Lb = None if self.L is None else [self.L[r].tolist() for r in self.bounded]
        return _Tables(self.n, Cb, Eb, Lb, list(self.budget), list(self.limit))

    def evaluation(self, mask: int) -> Evaluation:
        cost = self.cost(mask)
        per_model = {
            name: 1.0 if mask >> i & 1 else self.agreement(mask, i)
            for i, name in enumerate(self.names)
        }
        violations: list[str] = []
        bounded = zip(self.bounded_names, self.bounded, self.budget, self.limit, strict=True)
        for name, r, b, limit in bounded:
            if cost[r] > limit:
                violations.append(f"{name}={_fmt(cost[r])} exceeds the budget {name}={_fmt(b)}")
        if mask.bit_count() < self.min_active:
            violations.append(
                f"{mask.bit_count()} active models, fewer than min_active={self.min_active}"
            )
        for i in _bits(self.pinned & ~mask):
            violations.append(f"pinned model {self.names[i]!r} is not active")
        for i in _bits(self.excluded & mask):
            violations.append(f"excluded model {self.names[i]!r} is active")
        return Evaluation(
            active=self.names_of(mask),
            objective=self.objective(mask),
            cost={r: float(cost[i]) for i, r in enumerate(self.resources)},
            feasible=not violations,
            per_model=per_model,
            violations=tuple(violations),
        )


@dataclass(frozen=True, slots=True)
class _Tables:
    """Bounded-resource costs as nested lists (faster than numpy for tiny per-node loops)."""

    n: int
    C: list[list[float]]
    E: list[list[float]]
    L: list[list[list[float]]] | None
    budget: list[float]
    limit: list[float]

    def start(self, mask: int) -> tuple[list[float], list[list[float]]]:
        """Model cost of ``mask`` and the link cost each target receives from it, per resource."""
        nr = len(self.budget)
        cost_in = [sum(self.C[r][s] for s in _bits(mask)) for r in range(nr)]
        incoming = [[0.0] * self.n for _ in range(nr)]
        if self.L is not None:
            for r in range(nr):
                row = incoming[r]
                for s in _bits(mask):
                    for t, v in enumerate(self.L[r][s]):
                        row[t] += v
        return cost_in, incoming

    def add(
        self, s: int, cost_in: list[float], incoming: list[list[float]]
    ) -> tuple[list[float], list[list[float]]]:
        new_cost = [c + self.C[r][s] for r, c in enumerate(cost_in)]
        if self.L is None:
            return new_cost, incoming
        new_in = [
            [a + b for a, b in zip(row, self.L[r][s], strict=True)]
            for r, row in enumerate(incoming)
        ]
        return new_cost, new_in

    def lower_bounds(
        self,
        inside: int,
        undecided: int,
        cost_in: list[float],
        incoming: list[list[float]],
        nonempty: bool,
    ) -> list[float]:
        """A lower bound, per bounded resource, on the cost of every plan ``inside | S``,
        ``S`` a subset of ``undecided``.

        Decided-inactive targets pay at least their links from ``inside``; an undecided model
        either runs (its own cost) or is synthesized (at least its links from ``inside``), so it
        pays at least the smaller of the two. No monotonicity of cost in the set is assumed: this
        is what keeps pruning correct when activating a model is cheaper than its ensemble.
        """
        out = []
        n = self.n
        for r, base in enumerate(cost_in):
            Cr, Er, Ir = self.C[r], self.E[r], incoming[r]
            total = base
            for t in range(n):
                if inside >> t & 1:
                    continue
                x = Ir[t] + Er[t] if nonempty else Ir[t]
                if undecided >> t & 1:
                    c = Cr[t]
                    total += c if c < x else x
                else:
                    total += x
            out.append(total)
        return out


# -- infeasibility ------------------------------------------------------------------------------


def _cheapest_plan(inst: _Instance) -> int:
    """The valid-ignoring-budget plan with the smallest largest cost/budget ratio (exact B&B).

    "Cheapest" needs one number when several resources are bounded; the largest ratio is the
    factor by which the whole budget must grow for the plan to fit, so the winner is the plan
    that needs the smallest proportional raise.
    """
    base = inst.pinned
    need = max(0, inst.min_active - base.bit_count())
    if not inst.bounded:
        return base | sum(1 << m for m in inst.free[:need])

    def structural(mask: int) -> bool:
        return mask.bit_count() >= inst.min_active

    singles = sorted(inst.free, key=lambda m: (inst.ratio(base | 1 << m), m))
    seeds = [base, base | sum(1 << m for m in singles[:need])]
    seeds += [base | 1 << m for m in singles]
    best_mask = -1
    best = math.inf
    for mask in seeds:
        if structural(mask) and inst.ratio(mask) < best:
            best, best_mask = inst.ratio(mask), mask
    if best_mask < 0:  # unreachable: min_active <= available models is validated
        raise AssertionError("no structurally valid plan")

    tables = inst.tables()
    order = singles
    suffix = [0] * (len(order) + 1)
    for k in range(len(order) - 1, -1, -1):
        suffix[k] = suffix[k + 1] | 1 << order[k]
    budget = tables.budget
    need_nonempty = inst.min_active >= 1

    def visit(k: int, inside: int, cost_in: list[float], incoming: list[list[float]]) -> None:
        nonlocal best, best_mask
        if inside.bit_count() + len(order) - k < inst.min_active:
            return
        lows = tables.lower_bounds(
            inside, suffix[k], cost_in, incoming, need_nonempty or inside != 0
        )
        lam = max(lo / b for lo, b in zip(lows, budget, strict=True))
        if lam >= best - _GAIN_EPS:
            return
        if k == len(order):
            best, best_mask = lam, inside
            return
        s = order[k]
        visit(k + 1, inside | 1 << s, *tables.add(s, cost_in, incoming))
        visit(k + 1, inside, cost_in, incoming)

    visit(0, base, *tables.start(base))
    return best_mask


def cheapest_feasible_budget(problem: Problem) -> dict[str, float]:
    """The smallest budget, per bounded resource, under which some valid plan fits.

    Valid means pinned models active, excluded ones not, at least ``min_active`` active. With
    several bounded resources "smallest" is the plan needing the least proportional raise of the
    current budget; the returned numbers are that plan's cost, so any budget at least as large in
    every bounded resource admits it. Returns ``{}`` when nothing is bounded.
    """
    inst = _Instance(problem)
    mask = _cheapest_plan(inst)
    return dict(zip(inst.bounded_names, inst.bounded_cost(mask), strict=True))


def _infeasible(inst: _Instance, plan: int) -> InfeasibleBudget:
    cheapest = dict(zip(inst.bounded_names, inst.bounded_cost(plan), strict=True))
    budget = dict(zip(inst.bounded_names, inst.budget, strict=True))
    raised = {r: max(budget[r], cheapest[r]) for r in budget}
    constraints = []
    if inst.pinned:
        constraints.append(f"pinned={_fmt_set(inst.problem.pinned)}")
    if inst.min_active > 1:
        constraints.append(f"min_active={inst.min_active}")
    why = f" under {', '.join(constraints)}" if constraints else ""
    message = (
        f"budget {_fmt_vector(budget)} is below the cheapest feasible plan "
        f"({_fmt_vector(cheapest)} with active={_fmt_set(inst.names_of(plan))}{why}); "
        f"raise the budget to at least {_fmt_vector(raised)}"
    )
    if inst.pinned:
        message += " or pin fewer models"
    return InfeasibleBudget(
        message, budget=budget, cheapest_budget=cheapest, plan=inst.names_of(plan)
    )


def _feasible_start(inst: _Instance) -> int:
    """A valid plan to start a heuristic from, or :class:`InfeasibleBudget` if none exists."""
    plan = _cheapest_plan(inst)
    if not inst.valid(plan):
        raise _infeasible(inst, plan)
    return plan


# -- heuristics ---------------------------------------------------------------------------------


def _paper_greedy(inst: _Instance, start: int) -> int:
    """Add the best-gain model that keeps the plan within budget, until nothing improves."""
    current = start
    while True:
        need = current.bit_count() < inst.min_active
        base = inst.objective(current)
        best_mask, best_gain = -1, -math.inf
        for m in inst.free:
            if current >> m & 1:
                continue
            candidate = current | 1 << m
            if not inst.fits(candidate):
                continue
            gain = inst.objective(candidate) - base
            if gain > best_gain + _GAIN_EPS:
                best_mask, best_gain = candidate, gain
        if best_mask < 0 or (not need and best_gain <= _GAIN_EPS):
            return current
        current = best_mask


def _ratio_key(gain: float, delta: float) -> tuple[int, float]:
    """Rank additions: free ones (no normalised cost increase) first by gain, then gain/cost."""
    if delta <= _GAIN_EPS:
        return (1, gain)
    return (0, gain / delta)


def _lookahead_greedy(inst: _Instance, start: int, depth: int, pool_size: int) -> int:
    """Gain-per-cost greedy that also scores combinations of up to ``depth`` additions.

    Cost is normalised per resource by the budget and the largest share counts, so a model that
    eats the scarcest resource is judged by that. Combinations are drawn from a pool of the best
    single additions (by ratio and by raw gain): trying all k-subsets would not scale, and pairs
    matter exactly when two complementary models beat either alone.
    """
    current = start
    while True:
        need = current.bit_count() < inst.min_active
        base = inst.objective(current)
        base_cost = inst.bounded_cost(current)

        def score(candidate: int, base: float = base, base_cost: list[float] = base_cost):
            gain = inst.objective(candidate) - base
            new_cost = inst.bounded_cost(candidate)
            delta = max(
                ((c - b0) / b for c, b0, b in zip(new_cost, base_cost, inst.budget, strict=True)),
                default=0.0,
            )
            return gain, _ratio_key(gain, delta)

        scored: list[tuple[int, float, tuple[int, float]]] = []
        for m in inst.free:
            if current >> m & 1:
                continue
            candidate = current | 1 << m
            if inst.fits(candidate):
                scored.append((candidate, *score(candidate)))
        if depth >= 2 and len(scored) >= 2:
            by_ratio = sorted(scored, key=lambda item: item[2], reverse=True)[:pool_size]
            by_gain = sorted(scored, key=lambda item: item[1], reverse=True)[:pool_size]
            pool = sorted({c & ~current for c, _, _ in by_ratio + by_gain})
            for k in range(2, depth + 1):
                for combo in combinations(pool, k):
                    candidate = current | sum(combo)
                    if inst.fits(candidate):
                        scored.append((candidate, *score(candidate)))
        if need:
            pick = max(scored, key=lambda item: item[1], default=None)
        else:
            improving = [item for item in scored if item[1] > _GAIN_EPS]
            pick = max(improving, key=lambda item: item[2], default=None)
        if pick is None:
            return current
        current = pick[0]


def _local_search(inst: _Instance, start: int, max_rounds: int) -> int:
    """Best-improvement over add / drop / swap moves that keep the plan valid.

    Greedy construction cannot undo an early choice; one swap often repairs it (e.g. a costly
    model added first that two cheaper ones would beat once the budget is nearly full).
    """
    current = start
    for _ in range(max_rounds):
        value = inst.objective(current)
        best_mask, best_value = -1, value + _GAIN_EPS
        inside = [m for m in inst.free if current >> m & 1]
        outside = [m for m in inst.free if not current >> m & 1]
        moves = [current | 1 << b for b in outside]
        if current.bit_count() > inst.min_active:
            moves += [current & ~(1 << a) for a in inside]
        moves += [current & ~(1 << a) | 1 << b for a in inside for b in outside]
        for candidate in moves:
            if inst.fits(candidate):
                v = inst.objective(candidate)
                if v > best_value:
                    best_mask, best_value = candidate, v
        if best_mask < 0:
            break
        current = best_mask
    return current


def _valid_or_restart(inst: _Instance, mask: int, heuristic: Callable[[int], int]) -> int:
    """Heuristics only move through in-budget sets; if that strands them (e.g. the pinned set is
    over budget and no single addition fixes it), restart from the cheapest valid plan."""
    if inst.valid(mask):
        return mask
    result = heuristic(_feasible_start(inst))
    if not inst.valid(result):  # defensive: heuristics never leave a valid start invalid
        raise AssertionError("heuristic left a valid plan")
    return result


def _heuristic(inst: _Instance, depth: int, pool_size: int, max_rounds: int) -> int:
    def paper(start: int) -> int:
        return _paper_greedy(inst, start)

    def look(start: int) -> int:
        return _lookahead_greedy(inst, start, depth, pool_size)

    results = []
    for construct in (look, paper):
        mask = _valid_or_restart(inst, construct(inst.pinned), construct)
        results.append(_local_search(inst, mask, max_rounds))
    # max() keeps the first on ties, so the lookahead's plan wins draws.
    return max(results, key=inst.objective)


# -- exact --------------------------------------------------------------------------------------


def _search_order(inst: _Instance, incumbent: int) -> list[int]:
    """Branch on the incumbent's models first, then on the best single additions: including
    them first finds strong plans early, which tightens the bound for the rest of the search."""
    base = inst.pinned
    return sorted(
        inst.free,
        key=lambda m: (not incumbent >> m & 1, -inst.objective(base | 1 << m), m),
    )


def _branch_and_bound(inst: _Instance, incumbent: int, assume_monotone: bool) -> int:
    """Depth-first include/exclude search over the free models.

    Prunes a node when (a) the cost lower bound of every completion exceeds the budget, (b) even
    activating all undecided models cannot reach ``min_active``, or (c) with ``assume_monotone``,
    an optimistic objective bound cannot beat the incumbent. The bound: each decided-inactive
    target gets its agreement from *all* possibly-active models; each undecided one either runs
    (1) or is synthesized (agreement from all others), and which ones may run is a fractional
    knapsack over the remaining budget, per bounded resource (the smallest is kept).
    Without monotonicity only (a) and (b) prune, which is exhaustive but still exact.
    """
    n = inst.n
    tables = inst.tables()
    nr = len(tables.budget)
    order = _search_order(inst, incumbent)
    depth = len(order)
    suffix = [0] * (depth + 1)
    for k in range(depth - 1, -1, -1):
        suffix[k] = suffix[k + 1] | 1 << order[k]
    need_nonempty = inst.min_active >= 1
    agreement = inst.agreement
    best_value = inst.objective(incumbent) if incumbent >= 0 else -math.inf
    best_mask = incumbent

    def bound(
        inside: int,
        undecided: int,
        lows: list[float],
        incoming: list[list[float]],
        nonempty: bool,
    ) -> float:
        everything = inside | undecided
        total = float(inside.bit_count())
        for t in range(n):
            if not everything >> t & 1:
                total += agreement(everything, t)
        items = []
        for t in _bits(undecided):
            g = agreement(everything & ~(1 << t), t)
            total += g
            if g < 1.0:
                items.append((t, 1.0 - g))
        if not items:
            return total / n
        if nr == 0:
            return (total + sum(v for _, v in items)) / n
        knapsack = math.inf
        for r in range(nr):
            capacity = tables.limit[r] - lows[r]
            Cr, Er, Ir = tables.C[r], tables.E[r], incoming[r]
            gained = 0.0
            weighted = []
            for t, v in items:
                x = Ir[t] + Er[t] if nonempty else Ir[t]
                w = Cr[t] - x
                if w <= 0.0:
                    gained += v
                else:
                    weighted.append((v / w, v, w))
            weighted.sort(reverse=True)
            for density, v, w in weighted:
                if w <= capacity:
                    gained += v
                    capacity -= w
                else:
                    gained += density * capacity
                    break
            knapsack = min(knapsack, gained)
        return (total + knapsack) / n

    def visit(k: int, inside: int, cost_in: list[float], incoming: list[list[float]]) -> None:
        nonlocal best_value, best_mask
        count = inside.bit_count()
        if count + depth - k < inst.min_active:
            return
        undecided = suffix[k]
        nonempty = need_nonempty or inside != 0
        lows = tables.lower_bounds(inside, undecided, cost_in, incoming, nonempty)
        for lo, lim in zip(lows, tables.limit, strict=True):
            if lo > lim:
                return
        if k == depth:  # the lower bound is the exact cost here, so the plan fits
            value = inst.objective(inside)
            if value > best_value + _GAIN_EPS:
                best_value, best_mask = value, inside
            return
        if assume_monotone and bound(inside, undecided, lows, incoming, nonempty) <= (
            best_value + _GAIN_EPS
        ):
            return
        s = order[k]
        visit(k + 1, inside | 1 << s, *tables.add(s, cost_in, incoming))
        visit(k + 1, inside, cost_in, incoming)

    visit(0, inst.pinned, *tables.start(inst.pinned))
    return best_mask


# -- public solvers -----------------------------------------------------------------------------


def evaluate(problem: Problem, active: Iterable[str]) -> Evaluation:
    """Score ``active`` against ``problem``: objective, cost per resource, and feasibility.

    Infeasible plans are still scored (``feasible=False`` with ``violations`` saying why), so a
    caller can see how far over budget a hand-picked plan is.
    """
    inst = _Instance(problem)
    chosen = _check_names(active, inst.index, "active")
    return inst.evaluation(inst.mask_of(chosen))


def select_paper_greedy(problem: Problem) -> Evaluation:
    """The paper's greedy heuristic: from the pinned set, repeatedly add the model with the
    largest objective gain among those that keep the plan in budget; stop when no addition
    improves the objective (additions are forced while fewer than ``min_active`` run).

    Kept as the baseline the other solvers are measured against.
    """
    inst = _Instance(problem)

    def paper(start: int) -> int:
        return _paper_greedy(inst, start)

    return inst.evaluation(_valid_or_restart(inst, paper(inst.pinned), paper))


def select_greedy_lookahead(
    problem: Problem, depth: int = 2, *, pool_size: int = 8, max_rounds: int = 100
) -> Evaluation:
    """Heuristic for large fleets: cost-aware greedy with lookahead, then local search.

    Each step adds the single model or combination of up to ``depth`` models (drawn from the
    ``pool_size`` best single additions) with the best objective gain per normalised cost, where
    cost is the largest share of any bounded resource's budget the addition uses. Then up to
    ``max_rounds`` best-improvement rounds of add / drop / swap moves. The paper's greedy is run
    and polished the same way and the better plan returned, so this is never worse than
    :func:`select_paper_greedy`.
    """
    if depth < 1:
        raise ValueError(f"depth = {depth}; it must be >= 1 (1 means no lookahead)")
    if pool_size < 1:
        raise ValueError(f"pool_size = {pool_size}; it must be >= 1")
    if max_rounds < 0:
        raise ValueError(f"max_rounds = {max_rounds}; it must be >= 0")
    inst = _Instance(problem)
    return inst.evaluation(_heuristic(inst, depth, pool_size, max_rounds))


def select_exact(
    problem: Problem, *, assume_monotone: bool = True, max_free: int = 24
) -> Evaluation:
    """The optimal plan, by branch and bound seeded with the lookahead heuristic's plan.

    ``assume_monotone`` (default) lets the search prune with an objective bound that is valid
    when adding an active model never lowers any target's agreement, which holds for ensembles
    that can ignore a useless source. If your oracle is not monotone pass False: the search then
    prunes by cost only and stays exact, at exponential cost. ``max_free`` caps the number of
    free (not pinned/excluded) models, since the search is exponential in it.
    """
    free = len(problem.models) - len(problem.pinned) - len(problem.excluded)
    if free > max_free:
        raise ValueError(
            f"select_exact: {free} free models exceed max_free={max_free}; the search is "
            "exponential in them. Use select_greedy_lookahead, pin/exclude models, or raise "
            "max_free if you can wait"
        )
    inst = _Instance(problem)
    incumbent = _heuristic(inst, depth=2, pool_size=8, max_rounds=100)
    return inst.evaluation(_branch_and_bound(inst, incumbent, assume_monotone))


def select(
    problem: Problem, method: Method = "auto", *, assume_monotone: bool = True
) -> Evaluation:
    """Pick the active set. ``"auto"`` solves exactly when at most 16 models are free (not pinned
    or excluded) and uses the lookahead heuristic beyond that; ``"exact"``, ``"lookahead"`` and
    ``"greedy"`` (the paper's) force a solver. ``assume_monotone`` is passed to the exact solver.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {list(METHODS)}")
    free = len(problem.models) - len(problem.pinned) - len(problem.excluded)
    if method == "exact" or (method == "auto" and free <= AUTO_EXACT_MAX_FREE):
        return select_exact(problem, assume_monotone=assume_monotone)
    if method == "greedy":
        return select_paper_greedy(problem)
    return select_greedy_lookahead(problem)
