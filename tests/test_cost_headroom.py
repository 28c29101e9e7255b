"""A budget plan's room for a small rise in model costs, on a constructed instance."""

from __future__ import annotations

import msgpack
import pytest

from mlink.linkstore.cost_headroom import Fragile, cost_headroom
from mlink.linkstore.streamplan import plan_for_budget
from mlink.operators.stream_decision import fragile_reason
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
