"""Detector links: box heads, follow, track and switch, on constructed boxes with known answers."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mlink.linkstore.boxlinks import (
    EMPTY,
    BoxHead,
    as_boxes,
    fit_box_head,
    follow,
    place,
    relative,
    switch,
    track,
)
from mlink.linkstore.metrics import box_agreement


def box(x1, y1, x2, y2, score=0.9):
    return np.array([[x1, y1, x2, y2, score]], dtype=np.float32)


def eyes_of(face):
    """Two eye boxes at fixed places inside a face box."""
    x1, y1, x2, y2, s = face[0]
    w, h = x2 - x1, y2 - y1
    left = [x1 + 0.2 * w, y1 + 0.3 * h, x1 + 0.4 * w, y1 + 0.45 * h, s]
    right = [x1 + 0.6 * w, y1 + 0.3 * h, x1 + 0.8 * w, y1 + 0.45 * h, s]
    return np.array([left, right], dtype=np.float32)


def test_relative_and_place_are_inverse():
    anchor = box(0.2, 0.3, 0.5, 0.7)[0]
    target = box(0.25, 0.35, 0.35, 0.5)[0]
    back = place(relative(target[:4], anchor[:4])[None], anchor)
    np.testing.assert_allclose(back[0], target[:4], atol=1e-6)


def test_a_head_between_two_copies_of_a_detector_is_the_identity():
    frames = [box(0.1 * k, 0.2, 0.1 * k + 0.2, 0.5) for k in range(5)] + [EMPTY] * 3
    head = fit_box_head(frames, frames)
    assert head.counts[:2] == (0, 1)
    for f in frames:
        assert box_agreement(head.predict(f), f) == pytest.approx(1.0, abs=1e-5)


def test_a_face_to_eyes_head_learns_two_templates_inside_the_face():
    faces = [box(0.1 + 0.05 * k, 0.1, 0.4 + 0.05 * k, 0.5) for k in range(6)]
    head = fit_box_head(faces, [eyes_of(f) for f in faces])
    assert head.counts[1] == 2 and len(head.templates) == 2
    new_face = box(0.5, 0.4, 0.8, 0.9)
    assert box_agreement(head.predict(new_face), eyes_of(new_face)) > 0.95


def test_a_head_says_empty_when_the_source_is_and_scales_counts_it_never_saw():
    faces = [box(0.1, 0.1, 0.3, 0.3)] * 4 + [EMPTY] * 4
    head = fit_box_head(faces, [eyes_of(f) if len(f) else EMPTY for f in faces])
    assert len(head.predict(EMPTY)) == 0
    two_faces = np.concatenate([box(0.1, 0.1, 0.3, 0.3), box(0.6, 0.1, 0.8, 0.3)])
    assert head.count(2) == 4  # bucket 2 never seen: 2 faces x 2 eyes per face
    assert len(head.predict(two_faces)) == 4


def test_a_head_round_trips_through_json():
    faces = [box(0.1, 0.1, 0.3, 0.3)] * 3
    head = fit_box_head(faces, [eyes_of(f) for f in faces])
    again = BoxHead.from_meta(json.loads(json.dumps(head.to_meta())))
    assert again == head


def test_head_validation_names_the_problem():
    with pytest.raises(ValueError, match="non-negative"):
        BoxHead((-1,), ((0.0, 0.0, 0.0, 0.0),))
    with pytest.raises(ValueError, match="template"):
        BoxHead((0, 1), ())
    with pytest.raises(ValueError, match="source outputs"):
        fit_box_head([EMPTY], [])


def test_follow_moves_the_targets_boxes_with_their_source():
    face_then, face_now = box(0.1, 0.1, 0.3, 0.4), box(0.15, 0.12, 0.35, 0.42)
    eyes_then = eyes_of(face_then)
    moved = follow(eyes_then, face_then, face_now)
    assert box_agreement(moved, eyes_of(face_now)) > 0.95
    assert box_agreement(eyes_then, eyes_of(face_now)) < 0.7  # plain reuse is worse


def test_follow_drops_boxes_whose_source_left_or_keeps_them_when_asked():
    face = box(0.1, 0.1, 0.3, 0.4)
    eyes = eyes_of(face)
    assert len(follow(eyes, face, EMPTY)) == 0
    np.testing.assert_array_equal(follow(eyes, face, EMPTY, drop_lost=False), eyes)
    far = box(0.7, 0.7, 0.9, 0.9)  # no overlap: another object
    assert len(follow(eyes, face, far)) == 0
    np.testing.assert_array_equal(follow(eyes, EMPTY, face), eyes)  # nothing to ride on


def test_track_draws_the_heads_boxes_as_the_followed_ones_where_they_overlap():
    head = np.concatenate([box(0.1, 0.1, 0.3, 0.3), box(0.6, 0.6, 0.8, 0.8)])
    followed = box(0.12, 0.11, 0.31, 0.29, 0.5)
    out = track(head, followed)
    np.testing.assert_array_equal(out[0], followed[0])
    np.testing.assert_array_equal(out[1], head[1])  # a new object: the head's box
    assert len(track(EMPTY, followed)) == 0  # the head says nothing is there


def test_switch_follows_while_the_source_is_stable_else_takes_the_head():
    src = box(0.1, 0.1, 0.3, 0.3)
    followed, head = box(0.1, 0.1, 0.2, 0.2), box(0.5, 0.5, 0.6, 0.6)
    np.testing.assert_array_equal(switch(followed, head, src, src, 0.5), followed)
    moved = box(0.6, 0.6, 0.8, 0.8)
    np.testing.assert_array_equal(switch(followed, head, src, moved, 0.5), head)


def test_as_boxes_accepts_lists_and_empties():
    assert as_boxes([]).shape == (0, 5)
    assert as_boxes([[0, 0, 1, 1, 0.5]]).shape == (1, 5)
