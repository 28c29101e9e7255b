"""Stream synthesis in the operators, without a broker: the trainer fits it into a link version,
the controller publishes a schedule (for a budget or for accuracy targets), every worker plans
frames from it alike, and the frame operator's synthesis fills in the models that did not run
and scores probes against what the plan would have made."""

from __future__ import annotations

import dataclasses
import functools

import numpy as np
import pytest

from mlink.linkstore.bundle import load_bundle
from mlink.linkstore.liveguard import correction
from mlink.linkstore.problem import InfeasibleBudget
from mlink.linkstore.schedule import EXTRA_KEY, Schedule
from mlink.linkstore.store import LinkStore
from mlink.linkstore.streamlinks import StreamMemory
from mlink.linkstore.training import TrainConfig
from mlink.operators import LinkSettings, MLink, Model, Settings
from mlink.operators.control_operators import _apply
from mlink.operators.controller import UNMET, decide, guard_decision, unmet_models
from mlink.operators.controller_rules import replan_for
from mlink.operators.joiner import Executed, FrameWork, build_results
from mlink.operators.state import KEPT_SCHEDULES, ControlState
from mlink.operators.stream_decision import (
    live_corrections,
    live_forecast,
    plan_promise,
    target_misses,
)
from mlink.operators.stream_synthesis import synthesize_streams
from mlink.operators.trainer import train_bundle
from mlink.topics.codec import decode_record, encode_record
from mlink.topics.records import ControlMessage, FrameResult
from tests.test_stream_synthesis import SPECS, frame_outputs

MODELS = sorted(SPECS)
COSTS = {"face": {"ms": 10.0}, "eyes": {"ms": 30.0}, "light": {"ms": 20.0}}


@pytest.fixture(scope="module")
def links(tmp_path_factory: pytest.TempPathFactory):
    """A link version trained on 2 streams x 30 consecutive warm-up frames, with seqs."""
    store = LinkStore(tmp_path_factory.mktemp("links"))
    frames = [(f"s{k}", t) for k in range(2) for t in range(30)]
    outputs = {m: [frame_outputs(t, int(s[1]))[m] for s, t in frames] for m in MODELS}
    tensors, meta = train_bundle(
        SPECS,
        outputs,
        TrainConfig(epochs=5, seed=0),
        "weighted",
        COSTS,
        groups=[s for s, _ in frames],
        seqs=[t for _, t in frames],
    )
    return load_bundle(store, store.save(tensors, meta))


def test_a_version_fitted_with_seqs_carries_stream_synthesis_and_curves(links) -> None:
    assert links.stream is not None and links.stream.linkset is links.linkset
    assert set(links.curves) == set(MODELS)
    assert all(c.agree[0] == 1.0 for cs in links.curves.values() for c in cs)


def test_the_controller_publishes_a_schedule_that_fits_the_budget(links) -> None:
    message = decide(MODELS, {}, links, {"fraction": 0.5}, 1, probe_every=8, stream=True)
    schedule = message.extra[EXTRA_KEY]
    assert set(schedule["periods"]) == set(MODELS)
    assert message.extra["cost"]["ms"] <= 0.5 * 60.0 + 1e-9
    assert set(message.extra["predicted"]) == set(MODELS)
    # what the plan was chosen on, so that a plan that flips between runs can be explained
    assert message.extra["budget_ms"] == pytest.approx(0.5 * 60.0)
    assert message.extra["model_ms"] == pytest.approx({m: COSTS[m]["ms"] for m in MODELS})
    state = ControlState(MODELS, 8)
    assert state.apply(message)
    assert not state.warming_up and state.schedule is not None
    plans = [state.plan(seq) for seq in range(32)]
    assert all(p.active == tuple(MODELS) for p in plans if p.probe)
    assert {p.probe for p in plans} == {True, False}
    assert len({p.active for p in plans if not p.probe}) >= 1
    again = ControlState(MODELS, 8)  # a restarted worker replays the same log and plans alike
    again.apply(message)
    assert [again.plan(seq) for seq in range(32)] == plans


def test_a_plan_without_room_for_a_cost_rise_says_which_plan_would_follow(links) -> None:
    tight = decide(MODELS, {}, links, {"fraction": 0.25}, 1, probe_every=8, stream=True)
    fragile = tight.extra["fragile"]  # 5% dearer, eyes would run every 15th frame
    assert fragile["cost_rise"] == 0.05 and fragile["lower_then"] < fragile["lower_now"] - 0.01
    assert set(fragile["changes"]) <= set(MODELS) and fragile["changes"]
    roomy = decide(MODELS, {}, links, {"fraction": 0.5}, 1, probe_every=8, stream=True)
    assert "fragile" not in roomy.extra
    targets = decide(MODELS, {}, links, {"target_agreement": 0.5}, 1, probe_every=8, stream=True)
    assert "fragile" not in targets.extra  # a target plan is the cheapest: no budget edge
    # the same costs declared in the config: they do not move, so the edge is no risk
    declared = {m: {"ms": float(links.model_costs[m]["ms"])} for m in MODELS}
    fixed = decide(MODELS, declared, links, {"fraction": 0.25}, 1, probe_every=8, stream=True)
    assert fixed.active == tight.active and "fragile" not in fixed.extra


def test_accuracy_targets_plan_the_cheapest_schedule_and_say_when_none_meets_them(links) -> None:
    loose = decide(MODELS, {}, links, {"target_agreement": 0.5}, 1, probe_every=8, stream=True)
    tight = decide(MODELS, {}, links, {"target_agreement": 0.99}, 1, probe_every=8, stream=True)
    assert loose.extra["cost"]["ms"] <= tight.extra["cost"]["ms"]
    assert min(loose.extra["lower"].values()) >= 0.5 - 1e-9
    with pytest.raises(InfeasibleBudget):
        decide(
            MODELS, {}, links, {"target_agreement": 0.999, "ms": 1.0}, 1, probe_every=8, stream=True
        )


@pytest.mark.parametrize("stream", [True, False])
def test_a_target_for_one_model_with_a_compute_bound_spends_the_bound_on_the_others(
    links, stream: bool
) -> None:
    """Stop 45's audit: `--target-for density=0.95 --fraction 0.5` planned the cheapest plan
    meeting that one target and left another model at 26%. The target is a floor now; the
    bound is spent as a budget without targets would spend it."""
    model = "face"  # alone, its cheapest stream plan leaves eyes at 21% (8.75 of 60 ms)
    alone = decide(MODELS, {}, links, {f"target_agreement:{model}": 0.6}, 1, probe_every=8,
                   stream=stream)  # fmt: skip
    full = sum(links.model_costs[m]["ms"] for m in MODELS)
    bound = {"ms": 0.5 * full, f"target_agreement:{model}": 0.6}
    both = decide(MODELS, {}, links, bound, 1, probe_every=8, stream=stream)
    key = "lower" if stream else "predicted"
    assert both.extra[key][model] >= 0.6 - 1e-9
    assert both.extra["cost"]["ms"] <= bound["ms"] * (1 + 1e-9)
    mean = sum(both.extra["predicted"].values()) / len(MODELS)
    assert mean >= sum(alone.extra["predicted"].values()) / len(MODELS) - 1e-9
    if stream:  # the case of the audit: the bound lifts the model without a target
        assert both.extra["predicted"]["eyes"] > alone.extra["predicted"]["eyes"] + 0.2
    budget_only = decide(MODELS, {}, links, {"ms": bound["ms"]}, 1, probe_every=8, stream=stream)
    if budget_only.extra[key][model] >= 0.6:  # the floor binds nothing: the budget's own plan
        assert both.active == budget_only.active


def test_targets_without_stream_synthesis_pick_the_cheapest_active_set_that_meets_them(
    links,
) -> None:
    message = decide(MODELS, {}, links, {"target_agreement:light": 0.5}, 1)
    assert EXTRA_KEY not in message.extra
    assert message.extra["predicted"]["light"] >= 0.5
    everything = decide(MODELS, {}, links, {"target_agreement": 1.0}, 1)
    assert all(v >= 1.0 for v in everything.extra["predicted"].values())
    assert "light" not in everything.active  # constant: its links agree on every frame


def test_a_malformed_schedule_is_rejected_and_changes_nothing(links) -> None:
    message = decide(MODELS, {}, links, {"fraction": 0.5}, 1, probe_every=8, stream=True)
    bad = dict(message.extra)
    bad[EXTRA_KEY] = {**bad[EXTRA_KEY], "periods": {"face": -1}}
    forged = dataclasses.replace(message, extra=bad)
    state = ControlState(MODELS, 8)
    outcome = state.apply(forged)
    assert outcome.rejected and "schedule" in outcome.reason
    assert state.warming_up and state.schedule is None


def test_frames_keep_the_schedule_of_the_epoch_they_were_planned_under(links) -> None:
    """The split layout's link operator synthesizes a frame after later epochs may have
    applied; the state holds the recent epochs' schedules for it, and forgets old ones."""
    message = decide(MODELS, {}, links, {"fraction": 0.5}, 1, probe_every=8, stream=True)
    state = ControlState(MODELS, 8)
    last = KEPT_SCHEDULES + 3
    for epoch in range(1, last + 1):
        assert state.apply(dataclasses.replace(message, epoch=epoch)).plan_changed
    assert state.schedule_of(last) is state.schedule is not None
    assert state.schedule_of(last - KEPT_SCHEDULES + 1) is not None
    assert state.schedule_of(last - KEPT_SCHEDULES) is None  # too old: the paper's links
    assert len(state.schedules) == KEPT_SCHEDULES


def test_the_frame_operator_synthesizes_what_did_not_run_and_scores_probes(links) -> None:
    message = decide(MODELS, {}, links, {"fraction": 0.4}, 1, probe_every=4, stream=True)
    state = ControlState(MODELS, 4)
    state.apply(message)
    memory = StreamMemory()
    warm = ControlState(MODELS, 4)  # warm-up frames seed the memory
    works = [_work(warm, "s0", t) for t in range(4)]
    assert synthesize_streams(works, None, lambda v: links.stream, memory, SPECS) == [None] * 4
    works = [_work(state, "s0", t) for t in range(4, 16)]
    streamed = synthesize_streams(works, state.schedule, lambda v: links.stream, memory, SPECS)
    results = build_results(works, MODELS, {}, 0.0, streamed=streamed)
    for work, result in zip(works, results, strict=True):
        assert decode_record(encode_record(result), FrameResult) is not None  # what consumers read
        statuses = {r.model: r.status for r in result.results}
        assert {m for m, s in statuses.items() if s == "executed"} == set(work.plan.active)
        assert "missing" not in statuses.values() and not result.degraded
        if result.probe:
            scored = {r.model: r.agreement for r in result.results}
            synthesized_somewhere = set(MODELS) - set(state.schedule.always)
            assert all(0.0 <= scored[m] <= 1.0 for m in synthesized_somewhere), scored


def _work(state: ControlState, stream: str, seq: int) -> FrameWork:
    plan = state.plan(seq)
    real = frame_outputs(seq, int(stream[1]))
    outcomes = {m: Executed(np.asarray(real[m]), 1.0) for m in plan.active}
    return FrameWork(f"{stream}:{seq}", stream, seq, None, plan, outcomes)


def test_a_model_below_its_target_on_live_probes_is_named_and_corrected(links) -> None:
    message = decide(MODELS, {}, links, {"target_agreement": 0.6}, 1, probe_every=8, stream=True)
    state = ControlState(MODELS, 8)
    state.apply(message)
    schedule = state.schedule
    synthesized = [m for m in MODELS if schedule.share(m) < 1.0]
    assert synthesized, schedule
    model = synthesized[0]
    bad = target_misses(schedule, {model: 0.0}, 20, {model: 0.95})
    assert set(bad) == {model} and "below its target 0.950" in bad[model]
    assert target_misses(schedule, {model: 0.0}, 1, {model: 0.95}) == {}  # too few probes
    assert target_misses(schedule, {model: 1.0}, 20, {model: 0.95}) == {}
    planned = state.plan_extra["predicted_synthesized"][model]
    first = live_corrections(state.plan_extra, {model: planned / 2}, 8, [model])
    assert 0.5 < first[model] < 1.0  # shrunk towards 1 by the pseudo-probes
    again = live_corrections(
        {**state.plan_extra, "corrections": first}, {model: planned / 2}, 8, [model]
    )
    assert again[model] < first[model]  # compounds across re-plans
    # evidence carried over a re-plan that kept the option: counted once, on the start factor
    carried = live_corrections(
        {**state.plan_extra, "corrections": first},
        {model: planned / 2},
        3,
        [model],
        counts={model: 12.0},
        started={model: 1.0},
    )
    unfactored = planned / first[model]  # what the plan expected before the factor
    assert carried[model] == pytest.approx(correction(planned / 2, unfactored, 12, 2))
    assert target_misses(schedule, {model: 0.0}, 1, {model: 0.95}, counts={model: 9.0})
    replanned = decide(
        MODELS,
        {},
        links,
        {"target_agreement": 0.6},
        2,
        probe_every=8,
        stream=True,
        corrections={model: 0.01},
    )
    assert Schedule.from_extra(replanned.extra).share(model) > schedule.share(model)


def test_a_target_miss_that_no_plan_within_the_compute_bound_fixes_keeps_the_bound(links) -> None:
    """Targets and an ms bound: the guard's fix for a model below target costs more than the
    bound. The bound holds; the most accurate plan within it runs and says which models stay
    below target (before, the controller only logged a refusal and published nothing)."""
    free = decide(MODELS, {}, links, {"target_agreement": 0.9}, 1, probe_every=8, stream=True)
    budget = {"target_agreement": 0.9, "ms": free.extra["cost"]["ms"] * 1.001}
    state = ControlState(MODELS, 8)
    state.apply(decide(MODELS, {}, links, budget, 1, probe_every=8, stream=True))
    model = sorted(state.plan_extra["predicted_synthesized"])[0]
    misses = target_misses(state.schedule, {model: 0.2}, 20, {m: 0.9 for m in MODELS})
    assert set(misses) == {model}
    corrections = live_corrections(state.plan_extra, {model: 0.2}, 20, [model])
    decide_for = functools.partial(
        decide, MODELS, {}, links, epoch=2, probe_every=8, stream=True, corrections=corrections
    )
    with pytest.raises(InfeasibleBudget):  # a budget change or new links: refused as before
        guard_decision(decide_for, budget, None, [], state.plan_extra)
    decision, reason = guard_decision(decide_for, budget, misses[model], [model], state.plan_extra)
    assert decision.budget == budget and decision.extra["cost"]["ms"] <= budget["ms"]
    assert unmet_models(decision.extra) == [model]
    assert reason.startswith(misses[model]) and f"{model} below target" in reason
    assert f"within {budget['ms']:g} ms/frame" in reason and "within the compute bound" in reason
    assert state.apply(decision).status == "applied" and state.budget == budget
    # new links or a restated budget, under the plan that left eyes below target: its carried
    # corrections keep the targets out of reach, and refusing would keep the old links for good
    again, why = guard_decision(decide_for, budget, None, [], state.plan_extra)
    assert unmet_models(again.extra) == [model] and why.startswith("no schedule meets")
    assert unmet_models({UNMET: ["x", 3]}) == ["x"] and unmet_models({UNMET: "x"}) == []


def test_the_forecast_with_probes_starts_at_the_forecast_bound_and_follows_probes(links) -> None:
    message = decide(MODELS, {}, links, {"fraction": 0.5}, 1, probe_every=8, stream=True)
    extra = message.extra
    synthesized = sorted(extra["predicted_synthesized"])
    assert synthesized and set(extra["runs"]) == set(synthesized)
    lower = extra["forecast"]  # what the plan promises: never above the bound it chose on
    assert all(lower[m] <= extra["lower"][m] + 1e-12 for m in MODELS)
    assert any(lower[m] < extra["lower"][m] for m in synthesized)  # the pseudo-stream widens it
    assert live_forecast(extra, {}, 0) == pytest.approx(sum(lower.values()) / len(MODELS))
    model = synthesized[0]
    planned, runs = extra["predicted_synthesized"][model], extra["runs"][model]
    live = {model: planned / 2}
    factor = live_corrections(extra, live, 8, [model])[model]
    floor = (lower[model] - runs) / (1 - runs)
    synth = planned * factor - 2 / (8 + 2) * (planned - floor)
    others = sum(v for m, v in lower.items() if m != model)
    expected = (others + runs + (1 - runs) * synth) / len(MODELS)
    assert live_forecast(extra, live, 8) == pytest.approx(expected)
    assert live_forecast(extra, live, 8) < extra["objective"]
    before_forecast = {k: v for k, v in extra.items() if k != "forecast"}  # the lower bound
    assert live_forecast(before_forecast, {}, 0) == pytest.approx(
        sum(extra["lower"].values()) / len(MODELS)
    )
    before_bounds = {k: v for k, v in before_forecast.items() if k != "lower"}  # the estimate
    assert live_forecast(before_bounds, {}, 0) == pytest.approx(extra["objective"])
    # what the plan promises (`mlink status`, the `bound` gauge, the run summary): the bounds'
    # mean, under its estimate; a plan without bounds promises nothing beyond its estimate
    assert plan_promise(extra) == pytest.approx(sum(lower.values()) / len(MODELS))
    assert plan_promise(extra) < extra["objective"]
    assert plan_promise(before_forecast) == pytest.approx(live_forecast(before_forecast, {}, 0))
    assert plan_promise(before_bounds) is None
    older = {k: v for k, v in extra.items() if k != "runs"}  # a plan from before run shares
    assert live_forecast(older, live, 8) is None
    for forged in ({"predicted": {model: "x"}}, {"runs": {model: None}}, {"runs": {}}):
        assert live_forecast({**extra, **forged}, live, 8) is None  # a status read carries on


def test_a_paper_link_plan_carries_its_content_table_and_a_worker_accepts_it(links) -> None:
    """Without stream synthesis the controller sends each synthesized model's estimate per
    content signature; with nothing counted yet its forecast is the plan's estimate."""
    from mlink.linkstore.content_forecast import ContentTable

    message = decide(MODELS, {}, links, {"fraction": 0.4}, 1)
    table = ContentTable.from_meta(message.extra["content"], MODELS)
    active = set(message.active)
    assert set(table.detectors) == active & {"face", "eyes"} and table.runs == len(active)
    predicted = message.extra["predicted"]
    synthesized = {m: predicted[m] for m in MODELS if m not in active}
    assert table.overall == pytest.approx(synthesized, abs=1e-6)  # rounded on the wire
    forecast = table.forecast([0, 0, 0, 0]).value
    assert forecast == pytest.approx(np.mean(list(predicted.values())), abs=1e-6)
    state = ControlState(MODELS, 8)
    assert not state.apply(message).rejected
    # stream plans have probes for this and carry none
    streamed = decide(MODELS, {}, links, {"fraction": 0.4}, 1, probe_every=8, stream=True)
    assert "content" not in streamed.extra


def test_a_paper_link_plan_without_room_for_a_cost_rise_says_which_set_would_follow(links) -> None:
    best = decide(MODELS, {}, links, {"fraction": 1.0}, 1)  # eyes and face: 40 ms and links
    assert best.active == ("eyes", "face")
    cost = best.extra["cost"]["ms"]  # the links' ms are timed: budgets relative to the plan
    roomy = decide(MODELS, {}, links, {"ms": cost * 1.2}, 1)
    assert roomy.active == best.active and "fragile" not in roomy.extra
    tight = decide(MODELS, {}, links, {"ms": cost * 1.02}, 1)
    assert tight.active == best.active
    fragile = tight.extra["fragile"]
    assert fragile["basis"] == "expected agreement" and fragile["changes"] == {
        "face": "synthesized"
    }
    assert fragile["lower_then"] < fragile["lower_now"] == pytest.approx(tight.extra["objective"])
    targets = decide(MODELS, {}, links, {"target_agreement": 0.5}, 1)
    assert "fragile" not in targets.extra  # the cheapest plan that meets them: no budget edge


def test_a_report_on_a_plan_the_controller_replaced_replans_nothing(links, tmp_path) -> None:
    """The race CI hit: a backlog's probes bring two agreement reports on epoch 1; the controller
    re-plans on the first (epoch 2), and the second reaches the log before the epoch-2 plan, so
    the replayed state still shows epoch 1's miss. Re-planning on it ran the same model more a
    second time. The decision is asked of ``replan_for`` with what the controller issued."""
    budget = {"target_agreement": 0.6}
    settings = Settings(
        name="race", budget=budget, links=LinkSettings(store=str(tmp_path), stream=True)
    )
    mlink = MLink(settings, [Model(name=m, fn=lambda f: f, spec=SPECS[m]) for m in MODELS])
    try:
        announced = ControlMessage(
            kind="link_version", epoch=0, issued_at=0.5, link_version=links.version
        )
        assert _apply(mlink, announced) is None
        assert replan_for(announced, mlink, issued=0) is not None  # the first links: plan
        plan = decide(MODELS, {}, links, budget, 1, probe_every=8, stream=True)
        assert _apply(mlink, plan) is None
        assert replan_for(announced, mlink, issued=1) is None  # announced again: in force
        model = next(m for m in MODELS if mlink.state.schedule.share(m) < 1.0)
        report = ControlMessage(
            kind="agreement",
            epoch=1,
            issued_at=2.0,
            extra={"live_agreement": {model: 0.0}, "probes": 20},
        )
        assert _apply(mlink, report) is None and mlink.state.live_agreement == {model: 0.0}
        first = replan_for(report, mlink, issued=1)  # the first report: the model runs more
        assert first is not None and first.missed == [model] and first.reason
        assert first.corrections[model] < 1.0
        assert replan_for(report, mlink, issued=2) is None  # the second, after plan 2 went out
        assert replan_for(report, mlink, issued=0) == first  # a controller just failed over
        # the budget and links the plan in force has: nothing to plan
        restated = ControlMessage(kind="budget", epoch=1, issued_at=3.0, budget=budget)
        assert _apply(mlink, restated) is None
        assert replan_for(restated, mlink, issued=1) is None
        changed = ControlMessage(
            kind="budget", epoch=1, issued_at=4.0, budget={"target_agreement": 0.7}
        )
        assert _apply(mlink, changed) is None
        again = replan_for(changed, mlink, issued=1)
        assert again is not None and again.reason is None and again.missed == []
    finally:
        mlink.close()
