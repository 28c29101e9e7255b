"""The flow mode without a broker: measured motion, moved boxes, its curve, and its cost charged
once per plan however many models use it."""

from __future__ import annotations

import numpy as np
import pytest

from mlink.linkstore.metrics import box_agreement
from mlink.linkstore.motion import MotionTracker, Pose, between, move_boxes, small_gray
from mlink.linkstore.schedule import Mode, Schedule
from mlink.linkstore.streamcurve import Curve
from mlink.linkstore.streamfit import Sample, fit_stream
from mlink.linkstore.streamlinks import (
    Refresh,
    StreamFrame,
    StreamLinks,
    StreamMemory,
    decode_context,
    encode_context,
)
from mlink.linkstore.streamplan import plan_for_budget, plan_for_targets
from mlink.topics.specs import BoxesSpec, VectorSpec

BOXES = BoxesSpec()
W, H = 480, 360


def scene(seed: int = 0) -> np.ndarray:
    """A textured picture larger than the view, to pan over."""
    rng = np.random.default_rng(seed)
    big = rng.integers(0, 255, (H // 8 + 40, W // 8 + 40), dtype=np.uint8)
    return np.kron(big, np.ones((8, 8), dtype=np.uint8))


def view(picture: np.ndarray, dx: int) -> np.ndarray:
    """The camera ``dx`` pixels to the right: everything in the view moves ``dx`` to the left."""
    return np.ascontiguousarray(picture[40 : 40 + H, 40 + dx : 40 + dx + W])


def box(x: float) -> np.ndarray:
    return np.array([[x, 0.3, x + 0.2, 0.6, 0.9]], dtype=np.float32)


def test_a_pan_is_measured_as_a_shift_and_moves_boxes_with_the_picture():
    picture, tracker = scene(), MotionTracker()
    poses = [tracker.update("cam", seq, view(picture, 6 * seq)) for seq in range(6)]
    assert len({p.track for p in poses}) == 1 and poses[0].track == "cam@0"
    shift = between(poses[0], poses[5])
    assert shift is not None
    assert shift[0, 2] == pytest.approx(-30 / W, abs=2e-3)  # 30 px to the left
    assert shift[0, 0] == pytest.approx(1.0, abs=5e-3) and shift[1, 2] == pytest.approx(0, abs=2e-3)
    moved = move_boxes(box(0.5), shift)
    assert box_agreement(moved, box(0.5 - 30 / W)) > 0.97
    assert tracker.ms > 0.0


def test_a_gap_or_another_stream_starts_a_new_track_whose_poses_do_not_compare():
    picture, tracker = scene(), MotionTracker(max_streams=1)
    a = tracker.update("cam", 0, view(picture, 0))
    b = tracker.update("cam", 2, view(picture, 12))  # frame 1 was missed
    assert b.track == "cam@2" and between(a, b) is None
    tracker.update("other", 0, view(picture, 0))  # bounded: the first stream is dropped
    assert len(tracker) == 1
    assert tracker.update("cam", 3, view(picture, 18)).track == "cam@3"
    blank = np.zeros((H, W), dtype=np.uint8)
    tracker.update("flat", 0, blank)
    assert tracker.update("flat", 1, blank).track == "flat@1"  # nothing to follow
    assert small_gray(np.zeros((720, 1280, 3), dtype=np.uint8)).shape == (180, 320)


def test_moved_boxes_are_clipped_and_those_that_left_are_dropped():
    right = np.array([[1, 0, 0.5], [0, 1, 0], [0, 0, 1]], dtype=np.float64)
    out = move_boxes(np.vstack([box(0.4), box(0.7)]), right)
    assert out.shape == (1, 5) and out[0, 0] == pytest.approx(0.9) and out[0, 2] == 1.0
    assert move_boxes(np.zeros((0, 5)), right).shape == (0, 5)


def test_poses_travel_as_json_and_bad_ones_are_refused():
    pose = Pose("cam@3", (1.0, 0.0, 0.1, 0.0, 1.0, 0.0))
    assert Pose.from_json(pose.to_json()) == pose
    bad_ones = [
        {"track": "t", "matrix": [1, 2]},
        {"track": "", "matrix": [0] * 6},
        [1, 2],
        {"track": "t", "matrix": [float("nan")] * 6},
        {"track": "t", "matrix": ["x"] * 6},
    ]
    for bad in bad_ones:
        with pytest.raises(ValueError):
            Pose.from_json(bad)
    refresh = Refresh(4, box(0.5), {"face": box(0.5)}, pose)
    wire = encode_context({"face": BOXES}, {"face": refresh})
    assert decode_context({"face": BOXES}, wire)["face"].pose == pose


def pose_at(x: float, track: str = "cam@0") -> Pose:
    """The pose of a camera panned ``x`` (normalised) to the right."""
    return Pose(track, (1.0, 0.0, -x, 0.0, 1.0, 0.0))


def test_flow_moves_the_last_run_with_the_frame_and_reuses_it_when_motion_is_unknown():
    links = StreamLinks({"face": BOXES}, {"face": np.zeros((0, 5), np.float32)})
    schedule = Schedule({"face": 4}, modes={"face": Mode("flow")})
    assert schedule.uses_motion and Mode.from_json(Mode("flow").to_json()) == Mode("flow")
    memory = StreamMemory()
    frames = [StreamFrame("cam", 0, {"face": box(0.5)}, pose_at(0.0))]
    frames += [StreamFrame("cam", q, {}, pose_at(0.05 * q)) for q in (1, 2)]
    frames += [StreamFrame("cam", 3, {}, pose_at(0.15, track="cam@3"))]
    out = links.synthesize_frames(schedule, frames, memory)
    assert box_agreement(out[2].outputs["face"], box(0.4)) > 0.99
    assert box_agreement(out[3].outputs["face"], box(0.5)) > 0.99  # a new track: as it was
    assert out[3].fallbacks["face"] == "no motion: reuse" and not out[2].fallbacks
    light = StreamLinks({"light": VectorSpec(1, "linear")}, {"light": np.zeros(1, np.float32)})
    value, why = light.synthesize(
        "light", Mode("flow"), {}, Refresh(0, np.ones(1), {}, pose_at(0.0)), 1, pose_at(0.1)
    )
    assert why is None and value.tolist() == [1.0]  # nothing to move: reused as it was


def panning_samples(n: int = 12, streams: int = 3) -> list[Sample]:
    """A face standing still in the scene while the camera pans: it moves across the view."""
    return [
        Sample(f"s{k}", t, {"face": box(0.6 - 0.03 * t)}, pose=pose_at(0.03 * t, f"s{k}@0"))
        for k in range(streams)
        for t in range(n)
    ]


def test_the_trainer_estimates_flow_where_frames_carry_poses_and_prices_the_motion_per_frame():
    fit = fit_stream({"face": BOXES}, panning_samples(), motion_ms=3.5)
    flow = next(c for c in fit.curves["face"] if c.mode.kind == "flow")
    reuse = next(c for c in fit.curves["face"] if c.mode.kind == "reuse")
    assert flow.frame_ms == 3.5 and min(flow.agree) > 0.99 and reuse.agree[4] < 0.7
    again = Curve.from_meta(flow.to_meta())  # saved rounded to 6 places
    assert again.mode == flow.mode and again.frame_ms == 3.5
    plain = fit_stream(
        {"face": BOXES}, [Sample(s.stream, s.seq, s.outputs) for s in panning_samples()]
    )
    assert all(c.mode.kind != "flow" for c in plain.curves["face"])


def flat(target: str, kind: str, value: float, frame_ms: float = 0.0) -> Curve:
    return Curve(target, Mode(kind), (1.0,) + (value,) * 16, (0,) + (1000,) * 16, 0.01,
                 frame_ms=frame_ms)  # fmt: skip


def two_models(motion_ms: float) -> dict[str, list[Curve]]:
    return {
        m: [flat(m, "reuse", 0.6), flat(m, "prior", 0.5), flat(m, "flow", 0.95, motion_ms)]
        for m in ("a", "b")
    }


def test_a_plan_pays_for_motion_once_and_only_where_it_pays_off():
    ms = {"a": 10.0, "b": 10.0}
    cheap = plan_for_budget(two_models(1.0), ms, 11.0, periods=(2,))
    assert cheap.schedule.uses_motion
    runs = sum(c.cost_ms for c in cheap.choices.values())
    assert cheap.cost_ms == pytest.approx(runs + 1.0) and cheap.cost_ms <= 11.0 + 1e-9
    dear = plan_for_budget(two_models(9.0), ms, 11.0, periods=(2,))
    assert dear.feasible and not dear.schedule.uses_motion and dear.cost_ms <= 11.0 + 1e-9
    target = plan_for_targets(two_models(1.0), ms, {"a": 0.9, "b": 0.9}, periods=(2, 4))
    assert target.schedule.uses_motion and target.cost_ms == pytest.approx(
        sum(c.cost_ms for c in target.choices.values()) + 1.0
    )


def test_measured_poses_follow_each_stream_and_are_cached(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from mlink.eval import motion_poses

    picture = scene(1)
    frames = [(s, view(picture, 5 * q)) for q in range(4) for s in ("a", "b")]  # interleaved
    motion = motion_poses.measure_poses(frames)
    assert [p.track for p in motion.poses] == ["a@0", "b@0"] * 4 and motion.ms > 0
    moved = between(motion.poses[0], motion.poses[6])
    assert moved is not None and moved[0, 2] == pytest.approx(-15 / W, abs=2e-3)
    monkeypatch.setattr(motion_poses, "iter_source", lambda source: iter(frames))
    source = SimpleNamespace(model_dump=lambda mode: {"factory": "x:y"})
    config = SimpleNamespace(name="pans", source=source)
    first = motion_poses.source_poses(config, tmp_path)  # type: ignore[arg-type]
    monkeypatch.setattr(motion_poses, "iter_source", lambda source: iter(()))
    again = motion_poses.source_poses(config, tmp_path)  # type: ignore[arg-type]
    assert again == first and len(list((tmp_path / "motion").iterdir())) == 1


def test_a_replay_with_motion_moves_what_the_camera_moved_and_pays_for_it():
    from dataclasses import replace

    from mlink.eval.streaming.simulate import StreamConfig, simulate
    from mlink.eval.workload import Workload

    n, streams = 40, 3
    rows = [(k, t) for k in range(streams) for t in range(n)]
    outputs = {"face": [box(0.7 - 0.012 * t) for _, t in rows]}
    workload = Workload(
        "pan",
        {"face": BOXES},
        outputs,
        {"face": {"ms": 10.0}},
        streams=[f"s{k}" for k, _ in rows],
        poses=[pose_at(0.012 * t, f"s{k}@0") for k, t in rows],
        motion_ms=0.5,
    )
    train = [i for i, (_, t) in enumerate(rows) if t < 12]
    test = [i for i, (_, t) in enumerate(rows) if t >= 12]
    config = StreamConfig(objective="lower", z=1.0, periods=(0, 4, 8))
    still = simulate(workload, train, test, budget_ms=3.0, config=config)
    moving = simulate(workload, train, test, budget_ms=3.0, config=replace(config, motion=True))
    assert moving.plans[0].schedule.uses_motion and not still.plans[0].schedule.uses_motion
    assert moving.result.accuracy > still.result.accuracy + 0.05
    plan = moving.plans[0]  # the motion once a frame, besides the runs and each move
    assert plan.cost_ms >= 10.0 * plan.schedule.share("face") + 0.5 - 1e-9
    assert moving.result.cost_ms <= 3.0 + 1e-6
    unmeasured = replace(workload, poses=None, motion_ms=0.0)
    with pytest.raises(ValueError, match="motion=True"):  # not a silent replay without flow
        simulate(unmeasured, train, test, budget_ms=3.0, config=replace(config, motion=True))
