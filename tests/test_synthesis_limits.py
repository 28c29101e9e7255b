"""``bench/synthesis_limits.py``'s gated runs, head split and firing shares on constructed
streams with known answers."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from bench.synthesis_limits import firing_rows, gated, head_split, presence_gated

LEFT = np.array([[0.1, 0.1, 0.3, 0.3, 0.9]], np.float32)
RIGHT = np.array([[0.6, 0.6, 0.8, 0.8, 0.9]], np.float32)
EMPTY = np.zeros((0, 5), np.float32)


def test_a_gated_target_runs_when_its_source_changes_and_follows_it_in_between() -> None:
    wl = SimpleNamespace(
        streams=["a", "a", "a", "a", "b"],
        outputs={
            "src": [LEFT, LEFT, RIGHT, RIGHT, EMPTY],
            "tgt": [LEFT, LEFT, RIGHT, LEFT, EMPTY],
        },
    )
    agree, share = gated(wl, "src", "tgt", 0.5)  # type: ignore[arg-type]
    # runs: a:0 (first), a:2 (source moved), b:0 (first); a:1 follows exactly, a:3 follows the
    # source to RIGHT where the target drew LEFT (no overlap)
    assert share == pytest.approx(3 / 5)
    assert agree == pytest.approx((1 + 1 + 1 + 0 + 1) / 5)


def test_a_presence_gated_target_runs_where_its_source_fires_and_uses_the_head_elsewhere() -> None:
    wl = SimpleNamespace(
        streams=["a"] * 4,
        outputs={"src": [LEFT, EMPTY, EMPTY, RIGHT], "tgt": [RIGHT, EMPTY, LEFT, LEFT]},
    )
    nothing = SimpleNamespace(predict=lambda boxes: EMPTY)  # a head that draws no boxes
    agree, share = presence_gated(wl, "src", "tgt", nothing, [0, 1, 2, 3])  # type: ignore[arg-type]
    # runs on frames 0 and 3 (whatever the target drew there); frame 1 agrees (both empty),
    # frame 2 does not (the target found a face the source missed)
    assert share == pytest.approx(2 / 4)
    assert agree == pytest.approx((1 + 1 + 0 + 1) / 4)


def test_the_head_split_scores_the_warm_up_head_and_a_head_fitted_on_the_scored_frames() -> None:
    # warm-up (frames 0-1): the target draws the source's box; later (2-4): the box beside it
    beside = np.array([[0.3, 0.1, 0.5, 0.3, 0.9]], np.float32)
    wl = SimpleNamespace(
        outputs={
            "src": [LEFT, EMPTY, LEFT, LEFT, EMPTY],
            "tgt": [LEFT, EMPTY, beside, beside, EMPTY],
        }
    )
    rows = head_split(wl, "src", "tgt", [0, 1], [2, 3, 4])  # type: ignore[arg-type]
    warm, rest = ([cell.strip() for cell in row.strip("|").split("|")] for row in rows)
    assert warm[1:] == ["warm-up", "50%", "1.000", "1.000", "1.000", "1.000"]
    # the warm-up's head draws LEFT where the target drew the box beside it (no overlap); a
    # head fitted on frames 2-4 learns the offset and agrees exactly
    assert rest[1:] == ["rest", "67%", "0.000", "1.000", "0.333", "1.000"]


def test_the_firing_rows_give_each_streams_share_on_the_warm_up_and_after() -> None:
    wl = SimpleNamespace(
        streams=["a", "a", "a", "b", "b", "b"],
        outputs={"src": [EMPTY, LEFT, LEFT, LEFT, EMPTY, EMPTY]},
    )
    rows = firing_rows(wl, "src", [0, 3], [1, 2, 4, 5])  # type: ignore[arg-type]
    assert rows[:2] == ["| src | a | 0% | 100% |", "| src | b | 100% | 0% |"]
    # the warm-up's two streams disagree completely: one draw each, standard error 0.5
    assert rows[2] == "| src | all | 50% (± 50% between streams) | 50% |"
