"""`mlink run --no-compare`: the summary says what ran per model and survives --json."""

from __future__ import annotations

import json

import numpy as np
from rich.console import Console

from mlink.deploy.runner import RunReport
from mlink.eval.run import json_safe, print_summary, uncompared_summary
from mlink.topics.records import FrameResult, ModelResult


def frame(seq: int, degraded: bool) -> FrameResult:
    out = np.zeros(1, np.float32)
    a = (
        ModelResult(model="a", output=out, status="synthesized", link_version=1, sources=("b",))
        if seq
        else ModelResult(model="a", output=np.zeros(0, np.float32), status="missing")
    )
    results = (ModelResult(model="b", output=out, status="executed"), a)
    return FrameResult(
        frame_id=f"cam:{seq}",
        stream_id="cam",
        seq=seq,
        epoch=1,
        results=results,
        degraded=degraded,
        emitted_at=1.0,
    )


def test_no_compare_summary_counts_models_and_prints_as_json_and_table() -> None:
    results = {f"cam:{s}": frame(s, degraded=s == 0) for s in range(3)}
    report = RunReport(frames=3, results=results, received_at={}, seconds=1.0, duplicates=2)
    summary = uncompared_summary(report)
    assert summary["status"] == {"b": {"executed": 3}, "a": {"missing": 1, "synthesized": 2}}
    assert summary["degraded"] == 1 and summary["duplicates"] == 2
    json.dumps(json_safe(summary), allow_nan=False)  # --json printed a traceback: tuple keys
    console = Console(width=100, record=True)
    print_summary(summary, console)
    text = console.export_text()
    assert "degraded 1" in text and "duplicate results dropped 2" in text
    row = next(line for line in text.splitlines() if line.strip().startswith("a "))
    assert row.split()[1:4] == ["0", "2", "1"]


def test_agent_crashes_of_every_worker_reach_the_summary(tmp_path) -> None:
    from mlink.deploy.health import HealthFile, agent_crashes_in
    from mlink.operators.wiring import agent_crashes

    first = HealthFile(tmp_path / "worker-0.health.json", "worker-0")
    first.update(extra={"agent_crashes": agent_crashes({"agent_crashes:controller": 3, "x": 9})})
    again = HealthFile(tmp_path / "worker-0.1.health.json", "worker-0.1")  # its restart
    again.update(extra={"agent_crashes": {"controller": 2, "trainer": 1, "planner": 0}})
    (tmp_path / "worker-1.health.json").write_text("{not json")  # half a file counts nothing
    HealthFile(tmp_path / "worker-2.health.json", "worker-2")  # an older worker: no counts
    crashes = agent_crashes_in(sorted(tmp_path.glob("*.health.json")))
    assert crashes == {"controller": 5, "trainer": 1}
    report = RunReport(frames=1, results={"cam:1": frame(1, False)}, received_at={}, seconds=1.0)
    summary = uncompared_summary(report) | {"agent_crashes": crashes}
    console = Console(width=120, record=True)
    print_summary(summary, console)
    assert "restarted by faust: controller 5x, trainer 1x" in console.export_text()
