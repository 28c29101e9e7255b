"""A config-driven deployment changes its budget by editing the config and restarting: the
starting worker restates the config's budget and the controller plans for it; a plain restart
publishes nothing; a runtime budget no plan meets is refused with why and does not stick. Real
worker, real broker."""

from __future__ import annotations

import pytest
import yaml
from typer.testing import CliRunner

from mlink.deploy.cli import app
from mlink.deploy.pipeline_status import status
from mlink.deploy.runner import read_control
from mlink.deploy.source import FrameProducer
from mlink.deploy.topics_setup import create_pipeline_topics
from tests.conftest import FaustWorker
from tests.test_pipeline_e2e import (
    APP,
    FAST_MODELS,
    send_frames,
    wait_for_epoch,
    worker_env,
    write_config,
)

pytestmark = pytest.mark.broker


def test_an_edited_config_budget_takes_effect_on_restart(broker, tmp_path) -> None:
    path, config = write_config(
        tmp_path, "cfgbudget", FAST_MODELS, partitions=1, warmup_frames=8, output_timeout_s=5.0
    )
    names = config.topics.names()
    create_pipeline_topics(config, broker.bootstrap)

    def start(tag: str) -> FaustWorker:
        env = worker_env(path, broker.bootstrap, tmp_path / "faust")
        worker = FaustWorker(APP, env, tmp_path / f"{tag}.log", tag)
        worker.wait_ready()
        return worker

    worker = start("first")
    try:
        with FrameProducer(broker.bootstrap, names.frames) as producer:
            send_frames(producer, ["cam-a", "cam-b"], range(0, 4))  # the warm-up
        wait_for_epoch(worker, 1, timeout=120)
    finally:
        worker.stop()
    assert read_control(broker.bootstrap, config)[0].budget == {"fraction": 0.3}

    data = yaml.safe_load(path.read_text())
    data["budget"] = {"fraction": 0.9, "targets": {FAST_MODELS[0]: 0.5}}  # per model too
    path.write_text(yaml.safe_dump(data))
    worker = start("edited")
    try:
        wait_for_epoch(worker, 2, timeout=120)
        # a budget no plan meets: said by `mlink budget` and status, and it does not stick
        ask = ["budget", str(path), "--broker", broker.bootstrap, "--ms", "0.001", "--wait", "90"]
        refused = CliRunner().invoke(app, ask)
        assert refused.exit_code == 2 and "refused, the budget in force stays" in refused.output
    finally:
        worker.stop()
    state, _ = read_control(broker.bootstrap, config)
    assert state.budget == {"fraction": 0.9, f"target_agreement:{FAST_MODELS[0]}": 0.5}
    assert state.requested_budget == state.budget and state.budget_from_config
    report = status(broker.bootstrap, config)
    assert report["budget_set_by"] == "config"
    assert report["budget_refused"]["budget"] == {"ms": 0.001}
    assert "cheapest" in report["budget_refused"]["reason"]
    assert "restating it" in worker.log()

    again = start("plain-restart")  # the same config: nothing to restate
    again.stop()
    assert "restating it" not in again.log()
    assert read_control(broker.bootstrap, config)[0].epoch == state.epoch
