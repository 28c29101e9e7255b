"""Schedules: which models run on which frame of a stream, as a pure function of (seq, plan)."""

from __future__ import annotations

import json
import math

import pytest

from mlink.linkstore.schedule import Mode, Schedule, is_probe, lag_histogram, run_share


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
