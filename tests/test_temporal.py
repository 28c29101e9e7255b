"""Temporal links, periodic reuse and change-triggered filtering on streams with known answers."""

import itertools

import numpy as np
import pytest

from mlink.eval.temporal import (
    TemporalConfig,
    change_filter,
    mlink_with_filtering,
    plain_mlink,
    reuse_schedule,
    temporal_mlink,
)
from mlink.eval.workload import Workload, stream_split
from mlink.linkstore.training import TrainConfig
from mlink.topics.specs import VectorSpec

FAST = TemporalConfig(
    links=TrainConfig(epochs=40, ensemble_epochs=40),
    temporal_links=TrainConfig(epochs=60, dropout=0.1),
)


def count_out(values) -> list[np.ndarray]:
    return [np.array([v], dtype=np.float32) for v in values]


def offset_walk(n_streams: int = 8, length: int = 60, seed: int = 0) -> Workload:
    """``walk`` is a random walk (steps -1/0/+1, half the frames move) per stream; the cheap
    ``gauge`` reads the walk plus a random offset per stream. From the gauge's current output
    alone the walk is unknowable (the offset is), from the walk's last value and the gauge's
    change since then it is exact: walk(now) = walk(then) + gauge(now) - gauge(then)."""
    rng = np.random.default_rng(seed)
    walk, gauge, streams = [], [], []
    for s in range(n_streams):
        x = int(rng.integers(3, 8))
        offset = int(rng.integers(0, 60))
        for _ in range(length):
            x = int(np.clip(x + rng.choice([-1, 0, 0, 1]), 0, 10))
            walk.append(x)
            gauge.append(x + offset)
            streams.append(f"s{s}")
    return Workload(
        "offset-walk",
        {
            "walk": VectorSpec(1, "count", max_count=10),
            "gauge": VectorSpec(1, "count", max_count=80),
        },
        {"walk": count_out(walk), "gauge": count_out(gauge)},
        {"walk": {"ms": 100.0}, "gauge": {"ms": 1.0}},
        streams,
    )


def test_temporal_links_recover_what_plain_links_cannot():
    wl = offset_walk()
    train, test = stream_split(wl.streams, 0.3)
    budget = 30.0  # the walk can run at most every 4th frame; the gauge every frame
    plain = plain_mlink(wl, train, test, budget, FAST)
    reuse = reuse_schedule(wl, train, test, budget, FAST)
    temporal = temporal_mlink(wl, train, test, budget, FAST)
    for r in (plain, reuse, temporal):
        assert r.cost_ms <= budget
    # plain links see only the gauge now: the per-stream offset hides the walk
    assert plain.per_model["walk"] < 0.5
    # reuse misses every step since the last run
    assert reuse.per_model["walk"] < 0.8
    # the temporal link adds the gauge's change to the walk's last real value
    assert "temporal link from gauge" in temporal.details["policies"]["walk"]
    assert temporal.per_model["walk"] > 0.95
    assert temporal.accuracy > plain.accuracy + 0.25
    assert temporal.accuracy > reuse.accuracy + 0.1
    assert temporal.compute_saved > 0.7


def blocks(n_streams: int, length: int, block: int, phase: int, seed: int = 0) -> Workload:
    """``slow`` is constant over blocks of ``block`` frames starting at stream positions
    ``phase, phase + block, ...``; ``noise`` is a cheap model with a fresh value every frame."""
    rng = np.random.default_rng(seed)
    slow, noise, streams = [], [], []
    for s in range(n_streams):
        value = 0
        for p in range(length):
            if (p - phase) % block == 0:
                value = int(rng.integers(0, 20))
            slow.append(value)
            noise.append(int(rng.integers(0, 20)))
            streams.append(f"s{s}")
    spec = VectorSpec(1, "count", max_count=20)
    return Workload(
        "blocks",
        {"slow": spec, "noise": spec},
        {"slow": count_out(slow), "noise": count_out(noise)},
        {"slow": {"ms": 100.0}, "noise": {"ms": 1.0}},
        streams,
    )


def test_periodic_reuse_is_exact_at_the_block_length():
    # 5 training frames per stream (positions 0-4): the last one (4) starts a block, so runs
    # every 4th frame from there land on every block start
    wl = blocks(n_streams=4, length=50, block=4, phase=0)
    train, test = stream_split(wl.streams, 0.1)
    assert sorted(set(train % 50)) == [0, 1, 2, 3, 4]
    r = reuse_schedule(wl, train, test, 26.0, FAST)  # noise always (1) + slow every 4th (25)
    assert r.per_model["noise"] == 1.0
    assert r.per_model["slow"] == 1.0
    assert r.details["run_rate"]["slow"] <= 0.25
    assert r.cost_ms <= 26.0
    assert r.compute_saved == pytest.approx(1 - r.cost_ms / 101.0)
    # one frame less of budget: every 5th frame, and reused outputs go stale
    tight = reuse_schedule(wl, train, test, 21.0, FAST)
    assert tight.cost_ms <= 21.0
    assert tight.per_model["slow"] < 0.95


def random_blocks(n_frames: int, mean_len: float, rng) -> list[int]:
    values, value = [], -1
    for _ in range(n_frames):
        if value < 0 or rng.random() < 1.0 / mean_len:
            value = int(rng.integers(0, 20)) if value < 0 else (value + 1 + rng.integers(19)) % 20
        values.append(int(value))
    return values


def paired_blocks(train_mean: float, test_mean: float, seed: int = 0) -> Workload:
    """``target`` (expensive) and ``marker`` (cheap) change on the same frames, at random
    times; the marker's value says nothing about the target's, only *when* it changed."""
    rng = np.random.default_rng(seed)
    target, marker, streams = [], [], []
    for s in range(4):
        for part, (n, mean_len) in enumerate([(60, train_mean), (240, test_mean)]):
            t = random_blocks(n, mean_len, rng)
            changes = np.cumsum([0] + [int(a != b) for a, b in itertools.pairwise(t)])
            target += t
            marker += [int(c % 2) + 2 * part for c in changes]
            streams += [f"s{s}"] * n
    spec = VectorSpec(1, "count", max_count=20)
    return Workload(
        "paired-blocks",
        {"target": spec, "marker": VectorSpec(1, "count", max_count=4)},
        {"target": count_out(target), "marker": count_out(marker)},
        {"target": {"ms": 100.0}, "marker": {"ms": 1.0}},
        streams,
    )


def split_parts(wl: Workload) -> tuple[np.ndarray, np.ndarray]:
    pos = np.arange(wl.n_frames) % 300
    return np.flatnonzero(pos < 60), np.flatnonzero(pos >= 60)


def test_change_triggered_refresh_beats_a_fixed_schedule():
    wl = paired_blocks(train_mean=8.0, test_mean=8.0)
    train, test = split_parts(wl)
    budget = 26.0  # marker + the target on about one frame in four
    periodic = reuse_schedule(wl, train, test, budget, FAST)
    triggered = change_filter(wl, train, test, budget, FAST)
    both = mlink_with_filtering(wl, train, test, budget, FAST)
    for r in (periodic, triggered, both):
        assert r.cost_ms <= budget
    assert "change of marker" in triggered.details["policies"]["target"]
    # the target runs exactly when it changed: reuse is then always right
    assert triggered.per_model["target"] > 0.95
    assert triggered.per_model["target"] > periodic.per_model["target"] + 0.1
    assert both.per_model["target"] > periodic.per_model["target"] + 0.1
    # ... and it runs less often than the schedule does
    assert triggered.compute_saved > periodic.compute_saved


def test_triggered_runs_stay_within_budget_when_the_test_changes_faster():
    # trained where the target changes every ~8 frames, tested where it changes every ~2:
    # the trigger fires far more often than planned, the token bucket holds the budget
    wl = paired_blocks(train_mean=8.0, test_mean=2.0, seed=1)
    train, test = split_parts(wl)
    budget = 26.0
    r = change_filter(wl, train, test, budget, FAST)
    assert "change of marker" in r.details["policies"]["target"]
    assert r.cost_ms <= budget
    assert r.details["run_rate"]["target"] < 0.3  # it would want ~0.5
    assert r.compute_saved >= 1 - budget / 101.0


def test_independent_frames_fall_back_to_plain_links():
    """No temporal redundancy (a fresh digit every frame): reuse is useless, plain links are
    exact, and the temporal method picks the plain links."""
    rng = np.random.default_rng(0)
    digit = rng.integers(0, 10, 400)
    wl = Workload(
        "iid-digits",
        {"digit": VectorSpec(10, "softmax"), "parity": VectorSpec(2, "softmax")},
        {
            "digit": [np.eye(10, dtype=np.float32)[d] for d in digit],
            "parity": [np.eye(2, dtype=np.float32)[d % 2] for d in digit],
        },
        {"digit": {"ms": 2.0}, "parity": {"ms": 8.0}},
    )
    train, test = stream_split(wl.streams, 0.3)
    budget = 3.0
    plain = plain_mlink(wl, train, test, budget, FAST)
    reuse = reuse_schedule(wl, train, test, budget, FAST)
    temporal = temporal_mlink(wl, train, test, budget, FAST)
    assert plain.per_model["parity"] > 0.97
    assert reuse.per_model["parity"] < 0.8
    assert temporal.details["policies"]["parity"] == "plain links"
    assert temporal.accuracy == pytest.approx(plain.accuracy)
    assert temporal.cost_ms <= budget and plain.cost_ms <= budget
