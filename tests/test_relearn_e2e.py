"""A link store wiped under a running pipeline, or replaced by one holding other weights under
the same version number: the controller notices the version in force is
gone, runs every model, and the trainer learns links again, numbered above the lost ones; the
controller plans from them and no frame goes unanswered. Real worker, real broker."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

from bench.faults import replace_with_another_v1
from mlink.deploy.runner import read_control
from mlink.deploy.source import FrameProducer
from mlink.linkstore.store import LinkStore
from mlink.operators.relearn import RELEARN_KEY
from tests.test_pipeline_e2e import (
    FAST_MODELS,
    active_sets,
    one_worker,
    send_frames,
    wait_for_epoch,
    wait_results,
    write_config,
)

pytestmark = pytest.mark.broker

STREAMS = ["cam-a", "cam-b"]


@pytest.mark.parametrize("fault", ["wiped", "replaced"])
def test_a_lost_store_is_learned_again_above_the_lost_versions(broker, tmp_path, fault) -> None:
    path, config = write_config(
        tmp_path,
        "relearn",
        FAST_MODELS,
        partitions=1,
        warmup_frames=8,
        output_timeout_s=5.0,
        links={"relearn_after_s": 3.0, "probe_every": 2, "epochs": 5},
    )
    names = config.topics.names()
    worker, collector = one_worker(broker.bootstrap, path, config, tmp_path)
    sent: list[str] = []
    try:
        worker.wait_ready()
        with FrameProducer(broker.bootstrap, names.frames) as producer:
            sent += send_frames(producer, STREAMS, range(0, 4))  # the warm-up
            wait_for_epoch(worker, 1, timeout=120)  # planned from v1
            if fault == "wiped":  # e.g. a container restarted without its volume
                shutil.rmtree(config.links.store)
            else:
                replace_with_another_v1(Path(config.links.store))
            deadline, seq = time.monotonic() + 150, 4
            while "trained links v2 " not in worker.log() and time.monotonic() < deadline:
                sent += send_frames(producer, STREAMS, range(seq, seq + 2))
                seq += 2
                time.sleep(0.5)
            wait_for_epoch(worker, 3, timeout=90)  # 2: every model runs; 3: planned from v2
            sent += send_frames(producer, STREAMS, range(seq, seq + 6))
        wait_results(collector, set(sent), 90, [worker])
    finally:
        collector.close()
        worker.stop()
    state, messages = read_control(broker.bootstrap, config)
    plans = active_sets(messages)
    relearn = plans[2]
    assert relearn.link_version is None and relearn.extra[RELEARN_KEY] == 1
    assert set(relearn.active) == set(config.model_names)
    reason = relearn.extra["replan_reason"]
    assert "link version 1 has been missing or damaged in the link store" in reason
    assert plans[1].extra["link_sha256"] != LinkStore(config.links.store).load(2).meta.sha256
    assert plans[3].link_version == 2 and state.link_version == 2
    assert LinkStore(config.links.store).holds(2)
    assert len(collector.results) == len(set(sent))  # every frame answered, once
    under_relearn = [r for r in collector.results.values() if r.epoch == 2]
    assert under_relearn and all(
        {x.model for x in r.results if x.status == "executed"} == set(config.model_names)
        for r in under_relearn
    )
    assert "learning the links again" in worker.log()
