"""A source sent again (`mlink produce` twice, a camera that restarts its counter) repeats its
frame ids in new records: those are new frames and get results; only a redelivered record (the
same Kafka position) is skipped. Real worker, real broker."""

from __future__ import annotations

import pytest

from mlink.deploy.runner import ResultCollector
from mlink.deploy.source import FrameProducer
from mlink.deploy.topics_setup import create_pipeline_topics
from tests.conftest import FaustWorker
from tests.test_pipeline_e2e import (
    APP,
    FAST_MODELS,
    send_frames,
    wait_results,
    worker_env,
    write_config,
)

pytestmark = pytest.mark.broker


def test_frame_ids_sent_again_in_new_records_get_results_again(broker, tmp_path) -> None:
    path, config = write_config(
        tmp_path, "rerun", FAST_MODELS, partitions=1, warmup_frames=8, output_timeout_s=5.0
    )
    names = config.topics.names()
    create_pipeline_topics(config, broker.bootstrap)
    env = worker_env(path, broker.bootstrap, tmp_path / "faust")
    worker = FaustWorker(APP, env, tmp_path / "w.log", "w0")
    try:
        worker.wait_ready()
        for run in range(2):
            collector = ResultCollector(broker.bootstrap, names.results, only_new=True)
            try:
                with FrameProducer(broker.bootstrap, names.frames) as producer:
                    ids = send_frames(producer, ["cam-a", "cam-b"], range(0, 6))
                wait_results(collector, set(ids), 90, [worker])
            finally:
                collector.close()
            assert set(collector.results) == set(ids), f"run {run}"
    finally:
        worker.stop()
