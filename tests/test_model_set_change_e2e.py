"""A deployment whose config gains a model, then loses one, restarted each time on the same
topics and link store: the controller finds the links in force were trained for other models,
runs every model (saying why), the trainer learns links for the config's models, and every
frame is answered once; a changed declared cost alone is planned for with the same links.
Before, an added model was left ``missing`` with no error on every
frame it did not run and `mlink budget` dead-lettered a KeyError; after a removed one the
pipeline stayed in warm-up for good. Real worker, real broker."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from mlink.deploy.runner import ResultCollector
from mlink.deploy.source import FrameProducer
from mlink.deploy.topics_setup import create_pipeline_topics
from mlink.eval.workloads import digits
from mlink.operators.relearn import RELEARN_KEY
from mlink.topics.codec import decode_record
from mlink.topics.records import ControlMessage
from tests.conftest import FaustWorker
from tests.test_pipeline_e2e import (
    APP,
    COSTS,
    FAST_MODELS,
    read_topic,
    send_frames,
    wait_for_epoch,
    wait_results,
    worker_env,
    write_config,
)

pytestmark = pytest.mark.broker

STREAMS = ["cam-a", "cam-b"]
ADDED = "digit_svc"
REMOVED = "value_gbr"


def _model(name: str) -> dict[str, Any]:
    return {
        "name": name,
        "factory": "mlink.eval.workloads.digits:model",
        "args": {"name": name},
        "output": digits.MODELS[name].spec.to_dict(),
        "batch": True,
        "cost": {"ms": COSTS[name]},
    }


def _edit(path: Path, models: list[str]) -> None:
    data = yaml.safe_load(path.read_text())
    data["models"] = [_model(m) for m in models]
    path.write_text(yaml.safe_dump(data))


def _plans(messages: list[ControlMessage]) -> list[ControlMessage]:
    return [m for m in messages if m.kind == "active_set"]


def test_a_config_that_gains_and_then_loses_a_model_learns_its_links_again(
    broker, tmp_path
) -> None:
    path, config = write_config(
        tmp_path,
        "models",
        FAST_MODELS,
        partitions=1,
        warmup_frames=8,
        output_timeout_s=5.0,
        links={"probe_every": 4, "epochs": 5, "relearn_after_s": 0},
    )
    names = config.topics.names()
    create_pipeline_topics(config, broker.bootstrap)
    collector = ResultCollector(broker.bootstrap, names.results)
    sent: list[str] = []
    seq = 0

    def run(tag: str, epochs: int) -> FaustWorker:
        """A worker on the config as it is now, until it has planned ``epochs``."""
        nonlocal seq
        worker = FaustWorker(
            APP,
            worker_env(path, broker.bootstrap, tmp_path / "faust"),
            tmp_path / f"{tag}.log",
            tag,
        )
        try:
            worker.wait_ready()
            deadline = time.monotonic() + 180
            with FrameProducer(broker.bootstrap, names.frames) as producer:
                while f"now at epoch {epochs}:" not in worker.log():
                    assert time.monotonic() < deadline, worker.log_tail()
                    sent.extend(send_frames(producer, STREAMS, range(seq, seq + 2)))
                    seq += 2
                    time.sleep(0.5)
                wait_for_epoch(worker, epochs)
                sent.extend(send_frames(producer, STREAMS, range(seq, seq + 4)))
                seq += 4
            wait_results(collector, set(sent), 90, [worker])
        finally:
            worker.stop()
        return worker

    try:
        run("first", 1)  # warm-up, then planned from v1 (3 models)
        _edit(path, [*FAST_MODELS, ADDED])
        grown = run("grown", 3)  # 2: every model runs; 3: planned from v2 (4 models)
        _edit(path, [m for m in (*FAST_MODELS, ADDED) if m != REMOVED])
        shrunk = run("shrunk", 5)  # 4: every model runs; 5: planned from v3 (3 models)
        data = yaml.safe_load(path.read_text())
        data["models"][0]["cost"]["ms"] = 30.0  # a declared cost alone: the links stay
        path.write_text(yaml.safe_dump(data))
        repriced = data["models"][0]["name"]
        run("priced", 6)  # 6: planned from v3 again, on the new cost
    finally:
        collector.close()

    records = read_topic(broker.bootstrap, names.control)  # every plan, also the refused ones
    plans = {m.epoch: m for m in _plans([decode_record(r.value, ControlMessage) for r in records])}
    assert sorted(plans) == [1, 2, 3, 4, 5, 6]  # one epoch never names two plans
    for relearn, version, change in (
        (2, 1, f"this config has {ADDED}, which the links do not cover"),
        (4, 2, f"the links cover {REMOVED}, which this config does not have"),
    ):
        plan = plans[relearn]
        assert plan.link_version is None and plan.extra[RELEARN_KEY] == version
        reason = plan.extra["replan_reason"]
        assert f"link version {version} was trained for other models than this config's" in reason
        assert change in reason
    assert plans[3].link_version == 2 and ADDED in plans[3].extra["predicted"]
    assert plans[5].link_version == 3 and REMOVED not in plans[5].extra["predicted"]
    assert plans[6].link_version == 3 and plans[6].extra["model_ms"][repriced] == 30.0
    assert "declares other model costs" in plans[6].extra["replan_reason"]
    assert "learning the links again" in grown.log() and "learning the links again" in shrunk.log()
    # the relearn plan ends the warm-up hold of the plans it replaced: before, the 8 samples of
    # the refused plans' warm-up were in, the frames paused, and nothing trained for 60 s
    assert "no links after" not in shrunk.log()

    assert len(collector.results) == len(set(sent))  # every frame answered, once
    for result in collector.results.values():  # none left missing, even in the few seconds
        statuses = {r.model: r.status for r in result.results}  # before a relearn plan: the
        assert "missing" not in statuses.values(), result  # old links' frames run every model
