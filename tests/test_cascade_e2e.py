"""A cascade on the real broker: with ``links.cascades`` the controller plans an expensive
detector to run only where a cheap one finds anything, and the worker runs it exactly there,
after the cheap one, on the same frame; everywhere else it is drawn from the cheap one's head."""

from __future__ import annotations

from typing import Any

import pytest
from rich.console import Console

from mlink.deploy.pipeline_status import status
from mlink.deploy.runner import ResultCollector, read_control
from mlink.deploy.source import FrameProducer
from mlink.deploy.status_view import render_status
from mlink.deploy.topics_setup import create_pipeline_topics
from mlink.linkstore.schedule import Schedule
from tests.test_pipeline_e2e import (
    APP,
    FAST_MODELS,
    dead_letters,
    executed,
    worker_env,
    write_config,
)
from tests.test_stream_e2e import warm_up_then_plan

pytestmark = pytest.mark.broker

BOXES = {"kind": "boxes", "max_boxes": 8}
CASCADE_MODELS = [
    {"name": n, "factory": "tests.cascade_models:ink", "args": {"name": n}, "output": BOXES,
     "cost": {"ms": ms}}
    for n, ms in (("ink", 1.0), ("ink_detail", 400.0))
]  # fmt: skip


def test_a_cascade_runs_its_model_only_where_the_source_fires(
    broker: Any, faust_worker: Any, tmp_path: Any
) -> None:
    path, config = write_config(
        tmp_path,
        "cascade",
        FAST_MODELS,
        partitions=2,
        warmup_frames=24,
        output_timeout_s=5.0,
        fraction=0.7,  # room for the cascade (about 60% of the frames), not for every frame
        links={"stream": True, "probe_stride": 3, "cascades": True},
        extra_models=CASCADE_MODELS,
    )
    create_pipeline_topics(config, broker.bootstrap)
    worker = faust_worker(APP, worker_env(path, broker.bootstrap, tmp_path / "faust"))
    collector = ResultCollector(broker.bootstrap, config.topics.names().results)
    try:
        worker.wait_ready()
        with FrameProducer(broker.bootstrap, config.topics.names().frames) as frames:
            planned = warm_up_then_plan(worker, collector, frames)
        _, control = read_control(broker.bootstrap, config)
        plan = next(m for m in control if m.kind == "active_set" and m.epoch == 1)
        schedule = Schedule.from_extra(plan.extra, config.model_names)
        assert schedule.mode("ink_detail").key() == "gate(ink)", plan.extra["plan"]
        assert schedule.periods["ink"] == 1
        fired = skipped = 0
        for frame_id in planned:
            result = collector.results[frame_id]
            assert not result.degraded, frame_id
            assert all(r.status != "missing" for r in result.results)
            if result.epoch != 1 or result.probe:
                continue
            outputs = {r.model: r.output for r in result.results}
            fires = len(outputs["ink"]) > 0
            expected = schedule.runs(result.seq) | ({"ink_detail"} if fires else set())
            assert set(executed(result)) == expected, frame_id
            fired += fires
            skipped += not fires
        assert fired and skipped, (fired, skipped)  # it ran on some frames and not on others
        assert collector.duplicates == 0
        assert not dead_letters(broker.bootstrap, config)
        report = status(broker.bootstrap, config)
        assert report["schedule"]["ink_detail"].endswith("where ink finds anything, head(ink)")
        console = Console(width=160, record=True)
        render_status(report, console)
        assert "where ink finds anything" in console.export_text()
    finally:
        collector.close()
