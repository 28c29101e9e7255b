"""A rolling restart onto a config with one model fewer: while a worker on the old config
holds the controller, a worker on the new one refuses every plan it publishes. It must answer
its frames (every one of its models runs) rather than hold them back for links nobody will
train for it: it paused its partitions ``hold_s`` at a time, and its cameras' results came
30-95 s late (a helper's audit). Real workers, real broker."""

from __future__ import annotations

import time

import pytest
import yaml
from rich.console import Console

from mlink.deploy.config import load_config
from mlink.deploy.pipeline_status import status
from mlink.deploy.runner import ResultCollector
from mlink.deploy.source import FrameProducer
from mlink.deploy.status_view import render_status
from mlink.deploy.topics_setup import create_pipeline_topics
from tests.conftest import FaustWorker
from tests.test_pipeline_e2e import (
    APP,
    FAST_MODELS,
    send_frames,
    wait_for_epoch,
    wait_results,
    worker_env,
    write_config,
)

pytestmark = pytest.mark.broker

STREAMS = [f"cam-{i}" for i in range(6)]  # both frames partitions get some
HOLD_S = 300.0  # a held frame would wait this long: far past the wait for results below


def test_a_worker_on_the_new_config_answers_while_the_old_one_holds_the_controller(
    broker, tmp_path
) -> None:
    old_path, config = write_config(
        tmp_path,
        "rolling",
        FAST_MODELS,
        partitions=2,
        warmup_frames=8,
        output_timeout_s=5.0,
        links={"probe_every": 4, "epochs": 5, "hold_s": HOLD_S, "relearn_after_s": 0},
    )
    data = yaml.safe_load(old_path.read_text())
    data["models"] = data["models"][:-1]  # the same pipeline, topics and store; a model fewer
    new_path = tmp_path / "new.yaml"
    new_path.write_text(yaml.safe_dump(data))
    names = config.topics.names()
    create_pipeline_topics(config, broker.bootstrap)
    collector = ResultCollector(broker.bootstrap, names.results)
    workers: list[FaustWorker] = []

    def start(tag: str, path) -> FaustWorker:
        env = worker_env(path, broker.bootstrap, tmp_path / f"faust-{tag}")
        worker = FaustWorker(APP, env, tmp_path / f"{tag}.log", tag)
        workers.append(worker)
        worker.wait_ready()
        return worker

    try:
        old = start("old", old_path)
        sent: list[str] = []
        seq = 0
        with FrameProducer(broker.bootstrap, names.frames) as producer:
            deadline = time.monotonic() + 180
            while "now at epoch 1:" not in old.log():  # the old config's first plan
                assert time.monotonic() < deadline, old.log_tail()
                sent.extend(send_frames(producer, STREAMS, range(seq, seq + 1)))
                seq += 1
                time.sleep(0.3)
            wait_for_epoch(old, 1)
            new = start("new", new_path)  # the rollout's first worker; the old one keeps control
            deadline = time.monotonic() + 120
            while not new.assigned_partitions(names.frames):
                assert time.monotonic() < deadline, new.log_tail()
                time.sleep(0.5)
            mixed = []
            for _ in range(
                24
            ):  # well past the new worker's warm-up of 8 frames, at a camera's pace
                mixed.extend(send_frames(producer, STREAMS, range(seq, seq + 1)))
                seq += 1
                time.sleep(0.5)
        sent.extend(mixed)
        wait_results(collector, set(sent), 90, workers)  # held, they would take HOLD_S
        log = new.log()
        assert "refused the pipeline's newest plan (epoch 1" in log, new.log_tail()
        assert "waiting for the first links" not in log
        # the log's refused history in one line, not a line per message at every restart
        assert "control messages of the log this worker cannot apply" in log
        answered = [collector.results[f] for f in mixed]
        assert not any(r.degraded for r in answered)
        # what an operator sees: it said "epoch 0, all (warming up)" and nothing of the mix
        seen = status(broker.bootstrap, load_config(new_path))
        assert seen["refused_plans"]["epoch"] >= 1
        assert "content table" in seen["refused_plans"]["reason"]
        ours = seen["model_set"]
        assert (
            seen["workers"]["model_sets"].get(ours) == 1 and len(seen["workers"]["model_sets"]) == 2
        )
        console = Console(width=200, record=True)
        render_status(seen, console)
        text = console.export_text()
        assert "this config refuses the pipeline's newest plan" in text
        assert "workers on another config share the group" in text
    finally:
        collector.close()
        for worker in workers:
            worker.stop()
