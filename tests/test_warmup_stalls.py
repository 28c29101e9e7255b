"""A model that fails on every frame keeps the warm-up from ending (links are trained only from
frames on which every model ran), and nothing said so: 80 of 80 frames ran every model, and
`mlink status` said "warming up" (a new user's audit, stop 45). The worker log and `mlink
status` now name the model and its error. Real broker and worker; the tallies without."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

from mlink.deploy.model_failures import failure_report
from mlink.deploy.pipeline_status import status
from mlink.deploy.source import FrameProducer
from mlink.deploy.status_view import render_status
from mlink.operators.warmup_failures import WarmupFailures
from mlink.topics.records import FrameResult, ModelResult
from tests.test_pipeline_e2e import (
    FAST_MODELS,
    one_worker,
    send_frames,
    wait_results,
    write_config,
)

BROKEN = {
    "name": "broken",
    "factory": "tests.misbehaving_models:misbehaving",
    "args": {"fault": "raise"},  # on every frame
    "output": {"kind": "vector", "size": 2, "task": "softmax"},
    "cost": {"ms": 5.0},
}


def result(i: int, **status: str) -> FrameResult:
    rows = tuple(
        ModelResult(
            model=m,
            status=s,  # type: ignore[arg-type]
            output=np.ones(2, np.float32) if s == "executed" else np.zeros(2, np.float32),
            error=None if s == "executed" else f"{m} raised on {i}",
        )
        for m, s in status.items()
    )
    degraded = any(s != "executed" for s in status.values())
    return FrameResult(
        frame_id=f"c:{i}",
        stream_id="c",
        seq=i,
        epoch=0,
        results=rows,
        degraded=degraded,
        emitted_at=1.0,
        probe=True,
    )


def test_the_tallies_name_the_model_that_failed() -> None:
    results = [result(i, a="executed", b="missing") for i in range(3)]
    results.append(result(3, a="missing", b="missing"))  # an undecodable frame: nobody's fault
    report = failure_report(results)
    assert report["results"] == 4
    assert report["models"] == {"b": {"failed": 3, "of": 3, "last_error": "b raised on 2"}}

    now = [0.0]
    tally = WarmupFailures(say_every_s=30.0, clock=lambda: now[0])
    assert not tally.say(0, 8)  # nothing failed: nothing to say
    tally.add(results)
    assert tally.frames == 4 and tally.failed == {"b": 3}
    assert tally.say(0, 8) and not tally.say(0, 8)  # at most every 30 s
    now[0] = 31.0
    assert tally.say(0, 8)
    tally.clear()
    assert tally.frames == 0 and not tally.failed


def test_a_model_that_always_fails_is_named_as_what_holds_the_warmup(
    broker: Any, tmp_path: Path
) -> None:
    path, config = write_config(
        tmp_path,
        "broken",
        FAST_MODELS,
        partitions=1,
        warmup_frames=8,
        output_timeout_s=5.0,
        extra_models=[BROKEN],
    )
    worker, collector = one_worker(broker.bootstrap, path, config, tmp_path)
    try:
        worker.wait_ready()
        with FrameProducer(broker.bootstrap, config.topics.names().frames) as producer:
            ids = send_frames(producer, ["cam0"], range(20))
        wait_results(collector, set(ids), 120, [worker])
        said = " ".join(worker.log().split())
        assert "0 of the 8 frames needed were training samples" in said, worker.log_tail()
        assert "broken on" in said and "cannot handle frame" in said

        seen = status(broker.bootstrap, config)
        assert seen["active"] == "all (warming up)"  # it cannot end
        broken = seen["model_failures"]["models"]["broken"]
        assert broken["failed"] == broken["of"] == 20, seen["model_failures"]
        assert set(seen["model_failures"]["models"]) == {"broken"}
        out = io.StringIO()
        render_status(seen, Console(file=out, width=200))
        shown = " ".join(out.getvalue().split())
        assert "the warm-up cannot end while broken fails" in shown, shown
    finally:
        collector.close()
        worker.stop()
