"""A budget plan's room for a small rise in model costs, on a constructed instance."""

from __future__ import annotations

import msgpack
import pytest

from mlink.linkstore.cost_headroom import Fragile, active_set_headroom, cost_headroom
from mlink.linkstore.selection import select
from mlink.linkstore.streamplan import plan_for_budget
from mlink.operators.stream_decision import fragile_reason
from tests.test_selection import simple_problem
from tests.test_stream_synthesis import small_instance

SEARCH = {"periods": (0, 2, 3, 4), "objective": "lower"}


def headroom(budget: float, **kw: float) -> Fragile | None:
    ms, curves = small_instance()
    plan = plan_for_budget(curves, ms, budget, **SEARCH)
    return cost_headroom(plan, curves, ms, budget, **kw, **SEARCH)


def test_a_plan_at_the_edge_of_its_budget_names_the_plan_a_cost_rise_would_switch_to():
    # 14 ms fits a and c on every frame and b on every frame (14.0 ms); 5% dearer, b drops to
    # every 2nd frame
    fragile = headroom(14.0, max_loss=0.0)
    assert fragile is not None and fragile.cost_rise == 0.05
    assert fragile.changes == {"b": "every 2 (phase 0), reuse"}
    assert fragile.lower_then is not None and fragile.lower_then < fragile.lower_now
    extra = msgpack.unpackb(msgpack.packb(fragile.to_extra()))  # travels on the control topic
    why = fragile_reason(extra)
    assert why == fragile_reason(fragile)
    assert why.startswith("model costs 5% higher would switch to a plan with mean lower bound")
    assert "b: every 2 (phase 0), reuse" in why


def test_a_plan_with_room_or_a_small_loss_is_not_fragile():
    assert headroom(13.0, max_loss=0.0) is None  # 13 / 1.05 still fits the 11 ms plan
    assert headroom(14.0, max_loss=0.02) is None  # loses 1.7 points: under a 2-point tolerance


def test_a_budget_that_a_rise_leaves_nothing_to_fit_says_so():
    ms, curves = small_instance()
    probing = {**SEARCH, "probe_every": 4}  # every 4th frame runs all three: 19 / 4 ms at least
    cheapest = plan_for_budget(curves, ms, 4.75, **probing)
    assert cheapest.feasible
    fragile = cost_headroom(cheapest, curves, ms, 4.75, **probing)
    assert fragile is not None and fragile.lower_then is None
    assert fragile_reason(fragile) == "model costs 5% higher would fit no plan in this budget"
    with pytest.raises(ValueError, match="cost rise"):
        cost_headroom(cheapest, curves, ms, 4.75, rise=0.0, **probing)


def exact(problem):
    return select(problem, "exact")


def test_an_active_set_at_the_edge_of_its_budget_names_the_set_a_cost_rise_would_switch_to():
    edge = simple_problem(budget={"ms": 22.0})  # face and car, 20.5 ms, and 1.5 ms of links
    plan = exact(edge)
    assert plan.active == {"face", "car"}
    fragile = active_set_headroom(edge, plan, exact)  # 5% dearer: face alone, 13.5 ms
    assert fragile is not None and fragile.changes == {"car": "synthesized"}
    assert fragile.lower_now == pytest.approx(2.9 / 3) and fragile.lower_then == pytest.approx(0.8)
    why = fragile_reason(msgpack.unpackb(msgpack.packb(fragile.to_extra())))
    assert why.startswith(
        "model costs 5% higher would switch to a plan with mean expected agreement 0.800 "
        "(now 0.967): car: synthesized."
    )
    roomy = simple_problem(budget={"ms": 24.0})
    assert active_set_headroom(roomy, exact(roomy), exact) is None
    memory = simple_problem()  # a memory budget alone: timings do not move it
    assert active_set_headroom(memory, exact(memory), exact) is None
    last = simple_problem(budget={"ms": 8.5})  # car alone fits; 5% dearer, nothing does
    fragile = active_set_headroom(last, exact(last), exact)
    assert fragile is not None and fragile.lower_then is None
    assert fragile_reason(fragile) == "model costs 5% higher would fit no plan in this budget"
    with pytest.raises(ValueError, match="cost rise"):
        active_set_headroom(last, exact(last), exact, rise=0.0)


def test_the_headroom_check_is_advisory_and_adds_the_fragile_extra_only_when_there_is_no_room():
    from mlink.operators.stream_decision import headroom_extra

    def broken() -> Fragile | None:
        raise RuntimeError("a bug in the check")

    assert headroom_extra(1, broken) == {}  # the plan stands, the failure is logged
    assert headroom_extra(1, lambda: None) == {}
    fragile = Fragile(0.05, 0.9, None, None, {}, "expected agreement")
    assert headroom_extra(1, lambda: fragile) == {"fragile": fragile.to_extra()}
