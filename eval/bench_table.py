"""Terminal and image rendering of a :class:`mlink.eval.bench.BenchReport`.

A cell reads ``accuracy / compute saved`` (mean ± spread over seeds), then the accuracy of the
synthesized outputs only and, where the method predicts one, its predicted accuracy.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from mlink.eval.bench import FORECASTS, METHODS, SELECTOR_ROWS, BenchReport
from mlink.eval.figures import mean_spread

__all__ = ["format_cell", "from_json", "markdown", "plot_report", "print_report"]


def _pct(value: float | None, spread: float | None, seeds: int) -> str:
    if value is None:
        return "-"
    if seeds > 1 and spread is not None:
        return f"{value:.1%}±{spread * 100:.1f}"
    return f"{value:.1%}"


def format_cell(cell: dict[str, Any], seeds: int) -> str:
    """``acc / saved``, then ``synth X · pred Y``; marks cells over budget or infeasible."""
    if cell["accuracy"] is None:
        return "infeasible"
    # a spread only over the runs that have figures: a seed where nothing fitted has none
    seeds = min(seeds, cell["runs"] - cell.get("nothing_fits_runs", 0))
    acc = _pct(cell["accuracy"], cell["accuracy_spread"], seeds)
    saved = _pct(cell["compute_saved"], cell["compute_saved_spread"], seeds)
    lines = [f"{acc} / {saved}"]
    extra = [
        f"synth {_pct(cell['synthesized_accuracy'], cell['synthesized_accuracy_spread'], seeds)}"
    ]
    if cell["predicted_accuracy"] is not None:
        extra.append(f"pred {_spread_of(cell, 'predicted_accuracy', seeds)}")
    if cell.get("predicted_forecast") is not None:  # stream plans: what the plan promises
        extra[-1] += f" (forecast {_spread_of(cell, 'predicted_forecast', seeds)})"
    lines.append(" · ".join(extra))
    over_runs = cell.get("over_budget_runs", cell["infeasible_runs"])
    if over_runs:
        over = f"over budget in {over_runs}/{cell['runs']} runs"
        if cell.get("probe_share"):  # probes run every model: more of them than planned cost more
            over += f" (probes {cell['probe_share']:.2%} of frames)"
        lines.append(over)
    if cell.get("nothing_fits_runs"):
        lines.append(f"nothing fits in {cell['nothing_fits_runs']}/{cell['runs']} runs")
    return "\n".join(lines)


def _spread_of(cell: dict[str, Any], key: str, seeds: int) -> str:
    """``cell[key]`` with its spread over seeds (reports before spreads were kept: none)."""
    return _pct(cell[key], cell.get(f"{key}_spread"), seeds)


def _best_accuracy(report: BenchReport, budgets: list[float]) -> dict[float, float | None]:
    """The highest accuracy of a feasible method at each budget (the bold cell)."""
    return {
        b: max(
            (c["accuracy"] for c in report.cells if c["budget"] == b and c["feasible"]),
            default=None,
        )
        for b in budgets
    }


def from_json(text: str) -> BenchReport:
    """A report back from ``mlink bench --json`` output."""
    return BenchReport(**json.loads(text))


def markdown(report: BenchReport) -> str:
    """The main table as Markdown (for BENCHMARKS.md): one row per method, one column per budget,
    cells as in the terminal table; bold is the most accurate feasible method at that budget."""
    budgets = sorted({c["budget"] for c in report.cells})
    head = (
        "| method | " + " | ".join(f"budget {b / report.full_cost_ms:.0%}" for b in budgets) + " |"
    )
    lines = [head, "|---" * (len(budgets) + 1) + "|"]
    best = _best_accuracy(report, budgets)
    for method in METHODS:
        cells = []
        for b in budgets:
            cell = next(c for c in report.cells if c["method"] == method and c["budget"] == b)
            text = format_cell(cell, report.seeds).replace("\n", "<br>")
            if cell["feasible"] and cell["accuracy"] == best[b]:
                first, _, rest = text.partition("<br>")
                text = f"**{first}**<br>{rest}"
            cells.append(text)
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    gaps = [c for c in report.cells if c["method"] in SELECTOR_ROWS]
    lines += [
        "",
        "| MLink row | budget | predicted | realised | gap (points) | forecast bound "
        "| gap (points) | lower bound | gap (points) | plan in force | gap (points) | with probes "
        "| gap (points) | content-weighted | gap (points) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in gaps:
        if c["prediction_gap"] is None:
            continue
        lines.append(
            f"| {c['method']} | {c['budget_fraction']:.0%} | "
            f"{_spread_of(c, 'predicted_accuracy', report.seeds)} | "
            f"{_spread_of(c, 'accuracy', report.seeds)} | "
            f"{_gap(c, 'prediction_gap', report.seeds)} | "
            + " | ".join(_other_forecasts(c, report.seeds))
            + " |"
        )
    if report.targets:
        lines += ["", "| " + " | ".join(TARGET_COLUMNS) + " |", "|---" * len(TARGET_COLUMNS) + "|"]
        for cell in target_cells(report):
            lines.append("| " + " | ".join(_target_line(cell, report.seeds)) + " |")
    return "\n".join(lines)


def _gap(cell: dict[str, Any], key: str, seeds: int) -> str:
    spread = cell[f"{key}_spread"]
    tail = f" ± {spread * 100:.1f}" if seeds > 1 and spread is not None else ""
    return f"{cell[key] * 100:+.1f}{tail}"


def _other_forecasts(cell: dict[str, Any], seeds: int) -> list[str]:
    """Value and gap of every forecast after the prediction (``-`` where the row has none)."""
    out = []
    for key, gap in FORECASTS[1:]:
        known = cell.get(gap) is not None
        out += [_spread_of(cell, key, seeds), _gap(cell, gap, seeds)] if known else ["-", "-"]
    return out


def target_cells(report: BenchReport) -> list[dict[str, Any]]:
    """One cell per accuracy target: mean and spread over seeds, and every model that missed
    its target by more than 2 points in some seed."""
    cells = []
    for target in sorted({r["target"] for r in report.targets}):
        group = [r for r in report.targets if r["target"] == target]
        cell: dict[str, Any] = {"target": target, "runs": len(group)}
        for metric in ("accuracy", "synthesized_accuracy", "compute_saved", "min_achieved"):
            cell[metric], cell[f"{metric}_spread"] = mean_spread(r[metric] for r in group)
        cell["misses"] = sorted({m for r in group for m in r["misses"]})
        cell["synthesized_models"] = sum(len(r["synthesized_models"]) for r in group) / len(group)
        cells.append(cell)
    return cells


def _target_line(cell: dict[str, Any], seeds: int) -> list[str]:
    return [
        f"{cell['target']:.2f}",
        _pct(cell["accuracy"], cell["accuracy_spread"], seeds),
        _pct(cell["synthesized_accuracy"], cell["synthesized_accuracy_spread"], seeds),
        _pct(cell["min_achieved"], cell["min_achieved_spread"], seeds),
        f"{cell['synthesized_models']:.1f}",
        _pct(cell["compute_saved"], cell["compute_saved_spread"], seeds),
        ", ".join(cell["misses"]) or "none",
    ]


TARGET_COLUMNS = (
    "target",
    "all models",
    "synthesized only",
    "lowest synthesized model",
    "models synthesized",
    "compute saved",
    "missed by > 2 points",
)


def print_report(report: BenchReport, console: Console) -> None:
    budgets = sorted({c["budget"] for c in report.cells})
    seeds = report.seeds
    table = Table(
        title=f"{report.workload}: {report.frames} frames ({report.order} order, "
        f"{report.train_frames} train), {seeds} seed(s); running every model costs "
        f"{report.full_cost_ms:.2f} ms/frame",
        show_lines=True,
    )
    table.add_column("method")
    for b in budgets:
        table.add_column(
            f"budget {b / report.full_cost_ms:.0%}\nacc / saved\nsynthesized only · predicted",
            justify="right",
        )
    best = _best_accuracy(report, budgets)
    for method in METHODS:
        cells = []
        for b in budgets:
            cell = next(
                (c for c in report.cells if c["method"] == method and c["budget"] == b), None
            )
            if cell is None:
                cells.append("-")
                continue
            text = format_cell(cell, seeds)
            top = cell["feasible"] and cell["accuracy"] == best[b]
            cells.append(f"[bold]{text}[/bold]" if top else text)
        table.add_row(method, *cells)
    console.print(table)
    console.print(f"model costs: {report.cost_table.get('models')}")
    console.print(f"measured in this run: {report.cost_table.get('measured_in_this_run')}")
    _print_gaps(report, console)
    if report.targets:
        targets = Table(title="accuracy-target mode (MLink stream, probes every 16th frame)")
        for col in TARGET_COLUMNS:
            targets.add_column(col, justify="right")
        for cell in target_cells(report):
            targets.add_row(*_target_line(cell, seeds))
        console.print(targets)
    _print_ratios(report, console)
    console.print(
        f"ensembles: {report.ensembles.get('winner')} wins "
        f"(fusion - weighted accuracy per budget: "
        f"{[round(d, 4) for d in report.ensembles.get('fusion_minus_weighted_accuracy', [])]}); "
        f"synthesis costs {report.link_cost.get('mean_ms_per_source', 0):.4f} ms/frame per active "
        "source on average, plus a fixed part per target"
    )


def _print_gaps(report: BenchReport, console: Console) -> None:
    gaps = [
        c for c in report.cells if c["method"] in SELECTOR_ROWS and c["prediction_gap"] is not None
    ]
    if not gaps:
        return
    table = Table(title=f"MLink selection: predicted minus realised accuracy ({report.scheme})")
    table.add_column("method")
    table.add_column("budget", justify="right")
    table.add_column("predicted", justify="right")
    table.add_column("realised", justify="right")
    table.add_column("gap (points)", justify="right")
    for forecast in ("forecast bound", "lower bound", "plan in force", "with probes", "content"):
        table.add_column(forecast, justify="right")
        table.add_column("gap (points)", justify="right")
    for c in gaps:
        table.add_row(
            c["method"],
            f"{c['budget_fraction']:.0%}",
            _spread_of(c, "predicted_accuracy", report.seeds),
            _spread_of(c, "accuracy", report.seeds),
            _gap(c, "prediction_gap", report.seeds),
            *_other_forecasts(c, report.seeds),
        )
    console.print(table)


def _print_ratios(report: BenchReport, console: Console) -> None:
    ratios = Table(title="link agreement vs share of each stream used for training (seed 0)")
    for col in (
        "train share",
        "frames",
        "mean link",
        "best link",
        "ensemble (all others)",
        "prior only",
    ):
        ratios.add_column(col, justify="right")
    for r in report.training_ratios:
        ratios.add_row(
            f"{r['ratio']:.0%}",
            str(r["train_frames"]),
            f"{r['mean_link_agreement']:.1%}",
            f"{r['best_link_agreement']:.1%}",
            f"{r['mean_ensemble_agreement']:.1%}",
            f"{r['mean_prior_agreement']:.1%}",
        )
    console.print(ratios)


def plot_report(report: BenchReport, path: Path) -> None:
    """All-models and synthesized-only accuracy vs compute saved, one line per method across the
    budgets (means over seeds, bars for the spread)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 5.2), sharex=True)
    markers = "osD^v<>ph*"
    for i, method in enumerate(METHODS):
        cells = sorted(
            (c for c in report.cells if c["method"] == method and c["compute_saved"] is not None),
            key=lambda c: c["compute_saved"],
        )
        color = f"C{i}" if i < 10 else "black"  # the colour cycle has ten
        marker = markers[i % len(markers)]
        for ax, metric in zip(axes, ("accuracy", "synthesized_accuracy"), strict=True):
            shown = [c for c in cells if c[metric] is not None]
            ax.errorbar(
                [c["compute_saved"] for c in shown],
                [c[metric] for c in shown],
                xerr=[c["compute_saved_spread"] or 0.0 for c in shown],
                yerr=[c[f"{metric}_spread"] or 0.0 for c in shown],
                marker=marker,
                color=color,
                capsize=2,
                label=method,
            )
            over = [c for c in shown if not c["feasible"]]  # drawn, but hollow: over budget
            ax.plot(
                [c["compute_saved"] for c in over],
                [c[metric] for c in over],
                linestyle="none",
                marker=marker,
                markerfacecolor="white",
                markeredgecolor=color,
                markersize=7,
                zorder=3,  # above the errorbar's own filled marker
            )
    axes[0].set_ylabel("accuracy, all models (mean agreement with the real models)")
    axes[1].set_ylabel("accuracy of synthesized outputs only")
    for ax in axes:
        ax.set_xlabel("compute saved (share of running every model)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, title="hollow marker: over its budget", title_fontsize=7)
    fig.suptitle(
        f"{report.workload}: {report.frames} frames ({report.order} order), "
        f"{report.train_frames} train, {report.seeds} seed(s)"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    """``python -m mlink.eval.bench_table REPORT.json [--plot PNG]``: the Markdown tables of a
    saved ``mlink bench --json`` report, and its plot, without running the bench again."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("report", type=Path, help="a `mlink bench --json` report")
    parser.add_argument("--plot", type=Path, help="also write the accuracy/saved plot (PNG)")
    args = parser.parse_args(argv)
    report = from_json(args.report.read_text())
    print(markdown(report))
    if args.plot:
        plot_report(report, args.plot)


if __name__ == "__main__":
    main()
