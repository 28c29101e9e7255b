"""A consumer group that never settles: the worker says so, and `mlink repair-group` ends it
without replaying what was committed.

The embedded broker keeps a group's leader that leaves while another member's JoinGroup is
pending; every live member then joins again every ~13 s and never gets an assignment, until the
group is deleted (docs/broker.md; stop 46's audit wedged a pipeline for 10+ minutes and the bare
delete replayed 642 frames). Plain aiokafka members here, the same patches a worker installs.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from mlink.deploy.cli import app as cli
from mlink.deploy.group_repair import RepairRefused, repair_group
from mlink.operators import stuck_group
from mlink.operators.leave_group import leave_group_from_generation_zero
from mlink.operators.stuck_group import JoinRounds, unsynced_seconds, watch_join_rounds
from tests.test_pipeline_e2e import FAST_MODELS, write_config

# --- the rounds, without a broker ---------------------------------------------------------


def test_a_streak_past_both_limits_is_an_error_once_then_again_later() -> None:
    rounds = JoinRounds("g", stuck_after_s=60.0, stuck_rounds=3)
    rounds.started(0.0)
    assert rounds.ended(False, 10, 13.0) is None
    assert rounds.ended(False, 10, 26.0) is None
    assert rounds.ended(False, 10, 39.0) is None  # 3 rounds, but only 39 s
    level, message = rounds.ended(False, 10, 62.0) or (0, "")
    assert level == logging.ERROR
    assert "62 s" in message and "4 join rounds" in message and "generation 10" in message
    assert "mlink repair-group" in message
    assert rounds.ended(False, 10, 75.0) is None  # said: not again every round
    assert rounds.ended(False, 10, 62.0 + stuck_group.SAY_AGAIN_S)[0] == logging.ERROR
    level, message = rounds.ended(True, 11, 400.0) or (0, "")
    assert level == logging.INFO and "after 400 s" in message
    assert rounds.unsynced_s(401.0) == 0.0 and rounds.failed == 0


def test_many_quick_failed_rounds_or_one_long_one_are_not_stuck() -> None:
    quick = JoinRounds("g", stuck_after_s=60.0, stuck_rounds=3)
    quick.started(0.0)
    assert all(quick.ended(False, g, g * 1.0) is None for g in range(1, 30))
    long = JoinRounds("g", stuck_after_s=60.0, stuck_rounds=3)
    long.started(0.0)
    assert long.ended(False, 1, 120.0) is None  # one slow round is a slow broker, not a wedge
    assert long.ended(True, 2, 125.0) is None  # never said: nothing to take back


def test_the_gauge_is_the_longest_wait_and_zero_once_synced(monkeypatch: Any) -> None:
    a, b = JoinRounds("a"), JoinRounds("b")
    monkeypatch.setattr(stuck_group, "_ROUNDS", {"a": a, "b": b})
    assert unsynced_seconds(lambda: 100.0) == 0.0
    a.started(40.0)
    b.started(70.0)
    assert unsynced_seconds(lambda: 100.0) == 60.0
    a.ended(True, 3, 100.0)
    assert unsynced_seconds(lambda: 100.0) == 30.0


# --- a wedged group on the embedded broker --------------------------------------------------

COMMITTED = {0: 3, 1: 7}


def test_a_wedged_group_is_said_and_repaired_with_its_offsets(
    broker: Any, topic_factory: Any, tmp_path: Path, caplog: Any, monkeypatch: Any
) -> None:
    monkeypatch.setattr(stuck_group, "STUCK_AFTER_S", 20.0)
    leave_group_from_generation_zero()
    watch_join_rounds()
    _, config = write_config(tmp_path, "wedge", FAST_MODELS, partitions=2, warmup_frames=8,
                             output_timeout_s=5.0)  # fmt: skip
    topic = topic_factory("wedge", partitions=2)
    caplog.set_level(logging.INFO, logger="mlink.group")
    said = asyncio.run(_wedge_then_repair(broker.bootstrap, config, topic, caplog))
    assert said["stuck"], "the member never said it was stuck:\n" + caplog.text
    assert "stop the pipeline's workers first" in said["refused"]
    assert said["repaired"] == {(topic, p): o for p, o in COMMITTED.items()}
    assert said["positions"] == COMMITTED, said  # where the group was, not the topic's start
    assert "Stable" in said["settled"] and "nothing to repair" in said["settled"]


async def _wedge_then_repair(bootstrap: str, config: Any, topic: str, caplog: Any) -> dict:
    from aiokafka import AIOKafkaConsumer, TopicPartition

    def member(name: str, **kwargs: Any) -> AIOKafkaConsumer:
        return AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=config.name,
                                client_id=name, enable_auto_commit=False,
                                auto_offset_reset="earliest", session_timeout_ms=10_000,
                                **kwargs)  # fmt: skip

    leader = member("leader", heartbeat_interval_ms=6_000)  # must not see B's join in time
    await leader.start()
    assert await _assigned(leader, 60.0)
    await leader.commit({TopicPartition(topic, p): o for p, o in COMMITTED.items()})
    follower = member("follower")
    joining = asyncio.create_task(follower.start())  # returns once it has an assignment
    try:
        await asyncio.sleep(1.0)  # the follower's JoinGroup is pending at the broker now
        await leader.stop()  # the leader leaves: the broker keeps it as the group's leader
        stuck = await _until(lambda: "has not completed a rebalance" in caplog.text, 150.0)
        assert not follower.assignment()
        with pytest.raises(RepairRefused) as refused:  # a live member would rejoin too soon
            await asyncio.to_thread(repair_group, bootstrap, config)
    finally:
        joining.cancel()
        await follower.stop()
    repaired = await asyncio.to_thread(repair_group, bootstrap, config)
    fresh = member("fresh")
    try:
        await asyncio.wait_for(fresh.start(), 90.0)
        assert await _assigned(fresh, 60.0)
        positions = {tp.partition: await fresh.position(tp) for tp in fresh.assignment()}
        with pytest.raises(RepairRefused) as settled:
            await asyncio.to_thread(repair_group, bootstrap, config)
    finally:
        await fresh.stop()
    return {"stuck": stuck, "refused": str(refused.value), "repaired": repaired.offsets,
            "positions": positions, "settled": str(settled.value)}  # fmt: skip


async def _assigned(consumer: Any, within_s: float) -> bool:
    return await _until(lambda: bool(consumer.assignment()), within_s)


async def _until(check: Any, within_s: float) -> bool:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if check():
            return True
        await asyncio.sleep(0.5)
    return check()


def test_the_cli_repairs_a_group_without_members(broker: Any, tmp_path: Path) -> None:
    """The embedded broker describes a group it never saw as Empty: deleting it is harmless."""
    path, _ = write_config(tmp_path, "nogroup", FAST_MODELS, partitions=1, warmup_frames=8,
                           output_timeout_s=5.0)  # fmt: skip
    result = CliRunner().invoke(cli, ["repair-group", str(path), "--broker", broker.bootstrap])
    assert result.exit_code == 0, result.output
    assert "0 member(s)" in result.output and "restored 0 committed offsets" in result.output
    assert "check that this is the pipeline's config" in " ".join(result.output.split())


def test_a_broker_that_does_not_answer_changes_nothing_and_says_so(tmp_path: Path) -> None:
    _, config = write_config(tmp_path, "down", FAST_MODELS, partitions=1, warmup_frames=8,
                             output_timeout_s=5.0)  # fmt: skip
    with pytest.raises(RepairRefused, match="did not describe group"):
        repair_group("127.0.0.1:1", config)  # nothing listens on port 1
