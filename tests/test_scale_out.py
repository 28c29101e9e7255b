"""Shared-nothing scale-out on the real broker: two workers that share no directory keep their
link versions in an S3-compatible object store (moto on loopback), and a runtime budget set with
`mlink budget` survives the loss of the worker that runs the controller."""

from __future__ import annotations

import time
from typing import Any

import pytest

from mlink.deploy.runner import ResultCollector, publish_control, read_control, set_budget
from mlink.deploy.source import FrameProducer
from mlink.deploy.topics_setup import create_pipeline_topics
from mlink.linkstore.store import LinkStore
from mlink.topics.records import ControlMessage
from tests.test_pipeline_e2e import (
    APP,
    FAST_MODELS,
    active_sets,
    send_frames,
    streams_covering,
    wait_results,
    wait_until,
    write_config,
)

pytestmark = pytest.mark.broker


def test_object_store_links_and_a_budget_that_survives_controller_failover(
    broker: Any, faust_worker: Any, s3: Any, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    bucket = s3.new_bucket("links")
    path, config = write_config(
        tmp_path, "s3", FAST_MODELS, partitions=4, warmup_frames=24, output_timeout_s=10.0
    )
    store_url = f"s3://{bucket}/pipeline"
    data = config.model_dump(mode="json")
    data["links"]["store"] = store_url
    import yaml

    path.write_text(yaml.safe_dump(data))
    names = config.topics.names()
    create_pipeline_topics(config, broker.bootstrap)
    env = {"MLINK_CONFIG": str(path), "MLINK_BROKER": broker.bootstrap, **s3.env}
    # no shared directory: each worker has its own faust data dir, links live only in S3
    workers = [
        faust_worker(APP, {**env, "F_DATADIR": str(tmp_path / f"w{i}")}, f"w{i}") for i in range(2)
    ]
    collector = ResultCollector(broker.bootstrap, names.results)
    streams = streams_covering(4)
    try:
        for w in workers:
            w.wait_ready(120)
        wait_until(
            "both workers own frames partitions",
            lambda: all(w.assigned_partitions(names.frames) for w in workers),
            60,
            workers[0],
        )
        with FrameProducer(broker.bootstrap, names.frames) as producer:
            warm = send_frames(producer, streams, range(0, 8))
            wait_until(
                "links",
                lambda: read_control(broker.bootstrap, config)[0].epoch >= 1,
                120,
                workers[0],
            )
            set_budget(broker.bootstrap, config, {"fraction": 0.9})
            wait_until(
                "budget epoch",
                lambda: read_control(broker.bootstrap, config)[0].epoch >= 2,
                60,
                workers[0],
            )
            before = send_frames(producer, streams, range(8, 16))
            wait_results(collector, set(warm + before), 90, workers)

            owner = next(w for w in workers if 0 in w.assigned_partitions(names.control))
            survivor = next(w for w in workers if w is not owner)
            assert owner.kill() == -9
            wait_until(
                "the survivor runs the controller",
                lambda: 0 in survivor.assigned_partitions(names.control),
                90,
                survivor,
            )
            # a new link version (as a retrain saves and announces it: here a copy of the one
            # in force) makes the new controller decide: it must use the runtime budget from
            # the control log, not the config's 0.3
            monkeypatch.setenv("AWS_ENDPOINT_URL", s3.endpoint)
            for key, value in s3.env.items():
                monkeypatch.setenv(key, value)
            state, _ = read_control(broker.bootstrap, config)
            store = LinkStore(store_url)
            in_force = store.load(state.link_version)
            copy = store.save(in_force.tensors, in_force.meta.meta)
            publish_control(
                broker.bootstrap,
                config,
                ControlMessage(
                    kind="link_version",
                    epoch=state.epoch,
                    issued_at=time.time(),
                    link_version=copy,
                ),
            )
            wait_until(
                "a decision after failover",
                lambda: read_control(broker.bootstrap, config)[0].epoch >= 3,
                90,
                survivor,
            )
            after = send_frames(producer, streams, range(16, 24))
        wait_results(collector, set(after), 90, [survivor])

        _, control = read_control(broker.bootstrap, config)
        sets = active_sets(control)
        assert sets[1].budget == {"fraction": 0.3}  # the config's
        assert sets[2].budget == sets[3].budget == {"fraction": 0.9}
        assert sets[3].active == sets[2].active and len(sets[3].active) > 1
        # every frame got a result; synthesized ones came from versions only S3 holds
        assert set(warm + before + after) <= collector.results.keys()
        versions = {v.version for v in LinkStore(store_url).versions()}
        used = {
            r.link_version
            for f in before + after
            for r in collector.results[f].results
            if r.status == "synthesized"
        }
        assert used and used <= versions
        assert not [p for p in tmp_path.rglob("*") if p.name in ("CURRENT.json", "MANIFEST.json")]
    finally:
        collector.close()
