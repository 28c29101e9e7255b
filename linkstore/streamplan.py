"""The controller's side of stream synthesis: a schedule from the trainer's curves.

Two objectives, one plan shape (a :class:`~mlink.linkstore.schedule.Schedule`: the *active set*
of models that run on every frame, and for every other model a period, a phase and a
:class:`~mlink.linkstore.schedule.Mode`):

- **budget** (:func:`plan_for_budget`): maximise the expected mean agreement over all models
  (1 for a real run) with the expected per-frame cost, probes included, within ``budget_ms``;
- **accuracy target** (:func:`plan_for_targets`): the cheapest plan in which every model's
  agreement, as a lower confidence bound, meets its target: the budget keys
  ``target_agreement`` (every model) and ``target_agreement:<model>`` (one model, overrides).
  Targets *with* a compute bound are floors of the budget objective instead (``floors``): the
  most accurate plan within the bound whose models meet them. The cheapest plan would leave the
  bound unspent and the models without a target at whatever the cheapest option gives (a
  per-model target left another model at 26% in stop 45's audit).

A model's expected agreement under a period ``k``, phase ``r`` and mode
(:func:`~mlink.linkstore.streamoptions.option`) is exact over one steady cycle of its runs and
the probes (:func:`~mlink.linkstore.schedule.lag_histogram`): 1 on frames it runs, the mode's
:class:`~mlink.linkstore.streamfit.Curve` at the frames since its last run otherwise.
Detector modes need their source in the active set. The paper's links are one more
mode when ``links`` is given: ``links(active, target)`` returns their estimated agreement, the
number of samples behind it and what one synthesized output costs.

Both searches try every active set (the budget search every set whose own cost fits, up to
``max_sets``, then greedy growth); given the set, the budget search picks one option per other
model by the multiple-choice knapsack (:mod:`mlink.linkstore.knapsack`), and the target search
the cheapest option that meets each model's target, which is exact because, given the active
set, the models' options are independent.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from itertools import combinations
from typing import Any

from mlink.linkstore.knapsack import choose_options
from mlink.linkstore.schedule import Schedule
from mlink.linkstore.streamfit import Curve
from mlink.linkstore.streamoptions import Choice, LinksEstimate, Options, option
from mlink.linkstore.targets import MAX_TARGET_MODELS
from mlink.topics.control import TARGET_PREFIX

__all__ = [
    "DEFAULT_PERIODS",
    "TARGET_KEY",
    "TARGET_PREFIX",
    "Choice",
    "LinksEstimate",
    "StreamPlan",
    "affordable_subsets",
    "agreement_targets",
    "budget_search",
    "option",
    "plan_for_budget",
    "plan_for_targets",
    "target_search",
]

TARGET_KEY = "target_agreement"
DEFAULT_PERIODS = (0, *range(2, 17))


@dataclass(frozen=True, slots=True)
class StreamPlan:
    """A schedule with what the plan expects of every model.

    ``feasible`` is False when nothing meets the budget or the targets; the plan is then the
    fallback (every model on every frame) and ``reason`` says why.
    """

    schedule: Schedule
    choices: Mapping[str, Choice]
    estimate: float
    cost_ms: float
    feasible: bool = True
    reason: str = ""
    searched: int = field(default=0, compare=False)

    @property
    def active(self) -> frozenset[str]:
        return self.schedule.always

    def per_model(self) -> dict[str, float]:
        return {m: c.estimate for m, c in self.choices.items()}

    def lower(self) -> dict[str, float]:
        return {m: c.lower for m, c in self.choices.items()}

    def forecast(self) -> dict[str, float]:
        """Each model's forecast bound (:attr:`Choice.bound`): what the plan promises."""
        return {m: c.bound for m, c in self.choices.items()}

    def describe(self, model: str) -> str:
        """One line on what ``model`` does, e.g. ``every 4 (phase 1), follow(face) (est ...)``."""
        c, what = self.choices[model], self.schedule.describe(model)
        return what if c.period == 1 else f"{what} (est {c.estimate:.3f}, lower {c.lower:.3f})"


def agreement_targets(budget: Mapping[str, float], models: Iterable[str]) -> dict[str, float]:
    """Per-model accuracy targets from budget keys: ``target_agreement`` applies to every model,
    ``target_agreement:<model>`` to one (and wins over the global one). Models without either
    get no entry."""
    models = list(models)
    out: dict[str, float] = {}
    if TARGET_KEY in budget:
        out = dict.fromkeys(models, float(budget[TARGET_KEY]))
    for key, value in budget.items():
        if key.startswith(TARGET_PREFIX):
            model = key[len(TARGET_PREFIX) :]
            if model not in models:
                raise ValueError(f"budget key {key!r} names an unknown model; known: {models}")
            out[model] = float(value)
    for m, v in out.items():
        if not 0.0 < v <= 1.0:
            raise ValueError(f"accuracy target of {m!r} must lie in (0, 1], got {v}")
    return out


def _pareto(choices: list[Choice], value: Callable[[Choice], float]) -> list[Choice]:
    best: list[Choice] = []
    for c in sorted(choices, key=lambda c: (c.cost_ms, -value(c))):
        if not best or value(c) > value(best[-1]) + 1e-12:
            best.append(c)
    return best


def _plan(opts: Options, chosen: Mapping[str, Choice], searched: int) -> StreamPlan:
    schedule = Schedule(
        periods={m: c.period for m, c in chosen.items()},
        phases={m: c.phase for m, c in chosen.items() if c.phase},
        modes={m: c.mode for m, c in chosen.items() if c.period != 1},
        probe_every=opts.probe_every,
        probe_stride=opts.probe_stride,
    )
    estimate = sum(c.estimate for c in chosen.values()) / len(chosen)
    cost = sum(c.cost_ms for c in chosen.values())
    return StreamPlan(schedule, dict(chosen), estimate, cost, True, "", searched)


def _fallback(opts: Options, reason: str, searched: int) -> StreamPlan:
    plan = _plan(opts, {m: opts.always(m) for m in opts.models}, searched)
    return StreamPlan(plan.schedule, plan.choices, 1.0, plan.cost_ms, False, reason, searched)


def affordable_subsets(
    models: Sequence[str], ms: Mapping[str, float], cap: float, limit: int
) -> list[frozenset[str]] | None:
    """Every set of models whose own cost is at most ``cap``, or None if there are over
    ``limit`` (the candidate active sets of a plan search)."""
    order = sorted(models, key=lambda m: ms[m])
    out: list[frozenset[str]] = []

    def visit(k: int, chosen: list[str], cost: float) -> bool:
        out.append(frozenset(chosen))
        if len(out) > limit:
            return False
        for j in range(k, len(order)):
            if cost + ms[order[j]] > cap * (1 + 1e-12):
                break
            if not visit(j + 1, [*chosen, order[j]], cost + ms[order[j]]):
                return False
        return True

    return out if visit(0, [], 0.0) else None


def _motion_ms(curves: Mapping[str, Sequence[Curve]]) -> float | None:
    """What measuring motion costs a frame, when some model can be synthesized by ``flow``."""
    flows = [c.frame_ms for cs in curves.values() for c in cs if c.mode.kind == "flow"]
    return max(flows) if flows else None


def _still(curves: Mapping[str, Sequence[Curve]]) -> dict[str, list[Curve]]:
    return {t: [c for c in cs if c.mode.kind != "flow"] for t, cs in curves.items()}


def _charged(plan: StreamPlan, motion_ms: float) -> StreamPlan:
    """``plan`` with the per-frame motion cost in its cost, when it synthesizes by ``flow``."""
    if not plan.schedule.uses_motion:
        return plan
    return replace(plan, cost_ms=plan.cost_ms + motion_ms)


def _plan_value(plan: StreamPlan, objective: str) -> float:
    return float(sum(plan.lower().values())) if objective == "lower" else plan.estimate


def plan_for_budget(
    curves: Mapping[str, Sequence[Curve]],
    costs_ms: Mapping[str, float],
    budget_ms: float,
    **search: Any,
) -> StreamPlan:
    """The schedule with the most expected mean agreement whose expected cost fits
    ``budget_ms`` (see the module docstring; ``search``: :func:`budget_search`'s keywords).
    Measuring motion costs every frame once, whichever models use it, so with ``flow`` curves
    the best plan without them is set against the best with them in a budget less that cost."""
    motion_ms = _motion_ms(curves)
    if motion_ms is None:
        return budget_search(curves, costs_ms, budget_ms, **search)
    still = budget_search(_still(curves), costs_ms, budget_ms, **search)
    moving = _charged(budget_search(curves, costs_ms, budget_ms - motion_ms, **search), motion_ms)
    if not moving.feasible or not moving.schedule.uses_motion:
        return still
    objective = search.get("objective", "estimate")
    gain = _plan_value(moving, objective) - _plan_value(still, objective)
    if not still.feasible or gain > 1e-9 or (gain > -1e-9 and moving.cost_ms < still.cost_ms):
        return moving
    return still


def budget_search(
    curves: Mapping[str, Sequence[Curve]],
    costs_ms: Mapping[str, float],
    budget_ms: float,
    *,
    probe_every: int = 0,
    probe_stride: int = 0,
    periods: Sequence[int] = DEFAULT_PERIODS,
    links: LinksEstimate | None = None,
    z: float = 1.645,
    max_sets: int = 4096,
    grid: int = 2000,
    objective: str = "estimate",
    corr: float = 1.0,
    corrections: Mapping[str, float] | None = None,
    floors: Mapping[str, float] | None = None,
) -> StreamPlan:
    """The schedule with the most expected mean agreement whose expected cost fits
    ``budget_ms``, every curve's per-frame cost aside (see the module docstring), among those
    whose every model's lower bound meets its entry of ``floors`` (accuracy targets). Infeasible
    budgets give the fallback plan."""
    opts = Options(curves, costs_ms, probe_every, periods, z, probe_stride, corr, corrections)
    models = opts.models
    floors = dict(floors or {})
    if unknown := sorted(set(floors) - set(models)):
        raise ValueError(f"targets name unknown models {unknown}")

    def value_of(c: Choice) -> float:
        return c.lower if objective == "lower" else c.estimate

    def best_for(active: frozenset[str]) -> tuple[float, float, dict[str, Choice]] | None:
        room = budget_ms - sum(opts.ms[m] for m in active)
        if room < -1e-9 * budget_ms:
            return None
        targets = [t for t in models if t not in active]
        groups = [
            _pareto(_meeting(opts.choices(t, active, links), floors.get(t, 0.0)), value_of)
            for t in targets
        ]
        if not all(groups):  # some model has no option that meets its floor
            return None
        picked = choose_options(
            [[(c.cost_ms, value_of(c)) for c in g] for g in groups], max(room, 0.0), grid
        )
        if picked is None:
            return None
        chosen = {m: opts.always(m) for m in active}
        chosen.update({t: g[o] for t, g, o in zip(targets, groups, picked, strict=True)})
        value = sum(value_of(c) for c in chosen.values())
        return value, sum(c.cost_ms for c in chosen.values()), chosen

    def better(a, b) -> bool:
        if b is None:
            return False
        if a is None or b[0] > a[0] + 1e-9:
            return True
        return b[0] > a[0] - 1e-9 and b[1] < a[1] - 1e-9

    subsets = affordable_subsets(models, opts.ms, budget_ms, max_sets)
    best, searched = None, 0
    if subsets is not None:
        for active in subsets:
            searched += 1
            cand = best_for(active)
            if better(best, cand):
                best = cand
    else:  # too many sets: grow the active set greedily
        best, improved = best_for(frozenset()), True
        while improved:
            improved = False
            base = frozenset(m for m, c in (best[2] if best else {}).items() if c.period == 1)
            for m in models:
                if m in base:
                    continue
                searched += 1
                cand = best_for(base | {m})
                if better(best, cand):
                    best, improved = cand, True
    if best is None:
        reason = (
            _unmet(opts, floors, budget_ms)
            if floors
            else f"no schedule fits {budget_ms:g} ms/frame"
        )
        return _fallback(opts, reason, searched)
    return _plan(opts, best[2], searched)


def plan_for_targets(
    curves: Mapping[str, Sequence[Curve]],
    costs_ms: Mapping[str, float],
    targets: Mapping[str, float],
    **search: Any,
) -> StreamPlan:
    """The cheapest schedule in which every model's lower confidence bound meets its target
    (:func:`target_search`), the cost of measuring motion counted once when it uses ``flow``."""
    motion_ms = _motion_ms(curves)
    if motion_ms is None:
        return target_search(curves, costs_ms, targets, **search)
    still = target_search(_still(curves), costs_ms, targets, **search)
    cap = search.get("budget_ms")
    tighter = {**search, "budget_ms": None if cap is None else cap - motion_ms}
    moving = _charged(target_search(curves, costs_ms, targets, **tighter), motion_ms)
    if not moving.feasible or not moving.schedule.uses_motion:
        return still
    if not still.feasible or moving.cost_ms < still.cost_ms - 1e-9:
        return moving
    return still


def target_search(
    curves: Mapping[str, Sequence[Curve]],
    costs_ms: Mapping[str, float],
    targets: Mapping[str, float],
    *,
    probe_every: int = 0,
    probe_stride: int = 0,
    periods: Sequence[int] = DEFAULT_PERIODS,
    links: LinksEstimate | None = None,
    z: float = 1.645,
    budget_ms: float | None = None,
    max_models: int = MAX_TARGET_MODELS,
    corr: float = 1.0,
    corrections: Mapping[str, float] | None = None,
) -> StreamPlan:
    """The cheapest schedule in which every model's lower confidence bound meets its target
    (models without one take their cheapest option), within ``budget_ms`` if given. Every
    active set is tried (at most ``max_models`` models). When none works the fallback plan runs
    every model, ``feasible`` False, with the reason."""
    opts = Options(curves, costs_ms, probe_every, periods, z, probe_stride, corr, corrections)
    models = opts.models
    unknown = sorted(set(targets) - set(models))
    if unknown:
        raise ValueError(f"targets name unknown models {unknown}")
    if len(models) > max_models:
        raise ValueError(
            f"{len(models)} models: the exact target search tries 2**{len(models)} active sets; "
            f"raise max_models (now {max_models}) if you can wait"
        )
    cap = budget_ms if budget_ms is not None else sum(opts.ms.values())
    best: tuple[float, float, dict[str, Choice]] | None = None
    searched = 0
    for size in range(len(models) + 1):
        for combo in combinations(models, size):
            active = frozenset(combo)
            base = sum(opts.ms[m] for m in active)
            if base > cap * (1 + 1e-12) or (best is not None and base >= best[0] + 1e-12):
                continue
            searched += 1
            chosen = {m: opts.always(m) for m in active}
            cost = base
            for t in models:
                if t in active:
                    continue
                ok = _meeting(opts.choices(t, active, links), targets.get(t, 0.0))
                if not ok:
                    break
                pick = min(ok, key=lambda c: (c.cost_ms, -c.estimate))
                chosen[t] = pick
                cost += pick.cost_ms
            else:
                if cost > cap * (1 + 1e-12):
                    continue
                value = sum(c.estimate for c in chosen.values())
                if (
                    best is None
                    or cost < best[0] - 1e-12
                    or (cost < best[0] + 1e-12 and value > best[1])
                ):
                    best = (cost, value, chosen)
    if best is None:
        return _fallback(opts, _unmet(opts, targets, budget_ms), searched)
    return _plan(opts, best[2], searched)


def _meeting(choices: Iterable[Choice], floor: float) -> list[Choice]:
    """The options whose lower bound meets ``floor`` (a model's accuracy target, 0: none)."""
    return [c for c in choices if c.lower >= floor - 1e-12]


def _unmet(opts: Options, targets: Mapping[str, float], budget_ms: float | None) -> str:
    """Why no schedule was found for ``targets`` (within ``budget_ms``, if given)."""
    wanted = {m: round(float(t), 4) for m, t in sorted(targets.items())}
    within = "" if budget_ms is None else f" within {budget_ms:g} ms/frame"
    reason = f"no schedule meets the accuracy targets {wanted}{within}"
    if budget_ms is not None and sum(opts.ms.values()) > budget_ms * (1 + 1e-12):
        reason += (
            f" (running every model, which meets any target, costs "
            f"{sum(opts.ms.values()):g} ms/frame)"
        )
    return reason
