"""A worker that refused the pipeline's newest plan is not warming up: it must not hold its
frames back for links. A rolling restart onto a config with other models stalled the new
workers' cameras 60 s at a time (a helper's audit), for links their group's controller, on the
old config, would never train for them. No broker: the hold's decision only."""

from __future__ import annotations

import asyncio
import logging
from types import SimpleNamespace

import pytest

from mlink.operators import LinkSettings, MLink, Model, Settings
from mlink.operators.control_operators import ControlLog, _replay_one, refuses_newest_plan
from mlink.operators.frame_operator import FrameBatch
from mlink.topics.codec import encode_record
from mlink.topics.records import ControlMessage
from mlink.topics.specs import VectorSpec


@pytest.fixture
def mlink(tmp_path):
    models = [Model(name=n, fn=lambda f: f, spec=VectorSpec(size=1, task="linear")) for n in "ab"]
    links = LinkSettings(store=str(tmp_path), warmup_frames=8, hold_s=60)
    runtime = MLink(Settings(name="r", budget={"fraction": 0.5}, links=links), models)
    runtime.control_log = ControlLog()
    try:
        yield runtime
    finally:
        runtime.close()


def plan_for(models: tuple[str, ...], epoch: int) -> SimpleNamespace:
    message = ControlMessage(
        kind="active_set", epoch=epoch, issued_at=1.0, active=models, budget={"fraction": 0.5}
    )
    return SimpleNamespace(topic="r.control", key=b"k", value=encode_record(message), headers=[])


class Thread:
    """The Kafka client's thread as :func:`_fetching` reaches it; this worker has no frames
    partitions to pause."""

    def _ensure_consumer(self) -> None:
        return None

    async def call_thread(self, *_: object) -> None:
        return None


def operator(mlink: MLink) -> FrameBatch:
    consumer = SimpleNamespace(assignment=lambda: set(), _thread=Thread())
    op = FrameBatch(mlink, dead=None, app=SimpleNamespace(consumer=consumer), topics={"f"})
    op.warmup_planned = 8  # its warm-up is planned: the hold would start now
    return op


def test_a_worker_that_refused_the_newest_plan_runs_every_model_without_holding(mlink, caplog):
    assert _replay_one(mlink, plan_for(("a", "gone_from_this_config"), 1)) is not None
    assert mlink.state.warming_up and refuses_newest_plan(mlink)

    async def hold() -> FrameBatch:
        op = operator(mlink)
        with caplog.at_level(logging.WARNING, logger="mlink.worker"):
            op.hold_for_links()
            op.hold_for_links()  # said once per refused plan
        return op

    op = asyncio.run(hold())
    assert not op.holding and op.releaser is None
    said = [
        r.getMessage() for r in caplog.records if "refused the pipeline's newest" in r.getMessage()
    ]
    assert len(said) == 1 and "epoch 1" in said[0] and "same config" in said[0]
    assert set(mlink.plan(0).active) == {"a", "b"}  # every model: no link version


def test_a_worker_with_no_plan_yet_still_holds_for_its_first_links(mlink):
    assert not refuses_newest_plan(mlink)

    async def hold() -> bool:
        op = operator(mlink)
        op.hold_for_links()
        holding = op.holding
        op.releaser.cancel()
        return holding

    assert asyncio.run(hold())


def test_a_hold_under_way_ends_when_the_worker_refuses_a_plan(mlink):
    async def hold() -> bool:
        op = operator(mlink)
        op.hold_for_links()
        assert op.holding
        _replay_one(mlink, plan_for(("gone_from_this_config",), 1))
        await asyncio.wait_for(op.releaser, 5)  # not hold_s (60 s)
        return op.holding

    assert asyncio.run(hold()) is False


def test_a_plan_refused_for_a_model_change_names_the_models(mlink):
    """It named only the first check it failed: "content table counts 6 run and 1
    synthesized models; this pipeline has 6" (the re-audit)."""
    message = ControlMessage(
        kind="active_set",
        epoch=1,
        issued_at=1.0,
        active=("a",),
        budget={"fraction": 0.5},
        extra={"model_ms": {"a": 1.0, "b": 1.0, "gone": 2.0}, "content": {"detectors": []}},
    )
    record = SimpleNamespace(topic="r.control", key=b"k", value=encode_record(message), headers=[])
    reason = _replay_one(mlink, record)
    assert reason is not None and "content table" in reason
    assert (
        "planned for other models than this config's: the plan names gone, which this config "
        "does not have" in reason
    )
