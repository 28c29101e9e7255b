"""Stream synthesis end to end without a broker: memory, synthesis, the trainer's fit, and the
controller's plans (checked against brute force on small instances) and live guard."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest

from mlink.linkstore.boxlinks import EMPTY, fit_box_head
from mlink.linkstore.liveguard import LiveAgreement
from mlink.linkstore.metrics import box_agreement
from mlink.linkstore.schedule import Mode, Schedule, lag_histogram
from mlink.linkstore.streamfit import Curve, Sample, StreamFit, fit_stream
from mlink.linkstore.streamlinks import (
    StreamFrame,
    StreamLinks,
    StreamMemory,
    decode_context,
    encode_context,
)
from mlink.linkstore.streamplan import (
    Choice,
    StreamPlan,
    agreement_targets,
    option,
    plan_for_budget,
    plan_for_targets,
)
from mlink.topics.specs import BoxesSpec, VectorSpec

BOXES = BoxesSpec()


def face_at(t: int, stream: int = 0) -> np.ndarray:
    """A face drifting right; it leaves the frame after 40 frames (then nothing is there)."""
    x = 0.05 + 0.02 * t + 0.1 * stream
    if x > 0.8:
        return EMPTY
    return np.array([[x, 0.2, x + 0.15, 0.45, 0.9]], dtype=np.float32)


def eyes_of(face: np.ndarray) -> np.ndarray:
    if len(face) == 0:
        return EMPTY
    x1, y1, x2, y2, s = face[0]
    w, h = x2 - x1, y2 - y1
    return np.array(
        [
            [x1 + 0.2 * w, y1 + 0.3 * h, x1 + 0.4 * w, y1 + 0.45 * h, s],
            [x1 + 0.6 * w, y1 + 0.3 * h, x1 + 0.8 * w, y1 + 0.45 * h, s],
        ],
        dtype=np.float32,
    )


def frame_outputs(t: int, stream: int = 0) -> dict:
    face = face_at(t, stream)
    return {"face": face, "eyes": eyes_of(face), "light": np.array([0.5], dtype=np.float32)}


SPECS = {"face": BOXES, "eyes": BOXES, "light": VectorSpec(1, "linear", tolerance=0.1)}


def samples(n: int = 12, streams: int = 2) -> list[Sample]:
    return [Sample(f"s{k}", t, frame_outputs(t, k)) for k in range(streams) for t in range(n)]


# ------------------------------------------------------------------ memory and synthesis


def test_memory_keeps_each_models_last_real_run_per_stream_and_ignores_older_redeliveries():
    mem = StreamMemory(max_streams=2)
    mem.observe("a", 5, {"face": 1, "eyes": 2})
    mem.observe("a", 6, {"face": 3})
    mem.observe("a", 4, {"face": 0})  # a redelivered older frame
    assert mem.last("a", "face").seq == 6 and mem.last("a", "face").output == 3
    assert mem.last("a", "eyes").seq == 5 and mem.last("a", "eyes").frame == {"face": 1, "eyes": 2}
    mem.observe("b", 0, {})
    mem.observe("c", 0, {"face": 1})  # over max_streams: the least recent stream goes
    assert "a" not in mem and len(mem) == 2
    mem.forget(["b"])
    assert mem.last("b", "face") is None and "c" in mem
    mem.forget()
    assert len(mem) == 0


def test_memory_answers_frames_that_finish_out_of_order_from_the_runs_before_them():
    mem = StreamMemory(history=3)
    for seq in (2, 8, 4, 6):  # frame 8 overtook 4 and 6
        mem.observe("a", seq, {"face": seq})
    assert [mem.last("a", "face", at).seq for at in (9, 7, 5)] == [8, 6, 4]
    assert mem.last("a", "face", 3) is None  # run 2 fell out of the history of 3
    mem.observe("a", 6, {"face": 60})  # a redelivery replaces its earlier copy
    assert mem.last("a", "face", 6).output == 60 and mem.last("a", "face", 5).seq == 4
    with pytest.raises(ValueError, match="history must be >= 1"):
        StreamMemory(history=0)


def test_memory_follows_a_camera_that_restarts_its_numbering_or_a_forged_huge_seq():
    mem = StreamMemory(history=4)
    for seq in (500, 501, 502, 503, 2**62):  # the last one forged
        mem.observe("cam", seq, {"face": seq})
    for seq in range(50):  # the camera restarts at 0
        mem.observe("cam", seq, {"face": seq})
        assert mem.last("cam", "face", seq).seq == seq
    assert mem.last("cam", "face").seq == 49  # the old and forged runs have gone


def stream_frames(schedule: Schedule, n: int) -> list[StreamFrame]:
    """Frames ``0 .. n-1`` of stream s0 with the real outputs of the models the schedule runs."""
    return [
        StreamFrame("s0", t, {m: frame_outputs(t)[m] for m in schedule.runs(t)}) for t in range(n)
    ]


def links_for(modes: dict[str, Mode], heads=None) -> tuple[StreamLinks, Schedule]:
    priors = {"face": EMPTY, "eyes": EMPTY, "light": np.array([0.5], dtype=np.float32)}
    links = StreamLinks(dict(SPECS), priors, heads or {}, None, max_lag=8)
    periods = {"face": 1, "eyes": 4, "light": 4}
    return links, Schedule(periods, modes=modes)


class RecordingLinks:
    """A link set stand-in that records the sources each ensemble call is given."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, list[str]]] = []

    def synthesize_encoded(self, target: str, encoded: dict) -> np.ndarray:
        self.calls.append((target, sorted(encoded)))
        return np.full((len(next(iter(encoded.values()))), 1), 0.5, dtype=np.float32)


def test_the_papers_links_draw_on_the_models_run_on_every_frame_as_the_plan_priced_them():
    recorder = RecordingLinks()
    priors = {"face": EMPTY, "eyes": EMPTY, "light": np.array([0.5], dtype=np.float32)}
    links = StreamLinks(dict(SPECS), priors, {}, recorder, max_lag=8)  # type: ignore[arg-type]
    schedule = Schedule({"face": 1, "eyes": 2, "light": 0}, modes={"light": Mode("links")})
    frames = [
        StreamFrame("s0", t, {m: frame_outputs(t)[m] for m in schedule.runs(t)}) for t in range(4)
    ]
    assert "eyes" in frames[2].ran  # the periodic model runs on frames 0 and 2
    out = links.synthesize_frames(schedule, frames, StreamMemory())
    assert recorder.calls == [("light", ["face"])]  # one batch, from the always-on face only
    assert all(o.outputs["light"] == pytest.approx([0.5]) for o in out)


def test_synthesis_reuses_follows_or_falls_back_and_says_why():
    head = fit_box_head([face_at(t) for t in range(10)], [eyes_of(face_at(t)) for t in range(10)])
    links, schedule = links_for(
        {"eyes": Mode("follow", "face"), "light": Mode("reuse")}, {("face", "eyes"): head}
    )
    mem = StreamMemory()
    frames = stream_frames(schedule, 8)
    out = links.synthesize_frames(schedule, frames, mem)
    assert out[0].outputs == {}  # every model ran on frame 0
    for t in (1, 2, 3):
        assert box_agreement(out[t].outputs["eyes"], eyes_of(face_at(t))) > 0.95
        assert out[t].outputs["light"][0] == pytest.approx(0.5)
    cold = links.synthesize_frames(schedule, [StreamFrame("new", 5, {"face": face_at(5)})], mem)
    assert cold[0].fallbacks["eyes"] == "memory: head"  # no memory yet: the head's boxes
    assert box_agreement(cold[0].outputs["eyes"], eyes_of(face_at(5))) > 0.95
    assert cold[0].fallbacks["light"] == "memory: prior"


def test_a_probe_frame_returns_what_the_plan_would_have_synthesized_as_its_shadow():
    links, schedule = links_for({"eyes": Mode("reuse"), "light": Mode("prior")})
    schedule = Schedule(schedule.periods, modes=schedule.modes, probe_every=6)
    mem = StreamMemory()
    frames = stream_frames(schedule, 7)
    out = links.synthesize_frames(schedule, frames, mem)
    assert out[6].outputs == {} and set(out[6].shadow) == {"eyes", "light"}
    np.testing.assert_array_equal(out[6].shadow["eyes"], eyes_of(face_at(4)))  # last run: 4
    assert mem.last("s0", "eyes").seq == 6  # the probe's real outputs are remembered after


def test_stream_links_round_trip_through_bundle_metadata():
    fit = fit_stream(SPECS, samples(), max_lag=6)
    meta = json.loads(json.dumps(fit.to_meta()))
    again = StreamLinks.from_meta(SPECS, meta)
    assert again.heads == fit.links.heads and again.max_lag == 6
    curves = StreamFit.curves_from_meta(meta)
    assert {c.mode for c in curves["eyes"]} == {c.mode for c in fit.curves["eyes"]}


# ------------------------------------------------------------------ the trainer's fit


def test_fit_estimates_reuse_decaying_with_lag_and_detector_links_that_do_not():
    fit = fit_stream(SPECS, samples(14), max_lag=6, folds=2)
    by_mode = {c.mode: c for c in fit.curves["eyes"]}
    reuse, follow_ = by_mode[Mode("reuse")], by_mode[Mode("follow", "face")]
    head = by_mode[Mode("head", "face")]
    assert reuse.agree[0] == 1.0 and reuse.agree[1] > reuse.agree[5]
    assert follow_.agree[5] > 0.9 and head.agree[3] > 0.9
    assert all(b <= a + 1e-12 for a, b in itertools.pairwise(reuse.agree))
    assert reuse.support[1] == 2 * 13  # two streams, 13 pairs at lag 1 each
    assert fit.curves["light"][0].mode == Mode("reuse")  # vectors: reuse and prior only
    assert fit.links.heads[("face", "eyes")].counts[1] == 2


def test_probe_context_adds_pairs_at_the_lags_the_schedule_left():
    base = samples(6, 1)
    probe = Sample("s0", 20, frame_outputs(20))
    mem = StreamMemory()
    mem.observe("s0", 17, {m: v for m, v in frame_outputs(17).items()})
    with_context = Sample("s0", 20, frame_outputs(20), {"eyes": mem.last("s0", "eyes")})
    plain = fit_stream(SPECS, [*base, probe], max_lag=6, folds=2)
    richer = fit_stream(SPECS, [*base, with_context], max_lag=6, folds=2)
    lag3 = {c.mode: c.support[3] for c in richer.curves["eyes"]}
    assert (
        lag3[Mode("reuse")]
        == {c.mode: c.support[3] for c in plain.curves["eyes"]}[Mode("reuse")] + 1
    )


def test_fit_rejects_samples_where_a_model_did_not_run():
    with pytest.raises(ValueError, match="every model must run"):
        fit_stream(SPECS, [Sample("s", 0, {"face": EMPTY})])
    with pytest.raises(ValueError, match="at least one sample"):
        fit_stream(SPECS, [])


# ------------------------------------------------------------------ the controller's plans


def curve(target: str, mode: Mode, agree: list[float], n: int = 50, ms: float = 0.0) -> Curve:
    return Curve(target, mode, (1.0, *agree), (0,) + (n,) * len(agree), 0.2, ms)


def test_option_expectation_matches_the_cycle_of_runs_and_probes():
    c = curve("m", Mode("reuse"), [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2])
    got = option(c, 4, probe_every=6, model_ms=10.0, z=0.0)
    hist = np.asarray(lag_histogram(4, got.phase, 6, 0), dtype=float)
    expect = float(hist @ np.asarray(c.agree[: len(hist)])) / hist.sum()
    assert got.estimate == pytest.approx(expect) and got.lower == pytest.approx(expect)
    assert got.cost_ms == pytest.approx(10.0 * hist[0] / hist.sum())
    assert option(c, 0, probe_every=0, model_ms=10.0) is None  # memory never refreshed
    head = curve("m", Mode("head", "s"), [0.7] * 8, ms=0.5)
    never = option(head, 0, probe_every=0, model_ms=10.0)
    assert never.estimate == pytest.approx(0.7) and never.cost_ms == pytest.approx(0.5)


def small_instance():
    ms = {"a": 10.0, "b": 6.0, "c": 3.0}
    curves = {
        "a": [
            curve("a", Mode("reuse"), [0.9, 0.8, 0.7, 0.6]),
            curve("a", Mode("prior"), [0.5] * 4),
            curve("a", Mode("head", "c"), [0.85] * 4, ms=0.1),
        ],
        "b": [
            curve("b", Mode("reuse"), [0.95, 0.9, 0.8, 0.7]),
            curve("b", Mode("prior"), [0.6] * 4),
            curve("b", Mode("follow", "a"), [0.99, 0.97, 0.95, 0.9], ms=0.1),
        ],
        "c": [
            curve("c", Mode("reuse"), [0.8, 0.6, 0.5, 0.4]),
            curve("c", Mode("prior"), [0.7] * 4),
        ],
    }
    return ms, curves


def brute_force(ms, curves, periods, keep):
    """Every assignment of (always) or (curve, period) per model; sourced modes need their
    source always on. Yields (choices) for assignments ``keep`` accepts."""
    per_model = {}
    for m in ms:
        opts = [Choice(m, 1, 0, Mode("reuse"), 1.0, 1.0, ms[m])]
        for c in curves[m]:
            for k in periods:
                o = option(c, k, 0, ms[m])
                if o is not None:
                    opts.append(o)
        per_model[m] = opts
    for combo in itertools.product(*per_model.values()):
        chosen = dict(zip(ms, combo, strict=True))
        always = {m for m, c in chosen.items() if c.period == 1}
        sources_on = all(c.mode.requires <= always for c in chosen.values() if c.period != 1)
        if sources_on and keep(chosen):
            yield chosen


@pytest.mark.parametrize("budget", [3.0, 6.0, 9.5, 14.0])
def test_the_budget_plan_is_the_best_assignment_that_fits(budget):
    ms, curves = small_instance()
    periods = (0, 2, 3, 4)
    plan = plan_for_budget(curves, ms, budget, periods=periods, grid=20000)
    assert plan.feasible and plan.cost_ms <= budget + 1e-9
    fits = brute_force(
        ms, curves, periods, lambda ch: sum(c.cost_ms for c in ch.values()) <= budget
    )
    best = max(sum(c.estimate for c in chosen.values()) / 3 for chosen in fits)
    assert plan.estimate == pytest.approx(best, abs=1e-6)
    for m, c in plan.choices.items():
        assert plan.schedule.periods[m] == c.period
        assert c.period == 1 or plan.schedule.mode(m) == c.mode


@pytest.mark.parametrize("target", [0.5, 0.8, 0.9, 0.97])
def test_the_target_plan_is_the_cheapest_assignment_whose_lower_bounds_meet_the_targets(target):
    ms, curves = small_instance()
    periods = (0, 2, 3, 4)
    targets = dict.fromkeys(ms, target)
    plan = plan_for_targets(curves, ms, targets, periods=periods)
    ok = list(
        brute_force(ms, curves, periods, lambda ch: all(c.lower >= target for c in ch.values()))
    )
    cheapest = min(sum(c.cost_ms for c in ch.values()) for ch in ok)
    assert plan.feasible and plan.cost_ms == pytest.approx(cheapest)
    assert all(c.lower >= target - 1e-12 for c in plan.choices.values())


@pytest.mark.parametrize(("budget", "floor"), [(9.5, 0.7), (14.0, 0.9), (6.0, 0.5)])
def test_targets_with_a_compute_bound_are_floors_of_the_most_accurate_plan(budget, floor):
    """A per-model target and a bound: the bound is spent on the others, not left unspent
    (stop 45's audit: the cheapest plan meeting one model's target left another at 26%)."""
    ms, curves = small_instance()
    periods = (0, 2, 3, 4)
    plan = plan_for_budget(curves, ms, budget, periods=periods, grid=20000, floors={"c": floor})
    assert plan.feasible and plan.cost_ms <= budget + 1e-9
    assert plan.choices["c"].lower >= floor - 1e-12
    fits = brute_force(
        ms,
        curves,
        periods,
        lambda ch: sum(c.cost_ms for c in ch.values()) <= budget and ch["c"].lower >= floor,
    )
    best = max(sum(c.estimate for c in chosen.values()) / 3 for chosen in fits)
    assert plan.estimate == pytest.approx(best, abs=1e-6)
    cheapest = plan_for_targets(curves, ms, {"c": floor}, periods=periods, budget_ms=budget)
    assert plan.estimate >= cheapest.estimate - 1e-9


def test_floors_no_plan_within_the_bound_meets_are_refused_with_the_targets():
    ms, curves = small_instance()
    plan = plan_for_budget(curves, ms, 5.0, periods=(0, 2), floors={"a": 0.99, "b": 0.5})
    assert not plan.feasible
    assert "{'a': 0.99, 'b': 0.5}" in plan.reason and "within 5 ms/frame" in plan.reason
    with pytest.raises(ValueError, match="unknown models"):
        plan_for_budget(curves, ms, 5.0, floors={"z": 0.5})


def test_per_model_targets_override_the_global_one_and_unknown_models_are_named():
    assert agreement_targets({"target_agreement": 0.9, "target_agreement:b": 0.5}, "abc") == {
        "a": 0.9,
        "b": 0.5,
        "c": 0.9,
    }
    assert agreement_targets({"ms": 10, "target_agreement:c": 0.8}, "abc") == {"c": 0.8}
    with pytest.raises(ValueError, match="unknown model"):
        agreement_targets({"target_agreement:z": 0.8}, "abc")


def test_plans_that_cannot_fit_run_every_model_and_say_why():
    ms, curves = small_instance()
    plan = plan_for_budget(curves, ms, 0.0001, periods=(2,))
    assert not plan.feasible and "no schedule fits" in plan.reason
    assert plan.schedule.always == {"a", "b", "c"}
    strict = plan_for_targets(curves, ms, {"a": 1.0, "b": 1.0, "c": 1.0}, periods=(2,))
    assert strict.feasible and strict.active == {"a", "b", "c"}  # always on meets any target


def test_live_corrections_make_a_model_that_misses_its_target_run_again():
    ms, curves = small_instance()
    targets = {"a": 0.8, "b": 0.8, "c": 0.0}
    plan = plan_for_targets(curves, ms, targets, periods=(0, 2, 3, 4))
    synthesized = [m for m, c in plan.choices.items() if c.period != 1 and targets[m] > 0]
    assert synthesized
    live = LiveAgreement(plan)
    for _ in range(6):
        for m in synthesized:
            live.add(m, 0.1)
    failing = live.failing(targets)
    assert set(failing) == set(synthesized) and "below its target" in failing[synthesized[0]]
    again = plan_for_targets(
        curves, ms, targets, periods=(0, 2, 3, 4), corrections=live.corrections()
    )
    assert again.cost_ms > plan.cost_ms
    for m in synthesized:
        assert again.choices[m].lower >= 0.8 - 1e-12
    assert live.drifted(tolerance=0.05)


def test_live_agreement_rejects_scores_outside_zero_one():
    ms, curves = small_instance()
    live = LiveAgreement(plan_for_budget(curves, ms, 9.0))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        live.add("a", 1.5)
    assert isinstance(live.plan, StreamPlan)


def test_a_probes_context_is_the_memory_before_it_and_survives_the_wire():
    links, schedule = links_for({"eyes": Mode("reuse"), "light": Mode("reuse")})
    schedule = Schedule(schedule.periods, modes=schedule.modes, probe_every=6)
    out = links.synthesize_frames(schedule, stream_frames(schedule, 7), StreamMemory())
    context = out[6].context
    assert context["eyes"].seq == 4 and context["face"].seq == 5
    wire = json.loads(json.dumps(encode_context(SPECS, context)))
    again = decode_context(SPECS, wire)
    assert {m: r.seq for m, r in again.items()} == {m: r.seq for m, r in context.items()}
    np.testing.assert_allclose(again["eyes"].output, context["eyes"].output)
    np.testing.assert_allclose(again["eyes"].frame["face"], context["eyes"].frame["face"])


def test_a_refused_target_plan_names_the_targets_and_the_cost_bound() -> None:
    ms, curves = small_instance()
    plan = plan_for_targets(curves, ms, {"a": 0.99, "b": 0.5}, periods=(0, 2), budget_ms=5.0)
    assert not plan.feasible
    assert "{'a': 0.99, 'b': 0.5}" in plan.reason and "within 5 ms/frame" in plan.reason
    assert "costs 19 ms/frame" in plan.reason
