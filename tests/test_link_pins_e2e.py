"""`mlink links` on a live, retraining worker: a pinned version is planned from whatever newer
versions the trainer saves, pruning keeps it, unpinning follows the newest again, and
`--rollback` pins the version before the one in force, and a pin on a version the store
deleted before the trainer heard of the pin ends by itself. Real worker, real broker."""

from __future__ import annotations

import json
import time

import pytest
from typer.testing import CliRunner

from mlink.deploy.cli import app
from mlink.deploy.link_pins import pin_message
from mlink.deploy.runner import publish_control, read_control
from mlink.deploy.source import FrameProducer
from mlink.linkstore.store import LinkStore
from tests.test_pipeline_e2e import one_worker, send_frames, wait_results, wait_until
from tests.test_retrain_e2e import retrain_to_v3, retraining_config

pytestmark = pytest.mark.broker


def test_a_pinned_version_holds_through_retrains_until_unpinned(broker, tmp_path) -> None:
    path, config = retraining_config(tmp_path, "pins", relearn_after_s=6.0)
    names = config.topics.names()
    store = LinkStore(config.links.store)
    worker, collector = one_worker(broker.bootstrap, path, config, tmp_path)
    cli = CliRunner()

    def mlink(*args: str) -> str:
        result = cli.invoke(app, [*args, str(path), "--broker", broker.bootstrap])
        assert result.exit_code == 0, result.output
        return result.output

    def in_force() -> tuple[int | None, int | None]:
        state, _ = read_control(broker.bootstrap, config)
        return state.link_version, state.pinned_links

    def newest_unpinned(at_least: int) -> bool:
        """Planned, unpinned, from the newest version announced (a retrain may have come)."""
        state, _ = read_control(broker.bootstrap, config)
        version = state.link_version
        return state.pinned_links is None and version == state.latest_links >= at_least

    seen: list[int | None] = []

    def settled() -> bool:
        """The newest version announced is the same as 3 s ago."""
        state, _ = read_control(broker.bootstrap, config)
        seen.append(state.latest_links)
        time.sleep(3)
        return len(seen) > 1 and seen[-1] == seen[-2]

    sent: list[str] = []
    try:
        worker.wait_ready()
        with FrameProducer(broker.bootstrap, names.frames) as producer:
            sent += send_frames(producer, ["cam-a", "cam-b"], range(0, 4))  # the warm-up
            wait_until("links v1", lambda: in_force()[0] == 1, 120, worker)
            assert "pinned v1" in mlink("links", "--pin", "1")
            wait_until("the pin", lambda: in_force() == (1, 1), 60, worker)
            sent += retrain_to_v3(producer, worker, 4)
            wait_results(collector, set(sent), 90, [worker])  # and so the last retrains
            wait_until("no more retrains", settled, 60, worker)
            assert in_force() == (1, 1)  # still planned from the pinned version
            held = [v.version for v in store.versions()]
            assert 1 in held and max(held) >= 3, held  # pruning kept the pinned version
            listing = mlink("links")
            assert "in force, pinned" in listing, listing
            status = json.loads(mlink("status", "--json"))
            assert status["pinned_links"] == 1 and status["latest_links"] == max(held), status
            assert "unpinned v1" in mlink("links", "--unpin")
            newest = max(held)
            wait_until("the newest again", lambda: in_force() == (newest, None), 60, worker)
            assert "pinned v1" in mlink("links", "--rollback")  # v1 is the one before it
            wait_until("the rollback", lambda: in_force() == (1, 1), 60, worker)
            # the race `mlink links --pin` cannot rule out: it checked the store, then the
            # trainer pruned the version before it heard of the pin
            gone = max(set(range(2, newest)) - {v.version for v in store.versions()})
            publish_control(broker.bootstrap, config, pin_message(gone, True))
            wait_until("the lost pin ends", lambda: newest_unpinned(newest), 90, worker)
            status = json.loads(mlink("status", "--json"))
            assert f"pinned version {gone}" in status["pin_ended"], status
            assert "pin ended" in mlink("status")
            sent += send_frames(producer, ["cam-a", "cam-b"], range(1000, 1002))
        wait_results(collector, set(sent), 90, [worker])
    finally:
        collector.close()
        worker.stop()
    assert len(collector.results) == len(set(sent))  # every frame answered once, none lost
