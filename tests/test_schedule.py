"""Schedules: which models run on which frame of a stream, as a pure function of (seq, plan)."""

from __future__ import annotations

import json
import math
import tracemalloc

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from mlink.linkstore.schedule import (
    MAX_PERIOD,
    MAX_PROBE_EVERY,
    Mode,
    Schedule,
    is_probe,
    lag_histogram,
    run_share,
)
from mlink.linkstore.streamplan import DEFAULT_PERIODS
from mlink.operators.settings import LinkSettings


def test_a_model_runs_on_the_frames_its_period_and_phase_name_and_on_every_probe():
    s = Schedule({"a": 1, "b": 3, "c": 0}, phases={"b": 2}, probe_every=10)
    assert s.runs(0) == {"a", "b", "c"}  # a probe
    assert s.runs(0, probes=False) == {"a"}
    assert s.runs(1) == {"a"}
    assert s.runs(2) == {"a", "b"}
    assert s.runs(5) == {"a", "b"}
    assert s.always == {"a"}
    assert [q for q in range(30) if "c" in s.runs(q)] == [0, 10, 20]


def test_with_a_stride_every_block_has_one_probe_at_every_offset_in_turn():
    every, stride = 8, 3
    probes = [q for q in range(every * every) if is_probe(q, every, stride)]
    assert len(probes) == every
    assert sorted(q % every for q in probes) == list(range(every))
    assert [q // every for q in probes] == list(range(every))
    assert not is_probe(5, 0)


@pytest.mark.parametrize("period,phase", [(0, 0), (1, 0), (3, 1), (4, 0), (5, 4), (6, 5)])
@pytest.mark.parametrize("probe_every,stride", [(0, 0), (4, 0), (8, 0), (8, 3)])
def test_lag_histogram_matches_a_simulated_stream(period, phase, probe_every, stride):
    hist = lag_histogram(period, phase, probe_every, stride)
    s = Schedule({"m": period}, phases={"m": phase}, probe_every=probe_every, probe_stride=stride)
    runs = [q for q in range(2000) if "m" in s.runs(q)]
    if not runs:
        assert hist == () and run_share(period, phase, probe_every, stride) == 0.0
        return
    n = sum(hist)
    start = runs[-1] - 2 * n  # a steady stretch of whole cycles
    start -= start % n
    counts: dict[int, int] = {}
    last = max(r for r in runs if r < start) if any(r < start for r in runs) else None
    for q in range(start, start + n):
        if q in set(runs):
            last = q
        counts[q - last] = counts.get(q - last, 0) + 1
    assert hist == tuple(counts.get(d, 0) for d in range(len(hist)))
    assert math.isclose(run_share(period, phase, probe_every, stride), hist[0] / n)
    assert math.isclose(s.share("m"), hist[0] / n)


def test_a_schedule_round_trips_through_a_control_message_extra():
    s = Schedule(
        {"a": 1, "b": 4, "c": 0},
        phases={"b": 3},
        modes={"b": Mode("track", "a"), "c": Mode("switch", "a", 0.5)},
        probe_every=16,
        probe_stride=7,
    )
    extra = json.loads(json.dumps({"schedule": s.to_extra()}))
    assert Schedule.from_extra(extra, models=["a", "b", "c"]) == s
    assert s.mode("a") == Mode("reuse")
    # in words, as mlink status shows the schedule in force
    assert [s.describe(m) for m in s.models] == [
        "always runs",
        "every 4 (phase 3), track(a)",
        "probes only, switch(a, 0.5)",
    ]


def test_bad_schedules_are_rejected_with_the_reason():
    with pytest.raises(ValueError, match="phase of 'b'"):
        Schedule({"b": 3}, phases={"b": 3})
    with pytest.raises(ValueError, match="period of 'b'"):
        Schedule({"b": -1})
    with pytest.raises(ValueError, match="without a period"):
        Schedule({"a": 1}, modes={"x": Mode("reuse")})
    with pytest.raises(ValueError, match="needs unknown models"):
        Schedule({"a": 2}, modes={"a": Mode("follow", "z")})
    with pytest.raises(ValueError, match="periods"):
        Schedule.from_extra({"schedule": {"phases": {}}})
    with pytest.raises(ValueError, match="pipeline's models"):
        Schedule.from_extra({"periods": {"a": 1}}, models=["a", "b"])


def test_modes_say_what_they_need():
    assert Mode("follow", "a").requires == {"a"} and Mode("follow", "a").uses_memory
    assert not Mode("head", "a").uses_memory and Mode("prior").requires == frozenset()
    assert Mode("switch", "a", 0.5).key() == "switch(a, 0.5)"
    assert Mode.from_json("reuse") == Mode("reuse")
    with pytest.raises(ValueError, match="needs a source"):
        Mode("head")
    with pytest.raises(ValueError, match="takes no"):
        Mode("reuse", "a")
    with pytest.raises(ValueError, match="unknown"):
        Mode("magic")


@pytest.mark.parametrize(
    "schedule,field",
    [
        ({"periods": {"a": 20000}, "probe_every": 49, "probe_stride": 3}, "period of 'a'"),
        ({"periods": {"a": 10**6}, "probe_every": 20}, "period of 'a'"),
        ({"periods": {"a": 2}, "probe_every": 10**6}, "probe_every"),
        ({"periods": {"a": 2}, "probe_every": 20, "probe_stride": 10**9}, "probe_stride"),
    ],
)
def test_a_schedule_past_the_caps_is_refused_before_it_is_priced(schedule, field):
    """Review: periods {a: 20000} with probe_every 49 and stride 3 cost one agreement message
    27 s and 4 GB (the cycle laid out was 2 * lcm(20000, 49 * 49) frames); near 1e6, tens of
    GB. Refused on reading, naming the field and its cap."""
    cap = MAX_PROBE_EVERY if field.startswith("probe") else MAX_PERIOD
    with pytest.raises(ValueError, match=rf"{field} must be an int in \[0, {cap}\]"):
        Schedule.from_extra({"schedule": schedule})


def test_what_the_planner_plans_is_within_the_caps():
    assert max(DEFAULT_PERIODS) <= MAX_PERIOD
    assert LinkSettings().probe_every <= MAX_PROBE_EVERY
    Schedule({"a": MAX_PERIOD}, probe_every=MAX_PROBE_EVERY, probe_stride=MAX_PROBE_EVERY)


def test_a_schedule_at_the_caps_is_priced_without_laying_out_its_cycle():
    """At the caps the joint cycle is up to 2.56e10 frames: pricing counts it per residue, so
    what it builds stays small (measured as memory, not time)."""
    s = Schedule(
        {"a": MAX_PERIOD, "b": MAX_PERIOD - 1, "c": 0, "d": 1},
        phases={"a": MAX_PERIOD - 1, "b": 7},
        probe_every=MAX_PROBE_EVERY,
        probe_stride=3,
    )
    lag_histogram.cache_clear()
    tracemalloc.start()
    try:
        shares = {m: s.share(m) for m in s.models}
        hist = lag_histogram(MAX_PERIOD, MAX_PERIOD - 1, MAX_PROBE_EVERY, 3)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 16 * 2**20
    cycle = math.lcm(MAX_PERIOD, MAX_PROBE_EVERY**2)  # stride 3: every offset in turn
    assert sum(hist) == cycle and len(hist) <= MAX_PERIOD
    assert shares["a"] == pytest.approx(hist[0] / cycle)
    assert shares["c"] == pytest.approx(1 / MAX_PROBE_EVERY) and shares["d"] == 1.0


def laid_out_histogram(period: int, phase: int, probe_every: int, stride: int) -> tuple:
    """The histogram as it used to be computed: two whole cycles laid out frame by frame."""
    blocks = probe_every // math.gcd(stride, probe_every) if stride else 1
    probes = probe_every * blocks
    n = math.lcm(period, probes) if period and probes else max(period, probes, 1)
    seq = np.arange(2 * n)
    runs = np.zeros(2 * n, dtype=bool)
    if period > 0:
        runs |= seq % period == phase
    if probe_every > 0:
        runs |= seq % probe_every == seq // probe_every * stride % probe_every
    if not runs.any():
        return ()
    last = np.maximum.accumulate(np.where(runs, seq, -1))[n:]
    return tuple(int(c) for c in np.bincount(seq[n:] - last))


@given(st.integers(0, 24), st.integers(0, 10**6), st.integers(0, 24), st.integers(0, 60))
def test_counting_the_cycle_per_residue_agrees_with_laying_it_out(period, phase, every, stride):
    phase %= max(period, 1)
    hist = laid_out_histogram(period, phase, every, stride)
    assert lag_histogram(period, phase, every, stride) == hist
    share = hist[0] / sum(hist) if hist else 0.0
    assert math.isclose(run_share(period, phase, every, stride), share)
