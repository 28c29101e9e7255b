"""The run summary on a constructed run with a known answer: every figure checked exactly."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from rich.console import Console

from mlink.deploy.config import parse_config
from mlink.deploy.runner import RunReport
from mlink.eval.live_forecasts import forecasts_in_force
from mlink.eval.report import summarize
from mlink.eval.run import print_summary
from mlink.eval.synthesis_costs import SynthesisCosts
from mlink.eval.workload import Workload
from mlink.linkstore.content_forecast import ContentTable
from mlink.linkstore.schedule import EXTRA_KEY, Mode, Schedule
from mlink.operators.relearn import relearn_message
from mlink.topics.records import ControlMessage, FrameResult, ModelResult
from mlink.topics.specs import spec_from_dict

MODELS = {
    "bright": {"kind": "vector", "size": 2, "task": "softmax"},
    "level": {"kind": "vector", "size": 1, "task": "count", "max_count": 4},
    "spread": {"kind": "vector", "size": 1, "task": "linear", "tolerance": 0.01},
}
MEASURED_MS = {"bright": 10.0, "level": 20.0, "spread": 70.0}  # all three: 100 ms per frame
SYNTHESIS = {
    1: SynthesisCosts(
        links={("bright", "level"): 1.0, ("bright", "spread"): 2.0},
        ensembles={"level": 0.5, "spread": 0.5},
    )
}


def config(tmp_path, declared: dict[str, float] | None = None):
    models = []
    for name, output in MODELS.items():
        model = {"name": name, "factory": "tests.bench_models:model", "output": output}
        if declared:
            model["cost"] = {"ms": declared[name]}
        models.append(model)
    return parse_config(
        {
            "name": "constructed",
            "source": {"factory": "tests.bench_models:frames"},
            "models": models,
            "budget": {"fraction": 0.5},
            "links": {"store": str(tmp_path / "links")},
        }
    )


def vec(*values: float) -> np.ndarray:
    return np.array(values, dtype=np.float32)


def reference() -> Workload:
    """The full run: every model's real output on the four frames."""
    return Workload(
        "constructed-full",
        {n: spec_from_dict(o) for n, o in MODELS.items()},
        {
            "bright": [vec(1, 0), vec(0, 1), vec(1, 0), vec(0, 1)],
            "level": [vec(1), vec(2), vec(3), vec(0)],
            "spread": [vec(0.1), vec(0.2), vec(0.5), vec(0.4)],
        },
        {m: {"ms": ms} for m, ms in MEASURED_MS.items()},
        ["cam"] * 4,
        cost_source="measured (test)",
    )


def executed(model: str, output: np.ndarray) -> ModelResult:
    return ModelResult(model=model, output=output, status="executed")


def synthesized(model: str, output: np.ndarray) -> ModelResult:
    return ModelResult(
        model=model, output=output, status="synthesized", link_version=1, sources=("bright",)
    )


def frame(seq: int, epoch: int, results: list[ModelResult], probe: bool = False) -> FrameResult:
    return FrameResult(
        frame_id=f"cam:{seq}",
        stream_id="cam",
        seq=seq,
        epoch=epoch,
        results=tuple(results),
        degraded=False,
        emitted_at=100.0 + seq,
        timestamp=float(seq),
        probe=probe,
    )


def run() -> RunReport:
    full = reference()
    everything = [executed(m, full.outputs[m][0]) for m in MODELS]
    probe = [executed(m, full.outputs[m][1]) for m in MODELS]
    results = [
        frame(0, 0, everything),  # warm-up: every model runs
        frame(1, 1, probe, probe=True),  # a probe: every model runs
        frame(
            2,
            1,
            [
                executed("bright", full.outputs["bright"][2]),
                synthesized("level", vec(3)),  # right
                synthesized("spread", vec(0.9)),  # wrong
            ],
        ),
        frame(
            3,
            1,
            [
                executed("bright", full.outputs["bright"][3]),
                synthesized("level", vec(2)),  # wrong
                ModelResult(model="spread", output=np.zeros(0, np.float32), status="missing"),
            ],
        ),
    ]
    return RunReport(
        frames=4,
        results={r.frame_id: r for r in results},
        # latency 5 s on the warm-up frame (it waits for the first links), 0.1 s on the probe,
        # 0.2 and 0.3 s on the steady frames
        received_at={
            r.frame_id: r.timestamp + latency
            for r, latency in zip(results, (5.0, 0.1, 0.2, 0.3), strict=True)
        },
        seconds=2.0,
    )


IDS = [f"cam:{i}" for i in range(4)]


def test_summary_of_a_constructed_run(tmp_path):
    s = summarize(config(tmp_path), run(), reference(), IDS, synthesis=SYNTHESIS)
    # per frame: cost 100, 100, 10 + 1.5 + 2.5 = 14, 10 + 1.5 = 11.5 (missing costs nothing);
    # accuracy 1, 1, 2/3, 1/3
    assert s.accuracy == pytest.approx(0.75)
    assert s.compute_saved == pytest.approx(1 - (100 + 100 + 14 + 11.5) / 400)
    # steady = epoch > 0 and not a probe: frames 2 and 3
    assert (s.steady_frames, s.warmup_frames, s.probe_frames) == (2, 1, 1)
    assert s.warmup_streams == {"cam": 1}  # how many warm-up frames each stream gave
    assert s.steady_accuracy == pytest.approx(0.5)
    assert s.steady_compute_saved == pytest.approx(1 - (14 + 11.5) / 200)
    assert s.steady_compute_saved_solo == pytest.approx(s.steady_compute_saved)  # one table
    # synthesized outputs only: level right, spread wrong, level wrong
    assert s.synthesized_accuracy == pytest.approx(1 / 3)
    assert s.steady_synthesized_accuracy == pytest.approx(1 / 3)
    assert s.agreement == pytest.approx({"bright": 1.0, "level": 0.75, "spread": 0.5})
    assert s.synthesized_agreement == {"bright": None, "level": 0.5, "spread": 0.0}
    assert s.steady_agreement == pytest.approx({"bright": 1.0, "level": 0.5, "spread": 0.0})
    assert s.executed == {"bright": 4, "level": 2, "spread": 2}
    assert s.synthesized == {"level": 2, "spread": 1}
    assert s.missing == {"spread": 1}
    assert s.model_ms == MEASURED_MS
    assert s.cost_source == "measured (test), by the offline reference run"
    assert s.link_versions == [1]
    assert s.final_active == ["bright"]
    assert s.latency_p50_ms == pytest.approx(250.0)  # of 100, 200, 300 and 5000 ms
    assert s.latency_p99_ms > 4000.0
    assert s.steady_latency_p50_ms == pytest.approx(250.0)
    assert s.steady_latency_p99_ms == pytest.approx(299.0)  # the warm-up's wait left out


def test_a_stream_modes_output_is_priced_by_its_mode_and_the_papers_by_its_ensemble(tmp_path):
    """Frame 2 and 3 ran under a schedule that reuses ``level`` (0.25 ms, the trainer's
    measurement of the mode) and draws ``spread`` from the paper's links (ensemble 0.5 + link
    2.0): 10 + 0.25 + 2.5 and 10 + 0.25, not the ensemble prices of the run above."""
    schedule = Schedule(
        {"bright": 1, "level": 4, "spread": 4},
        modes={"level": Mode("reuse"), "spread": Mode("links")},
    )
    report = replace(
        run(),
        control=[
            ControlMessage(
                kind="active_set",
                epoch=1,
                issued_at=100.5,
                active=("bright", "level", "spread"),
                budget={"fraction": 0.5},
                extra={EXTRA_KEY: schedule.to_extra()},
            )
        ],
    )
    costs = {1: replace(SYNTHESIS[1], modes={("level", "reuse"): 0.25})}
    s = summarize(config(tmp_path), report, reference(), IDS, synthesis=costs)
    assert s.steady_compute_saved == pytest.approx(1 - (12.75 + 10.25) / 200)
    # the same frames without the schedule in the log: every output priced as the paper's links
    plain = summarize(config(tmp_path), run(), reference(), IDS, synthesis=costs)
    assert plain.steady_compute_saved == pytest.approx(1 - (14 + 11.5) / 200)


def test_a_model_call_that_failed_is_charged_as_a_run(tmp_path):
    report = run()
    third = report.results["cam:3"]
    timed_out = ModelResult(
        model="spread",
        output=np.zeros(0, np.float32),
        status="missing",
        error="timed out after 2 s",
        elapsed_ms=2000.0,
    )
    report.results["cam:3"] = replace(third, results=(*third.results[:2], timed_out))
    s = summarize(config(tmp_path), report, reference(), IDS, synthesis=SYNTHESIS)
    # the call took its time: frame 3 costs 11.5 + spread's 70 ms, not 11.5 (no saving claimed)
    assert s.steady_compute_saved == pytest.approx(1 - (14 + 11.5 + 70) / 200)
    assert s.steady_accuracy == pytest.approx(0.5)  # scored as before: missing agrees 0


def test_a_link_version_without_recorded_costs_is_named_in_the_cost_source(tmp_path):
    s = summarize(config(tmp_path), run(), reference(), IDS, synthesis={})
    assert s.synthesis_cost_source == (
        "given; none recorded for link versions [1], whose synthesis is counted as 0 ms"
    )
    assert s.steady_compute_saved == pytest.approx(1 - (10 + 10) / 200)  # the models alone


def test_the_printed_summary_fits_an_80_column_log(tmp_path):
    """CI logs and piped output are 80 columns: every model name and figure must stay whole."""
    s = summarize(config(tmp_path), run(), reference(), IDS, synthesis=SYNTHESIS).as_dict()
    long = "hog_people_fast"  # the longest model name of the shipped configs
    s = {
        k: ({long: v["spread"]} if isinstance(v, dict) and "spread" in v else v)
        for k, v in s.items()
    }
    console = Console(width=80, record=True)
    print_summary(s, console)
    text = console.export_text()
    assert max(len(line) for line in text.splitlines()) <= 80
    assert "…" not in text
    assert long in text and "steady" in text and "synth." in text
    assert "warm-up: 1 frame from 1 stream, 1 each" in " ".join(text.split())
    uneven = dict(s, warmup_frames=7, warmup_streams={"a": 5, "b": 2})
    console = Console(width=80, record=True)
    print_summary(uneven, console)
    assert "warm-up: 7 frames from 2 streams, 2-5 each" in " ".join(console.export_text().split())


def test_declared_costs_replace_the_measured_table_as_a_whole(tmp_path):
    declared = {"bright": 50.0, "level": 25.0, "spread": 25.0}
    s = summarize(config(tmp_path, declared), run(), reference(), IDS, synthesis=SYNTHESIS)
    assert s.cost_source == "declared in the config"
    assert s.model_ms == declared
    # steady frames spend 50 + 4 and 50 + 1.5 of 100
    assert s.steady_compute_saved == pytest.approx(1 - (54 + 51.5) / 200)
    # the solo figure stays on the reference run's timings, whatever the config declares
    assert s.steady_compute_saved_solo == pytest.approx(1 - (14 + 11.5) / 200)


def test_frames_missing_from_the_reference_are_left_out(tmp_path):
    s = summarize(config(tmp_path), run(), reference(), IDS[:2], synthesis=SYNTHESIS)
    assert s.steady_frames == 0 and s.steady_synthesized_accuracy is None
    assert s.accuracy == pytest.approx(1.0)


def test_the_live_table_times_every_model_on_the_same_frames(tmp_path):
    """Frames where every model ran (warm-up, probes) price the models, so a model that runs
    on other frames too is not priced on a different mix of cameras."""
    report = run()
    timed = {
        "cam:0": {"bright": 10.0, "level": 2.0, "spread": 4.0},
        "cam:1": {"bright": 30.0, "level": 6.0, "spread": 8.0},
        "cam:2": {"bright": 1000.0},
        "cam:3": {"bright": 1000.0},
    }
    for frame_id, result in report.results.items():
        results = tuple(
            replace(r, elapsed_ms=timed[frame_id].get(r.model)) if r.status == "executed" else r
            for r in result.results
        )
        report.results[frame_id] = replace(result, results=results)
    s = summarize(config(tmp_path), report, reference(), IDS, synthesis=SYNTHESIS)
    assert s.model_ms == {"bright": 20.0, "level": 4.0, "spread": 6.0}
    assert s.cost_source == (
        "measured live in this run (trimmed mean wall ms of each model's calls on the frames "
        "where every model ran)"
    )
    # Workers that measure their calls' CPU time are priced on it, not on the wall time that
    # the other models' turns on a shared core inflate.
    for frame_id, result in report.results.items():
        results = tuple(
            replace(r, cpu_ms=r.elapsed_ms / 10.0) if r.elapsed_ms is not None else r
            for r in result.results
        )
        report.results[frame_id] = replace(result, results=results)
    s = summarize(config(tmp_path), report, reference(), IDS, synthesis=SYNTHESIS)
    assert s.model_ms == pytest.approx({"bright": 2.0, "level": 0.4, "spread": 0.6})
    assert "trimmed mean CPU ms" in s.cost_source


def plan_and_probe_report(epoch: int = 1) -> tuple[ControlMessage, ControlMessage]:
    """A stream plan that runs bright and synthesizes level and spread, each run on a quarter of
    the frames and expected at 0.8 elsewhere (0.25 + 0.75 * 0.8 = 0.85 each, (1 + 2 * 0.85) / 3
    = 0.9 in all), with a lower bound of 0.7 each (0.6 where synthesized; (1 + 2 * 0.7) / 3 =
    0.8 in all), issued at 100.5; and a report at 102.5 of three probes that saw half of 0.8.
    The forecast then weighs them against two pseudo-probes at the bound: (3 * 0.4 + 2 * 0.6) /
    5 = 0.48 where synthesized, so each model 0.25 + 0.75 * 0.48 = 0.61 and the plan
    (1 + 2 * 0.61) / 3 = 0.74 after them."""
    plan = ControlMessage(
        kind="active_set",
        epoch=epoch,
        issued_at=100.5,
        active=("bright",),
        budget={"fraction": 0.5},
        extra={
            "objective": 0.9,
            "predicted": {"bright": 1.0, "level": 0.85, "spread": 0.85},
            "predicted_synthesized": {"level": 0.8, "spread": 0.8},
            "runs": {"level": 0.25, "spread": 0.25},
            "lower": {"bright": 1.0, "level": 0.7, "spread": 0.7},
        },
    )
    report = ControlMessage(
        kind="agreement",
        epoch=epoch,
        issued_at=102.5,
        extra={"live_agreement": {"level": 0.4, "spread": 0.4}, "probes": 3},
    )
    return plan, report


def test_each_planned_frame_is_forecast_by_the_plan_and_by_the_probe_reports_before_it(tmp_path):
    # the report comes between frames 2 and 3 (emitted at 102 and 103)
    s = summarize(
        config(tmp_path),
        replace(run(), control=list(plan_and_probe_report())),
        reference(),
        IDS,
        SYNTHESIS,
    )
    assert s.forecast_frames == 3  # frames 1-3; the warm-up frame has no plan
    assert s.forecast_up_front == pytest.approx(0.9)
    assert s.forecast_with_probes == pytest.approx((0.8 + 0.8 + 0.74) / 3)  # bound, then probes
    assert s.forecast_kept == pytest.approx((1 + 2 / 3 + 1 / 3) / 3)  # the probe counts 1
    assert s.forecast_bound == pytest.approx(0.8)  # what the plan promised: its bounds' mean
    console = Console(width=80, record=True)
    print_summary(s.as_dict(), console)
    assert (
        "up-front estimate 90.0%, promised (forecast bound) 80.0%, with probes 78.0%; kept 66.7%"
        in " ".join(console.export_text().split())
    )
    plain = summarize(config(tmp_path), run(), reference(), IDS, synthesis=SYNTHESIS)
    assert plain.forecast_frames == 0 and plain.forecast_up_front is None  # no control log
    plan, _ = plan_and_probe_report()
    links = replace(plan, extra={"objective": 0.9})  # the paper's links: no run shares
    once = summarize(config(tmp_path), replace(run(), control=[links]), reference(), IDS, SYNTHESIS)
    assert once.forecast_up_front == pytest.approx(0.9) and once.forecast_with_probes is None
    assert once.forecast_bound is None  # the paper's links promise no bound
    console = Console(width=80, record=True)
    print_summary(once.as_dict(), console)
    line = " ".join(console.export_text().split())
    assert "up-front estimate 90.0%; kept 66.7%" in line and "with probes" not in line
    assert "promised" not in line
    mixed = replace(run(), control=[links, replace(plan, epoch=2, issued_at=102.7)])
    mixed.results["cam:3"] = replace(mixed.results["cam:3"], epoch=2)  # under the plan with bounds
    partly = summarize(config(tmp_path), mixed, reference(), IDS, SYNTHESIS)
    assert partly.forecast_frames == 3 and partly.forecast_bound is None  # not a third of them


def test_a_paper_link_plan_is_forecast_from_what_its_detectors_found_before_each_frame():
    """Each frame gets the plan's content table weighed by the signatures of the results of its
    epoch emitted before it, all workers' together (the live gauge is per worker)."""
    table = ContentTable(
        ("det",), 1, {"a": 0.5}, {"a": (1.0, 0.0, 0.5, 0.5)}, (True,) * 2 + (False,) * 2
    )
    plan = ControlMessage(
        kind="active_set",
        epoch=1,
        issued_at=100.5,
        active=("det",),
        budget={"fraction": 0.5},
        extra={"objective": 0.75, "content": table.to_meta()},
    )
    box = np.array([[0.1, 0.1, 0.3, 0.3, 0.9]], np.float32)
    none = np.zeros((0, 5), np.float32)

    def result(seq: int, epoch: int, found: np.ndarray) -> FrameResult:
        a = ModelResult(
            model="a", output=vec(0), status="synthesized", link_version=1, sources=("det",)
        )
        return replace(frame(seq, epoch, [executed("det", found), a]), frame_id=f"f{seq}")

    results = {r.frame_id: r for r in (result(0, 0, box), result(1, 1, box), result(2, 1, none))}
    results["f3"] = result(3, 1, box)
    got = forecasts_in_force(["a", "det"], [plan], results)
    # f1: nothing counted yet, the estimate; f2: one frame where det fired (a at 0.0 there);
    # f3: one of each (a at 0.5); the warm-up frame has no plan
    assert got.content == pytest.approx({"f1": 0.75, "f2": 0.5, "f3": 0.75})
    assert got.up_front == pytest.approx({"f1": 0.75, "f2": 0.75, "f3": 0.75})


def test_the_summary_prints_the_content_weighted_forecast_of_paper_link_plans(tmp_path):
    plan, _ = plan_and_probe_report()
    table = ContentTable(
        (),
        1,
        {"level": 0.9, "spread": 0.6},
        {"level": (0.9,) * 4, "spread": (0.6,) * 4},
        (True,) + (False,) * 3,
    )
    links = replace(plan, extra={"objective": 0.9, "content": table.to_meta()})
    s = summarize(config(tmp_path), replace(run(), control=[links]), reference(), IDS, SYNTHESIS)
    assert s.forecast_content == pytest.approx((1 + 0.9 + 0.6) / 3)  # no detector: one signature
    console = Console(width=80, record=True)
    print_summary(s.as_dict(), console)
    line = " ".join(console.export_text().split())
    assert "up-front estimate 90.0%, content-weighted 83.3%; kept 66.7%" in line


def test_frames_of_a_relearn_plan_are_counted_apart(tmp_path):
    """Epoch 2 ran every model because the store lost v1: its frame (frame 3, planned under it
    this time) is neither steady nor one of the plan's probes, and the summary says so."""
    report = run()
    lost = frame(3, 2, [executed(m, reference().outputs[m][3]) for m in MODELS], probe=True)
    report = replace(report, results={**report.results, lost.frame_id: lost})
    control = [
        ControlMessage(kind="active_set", epoch=1, issued_at=1.0, active=("bright",)),
        relearn_message(sorted(MODELS), 2, {}, 1, 8, "link version 1 is gone"),
    ]
    s = summarize(config(tmp_path), replace(report, control=control), reference(), IDS)
    assert (s.steady_frames, s.warmup_frames, s.probe_frames, s.relearn_frames) == (1, 1, 1, 1)
    console = Console(width=100, record=True)
    print_summary(s.as_dict(), console)
    assert "and 1 that ran every model while lost links" in " ".join(console.export_text().split())


def test_a_run_without_steady_frames_prints_and_dumps_no_nan(tmp_path):
    """A run that never left warm-up has no steady figures: the summary prints ``-`` for them
    (not ``nan ms``) and ``mlink run --json`` writes strict JSON (``null``, not ``NaN``)."""
    import json

    from mlink.eval.run import json_safe

    full = reference()
    frames = [frame(i, 0, [executed(m, full.outputs[m][i]) for m in MODELS], probe=True)
              for i in range(2)]  # fmt: skip
    report = RunReport(
        frames=2,
        results={r.frame_id: r for r in frames},
        received_at={r.frame_id: r.timestamp + 0.1 for r in frames},
        seconds=1.0,
    )
    s = summarize(config(tmp_path), report, full, IDS[:2], synthesis=SYNTHESIS).as_dict()
    assert s["steady_frames"] == 0
    text = json.dumps(json_safe(s), allow_nan=False)
    assert json.loads(text)["steady_latency_p50_ms"] is None
    assert json.loads(text)["steady_compute_saved"] is None
    console = Console(width=100, record=True)
    print_summary(s, console)
    line = " ".join(console.export_text().split())
    assert "nan" not in line.lower()
    assert "(steady frames: p50 -, p99 -)" in line
    assert "latency p50 100 ms, p99 100 ms" in line
