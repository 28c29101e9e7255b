"""Retraining on a live worker: every retrain makes a new link version, announced and planned
from, and the trainer deletes all but the newest ``keep_versions`` so a long-running pipeline's
store stops growing. Real worker, real broker."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from mlink.deploy.config import PipelineConfig
from mlink.deploy.source import FrameProducer
from mlink.linkstore.store import LinkStore
from tests.conftest import FaustWorker
from tests.test_pipeline_e2e import (
    FAST_MODELS,
    one_worker,
    send_frames,
    wait_results,
    wait_until,
    write_config,
)

pytestmark = pytest.mark.broker


def retraining_config(tmp_path, name: str, **links: object) -> tuple[Path, PipelineConfig]:
    """A config whose worker retrains every 3 probe frames and keeps 1 version (and the ones
    in force and pinned); ``links``: more link settings."""
    return write_config(
        tmp_path,
        name,
        FAST_MODELS,
        partitions=1,
        warmup_frames=8,
        output_timeout_s=5.0,
        links={"retrain_every": 3, "keep_versions": 1, "probe_every": 2, "epochs": 5, **links},
    )


def retrain_to_v3(producer: FrameProducer, worker: FaustWorker, seq: int) -> list[str]:
    """Send probe-laden frames from ``seq`` on until the worker has trained v3 and deleted an
    old version; return their ids."""
    sent: list[str] = []
    deadline = time.monotonic() + 150
    while "trained links v3 " not in worker.log() and time.monotonic() < deadline:
        sent += send_frames(producer, ["cam-a", "cam-b"], range(seq, seq + 2))
        seq += 2
        time.sleep(0.5)
    wait_until("links v3", lambda: "trained links v3 " in worker.log(), 60, worker)
    wait_until("a deletion", lambda: "deleted link versions" in worker.log(), 60, worker)
    return sent


def test_retrains_make_new_versions_and_old_ones_are_deleted(broker, tmp_path) -> None:
    path, config = retraining_config(tmp_path, "retrain")
    names = config.topics.names()
    store = LinkStore(config.links.store)
    worker, collector = one_worker(broker.bootstrap, path, config, tmp_path)
    sent: list[str] = []
    try:
        worker.wait_ready()
        with FrameProducer(broker.bootstrap, names.frames) as producer:
            sent += send_frames(producer, ["cam-a", "cam-b"], range(0, 4))  # the warm-up
            wait_until("links v1", lambda: "trained links v1 " in worker.log(), 90, worker)
            sent += retrain_to_v3(producer, worker, 4)
        wait_results(collector, set(sent), 90, [worker])
    finally:
        collector.close()
        worker.stop()
    kept = [v.version for v in store.versions()]
    # the newest (also the current one), and the one in force when the last prune ran if the
    # controller had not planned from the newest yet: never delete links under the workers
    assert 1 <= len(kept) <= 2 and kept[-1] >= 3, kept
    assert len(collector.results) == len(set(sent))  # every frame answered, none lost
