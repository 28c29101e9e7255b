"""A worker stopped (SIGTERM) while a batch of frames is in its models must not commit them:
faust's ``take_events`` acks a batch when its generator closes, also when a stop cut the batch
short, so those frames were never answered (a helper's rollout audit, stop 45: 9 frames in 3 of
14 stops, no result, no dead letter, no log line). Real broker and workers."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from mlink.deploy.source import FrameProducer
from tests.conftest import FaustWorker
from tests.test_pipeline_e2e import (
    APP,
    FAST_MODELS,
    one_worker,
    send_frames,
    wait_results,
    worker_env,
    write_config,
)

SLOW = {
    "name": "slow",
    "factory": "tests.misbehaving_models:slow_calls",
    "args": {"seconds": 1.5},  # a batch of 8 frames takes 12 s
    "output": {"kind": "vector", "size": 2, "task": "softmax"},
    "cost": {"ms": 1500.0},
}


def test_frames_in_a_batch_cut_short_by_a_stop_are_answered_by_the_next_worker(
    broker: Any, tmp_path: Path
) -> None:
    path, config = write_config(
        tmp_path,
        "midbatch",
        FAST_MODELS,
        partitions=1,
        warmup_frames=1000,  # every frame runs every model, the slow one too
        output_timeout_s=5.0,
        extra_models=[SLOW],
    )
    first, collector = one_worker(broker.bootstrap, path, config, tmp_path)
    second = None
    try:
        first.wait_ready()
        with FrameProducer(broker.bootstrap, config.topics.names().frames) as producer:
            ids = send_frames(producer, ["cam0"], range(8))
        time.sleep(5.0)  # the batch is in the slow model: 12 s of it
        first.stop()  # SIGTERM, mid-batch
        answered = set(ids) & collector.results.keys()
        env = worker_env(path, broker.bootstrap, tmp_path / "faust-2")
        second = FaustWorker(APP, env, tmp_path / "w2.log", "w2")
        second.wait_ready()
        wait_results(collector, set(ids), 180, [second])  # every frame, once the next one runs
        print(f"\n{len(answered)} of {len(ids)} answered before the stop")
    finally:
        collector.close()
        first.stop()
        if second is not None:
            second.stop()
