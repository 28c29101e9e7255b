"""``bench/stream_ceiling.py --bounds``: a chosen plan's lower bound at another width."""

from __future__ import annotations

import numpy as np
import pytest

from bench.stream_ceiling import bound_at
from mlink.linkstore.streamplan import plan_for_budget
from tests.test_stream_synthesis import small_instance


@pytest.mark.parametrize("budget", [6.0, 9.5])
def test_the_bound_at_the_planners_own_width_is_the_plans_and_wider_bounds_are_lower(budget):
    ms, curves = small_instance()
    plan = plan_for_budget(
        curves, ms, budget, periods=(0, 2, 3, 4), objective="lower", z=1.0, corr=4.0
    )
    assert any(c.period != 1 for c in plan.choices.values())  # something is synthesized
    own = bound_at(plan, curves, 1.0, corr=4.0)
    assert own == pytest.approx(float(np.mean(list(plan.lower().values()))))
    wider, narrower = bound_at(plan, curves, 1.645, corr=4.0), bound_at(plan, curves, 0.0)
    assert wider < own < narrower
    assert narrower == pytest.approx(plan.estimate)  # no width: the estimate itself
