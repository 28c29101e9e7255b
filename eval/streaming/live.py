"""What the live pipeline would keep with stream synthesis: a pipeline config replayed offline.

``python -m mlink.eval.streaming.live deploy/configs/video-demo.yaml`` replays the config's
source in its own order (interleaved cameras for the demo) with the live protocol, not the
bench's: the first ``links.warmup_frames`` frames run every model and train (the trainer's
warm-up); from then on the controller's schedule runs, with a probe on every
``links.probe_every``-th frame of each stream (every model runs; probe costs counted), the
guard re-planning when the probes say a model drifted. The paper's links are trained on the
warm-up frames as the live trainer trains them (cross-fitted selection oracle) and are one
more mode.

Figures, as ``make demo`` reports them: *overall*, *after warm-up*, and *steady* (after
warm-up, probe frames left out), each as all-models agreement, synthesized-only agreement and
compute saved, on ONE cost table (re-timed in this run by default). Everything but the timings
is deterministic, so ``--repeats`` re-times the costs and gives the spread that comes from them;
with ``--cost-noise`` each repeat instead multiplies every model's ms by its own log-normal draw,
to see whether a plan near its budget flips with the few percent that live timings move.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer

from mlink.deploy.config import PipelineConfig, load_config
from mlink.eval.config_workload import load_workload
from mlink.eval.cost_tables import jittered, with_cost_table
from mlink.eval.experiment import TrainedWorkload
from mlink.eval.figures import mean_spread
from mlink.eval.outputs import DEFAULT_CACHE
from mlink.eval.streaming.method import ONLINE
from mlink.eval.streaming.simulate import StreamConfig, StreamRun, summarise
from mlink.eval.workload import Workload
from mlink.linkstore.crossfit import fit_and_score
from mlink.linkstore.linkcosts import synthesis_costs
from mlink.linkstore.liveguard import DECAY

__all__ = ["backlog_warmup", "live_figures", "live_protocol", "replay_live", "warmup_links"]


def warmup_links(
    workload: Workload, warmup: np.ndarray, config: PipelineConfig, balanced: bool = False
) -> TrainedWorkload:
    """The paper's links on the warm-up frames, with a cross-fitted selection oracle (as the live
    trainer: samples alike; ``balanced``: every stream alike, a replay's alternative). Its
    evaluation oracle scores the frames after the warm-up."""
    outputs = workload.subset(warmup)
    groups = [workload.streams[i] for i in warmup]
    fit = fit_and_score(
        workload.specs,
        outputs,
        config.links.train_config(),
        "weighted",
        "mixed",
        5,
        groups,
        balanced=balanced,
    )
    rest = np.setdiff1d(np.arange(workload.n_frames), warmup)
    link_costs, ensemble_costs = synthesis_costs(fit.linkset)
    test = fit.linkset.agreement_oracle(workload.subset(rest))
    return TrainedWorkload(
        workload, fit.linkset, warmup, rest, fit.oracle, test, link_costs, ensemble_costs
    )


def backlog_warmup(workload: Workload, counts: Mapping[str, int]) -> np.ndarray:
    """The warm-up a backlog's fetches gave a worker: the first ``counts[stream]`` frames of each
    stream (as a live run's epoch-0 results show them), instead of the first frames in source
    order that paced cameras give."""
    streams = np.asarray(workload.streams)
    unknown = sorted(set(counts) - set(streams.tolist()))
    if unknown:
        raise ValueError(f"warm-up counts name streams the source does not have: {unknown}")
    picked = [np.flatnonzero(streams == name)[: max(0, int(k))] for name, k in counts.items()]
    warmup = np.sort(np.concatenate(picked)) if picked else np.zeros(0, dtype=np.int64)
    if len(warmup) < 2 or len(warmup) >= workload.n_frames:
        raise ValueError(f"a warm-up of {len(warmup)} of {workload.n_frames} frames leaves no plan")
    return warmup


def live_protocol(
    config: PipelineConfig,
    *,
    probe_stride: int = 0,
    guard: bool = True,
    guard_trigger: str = "drift",
    balanced: bool = True,
) -> StreamConfig:
    """The live pipeline's protocol for a replay: the config's probe rate and cascades, the drift
    guard (the live controller re-plans on a ``miss`` only, with its carried, decaying tally),
    and every stream weighed alike, as the live trainer weighs them (``links.balance_streams``)."""
    stream = replace(
        ONLINE,
        probe_every=config.links.probe_every,
        probe_stride=probe_stride,
        guard=guard,
        guard_trigger=guard_trigger,
        gates=config.links.cascades,
        balanced=balanced,
    )
    if guard_trigger == "miss":  # the live controller's tally: carried evidence, recent probes
        stream = replace(stream, guard_carry=True, guard_decay=DECAY)
    return stream


def replay_live(
    config: PipelineConfig,
    workload: Workload,
    *,
    budget_fraction: float | None = None,
    stream: StreamConfig | None = None,
    warmup: np.ndarray | None = None,
    trained: TrainedWorkload | None = None,
) -> StreamRun:
    """Warm-up, then the budgeted schedule with probes, on the config's frames in source order
    (``warmup``: the warm-up's frame indices, else the first ``links.warmup_frames``;
    ``trained``: :func:`warmup_links` of that warm-up, for a caller that replays it twice)."""
    from mlink.eval.streaming.method import stream_mlink

    if warmup is None:
        warmup = np.arange(min(config.links.warmup_frames, workload.n_frames - 1))
    trained = trained or warmup_links(workload, warmup, config)
    fraction = budget_fraction if budget_fraction is not None else config.budget.fraction
    if fraction is None:
        raise ValueError(f"{config.name}: give a budget fraction (the config has none)")
    stream = stream or live_protocol(config)
    budget = fraction * workload.total_cost("ms")
    return stream_mlink(trained, budget, stream, "MLink stream (live)")


def live_figures(run: StreamRun, workload: Workload, warmup: int) -> dict[str, Any]:
    """Overall, after warm-up and steady figures of a replay (the warm-up frames all ran)."""
    n_test = len(run.probe)
    full = workload.total_cost("ms")
    # the warm-up frames, every model ran: prepend them to the per-frame arrays
    per_frame = {m: np.concatenate([np.ones(warmup), v]) for m, v in run.per_frame.items()}
    ran = {m: np.concatenate([np.ones(warmup, dtype=bool), v]) for m, v in run.ran.items()}
    cost = np.concatenate([np.full(warmup, full), run.cost_ms])
    probe = np.concatenate([np.zeros(warmup, dtype=bool), run.probe])
    after = np.arange(warmup + n_test) >= warmup
    out = {}
    for name, keep in (
        ("overall", np.ones(warmup + n_test, dtype=bool)),
        ("after_warmup", after),
        ("steady", after & ~probe),
    ):
        out[name] = summarise(per_frame, ran, cost, keep, full)
    out["per_model_steady"] = {m: float(v[after & ~probe].mean()) for m, v in per_frame.items()}
    details = run.result.details
    out["plan"] = details["plan"]
    out["replans"] = details["replans"]
    out["replan_reasons"] = details["replan_reasons"]
    out["probes"] = int(run.probe.sum())
    return out


app = typer.Typer(add_completion=False, pretty_exceptions_show_locals=False)


@app.command()
def main(
    config_path: Annotated[Path, typer.Argument(help="pipeline config (YAML)", exists=True)],
    budget_fraction: Annotated[
        float | None, typer.Option(help="budget as a share of the full cost (default: config)")
    ] = None,
    costs: Annotated[str, typer.Option(help="cost table: now, cached or declared")] = "now",
    repeats: Annotated[int, typer.Option(help="re-time or re-draw the costs this many times")] = 1,
    cost_noise: Annotated[
        float,
        typer.Option(help="multiply each model's ms by exp(N(0, this)), a new draw per repeat"),
    ] = 0.0,
    probe_stride: Annotated[int, typer.Option(help="probe stride (0: seq % every == 0)")] = 0,
    guard: Annotated[
        bool,
        typer.Option(
            help="re-plan when probes drift from the plan (the live controller "
            "does not in budget mode: --no-guard replays what it does)"
        ),
    ] = True,
    guard_trigger: Annotated[
        str,
        typer.Option(
            help="drift: live moved from the forecast either way; miss: live below the "
            "forecast at the upper confidence bound (mlink status's flag)"
        ),
    ] = "drift",
    warmup_counts: Annotated[
        str | None,
        typer.Option(
            help='JSON {"stream": frames, ...}: the warm-up is each stream\'s first frames in '
            "these numbers (a backlog's, from a live run's epoch-0 results), not the first "
            "links.warmup_frames in source order"
        ),
    ] = None,
    balanced: Annotated[
        bool,
        typer.Option(
            help="weigh every stream the same in the estimates, as the live trainer does "
            "(--no-balanced: every sample, as before stop 34)"
        ),
    ] = True,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Replay CONFIG with the live protocol and stream synthesis; print what it keeps."""
    config = load_config(config_path)
    base = load_workload(config, progress=not as_json, cache_dir=DEFAULT_CACHE)
    stream = live_protocol(
        config,
        probe_stride=probe_stride,
        guard=guard,
        guard_trigger=guard_trigger,
        balanced=balanced,
    )
    picked = None if warmup_counts is None else backlog_warmup(base, json.loads(warmup_counts))
    warmup = min(config.links.warmup_frames, base.n_frames - 1) if picked is None else len(picked)
    runs = []
    for draw in range(repeats):
        started = time.perf_counter()
        wl = with_cost_table(base, config, costs)  # type: ignore[arg-type]
        if cost_noise:
            wl = jittered(wl, cost_noise, seed=draw)
        run = replay_live(config, wl, budget_fraction=budget_fraction, stream=stream, warmup=picked)
        figures = live_figures(run, wl, warmup)
        figures["cost_table"] = wl.cost_source
        figures["model_ms"] = {m: wl.costs[m]["ms"] for m in wl.models}
        figures["seconds"] = time.perf_counter() - started
        runs.append(figures)
    summary = {
        part: {
            metric: mean_spread(r[part][metric] for r in runs)
            for metric in ("accuracy", "synthesized_accuracy", "compute_saved")
        }
        for part in ("overall", "after_warmup", "steady")
    }
    if as_json:
        print(json.dumps({"summary": summary, "runs": runs}, default=float))
        return
    for part, metrics in summary.items():
        cells = ", ".join(
            f"{k} {v[0]:.1%}" + (f" ± {v[1] * 100:.1f}" if repeats > 1 else "")
            for k, v in metrics.items()
            if v[0] is not None
        )
        print(f"{part}: {cells}")
    if repeats > 1:
        for draw, r in enumerate(runs):
            always = [m for m, what in r["plan"].items() if what.startswith("always")]
            steady = r["steady"]
            print(
                f"  run {draw}: steady {steady['accuracy']:.1%} all, "
                f"{steady['synthesized_accuracy']:.1%} synth., {steady['compute_saved']:.1%} "
                f"saved; always runs {', '.join(always)}"
            )
    last = runs[-1]
    print(f"probes: {last['probes']}, re-plans: {last['replans']}")
    print(f"cost table: {last['cost_table']}")
    for m, what in last["plan"].items():
        print(f"  {m}: {what}; steady agreement {last['per_model_steady'][m]:.1%}")


if __name__ == "__main__":
    app()
