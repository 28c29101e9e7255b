"""A :class:`~mlink.linkstore.problem.Problem` compiled for the solvers: indices, bitmasks, cost
arrays, memoised oracle answers, and the per-resource lower bounds branch and bound prunes with.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from mlink.linkstore.problem import (
    BUDGET_TOL,
    Evaluation,
    Problem,
    fmt_set,
    fmt_value,
)

__all__ = ["CostTables", "Instance", "bits"]


def bits(mask: int) -> Iterable[int]:
    while mask:
        low = mask & -mask
        yield low.bit_length() - 1
        mask ^= low


class Instance:
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
        self.limit = [b + BUDGET_TOL * max(1.0, b) for b in self.budget]
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
            found = frozenset(self.names[i] for i in bits(mask))
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
                    f"{fmt_set(active)}; it must return a fraction in [0, 1]"
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
            active[list(bits(mask))] = 1.0
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

    def tables(self) -> CostTables:
        Cb = [self.C[r].tolist() for r in self.bounded]
        Eb = [self.E[r].tolist() for r in self.bounded]
        Lb = None if self.L is None else [self.L[r].tolist() for r in self.bounded]
        return CostTables(self.n, Cb, Eb, Lb, list(self.budget), list(self.limit))

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
                violations.append(
                    f"{name}={fmt_value(cost[r])} exceeds the budget {name}={fmt_value(b)}"
                )
        if mask.bit_count() < self.min_active:
            violations.append(
                f"{mask.bit_count()} active models, fewer than min_active={self.min_active}"
            )
        for i in bits(self.pinned & ~mask):
            violations.append(f"pinned model {self.names[i]!r} is not active")
        for i in bits(self.excluded & mask):
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
class CostTables:
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
        cost_in = [sum(self.C[r][s] for s in bits(mask)) for r in range(nr)]
        incoming = [[0.0] * self.n for _ in range(nr)]
        if self.L is not None:
            for r in range(nr):
                row = incoming[r]
                for s in bits(mask):
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
