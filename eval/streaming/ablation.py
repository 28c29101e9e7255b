"""Which part of stream synthesis wins, and which candidate does not: one row per variant.

``python -m mlink.eval.streaming.ablation deploy/configs/dnn.yaml`` runs, on the bench's split
(first 10% of each stream trains) and the bench's links, the default method and one change at
a time: selection by the estimate instead of its lower bound, no detector links, no paper
links, probes without refits, periodic refits from probes (online link learning), the drift
guard (refit and hot swap), an adaptive probe rate, half the probe rate, probes without a
stride, boxes moved with the measured motion of the picture (the ``flow`` mode, its motion
measured on every frame and priced once per frame), offline and with the probes' guard.
Probe rows count the probes' cost and also show *steady* figures (probe frames left out). The
*free probes* rows give the plans what their probes cost on top of the budget, so their steady
figures show what learning and re-planning from probes do at the offline plan's spending:
whether cheaper probes would make the probe rows pay.
``--only TEXT`` runs the variants whose name contains it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Annotated, Any

import typer
from tqdm.auto import tqdm

from mlink.deploy.config import load_config
from mlink.eval.cost_tables import COSTS_HELP, priced_workload
from mlink.eval.experiment import TrainedWorkload, train_workload
from mlink.eval.figures import mean_spread
from mlink.eval.streaming.method import OFFLINE, ONLINE, stream_mlink
from mlink.eval.streaming.simulate import StreamConfig

__all__ = ["VARIANTS", "FreeProbes", "ablation_rows", "markdown", "run_ablation"]


@dataclass(frozen=True, slots=True)
class FreeProbes:
    """A variant whose plans get what its probes cost on top of the budget: a probe runs every
    model where the plan would have spent the budget, so ``(1 - budget) / probe_every`` of the
    full cost. Its frames between probes then spend the budget, as the offline plan's do, and
    its steady figures (probe frames out) show what learning and re-planning alone gain."""

    config: StreamConfig

    def __post_init__(self) -> None:
        if self.config.probe_every <= 0:
            raise ValueError("FreeProbes needs a config with probes (probe_every > 0)")


Variant = StreamConfig | FreeProbes
_PROBES = replace(OFFLINE, probe_every=16, probe_stride=7)
VARIANTS: dict[str, Variant] = {
    "default (offline, lower-bound selection)": OFFLINE,
    "selection by the estimate": replace(OFFLINE, objective="estimate"),
    "margins from frame counts only": replace(OFFLINE, between_streams=False),
    "without detector links": replace(OFFLINE, detector_links=False),
    "without the paper's links": replace(OFFLINE, links=False),
    "probes every 16, no learning": _PROBES,
    "probes + refit every 4 probes": replace(_PROBES, refit_every=4),
    "probes + drift guard (refit, swap)": ONLINE,
    "probes + guard + adaptive rate": replace(ONLINE, adaptive_probes=True),
    "probes every 32 + guard": replace(ONLINE, probe_every=32),
    "probes at seq % 16 == 0 + guard": replace(ONLINE, probe_stride=0),
    "free probes, no learning": FreeProbes(_PROBES),
    "free probes + refit every 4 probes": FreeProbes(replace(_PROBES, refit_every=4)),
    "free probes + drift guard": FreeProbes(ONLINE),
    "flow mode (boxes moved with the picture)": replace(OFFLINE, motion=True),
    "flow mode + probes + drift guard": replace(ONLINE, motion=True),
}


def run_ablation(
    config_path: Path,
    fractions: list[float],
    seeds: int = 1,
    costs: str = "cached",
    variants: dict[str, Variant] | None = None,
) -> list[dict[str, Any]]:
    config = load_config(config_path)
    chosen = variants or VARIANTS
    motion = any(_config_of(v).motion for v in chosen.values())
    workload = priced_workload(config, costs, motion=motion)
    rows = []
    for seed in range(seeds):
        trained = train_workload(workload, 0.1, replace(config.links.train_config(), seed=seed))
        rows += ablation_rows(trained, fractions, chosen, seed, progress=True)
    return rows


def _config_of(variant: Variant) -> StreamConfig:
    return variant.config if isinstance(variant, FreeProbes) else variant


def ablation_rows(
    trained: TrainedWorkload,
    fractions: list[float],
    variants: dict[str, Variant],
    seed: int = 0,
    progress: bool = False,
) -> list[dict[str, Any]]:
    """One row per variant and budget fraction on one trained split (``progress``: a bar on
    stderr; a replay takes up to a minute on the video workloads)."""
    full = trained.workload.total_cost("ms")
    cells = [(name, cfg, f) for name, cfg in variants.items() for f in fractions]
    rows = []
    for name, variant, f in tqdm(cells, desc=f"seed {seed}", unit="replay", disable=not progress):
        cfg, extra = (
            (variant.config, full * (1.0 - f) / variant.config.probe_every)
            if isinstance(variant, FreeProbes)
            else (variant, 0.0)
        )
        budget = f * full + extra
        run = stream_mlink(trained, budget, cfg)
        r = run.result
        steady = run.steady()
        rows.append(
            {
                "variant": name,
                "fraction": f,
                "plans_budget": budget / full,  # the share the plans were given
                "seed": seed,
                "accuracy": r.accuracy,
                "synthesized_accuracy": r.synthesized_accuracy,
                "compute_saved": r.compute_saved,
                "steady_accuracy": steady["accuracy"],
                "steady_saved": steady["compute_saved"],
                "replans": r.details["replans"],
                "probes": r.details["probes"],
                "feasible": r.feasible,
                "plan": r.details["plan"],  # the plan in force at the end of the stream
            }
        )
    return rows


def markdown(rows: list[dict[str, Any]]) -> str:
    fractions = sorted({r["fraction"] for r in rows})
    lines = [
        "| variant | " + " | ".join(f"budget {f:.0%}" for f in fractions) + " |",
        "|---" * (len(fractions) + 1) + "|",
    ]
    seeds = len({r["seed"] for r in rows})
    for name in dict.fromkeys(r["variant"] for r in rows):
        cells = []
        for f in fractions:
            group = [r for r in rows if r["variant"] == name and r["fraction"] == f]
            acc, acc_s = mean_spread(r["accuracy"] for r in group)
            syn, _ = mean_spread(r["synthesized_accuracy"] for r in group)
            saved, _ = mean_spread(r["compute_saved"] for r in group)
            text = f"{acc:.1%}" + (f"±{acc_s * 100:.1f}" if seeds > 1 else "")
            text += f" / {saved:.1%}<br>synth {syn:.1%}"
            if group[0]["probes"]:
                st, _ = mean_spread(r["steady_accuracy"] for r in group)
                st_saved, _ = mean_spread(r["steady_saved"] for r in group)
                replans, _ = mean_spread(r["replans"] for r in group)
                text += f" · steady {st:.1%} / {st_saved:.1%} · {replans:.0f} re-plans"
            if not all(r["feasible"] for r in group):
                text += " · over budget"
            cells.append(text)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


app = typer.Typer(add_completion=False, pretty_exceptions_show_locals=False)


@app.command()
def main(
    config_path: Annotated[Path, typer.Argument(exists=True)],
    budget_fractions: Annotated[str, typer.Option()] = "0.2,0.33,0.5",
    seeds: Annotated[int, typer.Option()] = 1,
    costs: Annotated[str, typer.Option(help=COSTS_HELP)] = "cached",
    as_json: Annotated[bool, typer.Option("--json")] = False,
    only: Annotated[str, typer.Option(help="run the variants whose name contains this")] = "",
) -> None:
    """Every variant of stream synthesis at every budget (accuracy / saved, synthesized only)."""
    fractions = [float(f) for f in budget_fractions.split(",")]
    variants = {name: v for name, v in VARIANTS.items() if only in name}
    if not variants:
        raise typer.BadParameter(f"no variant name contains {only!r}; names: {list(VARIANTS)}")
    rows = run_ablation(config_path, fractions, seeds, costs, variants)
    print(json.dumps(rows) if as_json else markdown(rows))


if __name__ == "__main__":
    app()
