"""Honest selection oracles: every sample is scored by links and ensembles that never saw it."""

from __future__ import annotations

import numpy as np
import pytest

from mlink.linkstore.crossfit import (
    MIN_FIT,
    MIN_TRAIN,
    MixedOracle,
    PooledOracle,
    contiguous_folds,
    cross_fit,
    fit_and_score,
    oracle_from_bundle,
    trainable_folds,
)
from mlink.linkstore.training import TrainConfig
from mlink.topics.specs import BoxesSpec, VectorSpec

FAST = TrainConfig(epochs=40, ensemble_epochs=40)
SPECS = {
    "digit": VectorSpec(10, "softmax"),
    "parity": VectorSpec(2, "softmax"),
    "noise": VectorSpec(2, "softmax"),
    "boxes": BoxesSpec(max_boxes=2),
}


def outputs(n: int, seed: int = 0) -> dict[str, list]:
    rng = np.random.default_rng(seed)
    digit = rng.integers(0, 10, n)
    coin = rng.integers(0, 2, n)
    box = np.array([[0.1, 0.1, 0.4, 0.5, 0.9]], dtype=np.float32)
    return {
        "digit": [np.eye(10, dtype=np.float32)[d] for d in digit],
        "parity": [np.eye(2, dtype=np.float32)[d % 2] for d in digit],
        "noise": [np.eye(2, dtype=np.float32)[c] for c in coin],  # unrelated to anything
        "boxes": [box if d >= 5 else np.zeros((0, 5), np.float32) for d in digit],
    }


def test_contiguous_folds_cut_each_group_into_ordered_blocks():
    fold = contiguous_folds(10, 2, ["a"] * 6 + ["b"] * 4)
    assert fold.tolist() == [0, 0, 0, 1, 1, 1, 0, 0, 1, 1]
    assert contiguous_folds(5, 5).tolist() == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match="at least 2"):
        contiguous_folds(5, 1)


def test_cross_fit_scores_each_sample_with_links_that_never_trained_on_it():
    data = outputs(60)
    fit = cross_fit(SPECS, data, FAST, folds=3)
    assert fit.scheme == "crossfit" and fit.linkset.n_train == 60
    held = np.concatenate(fit.held_out)
    assert sorted(held.tolist()) == list(range(60))  # every sample scored exactly once
    for ls, idx in zip(fit.fold_links, fit.held_out, strict=True):
        assert ls.n_train == 60 - len(idx)
    assert fit.oracle.n_samples == 60
    active = frozenset({"digit"})
    # the pooled score is the sample-weighted mean of the folds' scores
    parts = [
        (p(active, "parity"), len(idx))
        for p, idx in zip(fit.oracle.parts, fit.held_out, strict=True)
    ]
    expected = sum(v * n for v, n in parts) / 60
    assert fit.oracle(active, "parity") == pytest.approx(expected)
    assert fit.oracle(active, "parity") > 0.8  # parity follows from the digit
    assert fit.oracle(active, "noise") < 0.7  # a coin flip does not, out of fold
    assert fit.oracle.accuracy(active) == pytest.approx(
        np.mean([1.0] + [fit.oracle(active, m) for m in ("parity", "noise", "boxes")])
    )


def test_cross_fit_needs_enough_samples_per_fold():
    with pytest.raises(ValueError, match="samples to train on"):
        cross_fit(SPECS, outputs(5), FAST, folds=3)


def test_holdout_scores_the_last_slice_of_each_group_with_the_link_set_that_runs():
    data = outputs(40)
    fit = fit_and_score(SPECS, data, FAST, "weighted", "holdout", 4, ["a"] * 20 + ["b"] * 20)
    assert fit.scheme == "holdout"
    assert fit.held_out[0].tolist() == [15, 16, 17, 18, 19, 35, 36, 37, 38, 39]
    assert fit.linkset is fit.fold_links[0] and fit.linkset.n_train == 30


def test_validation_scheme_is_the_link_sets_own_split():
    fit = fit_and_score(SPECS, outputs(30), FAST, scheme="validation")
    assert isinstance(fit.oracle, PooledOracle)
    assert fit.oracle.n_samples == len(fit.linkset.val_index)
    with pytest.raises(ValueError, match="unknown scheme"):
        fit_and_score(SPECS, outputs(30), FAST, scheme="magic")  # type: ignore[arg-type]


def test_the_oracle_survives_a_bundle_round_trip():
    data = outputs(45)
    fit = cross_fit(SPECS, data, FAST, folds=3)
    tensors, meta = fit.bundle_parts(data)
    again = oracle_from_bundle(tensors, meta)
    for active in (frozenset({"digit"}), frozenset({"parity", "boxes"}), frozenset()):
        for target in SPECS:
            if target not in active:
                assert again(active, target) == pytest.approx(fit.oracle(active, target))


def test_streams_scheme_holds_out_one_stream_per_fold():
    data = outputs(40)
    groups = ["a"] * 20 + ["b"] * 20
    fit = fit_and_score(SPECS, data, FAST, scheme="streams", groups=groups)
    assert [idx.tolist() for idx in fit.held_out] == [list(range(20)), list(range(20, 40))]
    with pytest.raises(ValueError, match="at least two streams"):
        fit_and_score(SPECS, data, FAST, scheme="streams", groups=["a"] * 40)


def test_mixed_scheme_averages_in_stream_and_cross_stream_estimates_and_round_trips():
    data = outputs(40)
    groups = ["a"] * 20 + ["b"] * 20
    fit = fit_and_score(SPECS, data, FAST, folds=2, groups=groups)  # mixed is the default
    assert fit.scheme == "mixed" and isinstance(fit.oracle, MixedOracle)
    assert fit.pools == [[0, 1], [2, 3]]
    within, across = fit.oracle.estimates
    active = frozenset({"digit"})
    for target in ("parity", "noise", "boxes"):
        expected = (within(active, target) + across(active, target)) / 2
        assert fit.oracle(active, target) == pytest.approx(expected)
    tensors, meta = fit.bundle_parts(data)
    again = oracle_from_bundle(tensors, meta)
    assert again(active, "boxes") == pytest.approx(fit.oracle(active, "boxes"))
    # one stream: nothing to hold out across streams, so mixed is plain cross-fitting
    assert fit_and_score(SPECS, data, FAST, folds=2).scheme == "crossfit"


def test_mixed_scheme_cross_fits_within_streams_when_a_stream_fold_leaves_too_few():
    """A warm-up of 18 frames of one camera and 2 of another: holding out the first left 2
    samples to train on, and the live trainer's first training failed with a traceback (and
    `mlink bench` on a short source at --train-fraction 0.1 with it)."""
    groups = ["a"] * 18 + ["b"] * 2
    fit = fit_and_score(SPECS, outputs(20), FAST, groups=groups)
    assert fit.scheme == "crossfit"


@pytest.mark.parametrize("cameras", [1, 2, 3, 4, 5, 7])
@pytest.mark.parametrize("n", range(MIN_TRAIN, MIN_TRAIN + 5))
def test_every_warm_up_the_settings_allow_has_folds_that_train(n: int, cameras: int) -> None:
    """The live trainer's first links from a short warm-up over several cameras: each camera's
    first frame fell in fold 0, and 6 frames of 3 cameras left 3 to train on (a traceback,
    retried on the next frames). `LinkSettings.warmup_frames` starts at MIN_TRAIN."""
    groups = [f"cam{i % cameras}" for i in range(n)]
    for folds in (2, 3, 5):
        fold = trainable_folds(n, folds, groups)
        assert n - np.bincount(fold).max() >= MIN_FIT, (n, cameras, folds, fold)


def test_a_short_warm_up_over_three_cameras_trains() -> None:
    groups = ["a", "b", "c"] * 2
    with pytest.raises(ValueError, match="leaves 3 samples"):  # the folds it had before
        cross_fit(SPECS, outputs(6), FAST, fold_of=contiguous_folds(6, 5, groups))
    assert fit_and_score(SPECS, outputs(6), FAST, scheme="crossfit", groups=groups).oracle


def test_a_balanced_oracle_weighs_every_stream_alike():
    """Replays compare it with the live trainer's sample weights on a backlog's warm-up."""
    data = outputs(48, seed=3)
    groups = ["a"] * 36 + ["b"] * 12  # one camera sent three times the other's frames
    plain = fit_and_score(SPECS, data, FAST, "weighted", "crossfit", 3, groups)
    fair = fit_and_score(SPECS, data, FAST, "weighted", "crossfit", 3, groups, balanced=True)
    assert isinstance(fair.oracle, PooledOracle) and isinstance(plain.oracle, PooledOracle)
    stream = np.asarray(groups)[np.concatenate(fair.held_out)]
    active = frozenset({"digit"})
    for target in ("parity", "noise", "boxes"):
        scores = fair.oracle.per_sample(active, target)  # the same links either way
        assert scores == pytest.approx(plain.oracle.per_sample(active, target))
        per_stream = [scores[stream == s].mean() for s in ("a", "b")]
        assert fair.oracle(active, target) == pytest.approx(np.mean(per_stream))
        assert plain.oracle(active, target) == pytest.approx(scores.mean())
    assert any(
        fair.oracle(active, t) != pytest.approx(plain.oracle(active, t), abs=1e-3)
        for t in ("parity", "noise", "boxes")
    )
    mixed = fit_and_score(SPECS, data, FAST, folds=3, groups=groups, balanced=True)
    assert all(e.weights is not None for e in mixed.oracle.estimates)
    with pytest.raises(ValueError, match="weights of"):
        PooledOracle(fair.oracle.parts, [np.ones(2)] * len(fair.oracle.parts))
    with pytest.raises(ValueError, match="weights for"):
        cross_fit(SPECS, data, FAST, folds=3, weights=np.ones(5))


def _backwards(fn, items):
    """A map that trains the link sets in reverse order (as a pool may finish them)."""
    items = list(items)
    done = [fn(x) for x in reversed(items)]
    return list(reversed(done))


def test_the_link_sets_of_a_cross_fit_do_not_depend_on_the_order_they_are_trained_in():
    """What training them side by side in processes relies on: each seeds itself."""
    data, groups = outputs(48), ["a"] * 24 + ["b"] * 24
    calls: list[int] = []

    def counting(fn, items):
        items = list(items)
        calls.append(len(items))
        return _backwards(fn, items)

    serial = fit_and_score(SPECS, data, FAST, groups=groups)
    shuffled = fit_and_score(SPECS, data, FAST, groups=groups, train_map=counting)
    assert calls == [len(serial.fold_links) + 1]  # every fold's link set and the full one
    assert serial.scheme == shuffled.scheme == "mixed"
    for a, b in zip(
        [serial.linkset, *serial.fold_links], [shuffled.linkset, *shuffled.fold_links], strict=True
    ):
        ta, tb = a.to_bundle()[0], b.to_bundle()[0]
        assert ta.keys() == tb.keys()
        for name in ta:
            for param in ta[name]:
                assert ta[name][param].equal(tb[name][param]), (name, param)
    active = frozenset({"digit"})
    for m in ("parity", "noise", "boxes"):
        assert serial.oracle(active, m) == shuffled.oracle(active, m)
