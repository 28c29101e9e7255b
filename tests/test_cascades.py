"""Cascades (the ``gate`` mode): a model runs where its source finds anything, its head elsewhere.

Pure pieces (schedule, fit, pricing, synthesis, the replay) and the frame operator's second pass
and the split layout's plan without a broker."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from mlink.eval.streaming.simulate import StreamConfig, simulate
from mlink.eval.workload import Workload
from mlink.linkstore.boxlinks import EMPTY
from mlink.linkstore.schedule import Mode, Schedule
from mlink.linkstore.streamfit import GATE_Z, Curve, Sample, _gate_curve, fit_stream
from mlink.linkstore.streamlinks import StreamFrame, StreamMemory
from mlink.linkstore.streamoptions import option
from mlink.operators import LinkSettings, MLink, Model, Settings
from mlink.operators.dispatch import run_cascades, run_planned
from mlink.operators.state import ControlState
from mlink.topics.specs import BoxesSpec
from tests.test_stream_synthesis import SPECS, eyes_of, face_at, frame_outputs

FACE = np.array([[0.1, 0.2, 0.3, 0.4, 0.9]], dtype=np.float32)
GATED = Schedule({"face": 1, "eyes": 0, "light": 1}, modes={"eyes": Mode("gate", "face")})


def test_a_gate_runs_its_model_where_the_source_fires_and_survives_the_wire():
    assert GATED.cascaded == {"eyes"}
    assert GATED.gated({"face": FACE, "light": 0}) == {"eyes"}
    assert GATED.gated({"face": EMPTY}) == frozenset()
    assert GATED.gated({"light": 0}) == frozenset()  # the source did not run: nothing to gate on
    assert GATED.gated({"face": FACE, "eyes": FACE}) == frozenset()  # it ran already (a probe)
    assert GATED.describe("eyes") == "probes only and where face finds anything, head(face)"
    assert Schedule.from_extra({"schedule": GATED.to_extra()}) == GATED
    with pytest.raises(ValueError, match="needs a source"):
        Mode("gate")


def _fire_samples(streams: int = 3, n: int = 12) -> list[Sample]:
    """Stream k shows its face on the first 4k frames: the share differs between streams."""
    out = []
    for k in range(streams):
        for t in range(n):
            face = face_at(t) if t < 4 * k else EMPTY
            out.append(
                Sample(f"s{k}", t, {**frame_outputs(t), "face": face, "eyes": eyes_of(face)})
            )
    return out


def test_the_fit_prices_a_gate_above_the_samples_share_when_streams_differ():
    samples = _fire_samples()
    fires = np.mean([len(s.outputs["face"]) > 0 for s in samples])
    assert not any(c.mode.kind == "gate" for c in fit_stream(SPECS, samples).curves["eyes"])
    gates = [
        c for c in fit_stream(SPECS, samples, gates=True).curves["eyes"] if c.mode.kind == "gate"
    ]
    gate = next(c for c in gates if c.mode.source == "face")
    # priced high, as the share varies by stream; its agreement counts the share seen
    assert GATE_Z > 0 and gate.runs == pytest.approx(fires) and fires < gate.cost_runs < 1.0
    # where the face detector finds nothing the head draws no eyes, as the real model does
    assert gate.agree[1] == pytest.approx(1.0)
    back = Curve.from_meta(gate.to_meta())  # the bundle keeps the price
    assert back.mode == gate.mode and back.runs == pytest.approx(gate.runs, abs=1e-6)
    assert back.cost_runs == pytest.approx(gate.cost_runs, abs=1e-6)


def test_a_gates_agreement_is_not_raised_by_the_margin_its_cost_is_priced_with():
    # the source fires on 0%, 50% and 100% of three streams' frames; the head agrees 0.5
    fires = np.array([0] * 10 + [1, 0] * 5 + [1] * 10, bool)
    streams = ["a"] * 10 + ["b"] * 10 + ["c"] * 10
    curve = _gate_curve("eyes", "face", np.full(30, 0.5), fires, 1.0, 4, streams)
    assert curve.agree[1] == pytest.approx(0.5 + 0.5 * 0.5)  # the share seen, not the priced one
    assert curve.runs == pytest.approx(0.5) and curve.cost_runs > 0.5
    choice = option(curve, 0, 0, 100.0, z=1.645)
    assert choice is not None and choice.estimate == pytest.approx(0.75)
    assert choice.cost_ms == pytest.approx(curve.cost_runs * 100.0 + (1 - curve.cost_runs) * 1.0)
    assert choice.synthesized == pytest.approx(0.5)  # what the live guard expects of the head


def test_a_gates_option_pays_for_the_runs_and_counts_them_as_kept():
    curve = Curve("eyes", Mode("gate", "face"), (1.0, 0.9, 0.9), (0, 50, 50), 0.2, 1.0, 0.0, 0.3)
    choice = option(curve, 0, 0, 100.0, z=1.0)
    assert choice is not None and choice.runs == pytest.approx(0.3)
    assert choice.cost_ms == pytest.approx(0.3 * 100.0 + 0.7 * 1.0)
    assert choice.estimate == pytest.approx(0.9)
    assert choice.synthesized == pytest.approx((0.9 - 0.3) / 0.7)  # the head where it did not run
    halved = option(curve, 0, 0, 100.0, z=1.0, factor=0.5)  # live corrections touch the head only
    assert halved is not None and halved.estimate == pytest.approx(0.3 + 0.7 * 0.5 * 6 / 7)


def test_synthesis_draws_a_gated_model_from_the_head_and_a_probe_scores_only_that():
    links = fit_stream(SPECS, _fire_samples(), gates=True).links
    schedule = Schedule(GATED.periods, modes=GATED.modes, probe_every=2)
    frames = [
        StreamFrame("s0", 1, {"face": EMPTY, "light": frame_outputs(1)["light"]}),
        StreamFrame("s0", 2, {**frame_outputs(2)}),  # a probe where the face detector fires
        StreamFrame("s0", 4, {**frame_outputs(4), "face": EMPTY, "eyes": EMPTY}),  # one where not
    ]
    out = links.synthesize_frames(schedule, frames, StreamMemory())
    assert "eyes" in out[0].outputs and "eyes" not in out[0].fallbacks
    assert "eyes" not in out[1].shadow  # the cascade would have run it there
    assert "eyes" in out[2].shadow  # and drawn it from the head here


def test_the_replay_runs_a_gated_model_where_its_source_fires_and_pays_for_it():
    n, streams = 60, 3
    rng = np.random.default_rng(0)
    outputs: dict[str, list] = {m: [] for m in SPECS}
    names = []
    for k in range(streams):
        for t in range(n):
            face = face_at(t % 30) if (t // 10) % 2 else EMPTY
            # eyes somewhere with the face, so no head can draw them; none without it
            shift = rng.uniform(-0.1, 0.1)
            eyes = eyes_of(face) + np.array([shift, 0, shift, 0, 0]) if len(face) else EMPTY
            frame = {**frame_outputs(t), "face": face, "eyes": eyes.astype(np.float32)}
            for m, v in frame.items():
                outputs[m].append(v)
            names.append(f"s{k}")
    costs = {"face": {"ms": 10.0}, "eyes": {"ms": 100.0}, "light": {"ms": 1.0}}
    wl = Workload("cascade", dict(SPECS), outputs, costs, names)
    train = [i for i in range(len(names)) if i % n < 20]
    test = [i for i in range(len(names)) if i % n >= 20]
    run = simulate(wl, train, test, budget_ms=75.0, config=StreamConfig(gates=True))
    assert run.plans[0].schedule.mode("eyes").kind == "gate"
    fired = np.array([len(outputs["face"][i]) > 0 for i in test])
    np.testing.assert_array_equal(run.ran["eyes"], fired)
    assert run.per_frame["eyes"].mean() == pytest.approx(1.0)  # no faces, no eyes
    assert run.cost_ms.mean() == pytest.approx(11.0 + 100.0 * fired.mean(), abs=1.0)


def _box_model(name: str, fires: bool, calls: list[str]) -> Model:
    def detect(frame: np.ndarray) -> np.ndarray:
        calls.append(name)
        return FACE if fires else EMPTY

    return Model(name=name, fn=detect, spec=BoxesSpec())


@pytest.mark.parametrize("fires", [True, False])
def test_the_frame_operators_second_pass_runs_a_cascade_only_where_its_source_fired(
    tmp_path, fires
):
    calls: list[str] = []
    models = [
        _box_model("face", fires, calls),
        _box_model("eyes", True, calls),
        _box_model("light", True, calls),
    ]
    settings = Settings(name="c", budget={"fraction": 1}, links=LinkSettings(store=str(tmp_path)))
    mlink = MLink(settings, models)
    image = np.zeros((2, 2), np.uint8)
    jobs = [(image, ["face", "light"])]

    async def run() -> tuple[list, list]:
        await mlink.build_models()
        done = await run_planned(mlink, jobs)
        return done, await run_cascades(mlink, GATED, jobs, done)

    done, gated = asyncio.run(run())
    mlink.close()
    assert gated == [frozenset({"eyes"}) if fires else frozenset()]
    assert ("eyes" in done[0]) == fires and calls.count("eyes") == int(fires)


def test_the_split_layout_runs_a_cascades_model_on_every_frame():
    state = ControlState(("eyes", "face", "light"))
    state.epoch, state.link_version = 1, 0
    state.schedules[1] = GATED
    assert state.plan(3).active == ("face", "light")
    assert state.plan(3, cascades=False).active == ("eyes", "face", "light")


def test_a_cascade_model_that_fails_leaves_an_error_outcome_and_the_source_failing_gates_nothing(
    tmp_path,
):
    def broken(frame: np.ndarray) -> np.ndarray:
        raise RuntimeError("detector crashed")

    calls: list[str] = []
    models = [
        Model(name="face", fn=broken, spec=BoxesSpec()),
        Model(name="eyes", fn=broken, spec=BoxesSpec()),
        _box_model("light", True, calls),
    ]
    settings = Settings(name="f", budget={"fraction": 1}, links=LinkSettings(store=str(tmp_path)))
    mlink = MLink(settings, models)
    image = np.zeros((2, 2), np.uint8)
    gate_on_light = Schedule(
        {"face": 1, "eyes": 0, "light": 1}, modes={"eyes": Mode("gate", "light")}
    )

    async def run() -> tuple[list, list, list]:
        await mlink.build_models()
        first = await run_planned(mlink, [(image, ["face", "light"])])
        by_face = await run_cascades(mlink, GATED, [(image, ["face", "light"])], first)
        second = await run_planned(mlink, [(image, ["face", "light"])])
        by_light = await run_cascades(mlink, gate_on_light, [(image, ["face", "light"])], second)
        return by_face, by_light, second

    by_face, by_light, second = asyncio.run(run())
    mlink.close()
    assert by_face == [frozenset()]  # its source failed: nothing to gate on
    assert by_light == [frozenset({"eyes"})]
    assert "detector crashed" in (second[0]["eyes"].error or "")  # an error, not a missing run
