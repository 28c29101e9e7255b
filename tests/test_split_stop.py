"""A worker of the split layout stopped (SIGTERM) while its planner holds a frame, waiting for a
credit, does not commit that frame: the next worker plans and answers it. faust's ``events()``,
which the planner, the trainer and the controller iterate, leaves an event a stop interrupted
uncommitted (``take_events`` did not: tests/test_stop_mid_batch.py). Real broker and workers."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from mlink.deploy.runner import ResultCollector
from mlink.deploy.source import FrameProducer
from mlink.deploy.topics_setup import create_pipeline_topics
from tests.test_pipeline_e2e import FAST_MODELS, send_frames, wait_results, worker_env, write_config
from tests.test_stop_mid_batch import SLOW

pytestmark = pytest.mark.broker
SPLIT_APP = "tests.faust_apps.split_app"


def test_a_frame_the_planner_holds_at_a_stop_is_answered_by_the_next_worker(
    broker: Any, faust_worker: Any, tmp_path: Path
) -> None:
    path, config = write_config(
        tmp_path,
        "splitstop",
        FAST_MODELS,
        partitions=1,
        warmup_frames=1000,  # every frame runs every model, the slow one (1.5 s) too
        output_timeout_s=30.0,
        extra_models=[SLOW],
        runtime={"max_in_flight": 1},  # the planner waits for a credit between frames
    )
    create_pipeline_topics(config, broker.bootstrap)
    collector = ResultCollector(broker.bootstrap, config.topics.names().results)
    env = worker_env(path, broker.bootstrap, tmp_path / "faust")
    first = faust_worker(SPLIT_APP, env, "first")
    try:
        first.wait_ready(timeout=180)
        with FrameProducer(broker.bootstrap, config.topics.names().frames) as producer:
            ids = send_frames(producer, ["cam0"], range(6))
        deadline = time.monotonic() + 120
        while not collector.results and time.monotonic() < deadline:
            time.sleep(0.2)
        assert collector.results, first.log_tail(40)  # one answered: the planner holds the next
        first.stop()
        answered = len(set(ids) & collector.results.keys())
        second = faust_worker(SPLIT_APP, env, "second")
        second.wait_ready(timeout=180)
        wait_results(collector, set(ids), 240, [second])
        print(f"\n{answered} of {len(ids)} answered before the stop")
    finally:
        collector.close()
