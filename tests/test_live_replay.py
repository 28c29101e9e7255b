"""The live protocol replayed offline (`python -m mlink.eval.streaming.live`): a warm-up as a
backlog's fetches gave it, and estimates that weigh every stream alike, as the live trainer's do."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from bench.backlog_warmup import shuffled
from mlink.deploy.config import load_config
from mlink.eval.streaming.live import backlog_warmup, replay_live, warmup_links
from mlink.eval.streaming.method import ONLINE
from mlink.eval.workload import Workload
from mlink.topics.specs import BoxesSpec

FACE = [0.2, 0.2, 0.4, 0.5, 0.9]


def _cameras() -> Workload:
    """Three cameras, 40 frames each, interleaved; a face is in view on camera a only."""
    streams = [s for _ in range(40) for s in "abc"]
    face = [np.array([FACE] if s == "a" else [], dtype=np.float32).reshape(-1, 5) for s in streams]
    return Workload(
        "cameras",
        {"cheap": BoxesSpec(), "dear": BoxesSpec()},
        {"cheap": face, "dear": face},
        {"cheap": {"ms": 5.0}, "dear": {"ms": 50.0}},
        streams,
    )


def test_a_backlog_warmup_is_each_streams_first_frames_in_the_given_numbers():
    wl = _cameras()
    warm = backlog_warmup(wl, {"a": 6, "b": 2, "c": 1})
    streams = np.asarray(wl.streams)
    assert [int((streams[warm] == s).sum()) for s in "abc"] == [6, 2, 1]
    for s in "abc":  # the first ones of each stream, in order
        mine = np.flatnonzero(streams == s)
        assert set(warm[streams[warm] == s]) == set(mine[: len(warm[streams[warm] == s])])
    with pytest.raises(ValueError, match=r"streams the source does not have: \['z'\]"):
        backlog_warmup(wl, {"a": 4, "z": 3})
    with pytest.raises(ValueError, match="leaves no plan"):
        backlog_warmup(wl, {"a": 1})


def test_a_replay_plans_from_the_backlog_warmup_and_scores_the_rest():
    config = load_config("deploy/configs/video-demo.yaml")
    wl = _cameras()
    warm = backlog_warmup(wl, {"a": 12, "b": 3, "c": 3})
    stream = replace(ONLINE, probe_every=10, probe_stride=0, guard=False, balanced=True)
    run = replay_live(config, wl, budget_fraction=0.5, stream=stream, warmup=warm)
    assert len(run.probe) == wl.n_frames - len(warm)  # every other frame is scored
    plain = replay_live(
        config, wl, budget_fraction=0.5, stream=replace(stream, balanced=False), warmup=warm
    )
    # the prior of "dear" (a face: camera a sent 12 of the 18 warm-up frames) agrees on 2/3 of
    # the samples but on one camera in three
    prior = {
        name: next(c for c in r.fits[0].curves["dear"] if c.mode.kind == "prior").agree[1]
        for name, r in (("balanced", run), ("plain", plain))
    }
    assert prior == pytest.approx({"balanced": 1 / 3, "plain": 2 / 3})


def test_the_bench_deals_the_same_counts_to_the_streams_in_another_order():
    counts = {"a": 27, "b": 5, "c": 16, "d": 4}
    dealt = [shuffled(counts, seed) for seed in range(4)]
    assert all(list(d) == list(counts) for d in dealt)  # the same streams, in the same order
    assert all(sorted(d.values()) == sorted(counts.values()) for d in dealt)
    assert shuffled(counts, 1) == shuffled(counts, 1)  # a seed is a warm-up
    assert len({tuple(d.values()) for d in dealt}) > 1


def test_links_trained_once_replay_as_links_trained_per_replay():
    config = load_config("deploy/configs/video-demo.yaml")
    wl = _cameras()
    warm = backlog_warmup(wl, {"a": 12, "b": 3, "c": 3})
    stream = replace(ONLINE, probe_every=10, probe_stride=0, guard=False, balanced=True)
    once = warmup_links(wl, warm, config)
    again = replay_live(config, wl, budget_fraction=0.5, stream=stream, warmup=warm, trained=once)
    fresh = replay_live(config, wl, budget_fraction=0.5, stream=stream, warmup=warm)
    assert again.steady()["accuracy"] == pytest.approx(fresh.steady()["accuracy"])
    assert again.result.details["plan"] == fresh.result.details["plan"]


def test_the_paper_links_of_a_warmup_score_the_rest_and_may_weigh_streams_alike():
    config = load_config("deploy/configs/video-demo.yaml")
    wl = _cameras()
    warm = backlog_warmup(wl, {"a": 12, "b": 3, "c": 3})
    plain = warmup_links(wl, warm, config)
    fair = warmup_links(wl, warm, config, balanced=True)
    assert len(plain.test_oracle.outputs["dear"]) == wl.n_frames - len(warm)  # the rest
    # from nothing the face on camera a is 12 of 18 warm-up frames, 1 of 3 cameras
    empty = frozenset()
    assert plain.val_oracle(empty, "dear") != pytest.approx(fair.val_oracle(empty, "dear"))
    assert plain.test_oracle(empty, "dear") == pytest.approx(fair.test_oracle(empty, "dear"))
