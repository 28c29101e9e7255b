"""Retraining on a live worker: every retrain makes a new link version, announced and planned
from, and the trainer deletes all but the newest ``keep_versions`` so a long-running pipeline's
store stops growing. Real worker, real broker."""

from __future__ import annotations

import time

import pytest

from mlink.deploy.source import FrameProducer
from mlink.linkstore.store import LinkStore
from tests.test_pipeline_e2e import (
    FAST_MODELS,
    one_worker,
    send_frames,
    wait_results,
    wait_until,
    write_config,
)

pytestmark = pytest.mark.broker


def test_retrains_make_new_versions_and_old_ones_are_deleted(broker, tmp_path) -> None:
    path, config = write_config(
        tmp_path,
        "retrain",
        FAST_MODELS,
        partitions=1,
        warmup_frames=8,
        output_timeout_s=5.0,
        links={"retrain_every": 3, "keep_versions": 1, "probe_every": 2, "epochs": 5},
    )
    names = config.topics.names()
    store = LinkStore(config.links.store)
    worker, collector = one_worker(broker.bootstrap, path, config, tmp_path)
    sent: list[str] = []
    try:
        worker.wait_ready()
        with FrameProducer(broker.bootstrap, names.frames) as producer:
            sent += send_frames(producer, ["cam-a", "cam-b"], range(0, 4))  # the warm-up
            wait_until("links v1", lambda: "trained links v1 " in worker.log(), 90, worker)
            deadline = time.monotonic() + 150
            seq = 4
            while "trained links v3 " not in worker.log() and time.monotonic() < deadline:
                sent += send_frames(producer, ["cam-a", "cam-b"], range(seq, seq + 2))
                seq += 2
                time.sleep(0.5)
        wait_until("links v3", lambda: "trained links v3 " in worker.log(), 60, worker)
        wait_until("a deletion", lambda: "deleted link versions" in worker.log(), 60, worker)
        wait_results(collector, set(sent), 90, [worker])
    finally:
        collector.close()
        worker.stop()
    kept = [v.version for v in store.versions()]
    assert len(kept) == 1 and kept[0] >= 3, kept  # the newest (also the current one)
    assert len(collector.results) == len(set(sent))  # every frame answered, none lost
