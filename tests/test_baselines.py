"""The Table 4 baselines on small synthetic workloads whose right answers are known."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from mlink.eval import baselines as B
from mlink.eval.baselines import frames as frames_mod
from mlink.eval.baselines.common import prior_agreement
from mlink.eval.workload import Workload, stream_split
from mlink.linkstore.knapsack import choose_options
from mlink.topics.specs import BoxesSpec, VectorSpec


def one_hot(labels, k: int) -> list[np.ndarray]:
    return [np.eye(k, dtype=np.float32)[int(c)] for c in labels]


def check_result(result: B.MethodResult, wl: Workload) -> None:
    """(d) Every result: agreements in [0, 1], accuracy their mean, saving consistent with cost."""
    full = wl.total_cost("ms")
    assert set(result.per_model) == set(wl.models)
    assert all(0.0 <= v <= 1.0 for v in result.per_model.values())
    assert result.accuracy == pytest.approx(np.mean(list(result.per_model.values())))
    assert 0.0 <= result.compute_saved <= 1.0
    assert result.compute_saved == pytest.approx(max(0.0, 1.0 - result.cost_ms / full))
    assert result.seconds >= 0.0
    assert set(result.active) <= set(wl.models)


# ---------------------------------------------------------------------------- standalone


def priors_workload() -> Workload:
    """Four softmax models whose priors are worth 1, ~1/2, ~1/3 and 0.9 on any part."""
    n = 200
    t = np.arange(n)
    labels = {
        "const": np.zeros(n),  # prior always right: never worth running
        "half": t % 2,
        "third": t % 3,
        "mostly": (t % 10 == 9).astype(int),  # class 0 on 90% of frames
    }
    sizes = {"const": 2, "half": 2, "third": 3, "mostly": 2}
    return Workload(
        "priors",
        {m: VectorSpec(sizes[m], "softmax") for m in labels},
        {m: one_hot(v, sizes[m]) for m, v in labels.items()},
        {
            "const": {"ms": 10.0},
            "half": {"ms": 20.0},
            "third": {"ms": 30.0},
            "mostly": {"ms": 40.0},
        },
    )


def test_standalone_runs_the_most_valuable_models_that_fit():
    wl = priors_workload()
    train, test = stream_split(wl.streams, 0.1)
    result = B.standalone(wl, train, test, budget_ms=50.0)
    check_result(result, wl)

    # Brute force over every subset on the training part: the plan must be the optimum.
    priors = B.prior_outputs(wl, train)
    gain = {m: 1.0 - prior_agreement(wl, m, priors[m], train) for m in wl.models}
    best = max(
        (
            frozenset(c)
            for k in range(len(wl.models) + 1)
            for c in itertools.combinations(wl.models, k)
            if sum(wl.costs[m]["ms"] for m in c) <= 50.0
        ),
        key=lambda s: sum(gain[m] for m in s),
    )
    assert set(result.active) == best == {"half", "third"}
    assert result.cost_ms == pytest.approx(50.0)

    # Measured: 1 for active models, the training prior's agreement on the test frames otherwise.
    labels_test = {m: np.array([o.argmax() for o in wl.outputs[m]])[test] for m in wl.models}
    assert result.per_model["half"] == result.per_model["third"] == 1.0
    assert result.per_model["const"] == 1.0
    assert result.per_model["mostly"] == pytest.approx(np.mean(labels_test["mostly"] == 0))
    assert result.accuracy == pytest.approx((3.0 + np.mean(labels_test["mostly"] == 0)) / 4)


def test_standalone_below_every_model_cost_runs_nothing():
    wl = priors_workload()
    train, test = stream_split(wl.streams, 0.1)
    result = B.standalone(wl, train, test, budget_ms=5.0)
    check_result(result, wl)
    assert result.active == [] and result.cost_ms == 0.0 and result.compute_saved == 1.0
    assert result.per_model["third"] == pytest.approx(1 / 3, abs=0.01)


def test_prior_of_boxes_is_the_modal_empty_detection():
    n = 40
    boxes = [np.zeros((0, 5), np.float32)] * 30 + [np.array([[0.1, 0.1, 0.5, 0.5, 0.9]])] * 10
    wl = Workload(
        "boxes",
        {"det": BoxesSpec(), "cls": VectorSpec(2, "softmax")},
        {"det": boxes, "cls": one_hot(np.arange(n) % 2, 2)},
        {"det": {"ms": 5.0}, "cls": {"ms": 5.0}},
    )
    prior = B.prior_outputs(wl, np.arange(n))["det"]
    assert prior.shape == (0, 5)
    mean, per_model = B.evaluate_outputs(wl, np.arange(n), {"det": [prior] * n})
    assert per_model == {"det": 0.75, "cls": 1.0}
    assert mean == pytest.approx(0.875)


# ---------------------------------------------------------------------------- features


def test_features_see_pixel_edge_and_lighting_changes():
    rng = np.random.default_rng(0)
    dark = np.full((120, 160, 3), 40, np.uint8)
    bright = np.full((120, 160, 3), 200, np.uint8)
    square = dark.copy()
    square[30:90, 40:120] = 220
    noise = rng.integers(0, 256, (720, 1280, 3), dtype=np.uint8)
    f = B.frame_features([dark, dark.copy(), bright, square, noise])
    assert f.shape == (5, 2 * 32 * 32 + 16)
    np.testing.assert_array_equal(B.feature_diff(f, 0, 1), np.zeros(4))
    pixel, edge, area, hist = B.feature_diff(f, 0, 2)
    assert pixel == 1.0 and hist == 1.0 and edge == 0.0 and area == 0.0  # flat: no edges
    pixel, edge, area, hist = B.feature_diff(f, 0, 3)
    assert 0.2 < pixel < 0.5 and edge > 0 and area > 0
    assert B.feature_diff(f, [0, 0], [1, 2]).shape == (2, 4)
    # an 8x8 digit-like gray frame works too (upsampled to the 32x32 grid)
    digit = np.zeros((8, 8), np.uint8)
    digit[2:6, 3:5] = 255
    g = B.frame_features([digit, np.zeros((8, 8), np.uint8)])
    assert B.feature_diff(g, 0, 1)[0] == pytest.approx(8 / 64)


def test_resize_averages_areas_and_thumbnails_keep_channels():
    img = np.arange(16, dtype=np.float32).reshape(4, 4)
    np.testing.assert_allclose(frames_mod._resize(img, 2, 2), [[2.5, 4.5], [10.5, 12.5]])
    frames = [np.full((480, 640, 3), 255, np.uint8), np.zeros((8, 8), np.uint8)]
    assert B.thumbnails(frames[:1]).shape == (1, 3, 48, 64)
    assert B.thumbnails(frames[1:], 16, 12).shape == (1, 1, 12, 16)
    prep = B.prepare_frames([("a", frames[0]), ("b", frames[0])])
    assert prep.streams == ["a", "b"] and prep.features.shape[0] == 2
    assert prep.thumbs.max() == pytest.approx(1.0)
    assert prep.feature_ms > 0 and prep.thumb_ms > 0


def test_choose_options_is_an_exact_multiple_choice_knapsack():
    rng = np.random.default_rng(1)
    for _ in range(40):
        costs = rng.integers(0, 10, (3, 4))
        values = rng.random((3, 4))
        groups = [[(float(costs[g, o]), float(values[g, o])) for o in range(4)] for g in range(3)]
        capacity = int(rng.integers(1, 20))
        # integer costs on a grid of unit 1: no rounding, so the answer must be the optimum
        chosen = choose_options(groups, float(capacity), grid=capacity)
        feasible = [
            combo
            for combo in itertools.product(range(4), repeat=3)
            if sum(costs[g, o] for g, o in enumerate(combo)) <= capacity
        ]
        if not feasible:
            assert chosen is None
            continue
        assert chosen is not None
        assert sum(costs[g, o] for g, o in enumerate(chosen)) <= capacity
        best = max(sum(values[g, o] for g, o in enumerate(c)) for c in feasible)
        assert sum(values[g, o] for g, o in enumerate(chosen)) == pytest.approx(best)


def test_a_plan_within_a_grid_step_of_the_budget_is_found_when_a_better_one_overshoots():
    # rounded down, the better option of the first group fits and the plan overshoots by a
    # hair; rounded up, the exact fit (0.50001 + 0.49999 = 1.0) takes 2001 steps of 2000
    groups = [[(0.50001, 0.5), (0.5004, 0.9)], [(0.49999, 0.5)]]
    assert choose_options(groups, 1.0) == [0, 0]
    assert choose_options([[(0.6, 1.0)], [(0.6, 1.0)]], 1.0) is None  # nothing fits


# ---------------------------------------------------------------------------- frame filtering


def segment_workload(seed: int = 0) -> tuple[Workload, np.ndarray]:
    """Two streams of flat frames whose brightness level changes every 5-9 frames, alternating
    between dark (0, 1) and bright (2, 3) levels; every model's output is a function of the level
    and changes exactly when the frame does, also within each stream's training part."""
    rng = np.random.default_rng(seed)
    frames, levels, streams = [], [], []
    for stream in ("s1", "s2"):
        for segment in range(30):
            level = int(rng.integers(0, 2)) + 2 * (segment % 2)
            for _ in range(int(rng.integers(5, 10))):
                frames.append(np.full((16, 16), 30 + 60 * level, np.uint8))
                levels.append(level)
                streams.append(stream)
    levels = np.array(levels)
    wl = Workload(
        "segments",
        {
            "level": VectorSpec(4, "softmax"),
            "bright": VectorSpec(2, "softmax"),
            "value": VectorSpec(1, "linear", tolerance=0.1),
        },
        {
            "level": one_hot(levels, 4),
            "bright": one_hot(levels >= 2, 2),
            "value": [np.array([v], np.float32) for v in levels * 0.25],
        },
        {"level": {"ms": 10.0}, "bright": {"ms": 20.0}, "value": {"ms": 30.0}},
        streams,
    )
    return wl, B.frame_features(frames)


def test_frame_filtering_reuses_outputs_until_the_frame_changes():
    wl, features = segment_workload()
    train, test = stream_split(wl.streams, 0.1)
    budget = 0.5 * wl.total_cost("ms")
    result = B.frame_filtering(wl, features, train, test, budget, feature_ms=0.2)
    check_result(result, wl)
    assert result.accuracy == 1.0
    assert result.cost_ms <= budget and result.feasible
    assert result.compute_saved > 0.8
    # every model runs exactly once per segment of the evaluation part (plus each stream's start)
    changes = sum(
        1
        for a, b in itertools.pairwise(test)
        if wl.streams[a] == wl.streams[b] and not np.array_equal(features[a], features[b])
    )
    expected = (changes + 2) / len(test)
    for m in wl.models:
        assert result.details["run_rate"][m] == pytest.approx(expected)
    assert result.cost_ms == pytest.approx(0.2 + 60.0 * expected)


def random_workload(n: int = 300, seed: int = 0, train_noise: float = 1.0) -> Workload:
    rng = np.random.default_rng(seed)
    k = 5
    return Workload(
        "random",
        {f"m{i}": VectorSpec(k, "softmax") for i in range(4)},
        {f"m{i}": one_hot(rng.integers(0, k, n), k) for i in range(4)},
        {f"m{i}": {"ms": float(5 * (i + 1))} for i in range(4)},
    )


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_frame_filtering_never_exceeds_half_the_cost_on_a_random_stream(seed):
    wl = random_workload(seed=seed)
    rng = np.random.default_rng(seed)
    features = B.frame_features(rng.integers(0, 256, (wl.n_frames, 24, 24), dtype=np.uint8))
    train, test = stream_split(wl.streams, 0.1)
    budget = 0.5 * wl.total_cost("ms")
    result = B.frame_filtering(wl, features, train, test, budget, feature_ms=0.5)
    check_result(result, wl)
    assert result.cost_ms <= budget
    assert 0.3 < result.accuracy < 1.0  # stale outputs of a random stream are often wrong


def test_budget_account_holds_when_the_evaluation_part_changes_more_than_training():
    """Training frames barely change, evaluation frames change completely every frame: planned
    run rates are far too low, and only the running account keeps the average within budget."""
    wl = random_workload(n=400, seed=3)
    train, test = stream_split(wl.streams, 0.1)
    rng = np.random.default_rng(3)
    frames = np.full((wl.n_frames, 16, 16), 128, np.uint8)
    frames[train] += rng.integers(0, 20, (len(train), 16, 16), dtype=np.uint8)  # small changes
    frames[test] = rng.integers(0, 256, (len(test), 16, 16), dtype=np.uint8)
    features = B.frame_features(frames)
    budget = 0.5 * wl.total_cost("ms")
    free = B.frame_filtering(wl, features, train, test, budget, 0.1, enforce_budget=False)
    guarded = B.frame_filtering(wl, features, train, test, budget, 0.1)
    check_result(free, wl)
    check_result(guarded, wl)
    assert free.cost_ms > budget and not free.feasible
    assert guarded.cost_ms <= budget and guarded.feasible
    assert guarded.details["deferred"] > 0


# ---------------------------------------------------------------------------- multi-task


def brightness_workload(n: int = 240, seed: int = 0) -> tuple[Workload, np.ndarray]:
    """8x8 noisy frames at one of three brightness levels; one model names the level, one
    regresses it, one is a detector that boxes the frame when it is bright."""
    rng = np.random.default_rng(seed)
    level = rng.integers(0, 3, n)
    frames = np.clip(40 + 80 * level[:, None, None] + rng.normal(0, 10, (n, 8, 8)), 0, 255).astype(
        np.uint8
    )
    box = np.array([[0.0, 0.0, 1.0, 1.0, 0.9]], np.float32)
    wl = Workload(
        "brightness",
        {
            "level": VectorSpec(3, "softmax"),
            "value": VectorSpec(1, "linear", tolerance=0.25),
            "bright_box": BoxesSpec(max_boxes=2),
        },
        {
            "level": one_hot(level, 3),
            "value": [np.array([v], np.float32) for v in level.astype(np.float32)],
            "bright_box": [box if lv == 2 else np.zeros((0, 5), np.float32) for lv in level],
        },
        {"level": {"ms": 50.0}, "value": {"ms": 50.0}, "bright_box": {"ms": 50.0}},
    )
    return wl, B.thumbnails(frames)


def test_multitask_learns_a_trivial_map_and_reports_its_cost():
    wl, thumbs = brightness_workload()
    assert thumbs.shape == (240, 1, 48, 64)
    train, test = np.arange(120), np.arange(120, 240)
    budget = 0.1 * wl.total_cost("ms")  # no model fits next to the CNN: it replaces all three
    result = B.multitask(wl, thumbs, train, test, budget, epochs=40, thumb_ms=0.05)
    check_result(result, wl)
    assert result.active == []
    assert result.per_model["level"] >= 0.95
    assert result.per_model["value"] >= 0.95
    assert result.per_model["bright_box"] >= 0.8  # matched IoU of the full-frame box
    cnn = result.details["cnn_ms"]
    assert 0 < cnn < budget
    assert result.cost_ms == pytest.approx(cnn + 0.05)
    # what it saves follows from the CNN's measured time, which a loaded machine stretches
    assert result.feasible and result.compute_saved > 0.9  # it fits a tenth of the models
    assert result.compute_saved == pytest.approx(1 - result.cost_ms / wl.total_cost("ms"))
    assert result.details["heads_only_accuracy"] == pytest.approx(result.accuracy)


def test_multitask_runs_models_its_heads_cannot_learn():
    """A model whose output is unrelated to the frame is worth running when the budget allows."""
    wl, thumbs = brightness_workload()
    rng = np.random.default_rng(5)
    wl.specs["coin"] = VectorSpec(2, "softmax")
    wl.outputs["coin"] = one_hot(rng.integers(0, 2, wl.n_frames), 2)
    wl.costs["coin"] = {"ms": 10.0}
    train, test = np.arange(120), np.arange(120, 240)
    result = B.multitask(wl, thumbs, train, test, 15.0, epochs=30)
    check_result(result, wl)
    assert result.active == ["coin"] and result.per_model["coin"] == 1.0
    assert result.cost_ms == pytest.approx(result.details["cnn_ms"] + 10.0)
    assert result.cost_ms <= 15.0


def test_multitask_over_budget_is_reported_infeasible():
    wl, thumbs = brightness_workload(n=60)
    result = B.multitask(wl, thumbs, np.arange(30), np.arange(30, 60), 1e-4, epochs=2)
    check_result(result, wl)
    assert not result.feasible and "over budget" in result.notes
    assert math.isfinite(result.accuracy)


def test_budget_must_be_positive():
    wl = priors_workload()
    with pytest.raises(ValueError, match="budget_ms"):
        B.standalone(wl, np.arange(20), np.arange(20, 200), 0.0)
