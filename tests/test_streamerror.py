"""Margins from how an option differs between streams: frames of one stream are not independent
draws, so an option that is good on some streams only must not look as safe as one that is good
everywhere."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mlink.linkstore.schedule import Mode
from mlink.linkstore.streamerror import PSEUDO_STREAMS, between_streams
from mlink.linkstore.streamfit import Curve, Sample, StreamFit, fit_stream
from mlink.linkstore.streamplan import option
from mlink.topics.specs import BoxesSpec


def test_two_streams_that_disagree_completely_leave_half_a_point_of_error():
    # stream means 1 and 0, equal weights: sqrt(2 * (0.25 * 0.25 + 0.25 * 0.25)) = 0.5
    assert between_streams([1.0, 1.0, 0.0, 0.0], ["a", "a", "b", "b"]) == pytest.approx(0.5)


def test_streams_with_the_same_mean_leave_none_however_noisy_within():
    assert between_streams([1.0, 0.0, 0.0, 1.0], ["a", "a", "b", "b"]) == pytest.approx(0.0)


def test_one_stream_has_no_between_stream_error_and_nan_pairs_are_left_out():
    assert between_streams([0.1, 0.9, 0.5], ["a", "a", "a"]) == 0.0
    assert between_streams([1.0, np.nan, 0.0], ["a", "b", "b"]) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="2 scores for 3 stream labels"):
        between_streams([1.0, 0.0], ["a", "b", "c"])


def test_a_forecast_counts_one_more_stream_of_the_largest_variance():
    # five streams that all agree: no error for a plan's choice, but a forecast of the rest of
    # them keeps room for content none of them showed: sqrt(0.25 * 1 / ((5 + 1) * 5))
    agreeing = ([1.0] * 10, [s for s in "abcde" for _ in range(2)])
    assert between_streams(*agreeing) == 0.0
    assert PSEUDO_STREAMS == 1.0
    assert between_streams(*agreeing, PSEUDO_STREAMS) == pytest.approx(np.sqrt(0.25 / 30))
    # two streams at 1 and 0: per-stream variance 2 * 0.5**2 = 0.5, shrunk towards 0.25 by one
    # pseudo-stream: (2 * 0.5 + 0.25) / 3, over 2 streams
    apart = ([1.0, 1.0, 0.0, 0.0], ["a", "a", "b", "b"])
    assert between_streams(*apart, 1.0) == pytest.approx(np.sqrt((2 * 0.5 + 0.25) / 3 / 2))
    assert between_streams([0.2, 0.9], ["a", "a"], 1.0) == 0.0  # one stream: nothing to measure


def test_the_forecast_bound_of_an_option_uses_the_forecast_error_and_the_plan_does_not():
    steady = Curve("m", Mode("prior"), (1.0,) + (0.9,) * 4, (0,) + (60,) * 4, 0.1, predictive=0.2)
    choice = option(steady, 0, 0, 10.0, z=1.0, corr=4.0)
    assert choice.forecast == pytest.approx(0.9 - 0.2) and choice.bound == choice.forecast
    assert choice.lower > choice.forecast  # the plan still chooses on the narrower margin
    older = Curve.from_meta({k: v for k, v in steady.to_meta().items() if k != "predictive"})
    assert older.predictive is None and older.forecast_between == older.between
    assert Curve.from_meta(steady.to_meta()) == steady


def test_longer_streams_weigh_more():
    # a: 3 samples at 1, b: 1 sample at 0; weights 3/4 and 1/4, mean 0.75
    expect = np.sqrt(2 * ((0.75**2) * 0.25**2 + (0.25**2) * 0.75**2))
    assert between_streams([1, 1, 1, 0], ["a", "a", "a", "b"]) == pytest.approx(expect)


def test_an_option_good_on_some_streams_only_gets_the_wider_margin():
    head = Mode("head", "s")
    steady = Curve("m", head, (1.0,) + (0.8,) * 4, (0,) + (60,) * 4, 0.2)
    patchy = Curve("m", head, steady.agree, steady.support, 0.2, between=0.15)
    calm, risky = (option(c, 0, 0, 10.0, z=1.0, corr=4.0) for c in (steady, patchy))
    assert calm.estimate == pytest.approx(risky.estimate)
    assert risky.lower == pytest.approx(0.8 - 0.15)  # the streams' error is the margin now
    assert calm.lower > risky.lower


def test_the_fit_measures_it_and_bundles_carry_it():
    box = BoxesSpec()
    face = np.array([[0.2, 0.2, 0.4, 0.5, 0.9]], dtype=np.float32)
    empty = np.zeros((0, 5), dtype=np.float32)
    # the face detector fires on stream a only; "prior" (empty) is right on b, wrong on a
    samples = [
        Sample(s, t, {"face": face if s == "a" else empty, "other": empty})
        for s in ("a", "b")
        for t in range(8)
    ]
    fit = fit_stream({"face": box, "other": box}, samples, max_lag=4, folds=2)
    prior = next(c for c in fit.curves["face"] if c.mode == Mode("prior"))
    assert prior.between > 0.3
    meta = json.loads(json.dumps(fit.to_meta()))
    again = next(c for c in StreamFit.curves_from_meta(meta)["face"] if c.mode == Mode("prior"))
    assert again.between == pytest.approx(prior.between, abs=1e-6)
    assert again.predictive == pytest.approx(prior.predictive, abs=1e-6)
    # "other" never fires on either stream: no between-stream error, but a forecast's
    quiet = next(c for c in fit.curves["other"] if c.mode == Mode("prior"))
    assert quiet.between == 0.0 and quiet.predictive == pytest.approx(np.sqrt(0.25 / 6))
    reuse = next(c for c in fit.curves["other"] if c.mode == Mode("reuse"))
    assert reuse.predictive == pytest.approx(np.sqrt(0.25 / 6))  # memory modes carry it too
