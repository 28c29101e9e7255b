"""bench/pipeline.py prices a burst on each model's solo timings (pure, no broker)."""

from __future__ import annotations

import numpy as np
import pytest

from bench.pipeline import executed_frames, numbered, solo_saved
from mlink.topics.records import FrameResult, ModelResult


def _result(i: int, ran: list[str], synthesized: list[str]) -> FrameResult:
    rows = [
        ModelResult(model=m, output=np.zeros(1, np.float32), status="executed", elapsed_ms=99.0)
        for m in ran
    ]
    rows += [
        ModelResult(model=m, output=np.zeros(1, np.float32), status="synthesized", sources=("a",))
        for m in synthesized
    ]
    return FrameResult(
        frame_id=f"s:{i}",
        stream_id="s",
        seq=i,
        epoch=1,
        results=tuple(rows),
        degraded=False,
        emitted_at=0.0,
    )


def test_a_burst_is_priced_on_solo_timings_not_its_own():
    results = [_result(0, ["a", "b"], []), _result(1, ["a"], ["b"])]
    run = {"results": 2, "executed_frames": executed_frames(results)}
    assert run["executed_frames"] == {"a": 2, "b": 1}
    # a costs 10 ms alone, b 30: the burst spent 10 + 40 of 2 x 40 ms
    assert solo_saved(run, {"a": 10.0, "b": 30.0}) == pytest.approx(1 - 50 / 80)


def test_frames_are_numbered_per_stream():
    frames = [("x", 1), ("y", 2), ("x", 3), ("x", 4), ("y", 5)]
    assert [(s, q) for s, q, _ in numbered(frames)] == [
        ("x", 0),
        ("y", 0),
        ("x", 1),
        ("x", 2),
        ("y", 1),
    ]
