"""The run summary's edges: results it must count apart, and tables it cannot price."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
from rich.console import Console

from mlink.eval.report import summarize
from mlink.eval.run import print_summary
from mlink.topics.records import ModelResult
from tests.test_report import IDS, MODELS, SYNTHESIS, config, executed, frame, reference, run


def test_a_result_for_a_frame_not_sent_is_counted_apart(tmp_path):
    report = run()
    full = reference()
    other = replace(
        frame(0, 1, [executed(m, full.outputs[m][0]) for m in MODELS]),
        frame_id="other:0",
        stream_id="other",
        degraded=True,
    )
    report.results[other.frame_id] = other
    report.received_at[other.frame_id] = 0.0 + 60.0
    s = summarize(config(tmp_path), report, full, IDS, synthesis=SYNTHESIS)
    plain = summarize(config(tmp_path), run(), full, IDS, synthesis=SYNTHESIS)
    assert s.results == 4 and s.unknown_results == 1
    assert s.results == s.steady_frames + s.warmup_frames + s.probe_frames + s.relearn_frames
    for field in ("executed", "synthesized", "missing", "degraded", "latency_p99_ms", "model_ms"):
        assert getattr(s, field) == getattr(plain, field), field
    console = Console(width=100, record=True)
    print_summary(s.as_dict(), console)
    text = " ".join(console.export_text().split())
    assert "all 4 frames" in text and "1 results for frames this run did not send left out" in text


def test_a_frame_without_a_plan_is_counted_apart_from_the_warm_up(tmp_path):
    report, full = run(), reference()
    empty = np.zeros(0, np.float32)
    report.results["cam:3"] = replace(
        report.results["cam:3"],
        epoch=0,
        probe=False,
        degraded=True,
        timestamp=None,
        results=(
            executed("bright", full.outputs["bright"][3]),
            ModelResult(model="level", output=empty, status="missing", error="no output"),
            ModelResult(model="spread", output=empty, status="missing", error="no output"),
        ),
    )
    s = summarize(config(tmp_path), report, full, IDS, synthesis=SYNTHESIS)
    assert (s.warmup_frames, s.warmup_streams) == (1, {"cam": 1})
    assert (s.steady_frames, s.probe_frames, s.unplanned_frames) == (1, 1, 1)
    console = Console(width=100, record=True)
    print_summary(s.as_dict(), console)
    assert "1 degraded that never got a plan" in " ".join(console.export_text().split())


def test_a_cost_table_of_zeros_saves_no_measurable_share(tmp_path):
    report = run()
    for frame_id, result in report.results.items():
        results = tuple(
            replace(r, elapsed_ms=0.0, cpu_ms=0.0) if r.status == "executed" else r
            for r in result.results
        )
        report.results[frame_id] = replace(result, results=results)
    s = summarize(config(tmp_path), report, reference(), IDS, synthesis=SYNTHESIS)
    assert s.model_ms == {"bright": 0.0, "level": 0.0, "spread": 0.0}
    assert math.isnan(s.compute_saved) and math.isnan(s.steady_compute_saved)
    assert s.accuracy == 0.75  # the rest of the summary stands
