"""Margins from how an option differs between streams: frames of one stream are not independent
draws, so an option that is good on some streams only must not look as safe as one that is good
everywhere."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mlink.linkstore.schedule import Mode
from mlink.linkstore.store import LinkStore
from mlink.linkstore.streamerror import (
    PSEUDO_STREAMS,
    between_streams,
    stream_mean,
    stream_weights,
)
from mlink.linkstore.streamfit import Curve, Sample, StreamFit, fit_stream, head_folds
from mlink.linkstore.streamplan import option
from mlink.linkstore.training import TrainConfig
from mlink.operators.trainer import LinkTrainer, train_bundle
from mlink.operators.training_process import TrainingJob, run_training_job
from mlink.topics.records import FrameResult, ModelResult
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


def test_balanced_weights_count_every_stream_once_whatever_its_samples():
    # a backlog gave stream a 8 warm-up frames and stream b 2: by sample a decides 0.8 of the
    # mean, balanced each stream half
    scores, streams = [1.0] * 8 + [0.0] * 2, ["a"] * 8 + ["b"] * 2
    assert stream_mean(scores, streams, balanced=False) == pytest.approx(0.8)
    assert stream_mean(scores, streams, balanced=True) == pytest.approx(0.5)
    assert stream_weights(streams, True).tolist() == [0.125] * 8 + [0.5] * 2
    assert stream_weights(streams, False).tolist() == [1.0] * 10
    # NaN pairs are left out before weighing: b's one valid pair still weighs half
    assert stream_mean([1.0, 1.0, np.nan, 0.0], ["a", "a", "b", "b"], True) == pytest.approx(0.5)
    # the error of the balanced mean: stream means 1 and 0, shares 1/2 each, as equal counts give
    assert between_streams(scores, streams, balanced=True) == pytest.approx(0.5)
    assert between_streams(scores, streams) < 0.5


def _skewed_samples() -> list[Sample]:
    """Stream a fires a face on every frame (8 samples), stream b never (2 samples)."""
    face = np.array([[0.2, 0.2, 0.4, 0.5, 0.9]], dtype=np.float32)
    empty = np.zeros((0, 5), dtype=np.float32)
    return [
        Sample(s, t, {"face": face if s == "a" else empty, "other": empty})
        for s, n in (("a", 8), ("b", 2))
        for t in range(n)
    ]


def test_a_balanced_fit_estimates_as_if_every_stream_had_sent_alike():
    box = BoxesSpec()
    plain = fit_stream({"face": box, "other": box}, _skewed_samples(), max_lag=4, folds=2)
    fair = fit_stream(
        {"face": box, "other": box}, _skewed_samples(), max_lag=4, folds=2, balanced=True
    )

    def prior(fit: StreamFit) -> Curve:
        return next(c for c in fit.curves["face"] if c.mode == Mode("prior"))

    # the prior (a face: a fires on 8 of 10 samples) is right on a, wrong on b
    assert prior(plain).agree[1] == pytest.approx(0.8)
    assert prior(fair).agree[1] == pytest.approx(0.5)
    assert prior(fair).between == pytest.approx(0.5)
    # memory modes too: reuse is right on both streams, so both ways give 1
    reuse = [next(c for c in f.curves["face"] if c.mode == Mode("reuse")) for f in (plain, fair)]
    assert reuse[0].agree[1] == reuse[1].agree[1] == pytest.approx(1.0)


def test_with_as_many_samples_per_stream_balancing_changes_nothing():
    box = BoxesSpec()
    face = np.array([[0.2, 0.2, 0.4, 0.5, 0.9]], dtype=np.float32)
    empty = np.zeros((0, 5), dtype=np.float32)
    samples = [
        Sample(s, t, {"face": face if (s == "a") == (t % 3 == 0) else empty, "other": face})
        for s in ("a", "b", "c")
        for t in range(6)
    ]
    specs = {"face": box, "other": box}
    plain = fit_stream(specs, samples, max_lag=4, folds=2)
    fair = fit_stream(specs, samples, max_lag=4, folds=2, balanced=True)
    for t in specs:
        for a, b in zip(plain.curves[t], fair.curves[t], strict=True):
            assert a.mode == b.mode
            assert a.agree == pytest.approx(b.agree)
            assert a.between == pytest.approx(b.between)
            assert a.predictive == pytest.approx(b.predictive)


def test_a_cascade_is_priced_on_the_balanced_share_its_source_fires_on():
    box = BoxesSpec()
    face = np.array([[0.2, 0.2, 0.4, 0.5, 0.9]], dtype=np.float32)
    empty = np.zeros((0, 5), dtype=np.float32)
    # the source fires on every frame of a (8 samples) and on none of b..e (2 samples each); the
    # target is on every other frame of a
    samples = [
        Sample(s, t, {"face": face if s == "a" else empty, "other": face if on else empty})
        for s, n in (("a", 8), ("b", 2), ("c", 2), ("d", 2), ("e", 2))
        for t in range(n)
        for on in [s == "a" and t % 2 == 0]  # every other frame: reuse and the prior miss it
    ]

    def runs(balanced: bool) -> float:
        fit = fit_stream(
            {"face": box, "other": box}, samples, max_lag=4, folds=2, gates=True, balanced=balanced
        )
        gate = next(c for c in fit.curves["other"] if c.mode == Mode("gate", "face"))
        return gate.runs, gate.cost_runs

    # by sample it fires on half the frames; by stream on one in five (priced + one standard
    # error)
    assert runs(False) == pytest.approx((0.5, 0.5 + 0.3125))
    assert runs(True) == pytest.approx((0.2, 0.2 + 0.2))


def _result(sample: Sample) -> FrameResult:
    """A probe-like result: every model executed on the sample's frame."""
    return FrameResult(
        frame_id=f"{sample.stream}:{sample.seq}",
        stream_id=sample.stream,
        seq=sample.seq,
        epoch=0,
        results=tuple(
            ModelResult(model=m, output=o, status="executed") for m, o in sample.outputs.items()
        ),
        degraded=False,
        emitted_at=0.0,
    )


def test_the_live_trainer_weighs_every_stream_the_same_unless_told_not_to(tmp_path):
    face = np.array([[0.2, 0.2, 0.4, 0.5, 0.9]], dtype=np.float32)
    empty = np.zeros((0, 5), dtype=np.float32)
    samples = [
        Sample(s, t, {"face": face if s == "a" else empty, "other": empty})
        for s, n in (("a", 8), ("b", 3), ("c", 3))
        for t in range(n)
    ]
    specs = {"face": BoxesSpec(), "other": BoxesSpec()}
    _, meta = train_bundle(
        specs,
        {m: [x.outputs[m] for x in samples] for m in specs},
        TrainConfig(epochs=2, seed=0),
        "weighted",
        {"face": {"ms": 10.0}, "other": {"ms": 10.0}},
        groups=[x.stream for x in samples],
        seqs=[x.seq for x in samples],
    )
    curves = StreamFit.curves_from_meta(meta["stream"])

    def prior(fitted: dict[str, list[Curve]]) -> Curve:
        return next(c for c in fitted["face"] if c.mode == Mode("prior"))

    fair = fit_stream(specs, samples, balanced=True).curves
    plain = fit_stream(specs, samples).curves
    assert prior(curves).agree == pytest.approx(prior(fair).agree)
    assert prior(curves).agree[1] != pytest.approx(prior(plain).agree[1])
    # the setting reaches the trainer and its training jobs (LinkSettings.balance_streams)
    trainer = LinkTrainer(
        specs, LinkStore(tmp_path), TrainConfig(epochs=2), 4, stream=True, balance_streams=False
    )
    for x in samples:
        trainer.add(_result(x))
    job = TrainingJob.from_trainer(trainer, save_in_child=False)
    assert job.balance_streams is False
    meta = run_training_job(job).meta
    assert meta is not None
    by_sample = StreamFit.curves_from_meta(meta["stream"])
    assert prior(by_sample).agree == pytest.approx(prior(plain).agree)


def test_detector_heads_are_scored_out_of_fold_even_when_streams_have_one_sample_each():
    one_each = head_folds([f"s{i}" for i in range(8)], 3)
    assert one_each.tolist() == [0, 0, 0, 0, 1, 1, 1, 1]  # the pooled samples in halves
    assert head_folds(["a"] * 5, 3).tolist() == [0, 0, 0, 1, 1]  # too few for 2 x 3 folds
    assert head_folds(["a"] * 6 + ["b"] * 6, 3).tolist() == [0, 0, 1, 1, 2, 2] * 2  # per stream
    assert head_folds(["a"], 3).tolist() == [0]  # one sample: nothing to hold out
