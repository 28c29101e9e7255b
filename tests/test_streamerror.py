"""Margins from how an option differs between streams: frames of one stream are not independent
draws, so an option that is good on some streams only must not look as safe as one that is good
everywhere."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mlink.linkstore.schedule import Mode
from mlink.linkstore.streamerror import between_streams
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
