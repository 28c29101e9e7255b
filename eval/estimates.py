"""How far selection's predicted accuracy is from what the chosen plan keeps, per scoring scheme.

``python -m mlink.eval.estimates CONFIG --seeds 3`` trains the links once per scheme and seed
(:func:`mlink.linkstore.crossfit.fit_and_score`: the link set's own validation split, a held-out
slice, cross-fitting within streams, across streams, and the mean of both), lets the exact
selector and the paper's greedy choose a plan at every budget, and compares each plan's predicted
accuracy with its realised accuracy on the evaluation frames. The scheme whose predictions land
closest is the bench's and the trainer's default.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer
from rich.console import Console
from rich.table import Table

from mlink.deploy.config import PipelineConfig, load_config
from mlink.eval.bench import DEFAULT_FRACTIONS, Order, resolve_order
from mlink.eval.cost_tables import COSTS_HELP, CostTable, priced_workload
from mlink.eval.experiment import compare_selectors, train_workload
from mlink.eval.figures import mean_spread
from mlink.eval.workload import shuffled_order
from mlink.linkstore.content_forecast import ContentForecast
from mlink.linkstore.crossfit import Scheme

__all__ = ["SCHEMES", "compare_schemes", "per_model_gaps", "summarize_gaps"]

SCHEMES: tuple[Scheme, ...] = ("validation", "holdout", "crossfit", "streams", "mixed")


def compare_schemes(
    config: PipelineConfig,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    seeds: int = 3,
    schemes: Sequence[Scheme] = SCHEMES,
    train_fraction: float = 0.1,
    log: Callable[[str], None] = print,
    order: Order = "auto",
    costs: CostTable = "cached",
) -> list[dict[str, Any]]:
    """One row per (scheme, seed, budget, selector): predicted and realised accuracy, with
    compute priced on ``costs`` (:func:`~mlink.eval.cost_tables.with_cost_table`)."""
    base = priced_workload(config, costs)
    order = resolve_order(config, order)
    full = base.total_cost("ms")
    rows = []
    for seed in range(seeds):
        workload = base
        if order == "shuffled":
            workload = base.reordered(shuffled_order(base.streams, seed))
        train = replace(config.links.train_config(), seed=seed)
        for scheme in schemes:
            if scheme in ("streams", "mixed") and len(set(workload.streams)) < 2:
                continue  # one stream: nothing to hold out across streams (mixed = crossfit)
            log(f"seed {seed}, {scheme}")
            trained = train_workload(workload, train_fraction, train, "weighted", scheme)
            for fraction in fractions:
                for plan in compare_selectors(trained, {"ms": fraction * full}):
                    estimate = plan.predicted_accuracy
                    content = plan.content or ContentForecast(estimate, 0.0, estimate)
                    rows.append(
                        {
                            "scheme": scheme,
                            "seed": seed,
                            "budget_fraction": fraction,
                            "selector": plan.method,
                            "predicted": plan.predicted_accuracy,
                            "realised": plan.accuracy,
                            "content": content.value,
                            "unseen": content.unseen,
                            "floor": content.floor,
                            "active": plan.active,
                            "per_model": {
                                m: (plan.predicted_per_model[m], plan.per_model[m])
                                for m in plan.per_model
                                if m not in plan.active
                            },
                        }
                    )
    return rows


def summarize_gaps(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (scheme, selector, budget): mean and spread of predicted - realised over seeds."""
    out = []
    keys = dict.fromkeys((r["scheme"], r["selector"], r["budget_fraction"]) for r in rows)
    for scheme, selector, fraction in keys:
        group = [
            r
            for r in rows
            if (r["scheme"], r["selector"], r["budget_fraction"]) == (scheme, selector, fraction)
        ]
        gap, spread = mean_spread(r["predicted"] - r["realised"] for r in group)
        content_gap, content_spread = mean_spread(r["content"] - r["realised"] for r in group)
        realised, realised_spread = mean_spread(r["realised"] for r in group)
        out.append(
            {
                "scheme": scheme,
                "selector": selector,
                "budget_fraction": fraction,
                "gap": gap,
                "gap_spread": spread,
                "max_abs_gap": max(abs(r["predicted"] - r["realised"]) for r in group),
                "content_gap": content_gap,
                "content_gap_spread": content_spread,
                "max_abs_content_gap": max(abs(r["content"] - r["realised"]) for r in group),
                "unseen": float(np.mean([r["unseen"] for r in group])),
                "floor_gap": float(np.mean([r["floor"] - r["realised"] for r in group])),
                "realised": realised,
                "realised_spread": realised_spread,
            }
        )
    return out


def per_model_gaps(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (scheme, synthesized model): mean predicted and realised agreement over every plan
    that synthesized it (exact selector only, so no plan counts twice)."""
    out = []
    for scheme in dict.fromkeys(r["scheme"] for r in rows):
        pairs: dict[str, list[tuple[float, float]]] = {}
        for r in rows:
            if r["scheme"] == scheme and r["selector"] == "MLink (exact)":
                for m, pair in r["per_model"].items():
                    pairs.setdefault(m, []).append(pair)
        for m, values in sorted(pairs.items()):
            pred, real = np.mean(values, axis=0)
            out.append(
                {
                    "scheme": scheme,
                    "model": m,
                    "plans": len(values),
                    "predicted": pred,
                    "realised": real,
                }
            )
    return out


def main(
    config_path: Annotated[Path, typer.Argument(exists=True, help="pipeline config (YAML)")],
    seeds: Annotated[int, typer.Option(help="seeds 0..N-1")] = 3,
    order: Annotated[str, typer.Option(help="auto, file or shuffled (as mlink bench)")] = "auto",
    as_json: Annotated[bool, typer.Option("--json")] = False,
    costs: Annotated[str, typer.Option(help=COSTS_HELP)] = "cached",
    scheme: Annotated[
        list[str] | None, typer.Option(help="only these schemes (repeat); default all five")
    ] = None,
) -> None:
    console = Console()
    config = load_config(config_path)
    unknown = sorted(set(scheme or ()) - set(SCHEMES))
    if unknown:
        raise typer.BadParameter(f"unknown scheme(s) {unknown}; use any of {list(SCHEMES)}")
    log = (lambda _m: None) if as_json else console.print
    rows = compare_schemes(
        config,
        seeds=seeds,
        schemes=tuple(scheme or SCHEMES),  # type: ignore[arg-type]
        log=log,
        order=order,  # type: ignore[arg-type]
        costs=costs,
    )
    summary = summarize_gaps(rows)
    models = per_model_gaps(rows)
    if as_json:
        print(json.dumps({"rows": rows, "summary": summary, "per_model": models}, default=float))
        return
    table = Table(
        title=f"{config.name} ({resolve_order(config, order)} order): predicted - realised "  # type: ignore[arg-type]
        f"accuracy, {seeds} seed(s)"
    )
    columns = ("scheme", "selector", "budget", "gap (points)", "max |gap|", "content-weighted gap")
    for col in (*columns, "max |gap|", "unseen content", "floor gap", "realised"):
        table.add_column(col, justify="right")
    for s in summary:
        table.add_row(
            s["scheme"],
            s["selector"],
            f"{s['budget_fraction']:.0%}",
            f"{s['gap'] * 100:+.1f} ± {s['gap_spread'] * 100:.1f}",
            f"{s['max_abs_gap'] * 100:.1f}",
            f"{s['content_gap'] * 100:+.1f} ± {s['content_gap_spread'] * 100:.1f}",
            f"{s['max_abs_content_gap'] * 100:.1f}",
            f"{s['unseen']:.1%}",
            f"{s['floor_gap'] * 100:+.1f}",
            f"{s['realised']:.1%} ± {s['realised_spread'] * 100:.1f}",
        )
    console.print(table)
    per = Table(title="per synthesized model, exact selector: mean predicted vs realised agreement")
    for col in ("scheme", "model", "plans", "predicted", "realised", "gap (points)"):
        per.add_column(col, justify="right")
    for m in models:
        gap = (m["predicted"] - m["realised"]) * 100
        per.add_row(
            m["scheme"],
            m["model"],
            str(m["plans"]),
            f"{m['predicted']:.1%}",
            f"{m['realised']:.1%}",
            f"{gap:+.1f}",
        )
    console.print(per)
    for scheme in dict.fromkeys(s["scheme"] for s in summary):
        mine = [abs(r["predicted"] - r["realised"]) for r in rows if r["scheme"] == scheme]
        signed = [r["predicted"] - r["realised"] for r in rows if r["scheme"] == scheme]
        console.print(
            f"{scheme}: mean gap {np.mean(signed) * 100:+.2f}, mean |gap| "
            f"{np.mean(mine) * 100:.2f} points, max {np.max(mine) * 100:.2f}, within 3 points in "
            f"{sum(g <= 0.03 for g in mine)}/{len(mine)} plans"
        )
        mine_rows = [r for r in rows if r["scheme"] == scheme]
        weighted = [r["content"] - r["realised"] for r in mine_rows]
        console.print(
            f"{scheme}, content-weighted: mean gap {np.mean(weighted) * 100:+.2f}, mean |gap| "
            f"{np.mean(np.abs(weighted)) * 100:.2f} points, max "
            f"{np.max(np.abs(weighted)) * 100:.2f}, within 3 points in "
            f"{sum(abs(g) <= 0.03 for g in weighted)}/{len(weighted)} plans; floor at or under "
            f"realised in {sum(r['floor'] <= r['realised'] for r in mine_rows)}/{len(mine_rows)}"
        )


if __name__ == "__main__":
    typer.run(main)
