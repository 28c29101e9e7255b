"""Retraining on a live worker: every retrain makes a new link version, announced and planned
from, and the trainer deletes all but the newest ``keep_versions`` so a long-running pipeline's
store stops growing. Real worker, real broker."""

from __future__ import annotations

import re
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


@pytest.mark.parametrize("in_child", [True, False], ids=["child", "thread"])
def test_retrains_make_new_versions_and_old_ones_are_deleted(broker, tmp_path, in_child) -> None:
    path, config = retraining_config(tmp_path, "retrain", train_in_child=in_child)
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
        # a training on a thread is not stopped with the worker: its version would stay
        wait_until("no training under way", lambda: trainings(worker.log())[1], 120, worker)
    finally:
        collector.close()
        worker.stop()
    kept = [v.version for v in store.versions()]
    # the newest (also the current one), and the one in force when the last prune ran if the
    # controller had not planned from the newest yet: never delete links under the workers
    assert 1 <= len(kept) <= 2 and kept[-1] >= 3, kept
    assert len(collector.results) == len(set(sent))  # every frame answered, none lost


def test_probes_that_come_during_a_training_are_read_at_once_and_trained_on_together(
    broker, tmp_path
) -> None:
    """A burst of 20 probe frames after the warm-up, retraining every 3: the trainer agent
    used to wait out each training before reading the next sample, so it trained 7 times, 3
    samples more each time, and read (and scored live) the last probes a few trainings late.
    It reads them as they come now and trains on all it has when a training ends: 2 or 3 more
    versions, the last on every sample."""
    path, config = retraining_config(tmp_path, "burst", epochs=60)
    worker, collector = one_worker(broker.bootstrap, path, config, tmp_path)
    sent: list[str] = []
    try:
        worker.wait_ready()
        with FrameProducer(broker.bootstrap, config.topics.names().frames) as producer:
            sent += send_frames(producer, ["cam-a", "cam-b"], range(0, 4))  # the warm-up: 8
            wait_until("links v1", lambda: "trained links v1 " in worker.log(), 120, worker)
            sent += send_frames(producer, ["cam-a", "cam-b"], range(4, 24))  # 20 probes
        wait_results(collector, set(sent), 120, [worker])
        wait_until(
            "a training on all 28", lambda: "links on 28 samples" in worker.log(), 120, worker
        )
        wait_until("no training under way", lambda: trainings(worker.log())[1], 120, worker)
    finally:
        collector.close()
        worker.stop()
    sizes, _ = trainings(worker.log())
    assert sizes[0] == 8 and sizes[-1] == 28 and len(sizes) <= 4, sizes


def trainings(log: str) -> tuple[list[int], bool]:
    """The sample counts the worker trained on, and whether every training it began ended."""
    began = re.findall(r"training links on (\d+) samples", log)
    ended = re.findall(r"trained links v\d+ on (\d+) samples", log)
    return [int(n) for n in ended], len(began) == len(ended)
