"""The target guard's probe tally: evidence carried across re-plans, decay, no double counting."""

from __future__ import annotations

from dataclasses import replace

import pytest

from mlink.linkstore.liveguard import (
    LiveAgreement,
    ProbeTally,
    below_forecast,
    correction,
    forecast,
    same_option,
    unseen_share,
)
from mlink.linkstore.streamplan import StreamPlan, plan_for_targets
from tests.test_stream_synthesis import small_instance

TARGETS = {"a": 0.8, "b": 0.8, "c": 0.0}


def target_plan() -> tuple[StreamPlan, str]:
    ms, curves = small_instance()
    plan = plan_for_targets(curves, ms, TARGETS, periods=(0, 2, 3, 4))
    synthesized = [m for m, c in plan.choices.items() if c.period != 1 and TARGETS[m] > 0]
    assert synthesized
    return plan, synthesized[0]


def with_synthesized(plan: StreamPlan, model: str, value: float) -> StreamPlan:
    """``plan`` with ``model``'s option unchanged but its synthesized estimate ``value``."""
    c = plan.choices[model]
    choice = replace(c, estimate=c.runs + (1.0 - c.runs) * value)
    return replace(plan, choices={**plan.choices, model: choice})


def test_a_model_whose_option_survives_a_replan_keeps_its_evidence():
    plan, m = target_plan()
    live = LiveAgreement(plan)
    for _ in range(4):
        live.add(m, 0.5)
    kept = live.next_plan(plan, {})
    assert kept.counts[m] == 4 and kept.mean(m) == pytest.approx(0.5)
    always = replace(plan.choices[m], period=1, phase=0, runs=1.0)
    moved = live.next_plan(replace(plan, choices={**plan.choices, m: always}), {})
    assert m not in moved.counts  # a model that now always runs starts over
    assert not same_option(plan.choices[m], always)


def test_carried_evidence_is_not_counted_twice_in_the_corrections():
    plan, m = target_plan()
    planned = plan.choices[m].synthesized
    live = LiveAgreement(plan)
    for _ in range(5):
        live.add(m, 0.5)
    first = live.corrections()[m]
    assert first == pytest.approx(correction(0.5, planned, 5, 2.0))
    # the re-plan made with ``first`` keeps the option; its estimate carries the factor
    again = live.next_plan(with_synthesized(plan, m, planned * first), {m: first})
    for _ in range(3):
        again.add(m, 0.5)
    # all eight probes once, on the factor the option started with (1), not first * (...)
    assert again.corrections()[m] == pytest.approx(correction(0.5, planned, 8, 2.0))


def test_decay_weighs_recent_probes_more_and_counts_effective_probes():
    plan, m = target_plan()
    live = LiveAgreement(plan, decay=0.5)
    for score in (1.0, 1.0, 1.0, 0.0, 0.0):
        live.add(m, score)
    weights = [0.0625, 0.125, 0.25, 0.5, 1.0]
    assert live.counts[m] == pytest.approx(sum(weights))
    assert live.mean(m) == pytest.approx(sum(weights[:3]) / sum(weights))
    plain = LiveAgreement(plan)
    for score in (1.0, 1.0, 1.0, 0.0, 0.0):
        plain.add(m, score)
    assert live.mean(m) < plain.mean(m)  # the recent misses dominate


def test_a_model_that_falls_below_its_target_late_is_caught_despite_a_good_start():
    """The DNN run's miss: a good start, then a long slump. The plain mean over all probes stays
    above the bound; with decay the slump shows."""
    plan, m = target_plan()
    scores = [1.0] * 12 + [0.3] * 6
    plain, decayed = LiveAgreement(plan), LiveAgreement(plan, decay=0.8)
    for score in scores:
        plain.add(m, score)
        decayed.add(m, score)
    targets = {m: 0.8}
    assert m not in plain.failing(targets)
    assert m in decayed.failing(targets)
    assert "below its target 0.800" in decayed.failing(targets)[m]


def test_the_trainers_tally_carries_a_kept_option_and_reports_it() -> None:
    """operators.live.LiveAgreement: what the trainer publishes on the control topic."""
    from mlink.operators.live import LiveAgreement as TrainerTally

    tally = TrainerTally(decay=0.5)
    options = {"eyes": "4:reuse", "body": "0:prior"}
    tally.add((1, 1), {"eyes": 1.0, "body": 0.0}, options, {"eyes": 0.9})
    tally.add((1, 1), {"eyes": 0.0, "body": 0.0}, options, {"eyes": 0.9})
    assert tally.means()["eyes"] == pytest.approx(0.5 / 1.5)
    # a new plan keeps eyes' option (and the factor it started with), moves body's
    tally.add((2, 1), {"eyes": 1.0}, {"eyes": "4:reuse", "body": "2:reuse"}, {"eyes": 0.7})
    report = tally.report()
    assert report["probes"] == 1 and "body" not in report["live_agreement"]
    assert report["live_counts"]["eyes"] == pytest.approx(1.75)
    assert report["live_started"] == {"eyes": 0.9}
    tally.add((3, 1), {"eyes": 1.0}, None, {"eyes": "bad"})  # no schedule: start over
    assert tally.report() == {"live_agreement": {"eyes": 1.0}, "probes": 1}


def test_the_probe_tally_is_a_decayed_mean_and_forgets_what_it_is_told() -> None:
    tally = ProbeTally(0.5)
    for score in (1.0, 0.0, 1.0):
        tally.add("a", score)
    tally.add("b", 0.25)
    # weights 0.25, 0.5, 1 on the scores 1, 0, 1
    assert tally.counts["a"] == pytest.approx(1.75)
    assert tally.mean("a") == pytest.approx(1.25 / 1.75)
    assert tally.means() == {"a": pytest.approx(1.25 / 1.75), "b": 0.25}
    tally.keep({"b"})
    assert tally.mean("a") is None and tally.means() == {"b": 0.25}
    with pytest.raises(ValueError, match="decay"):
        ProbeTally(0.0)


def test_a_model_is_below_its_forecast_only_when_the_upper_bound_is():
    # run 21's eyes: 0.41 against 0.65; the bound 0.41 + sqrt(0.41 * 0.59 / n) is 0.656 at n = 4
    assert below_forecast(0.41, 5, 0.65, z=1.0) and not below_forecast(0.41, 4, 0.65, z=1.0)
    assert not below_forecast(0.0, 1, 0.65, z=1.0)  # one probe is not evidence
    assert not below_forecast(0.60, 4, 0.65, z=1.0)  # within the noise of four probes
    assert below_forecast(0.60, 400, 0.65, z=1.0)


def test_the_plan_names_the_models_its_probes_put_below_their_forecast():
    plan, m = target_plan()
    live = LiveAgreement(with_synthesized(plan, m, 0.9))
    for _ in range(3):
        live.add(m, 0.9)
    assert live.below_forecast() == {}
    for _ in range(5):
        live.add(m, 0.2)
    why = live.below_forecast()
    assert list(why) == [m] and "forecast 0.900" in why[m]


def test_the_forecast_rescales_only_the_synthesized_share_and_caps_it_at_one():
    # a runs half the frames and is synthesized at 0.8; b always runs
    estimates, runs, synth = {"a": 0.9, "b": 1.0}, {"a": 0.5, "b": 1.0}, {"a": 0.8}
    assert forecast(estimates, runs, synth, {}) == pytest.approx(0.95)  # no probes: the plan
    assert forecast(estimates, runs, synth, {"a": 0.5}) == pytest.approx((0.5 + 0.2 + 1) / 2)
    assert forecast(estimates, runs, synth, {"a": 2.0}) == pytest.approx(1.0)  # never above 1
    with pytest.raises(ValueError, match="at least one model"):
        forecast({}, {}, {}, {})


def test_the_forecast_takes_what_rests_on_the_warm_up_at_the_plans_lower_bound():
    # a's lower bound 0.8 over all frames: 0.6 where it is synthesized (runs 0.5)
    estimates, runs, synth = {"a": 0.9, "b": 1.0}, {"a": 0.5, "b": 1.0}, {"a": 0.8}
    lower = {"a": 0.8, "b": 1.0}
    assert forecast(estimates, runs, synth, {}, lower) == pytest.approx(0.9)  # no probe yet
    assert forecast(estimates, runs, synth, {}, lower, {"a": 0.0}) == pytest.approx(0.95)
    # half the evidence is the warm-up's: that half moves from 0.8 to the bound's 0.6
    half = forecast(estimates, runs, synth, {}, lower, {"a": 0.5})
    assert half == pytest.approx((0.5 + 0.5 * (0.8 - 0.5 * 0.2) + 1) / 2)
    assert unseen_share(0, 2) == 1.0 and unseen_share(6, 2) == pytest.approx(0.25)
    assert unseen_share(3, 0) == 0.0 and unseen_share(0, 2, corrected=True) == 0.0


def test_the_plans_forecast_follows_its_probes_from_the_lower_bound():
    plan, m = target_plan()
    live = LiveAgreement(plan)
    lowers = plan.lower()
    assert live.forecast() == pytest.approx(sum(lowers.values()) / len(lowers))  # nothing seen
    c = plan.choices[m]
    for _ in range(6):
        live.add(m, 0.5 * c.synthesized)  # probes see half of what the plan expects
    factor = live.corrections()[m]  # shrunk towards 1 by the prior's pseudo-probes
    assert 0.5 < factor < 1.0
    floor = (c.lower - c.runs) / (1 - c.runs)
    synth = c.synthesized * factor - 2 / (6 + 2) * (c.synthesized - floor)
    others = sum(v for k, v in lowers.items() if k != m)
    expected = (others + c.runs + (1 - c.runs) * synth) / len(plan.choices)
    assert live.forecast() == pytest.approx(expected)


def test_a_forecast_corrected_by_a_replan_is_not_taken_down_to_the_bound_again():
    plan, m = target_plan()
    c = plan.choices[m]
    corrected_plan = LiveAgreement(plan, factors={m: 0.9})  # planned with m's probes in
    fresh = LiveAgreement(plan)
    assert corrected_plan.forecast() > fresh.forecast()
    others = sum(v for k, v in plan.lower().items() if k != m)
    assert corrected_plan.forecast() == pytest.approx((others + c.estimate) / len(plan.choices))
