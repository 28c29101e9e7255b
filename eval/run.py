"""`mlink run`'s summary: run the pipeline, compute the reference full run, compare and print."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from mlink.deploy.runner import RunReport, require_sendable_source, run_pipeline
from mlink.deploy.source import iter_source
from mlink.deploy.status_view import percent
from mlink.eval.config_workload import config_models
from mlink.eval.outputs import collect_workload
from mlink.eval.plan_notes import plan_notes
from mlink.eval.report import frame_ids, summarize, wire_frames
from mlink.eval.workload import Workload

__all__ = [
    "full_run",
    "json_safe",
    "print_summary",
    "run_and_summarize",
    "uncompared_summary",
]


def json_safe(value: Any) -> Any:
    """``value`` with every NaN (a figure with no frames to measure on: a run without steady
    frames, a cost table of zeros) as None, so ``json.dumps(..., allow_nan=False)`` writes
    strict JSON (``null``) that jq and every other parser reads, not the token ``NaN``."""
    if isinstance(value, float) and value != value:
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def _ms(value: float | None) -> str:
    """Milliseconds as printed: ``-`` when there is no figure (no frames), as :func:`percent`."""
    if value is None or value != value:
        return "-"
    return f"{float(value):.0f} ms"


def full_run(config, frames: list) -> Workload:
    """Every model on every frame the workers saw (cached): the reference a run is judged by."""
    models, keys = config_models(config)
    return collect_workload(
        f"{config.name}-full", models, wire_frames(config, frames), model_keys=keys
    )


def run_and_summarize(config, config_path: Path, workers, timeout, compare, console) -> dict:
    require_sendable_source(config)
    frames = list(iter_source(config.source))
    full = None
    if compare:
        console.print(
            f"full run of {len(config.models)} models on {len(frames)} frames "
            "(the reference; cached after the first time)"
        )
        full = full_run(config, frames)
    report = run_pipeline(config, config_path, workers, timeout, frames=frames)
    if full is None:
        summary = uncompared_summary(report)
    else:
        summary = summarize(config, report, full, frame_ids(frames)).as_dict()
    if report.interrupted is not None:  # the CLI prints it, then exits with this code
        summary["interrupted"] = report.interrupted
    summary["agent_crashes"] = report.agent_crashes  # faust restarted them; worker logs say why
    return summary


def uncompared_summary(report: RunReport) -> dict[str, Any]:
    """What a run with ``--no-compare`` can say without a reference: per model how often it ran,
    was synthesized or was missing (``{model: {status: frames}}``, JSON-ready), and the
    degraded and duplicate results."""
    status: dict[str, dict[str, int]] = {}
    for (model, kind), n in report.status_counts().items():
        status.setdefault(model, {})[kind] = n
    return {
        "frames": report.frames,
        "results": len(report.results),
        "seconds": report.seconds,
        "degraded": sum(r.degraded for r in report.results.values()),
        "duplicates": report.duplicates,
        "status": status,
        "plan_notes": plan_notes(report.control, report.started_at),
    }


def print_summary(summary: dict, console: Console) -> None:
    """The run summary of :func:`mlink.eval.report.summarize` (as a dict), for people."""
    table = Table(
        title="per model: frames it ran on or was synthesized, and its agreement with the full run"
        " (all results / synthesized only; steady = after warm-up, no probes)",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
    )
    # short headers and an unwrapped model name, so the table stays whole in an 80-column log
    table.add_column("model", no_wrap=True)
    for col in (
        "ran",
        "synth.",
        "missing",
        "all",
        "synth.\nonly",
        "steady\nall",
        "steady\nsynth.",
    ):
        table.add_column(col, justify="right")
    if "agreement" not in summary:  # --no-compare: what ran, without agreement
        for model, counts in summary.get("status", {}).items():
            table.add_row(
                model,
                *(str(counts.get(k, 0)) for k in ("executed", "synthesized", "missing")),
                *("-" * 4),
            )
    for model, score in summary.get("agreement", {}).items():
        table.add_row(
            model,
            str(summary["executed"].get(model, 0)),
            str(summary["synthesized"].get(model, 0)),
            str(summary.get("missing", {}).get(model, 0)),
            percent(score),
            percent(summary["synthesized_agreement"].get(model)),
            percent(summary["steady_agreement"].get(model)),
            percent(summary["steady_synthesized_agreement"].get(model)),
        )
    console.print(table)
    console.print(
        f"frames processed: {summary['results']}/{summary['frames']} "
        f"(degraded {summary.get('degraded', 0)}, duplicate results dropped "
        f"{summary.get('duplicates', 0)}"
        + (
            f", {summary['unknown_results']} results for frames this run did not send left out"
            if summary.get("unknown_results")
            else ""
        )
        + ")"
    )
    if summary.get("interrupted") is not None:
        console.print(
            f"[yellow]interrupted (exit {summary['interrupted']}): these figures cover the "
            f"{summary['frames']} frames sent before it, and frames still in flight count as "
            "missing[/yellow]"
        )
    if crashes := summary.get("agent_crashes"):
        said = ", ".join(f"{agent} {n}x" for agent, n in sorted(crashes.items()))
        console.print(
            Text(f"agents crashed and were restarted by faust: {said} (worker logs say why)", "red")
        )
    for note in summary.get("plan_notes") or ():
        console.print(Text(note, style="yellow"))  # reasons quote model names: no markup
    if "compute_saved" not in summary:
        return
    s = summary
    console.print(
        f"all {s['results']} frames: compute saved {percent(s['compute_saved'])}, accuracy "
        f"{percent(s['accuracy'])} (all models), {percent(s['synthesized_accuracy'])} (synthesized "
        "outputs only)"
    )
    console.print(
        f"steady, {s['steady_frames']} frames (excluding {s['warmup_frames']} warm-up and "
        f"{s['probe_frames']} probe frames"
        + (
            f", and {s['relearn_frames']} that ran every model while lost links were learned again"
            if s.get("relearn_frames")
            else ""
        )
        + (
            f", and {s['unplanned_frames']} degraded that never got a plan"
            if s.get("unplanned_frames")
            else ""
        )
        + f"): compute saved {percent(s['steady_compute_saved'])}, "
        f"accuracy {percent(s['steady_accuracy'])} (all models), "
        f"{percent(s['steady_synthesized_accuracy'])} (synthesized outputs only)"
    )
    if per_stream := s.get("warmup_streams"):
        counts = sorted(per_stream.values())
        frames, streams = s["warmup_frames"], len(counts)
        spread = f"{counts[0]}" if counts[0] == counts[-1] else f"{counts[0]}-{counts[-1]}"
        console.print(
            f"warm-up: {frames} frame{'s' * (frames != 1)} from {streams} "
            f"stream{'s' * (streams != 1)}, {spread} each"
        )
    if s.get("forecast_frames"):
        probes, bound = s.get("forecast_with_probes"), s.get("forecast_bound")
        content = s.get("forecast_content")
        console.print(
            f"forecast for the {s['forecast_frames']} planned frames (each made before the frame; "
            f"probes count every model as kept, as plans do): up-front estimate "
            f"{percent(s['forecast_up_front'])}"
            + (f", promised (forecast bound) {percent(bound)}" if bound is not None else "")
            + (f", with probes {percent(probes)}" if probes is not None else "")
            + (f", content-weighted {percent(content)}" if content is not None else "")
            + f"; kept {percent(s['forecast_kept'])}"
        )
    console.print(f"model costs: {s['cost_source']}; synthesis costs: {s['synthesis_cost_source']}")
    console.print(
        f"steady compute saved on the reference run's solo timings (each model alone, no "
        f"contention): {percent(s['steady_compute_saved_solo'])}"
    )
    console.print(
        f"throughput: {s['throughput_fps']:.1f} frames/s over {s['seconds']:.1f} s; latency "
        f"p50 {_ms(s['latency_p50_ms'])}, p99 {_ms(s['latency_p99_ms'])} (steady frames: "
        f"p50 {_ms(s['steady_latency_p50_ms'])}, p99 {_ms(s['steady_latency_p99_ms'])}); "
        f"link versions "
        f"{s['link_versions']}; ran on every steady frame of the last plan: {s['final_active']}"
    )
