"""``bench/stream_ceiling.py``: a chosen plan's lower bound at another width (``--bounds``) and a
model's every option from the warm-up and from every frame (``--options``)."""

from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pytest

from bench.stream_ceiling import bound_at, option_rows, switch_rows
from mlink.eval.streaming.method import OFFLINE
from mlink.linkstore.streamoptions import option
from mlink.linkstore.streamplan import DEFAULT_PERIODS, plan_for_budget
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


def test_the_option_rows_set_each_warm_up_option_beside_the_same_option_from_every_frame() -> None:
    _, curves = small_instance()
    better = {m: [replace(c, agree=(1.0,) * len(c.agree)) for c in cs] for m, cs in curves.items()}
    pair = [SimpleNamespace(fits=[SimpleNamespace(curves=c)]) for c in (curves, better)]
    rows = option_rows(pair, "a", 10.0)  # type: ignore[arg-type]
    cells = [[x.strip() for x in row.strip("|").split("|")] for row in rows]
    # one row per mode and period the warm-up curve covers (reuse's reaches lag 3 only)
    covered = [
        (c.mode.key(), k)
        for c in curves["a"]
        for k in DEFAULT_PERIODS
        if option(c, k, 0, 10.0, OFFLINE.z, 0, OFFLINE.corr) is not None
    ]
    assert [(c[1], c[2]) for c in cells] == [(m, str(k or "probes only")) for m, k in covered]
    head = next(c for c in cells if c[1] == "head(c)" and c[2] == "probes only")
    want = option(curves["a"][2], 0, 0, 10.0, OFFLINE.z, 0, OFFLINE.corr)
    assert want is not None
    assert head[3:] == [f"{want.estimate:.1%}", f"{want.lower:.1%}", "100.0%", "0.1"]


def test_the_switch_rows_take_each_stream_from_one_plan_then_the_other() -> None:
    """Two streams of 4 frames, the first of each a warm-up: switching at 0 is the oracle run
    throughout, at 1 the warm-up run, at 1/2 each stream's frames 2-3 from the oracle."""
    streams = ["a"] * 4 + ["b"] * 4
    workload = SimpleNamespace(streams=streams, models=["m"], total_cost=lambda: 10.0)
    trained = SimpleNamespace(workload=workload, test_idx=[1, 2, 3, 5, 6, 7])
    warm = SimpleNamespace(
        per_frame={"m": np.zeros(6)}, cost_ms=np.full(6, 4.0), probe=np.zeros(6, dtype=bool)
    )
    oracle = SimpleNamespace(per_frame={"m": np.ones(6)}, cost_ms=np.full(6, 2.0))
    rows = switch_rows(trained, [warm, oracle], [0.0, 0.5, 1.0])  # type: ignore[arg-type,list-item]
    assert rows == ["| 0% | 100.0% | 80.0% |", "| 50% | 66.7% | 73.3% |", "| 100% | 0.0% | 60.0% |"]
