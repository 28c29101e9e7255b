"""Nothing a control message says may kill the control replay: faust stops the worker on any
exception out of an app task, and every worker replays the control topic from offset 0, so one
message that raises kills every worker on every restart. A malformed message is refused whole;
a failure after a message is applied is logged and the replay carries on. No broker needed."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator
from types import SimpleNamespace

import numpy as np
import pytest

from mlink.linkstore.content_forecast import ContentTable
from mlink.operators import LinkSettings, MLink, Model, Settings
from mlink.operators.control_operators import _apply, _replay_one
from mlink.operators.results import record_result
from mlink.topics.codec import encode_record
from mlink.topics.records import ControlMessage, FrameResult, ModelResult
from mlink.topics.specs import BoxesSpec, VectorSpec

TABLE = ContentTable(
    ("det",),
    1,
    {"a": 0.6, "b": 0.8},
    {"a": (1.0, 0.4, 0.6, 0.6), "b": (0.8, 0.8, 0.8, 0.8)},
    (True, True, False, False),
)


@pytest.fixture
def mlink(tmp_path) -> Iterator[MLink]:
    models = [Model(name="det", fn=lambda f: f, spec=BoxesSpec(max_boxes=2))] + [
        Model(name=n, fn=lambda f: f, spec=VectorSpec(size=1, task="linear")) for n in "ab"
    ]
    settings = Settings(name="h", budget={"fraction": 1}, links=LinkSettings(store=str(tmp_path)))
    runtime = MLink(settings, models)
    try:
        yield runtime
    finally:
        runtime.close()


def plan(epoch: int, **extra: object) -> ControlMessage:
    return ControlMessage(
        kind="active_set",
        epoch=epoch,
        issued_at=float(epoch),
        active=("det",),
        budget={"fraction": 0.5},
        extra={"objective": 0.8, "predicted": {"a": 0.6, "b": 0.8}, **extra},
    )


def record(message: ControlMessage) -> SimpleNamespace:
    """A control record as the replay's consumer hands it over."""
    return SimpleNamespace(topic="h.control", key=b"k", value=encode_record(message), headers=[])


def detector_result(epoch: int) -> FrameResult:
    found = np.array([[0.1, 0.1, 0.3, 0.3, 0.9]], np.float32)
    ran = ModelResult(model="det", output=found, status="executed")
    return FrameResult(
        frame_id=f"f{epoch}",
        stream_id="s",
        seq=0,
        epoch=epoch,
        results=(ran,),
        degraded=False,
        emitted_at=1.0,
    )


def test_the_content_table_that_killed_every_worker_is_refused_whole(mlink):
    """Review: runs 0 and an empty ``overall`` passed every check, and the tally divided by
    zero after the plan was applied, out of the replay task."""
    assert _replay_one(mlink, record(plan(1, content=TABLE.to_meta()))) is None
    before = dataclasses.astuple(mlink.state)
    empty = {"detectors": [], "runs": 0, "overall": {}, "by_signature": {}, "seen": [True] * 4}
    reason = _replay_one(mlink, record(plan(2, content=empty)))
    assert reason is not None and "epoch 2 content table" in reason
    assert dataclasses.astuple(mlink.state) == before  # nothing of it applied
    assert mlink.content.table == TABLE and mlink.content.epoch == 1


def test_a_failure_after_a_message_is_applied_is_logged_and_the_replay_carries_on(
    mlink, monkeypatch, caplog
):
    """Whatever still raises after ``ControlState.apply`` (here: a table that slipped past its
    checks) leaves the message applied, as on every other worker, and this worker's views of
    it cleared, not half-replaced; the next message refreshes them."""
    assert _apply(mlink, plan(1, content=TABLE.to_meta())) is None

    def divide_by_zero(self, counts):
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr(ContentTable, "forecast", divide_by_zero)
    with caplog.at_level(logging.ERROR, logger="mlink.control"):
        assert _apply(mlink, plan(2, content=TABLE.to_meta())) is None
    (logged,) = [r for r in caplog.records if r.name == "mlink.control"]
    assert "'active_set' of epoch 2" in logged.getMessage() and logged.exc_info is not None
    assert mlink.metrics["control_view_failures"] == 1
    assert mlink.state.epoch == 2 and mlink.state.content == TABLE  # applied whole
    assert mlink.content.table is None and mlink.predicted == {}  # views cleared
    sample = mlink.prom.registry.get_sample_value
    assert sample("mlink_forecast", {"basis": "content"}) is None
    assert sample("mlink_forecast", {"basis": "plan"}) is None
    record_result(mlink, detector_result(2))  # the results path does not divide either

    monkeypatch.undo()
    assert _apply(mlink, plan(3, content=TABLE.to_meta())) is None
    assert mlink.content.table == TABLE and mlink.predicted == {"a": 0.6, "b": 0.8}
    assert sample("mlink_forecast", {"basis": "content"}) == pytest.approx((1 + 1.4) / 3)


def test_a_new_plan_clears_the_live_agreement_an_earlier_plan_was_shown_with(mlink):
    """Review: the gauge kept the last plan's probe agreement, so an alert on a model the new
    plan runs on every frame kept firing; no probe has reported on the new plan yet."""
    sample = mlink.prom.registry.get_sample_value
    assert _apply(mlink, plan(1)) is None
    report = ControlMessage(
        kind="agreement", epoch=1, issued_at=1.5, extra={"live_agreement": {"a": 0.2}, "probes": 3}
    )
    assert _apply(mlink, report) is None
    assert sample("mlink_live_agreement", {"model": "a"}) == pytest.approx(0.2)
    assert _apply(mlink, plan(2)) is None
    assert sample("mlink_live_agreement", {"model": "a"}) is None
    assert mlink.state.live_agreement == {}  # the gauge says what the state says


def test_a_worker_that_refuses_the_newest_plan_says_so_in_its_metrics(mlink):
    """A worker on a config with other models refuses the group's newest plans and serves an
    older one; only its log said so ("skipping control message")."""
    from mlink.operators.control_operators import ControlLog

    mlink.control_log = ControlLog()
    assert _replay_one(mlink, record(plan(1))) is None
    other_models = dataclasses.replace(plan(2), active=("det", "not_in_this_config"))
    assert _replay_one(mlink, record(other_models)) is not None
    assert mlink.state.epoch == 1
    assert mlink.prom.epoch.collect()[0].samples[0].value == 1
    assert mlink.prom.epoch_heard.collect()[0].samples[0].value == 2
    assert _replay_one(mlink, record(plan(3))) is None  # a plan it can use: level again
    assert mlink.prom.epoch_heard.collect()[0].samples[0].value == 3
