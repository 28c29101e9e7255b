"""When a worker stops waiting for its first links: ``hold_s``, or, while this worker trains
them, until its training ends (bounded), then ``hold_s`` more."""

from __future__ import annotations

from mlink.operators.warmup_hold import HOLD_CAP, TrainingClock, hold_over


def test_without_training_here_the_hold_lasts_hold_s() -> None:
    idle = TrainingClock()
    assert not hold_over(now=109.9, held_since=100.0, hold_s=10.0, training=idle)
    assert hold_over(now=110.0, held_since=100.0, hold_s=10.0, training=idle)


def test_a_training_under_way_holds_past_hold_s_up_to_the_cap() -> None:
    clock = TrainingClock()
    clock.start(102.0)
    assert not hold_over(now=140.0, held_since=100.0, hold_s=10.0, training=clock)
    assert hold_over(now=100.0 + HOLD_CAP * 10.0, held_since=100.0, hold_s=10.0, training=clock)


def test_after_a_training_that_saved_links_hold_s_counts_from_its_end() -> None:
    clock = TrainingClock()
    clock.start(102.0)
    clock.stop(145.0, saved=True)
    assert clock.since is None and clock.ended == 145.0
    assert not hold_over(now=154.0, held_since=100.0, hold_s=10.0, training=clock)
    assert hold_over(now=155.0, held_since=100.0, hold_s=10.0, training=clock)


def test_a_failed_training_does_not_extend_the_hold() -> None:
    clock = TrainingClock()
    clock.start(102.0)
    clock.stop(145.0, saved=False)
    assert clock.ended is None
    assert hold_over(now=145.0, held_since=100.0, hold_s=10.0, training=clock)


def test_a_training_that_ended_before_the_hold_began_does_not_shorten_it() -> None:
    clock = TrainingClock()
    clock.start(10.0)
    clock.stop(20.0, saved=True)
    assert not hold_over(now=105.0, held_since=100.0, hold_s=10.0, training=clock)
