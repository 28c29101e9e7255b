"""Budgeted active-set selection: exact search against brute force, heuristics against exact."""

from __future__ import annotations

import math
import random
from itertools import combinations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mlink.linkstore.selection import (
    Evaluation,
    InfeasibleBudget,
    Problem,
    cheapest_feasible_budget,
    evaluate,
    select,
    select_exact,
    select_greedy_lookahead,
    select_paper_greedy,
)

RESOURCES = ("memory_mb", "ms")
SETTINGS = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# -- instance builders --------------------------------------------------------------------------


def noisy_or(rng: random.Random, names: list[str]):
    """A monotone oracle: each active source independently 'explains' a target with prob q."""
    q = {s: {t: rng.random() ** 2 for t in names} for s in names}
    prior = {t: rng.uniform(0.0, 0.4) for t in names}
    scale = rng.uniform(0.6, 1.0)

    def agreement(active: frozenset[str], target: str) -> float:
        assert target not in active
        miss = 1.0
        for s in active:
            miss *= 1.0 - q[s][target]
        return prior[target] + (1.0 - prior[target]) * (1.0 - miss) * scale

    return agreement


def random_table(rng: random.Random, names: list[str]):
    """A non-monotone oracle: an arbitrary agreement for every (active set, target)."""
    table = {}
    for k in range(len(names) + 1):
        for combo in combinations(names, k):
            for t in names:
                if t not in combo:
                    table[(frozenset(combo), t)] = rng.random()

    def agreement(active: frozenset[str], target: str) -> float:
        return table[(active, target)]

    return agreement


def build(
    seed: int,
    n: int,
    *,
    monotone: bool = True,
    n_res: int = 2,
    bounded: tuple[str, ...] = RESOURCES,
    links: str = "small",
    ensemble: bool = False,
    tight: float = 0.4,
    n_pinned: int = 0,
    n_excluded: int = 0,
    min_active: int = 1,
) -> Problem:
    rng = random.Random(seed)
    names = [f"m{i}" for i in range(n)]
    resources = RESOURCES[:n_res]
    costs = {m: {r: rng.uniform(1.0, 10.0) for r in resources} for m in names}
    link_costs = {}
    if links != "none":
        top = 0.3 if links == "small" else 6.0  # "big" links make some supersets cheaper
        link_costs = {
            (s, t): {r: rng.uniform(0.0, top) for r in resources}
            for s in names
            for t in names
            if s != t and rng.random() < 0.7
        }
    ensemble_costs = {t: {resources[0]: rng.uniform(0.0, 1.0)} for t in names} if ensemble else {}
    bounded = tuple(r for r in bounded if r in resources) or resources[:1]
    budget = {r: max(1e-3, tight * sum(c[r] for c in costs.values())) for r in bounded}
    shuffled = rng.sample(names, n)
    pinned = frozenset(shuffled[:n_pinned])
    excluded = frozenset(shuffled[n_pinned : n_pinned + n_excluded])
    oracle = noisy_or(rng, names) if monotone else random_table(rng, names)
    return Problem(
        models=names,
        costs=costs,
        budget=budget,
        agreement=oracle,
        link_costs=link_costs,
        ensemble_costs=ensemble_costs,
        pinned=pinned,
        excluded=excluded,
        min_active=min(min_active, n - len(excluded)),
    )


@st.composite
def problems(draw, monotone: bool = True, max_n: int = 9) -> Problem:
    n = draw(st.integers(3, max_n))
    n_res = draw(st.integers(1, 2))
    return build(
        draw(st.integers(0, 2**32 - 1)),
        n,
        monotone=monotone,
        n_res=n_res,
        bounded=draw(st.sampled_from([RESOURCES, RESOURCES[:1], RESOURCES[1:]])),
        links=draw(st.sampled_from(["none", "small", "big"])),
        ensemble=draw(st.booleans()),
        tight=draw(st.floats(0.03, 1.0)),
        n_pinned=draw(st.integers(0, 2)),
        n_excluded=draw(st.integers(0, 2)),
        min_active=draw(st.integers(0, 2)),
    )


# -- independent reference implementation -----------------------------------------------------


def manual_cost(problem: Problem, active: frozenset[str]) -> dict[str, float]:
    total = dict.fromkeys(problem.resources, 0.0)
    for m in active:
        for r, v in problem.costs[m].items():
            total[r] += v
    if active:
        for t in problem.models:
            if t in active:
                continue
            for r, v in problem.ensemble_costs.get(t, {}).items():
                total[r] += v
            for s in active:
                for r, v in problem.link_costs.get((s, t), {}).items():
                    total[r] += v
    return total


def manual_objective(problem: Problem, active: frozenset[str]) -> float:
    values = [1.0 if m in active else problem.agreement(active, m) for m in problem.models]
    return sum(values) / len(values)


def structurally_valid(problem: Problem, active: frozenset[str]) -> bool:
    return (
        problem.pinned <= active
        and not active & problem.excluded
        and len(active) >= problem.min_active
    )


def fits(problem: Problem, cost: dict[str, float]) -> bool:
    return all(cost[r] <= b + 1e-9 * max(1.0, b) for r, b in problem.budget.items())


def all_plans(problem: Problem):
    for k in range(len(problem.models) + 1):
        for combo in combinations(problem.models, k):
            active = frozenset(combo)
            if structurally_valid(problem, active):
                yield active


def brute_force(problem: Problem) -> tuple[frozenset[str], float] | None:
    best = None
    for active in all_plans(problem):
        if fits(problem, manual_cost(problem, active)):
            value = manual_objective(problem, active)
            if best is None or value > best[1]:
                best = (active, value)
    return best


def ratio(problem: Problem, active: frozenset[str]) -> float:
    cost = manual_cost(problem, active)
    return max((cost[r] / b for r, b in problem.budget.items()), default=0.0)


def assert_valid(problem: Problem, result: Evaluation) -> None:
    assert result.feasible, result.violations
    assert structurally_valid(problem, result.active)
    assert fits(problem, manual_cost(problem, result.active))
    assert result.objective == pytest.approx(manual_objective(problem, result.active), abs=1e-12)


# -- evaluate ------------------------------------------------------------------------------------


def simple_problem(**overrides) -> Problem:
    table = {
        (frozenset({"face"}), "car"): 0.6,
        (frozenset({"face"}), "pose"): 0.8,
        (frozenset({"car"}), "face"): 0.5,
        (frozenset({"car"}), "pose"): 0.4,
        (frozenset({"face", "car"}), "pose"): 0.9,
    }

    def agreement(active: frozenset[str], target: str) -> float:
        return table.get((active, target), 0.1)

    fields = dict(
        models=["face", "car", "pose"],
        costs={
            "face": {"memory_mb": 900, "ms": 12.5},
            "car": {"memory_mb": 1200, "ms": 8},
            "pose": {"memory_mb": 2000, "ms": 20},
        },
        link_costs={("face", "pose"): {"ms": 1.0}, ("car", "pose"): {"ms": 0.5}},
        ensemble_costs={"pose": {"memory_mb": 10}},
        budget={"memory_mb": 2200},
        agreement=agreement,
    )
    fields.update(overrides)
    return Problem(**fields)


def test_evaluate_scores_a_hand_checked_plan() -> None:
    problem = simple_problem()
    result = evaluate(problem, ["face", "car"])
    assert result.active == {"face", "car"}
    assert result.per_model == {"face": 1.0, "car": 1.0, "pose": 0.9}
    assert result.objective == pytest.approx(2.9 / 3)
    assert result.cost == {"memory_mb": 2110.0, "ms": 22.0}
    assert result.feasible and result.violations == ()


def test_evaluate_reports_why_a_plan_is_infeasible() -> None:
    problem = simple_problem(pinned={"car"}, excluded={"pose"})
    result = evaluate(problem, ["face", "pose"])
    assert not result.feasible
    text = " ".join(result.violations)
    assert "memory_mb=2900" in text and "budget memory_mb=2200" in text
    assert "pinned model 'car'" in text and "excluded model 'pose'" in text
    assert result.objective == pytest.approx((1 + 1 + 0.1) / 3)


def test_evaluate_empty_plan_uses_priors_and_costs_nothing() -> None:
    problem = simple_problem(ensemble_costs={"pose": {"memory_mb": 10}}, min_active=0)
    result = evaluate(problem, [])
    assert result.cost == {"memory_mb": 0.0, "ms": 0.0}
    assert result.objective == pytest.approx(0.1)
    assert result.feasible
    assert not evaluate(simple_problem(), []).feasible  # min_active=1 by default


def test_link_cost_sums_active_sources_plus_ensemble_overhead() -> None:
    problem = simple_problem()
    assert problem.link_cost(frozenset({"face", "car"}), "pose") == {"memory_mb": 10.0, "ms": 1.5}
    assert problem.link_cost(frozenset(), "pose") == {"memory_mb": 0.0, "ms": 0.0}
    with pytest.raises(ValueError, match="is active"):
        problem.link_cost(frozenset({"pose"}), "pose")


@SETTINGS
@given(problems(max_n=7), st.data())
def test_evaluate_matches_reference(problem: Problem, data: st.DataObject) -> None:
    active = frozenset(data.draw(st.sets(st.sampled_from(problem.models))))
    result = evaluate(problem, active)
    expected = manual_cost(problem, active)
    assert result.cost.keys() == expected.keys()
    for r in expected:
        assert result.cost[r] == pytest.approx(expected[r], abs=1e-9)
    assert result.objective == pytest.approx(manual_objective(problem, active), abs=1e-12)
    assert result.feasible == (structurally_valid(problem, active) and fits(problem, expected))


# -- exact search --------------------------------------------------------------------------------


def check_exact(problem: Problem, assume_monotone: bool) -> None:
    best = brute_force(problem)
    if best is None:
        with pytest.raises(InfeasibleBudget):
            select_exact(problem, assume_monotone=assume_monotone)
        return
    result = select_exact(problem, assume_monotone=assume_monotone)
    assert_valid(problem, result)
    assert result.objective == pytest.approx(best[1], abs=1e-9)


@SETTINGS
@given(problems(monotone=True, max_n=10))
def test_exact_matches_brute_force_with_monotone_bound(problem: Problem) -> None:
    check_exact(problem, assume_monotone=True)


@SETTINGS
@given(problems(monotone=False, max_n=8))
def test_exact_matches_brute_force_for_non_monotone_oracles(problem: Problem) -> None:
    check_exact(problem, assume_monotone=False)


def test_exact_finds_a_superset_that_is_cheaper_than_its_subsets() -> None:
    # Synthesizing "b" from "a" costs more than running "b", so {a} is over budget and {a, b}
    # fits. A search that assumed supersets cost more would prune the only feasible plans.
    problem = Problem(
        models=["a", "b", "c"],
        costs={"a": {"ms": 5}, "b": {"ms": 1}, "c": {"ms": 50}},
        link_costs={("a", "b"): {"ms": 20}, ("b", "a"): {"ms": 20}},
        budget={"ms": 10},
        agreement=lambda active, target: 0.5 if active else 0.0,
    )
    assert evaluate(problem, ["a"]).feasible is False
    assert evaluate(problem, ["b"]).feasible is False
    for solver in (select_exact, select_paper_greedy, select_greedy_lookahead):
        result = solver(problem)
        assert result.active == {"a", "b"}
        assert result.objective == pytest.approx(2.5 / 3)
    assert cheapest_feasible_budget(problem) == {"ms": 6.0}


def test_exact_handles_sixteen_models() -> None:
    problem = build(7, 16, links="small", tight=0.35)
    exact = select_exact(problem)
    assert_valid(problem, exact)
    assert select_greedy_lookahead(problem).objective <= exact.objective + 1e-12
    assert select(problem).objective == pytest.approx(exact.objective, abs=1e-12)


def test_exact_refuses_too_many_free_models() -> None:
    problem = build(1, 26, links="none")
    with pytest.raises(ValueError, match="max_free=24"):
        select_exact(problem)


# -- heuristics ----------------------------------------------------------------------------------


@SETTINGS
@given(problems(monotone=True, max_n=9))
def test_heuristics_are_feasible_and_never_beat_exact(problem: Problem) -> None:
    best = brute_force(problem)
    solvers = (select_paper_greedy, select_greedy_lookahead)
    if best is None:
        for solver in solvers:
            with pytest.raises(InfeasibleBudget):
                solver(problem)
        return
    greedy = select_paper_greedy(problem)
    lookahead = select_greedy_lookahead(problem)
    for result in (greedy, lookahead):
        assert_valid(problem, result)
        assert result.objective <= best[1] + 1e-9
    assert lookahead.objective >= greedy.objective - 1e-12


@SETTINGS
@given(problems(monotone=False, max_n=7))
def test_heuristics_stay_feasible_for_non_monotone_oracles(problem: Problem) -> None:
    if brute_force(problem) is None:
        return
    for result in (select_paper_greedy(problem), select_greedy_lookahead(problem, depth=3)):
        assert_valid(problem, result)


def test_lookahead_closes_most_of_the_paper_greedy_gap() -> None:
    greedy_gap, lookahead_gap, strictly_better = [], [], 0
    for seed in range(120):
        problem = build(
            seed,
            8 + seed % 3,
            n_res=1 + seed % 2,
            links=("small", "none", "big")[seed % 3],
            tight=0.15 + 0.5 * random.Random(seed).random(),
        )
        try:
            optimum = select_exact(problem).objective
        except InfeasibleBudget:
            continue
        greedy = select_paper_greedy(problem).objective
        lookahead = select_greedy_lookahead(problem).objective
        greedy_gap.append(optimum - greedy)
        lookahead_gap.append(optimum - lookahead)
        strictly_better += lookahead > greedy + 1e-9
    assert len(greedy_gap) > 80
    mean_greedy = sum(greedy_gap) / len(greedy_gap)
    mean_lookahead = sum(lookahead_gap) / len(lookahead_gap)
    assert mean_lookahead < 0.5 * mean_greedy
    assert strictly_better >= 10


def test_lookahead_rejects_bad_parameters() -> None:
    problem = simple_problem()
    with pytest.raises(ValueError, match="depth"):
        select_greedy_lookahead(problem, depth=0)
    with pytest.raises(ValueError, match="pool_size"):
        select_greedy_lookahead(problem, pool_size=0)


def test_lookahead_scales_to_sixty_models() -> None:
    problem = build(3, 60, links="small", tight=0.3)
    lookahead = select_greedy_lookahead(problem)
    assert_valid(problem, lookahead)
    assert lookahead.objective >= select_paper_greedy(problem).objective - 1e-12
    assert select(problem).active == lookahead.active  # auto uses the heuristic past 16 free


# -- pins, exclusions, min_active ----------------------------------------------------------------


@pytest.mark.parametrize("method", ["exact", "lookahead", "greedy"])
def test_pinned_and_excluded_models_are_respected(method: str) -> None:
    problem = build(11, 9, tight=0.5, n_pinned=2, n_excluded=3)
    result = select(problem, method)
    assert problem.pinned <= result.active
    assert not result.active & problem.excluded
    assert_valid(problem, result)


def test_pinning_the_best_model_out_changes_the_plan() -> None:
    problem = simple_problem()
    assert select(problem).active == {"face", "car"}
    excluded = simple_problem(excluded={"car"})
    assert select(excluded).active == {"face"}


@pytest.mark.parametrize("method", ["exact", "lookahead", "greedy"])
def test_min_active_forces_additions_even_without_gain(method: str) -> None:
    problem = Problem(
        models=["a", "b", "c"],
        costs={m: {"ms": 1} for m in "abc"},
        budget={"ms": 10},
        agreement=lambda active, target: 1.0,  # synthesis is perfect, running adds nothing
        min_active=2,
    )
    result = select(problem, method)
    assert len(result.active) >= 2
    assert result.objective == pytest.approx(1.0)


# -- infeasible budgets --------------------------------------------------------------------------


def test_infeasible_budget_names_the_cheapest_plan() -> None:
    problem = Problem(
        models=["face", "car"],
        costs={"face": {"memory_mb": 900}, "car": {"memory_mb": 1200}},
        budget={"memory_mb": 500},
        agreement=lambda active, target: 0.5,
    )
    for method in ("exact", "lookahead", "greedy"):
        with pytest.raises(InfeasibleBudget) as info:
            select(problem, method)
        error = info.value
        assert isinstance(error, ValueError)
        assert error.cheapest_budget == {"memory_mb": 900.0}
        assert error.plan == {"face"}
        message = str(error)
        assert "budget memory_mb=500" in message
        assert "memory_mb=900 with active={'face'}" in message
        assert "raise the budget to at least memory_mb=900" in message


def test_infeasible_budget_accounts_for_pins_and_several_resources() -> None:
    problem = Problem(
        models=["face", "car", "pose"],
        costs={
            "face": {"memory_mb": 900, "ms": 30},
            "car": {"memory_mb": 600, "ms": 5},
            "pose": {"memory_mb": 100, "ms": 1},
        },
        budget={"memory_mb": 650, "ms": 20},
        agreement=lambda active, target: 0.5,
        pinned={"car"},
        min_active=2,
    )
    with pytest.raises(InfeasibleBudget) as info:
        select(problem)
    assert info.value.plan == {"car", "pose"}
    assert info.value.cheapest_budget == {"memory_mb": 700.0, "ms": 6.0}
    assert cheapest_feasible_budget(problem) == {"memory_mb": 700.0, "ms": 6.0}
    # Only memory must grow; the suggestion never lowers a resource that already suffices.
    assert "raise the budget to at least memory_mb=700, ms=20 or pin fewer" in str(info.value)
    assert "pinned={'car'}, min_active=2" in str(info.value)


@SETTINGS
@given(problems(monotone=True, max_n=8))
def test_cheapest_feasible_budget_matches_brute_force(problem: Problem) -> None:
    cheapest = cheapest_feasible_budget(problem)
    assert cheapest.keys() == problem.budget.keys()
    ratios = {active: ratio(problem, active) for active in all_plans(problem)}
    best = min(ratios.values())
    assert max(cheapest[r] / b for r, b in problem.budget.items()) == pytest.approx(best, abs=1e-9)
    # The reported cost belongs to a real plan.
    assert any(
        all(math.isclose(manual_cost(problem, a)[r], cheapest[r], abs_tol=1e-9) for r in cheapest)
        for a, value in ratios.items()
        if value == pytest.approx(best, abs=1e-9)
    )
    if best > 1 + 1e-6:
        with pytest.raises(InfeasibleBudget) as info:
            select(problem)
        assert info.value.cheapest_budget == pytest.approx(cheapest)


def test_cheapest_feasible_budget_is_empty_when_nothing_is_bounded() -> None:
    assert cheapest_feasible_budget(simple_problem(budget={})) == {}
    assert select(simple_problem(budget={})).active == {"face", "car", "pose"}


# -- validation ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "error", "match"),
    [
        ({"models": []}, ValueError, "models is empty"),
        ({"models": "face"}, TypeError, "list or tuple"),
        ({"models": ["face", "car", "face"]}, ValueError, r"\['face'\] more than once"),
        ({"costs": {"face": {"ms": 1}, "car": {"ms": 1}}}, ValueError, r"no entry for .*'pose'"),
        (
            {"costs": {"face": {}, "car": {}, "pose": {}, "ocr": {"ms": 1}}},
            ValueError,
            r"costs names unknown models \['ocr'\]",
        ),
        (
            {"costs": {"face": {"ms": -1}, "car": {}, "pose": {}}},
            ValueError,
            r"costs\['face'\]\['ms'\] = -1",
        ),
        (
            {"costs": {"face": {"ms": math.nan}, "car": {}, "pose": {}}},
            ValueError,
            "finite",
        ),
        ({"costs": {"face": {"ms": "1"}, "car": {}, "pose": {}}}, TypeError, "must be a number"),
        ({"link_costs": {("face", "ocr"): {"ms": 1}}}, ValueError, r"unknown models \['ocr'\]"),
        ({"link_costs": {("face", "face"): {"ms": 1}}}, ValueError, "to itself"),
        ({"link_costs": {"face": {"ms": 1}}}, ValueError, "pairs"),
        ({"link_costs": {("face", "car"): {"ms": -0.5}}}, ValueError, ">= 0"),
        ({"ensemble_costs": {"ocr": {"ms": 1}}}, ValueError, "ensemble_costs names unknown"),
        ({"budget": {"gpu_mb": 100}}, ValueError, "budget names resource 'gpu_mb'"),
        ({"budget": {"ms": 0}}, ValueError, "budgets must be finite and > 0"),
        ({"budget": {"ms": math.inf}}, ValueError, "omit a resource"),
        ({"pinned": {"ocr"}}, ValueError, r"pinned names unknown models \['ocr'\]"),
        ({"excluded": {"ocr"}}, ValueError, r"excluded names unknown"),
        ({"pinned": "face"}, TypeError, "not the string"),
        ({"pinned": {"face"}, "excluded": {"face"}}, ValueError, "both pinned and excluded"),
        ({"min_active": -1}, ValueError, "min_active = -1"),
        ({"min_active": 3, "excluded": {"pose"}}, ValueError, "only 2 models are not excluded"),
        ({"agreement": 0.5}, TypeError, "agreement must be callable"),
    ],
)
def test_problem_validation_errors(overrides: dict, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        simple_problem(**overrides)


def test_problem_copies_its_inputs() -> None:
    costs = {"face": {"ms": 1.0}, "car": {"ms": 2.0}, "pose": {"ms": 3.0}}
    problem = simple_problem(costs=costs, budget={"ms": 4})
    costs["face"]["ms"] = 100.0
    assert problem.costs["face"]["ms"] == 1.0
    assert problem.models == ("face", "car", "pose")


def test_unknown_active_model_and_method_are_rejected() -> None:
    problem = simple_problem()
    with pytest.raises(ValueError, match=r"active names unknown models \['ocr'\]"):
        evaluate(problem, ["face", "ocr"])
    with pytest.raises(ValueError, match="unknown method 'fast'"):
        select(problem, "fast")  # type: ignore[arg-type]


def test_oracle_out_of_range_is_reported() -> None:
    problem = simple_problem(agreement=lambda active, target: 1.5)
    with pytest.raises(ValueError, match=r"returned 1.5 for target '.*'.*\[0, 1\]"):
        select(problem)
    nan_problem = simple_problem(agreement=lambda active, target: math.nan)
    with pytest.raises(ValueError, match="returned nan"):
        evaluate(nan_problem, ["face"])


def test_oracle_calls_are_memoised() -> None:
    calls: dict[tuple[frozenset[str], str], int] = {}
    base = build(5, 12, tight=0.4)

    def counting(active: frozenset[str], target: str) -> float:
        calls[(active, target)] = calls.get((active, target), 0) + 1
        return base.agreement(active, target)

    problem = Problem(
        models=base.models,
        costs=base.costs,
        budget=base.budget,
        agreement=counting,
        link_costs=base.link_costs,
    )
    select_exact(problem)
    assert calls and max(calls.values()) == 1


@given(problems(monotone=False, max_n=7), st.data())
@SETTINGS
def test_targets_within_a_bound_are_floors_of_the_best_set(
    problem: Problem, data: st.DataObject
) -> None:
    """With a compute bound, a target is a floor: the best objective within the bound among
    the sets that meet it (stop 45: the cheapest such set left another model at 26%)."""
    from mlink.linkstore.targets import select_for_targets

    model = data.draw(st.sampled_from(list(problem.models)))
    target = data.draw(st.floats(0.05, 0.95))
    sizes = range(max(1, problem.min_active), len(problem.models) + 1)
    meeting = [
        plan
        for k in sizes
        for combo in combinations(problem.models, k)
        if (plan := evaluate(problem, combo)).feasible and plan.per_model[model] >= target
    ]
    if not meeting:
        with pytest.raises(InfeasibleBudget, match="accuracy targets"):
            select_for_targets(problem, {model: target})
        return
    chosen = select_for_targets(problem, {model: target})
    assert chosen.feasible and chosen.per_model[model] >= target - 1e-12
    assert chosen.objective == pytest.approx(max(p.objective for p in meeting), abs=1e-12)
