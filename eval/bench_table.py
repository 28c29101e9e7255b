"""Terminal rendering of a :class:`mlink.eval.bench.BenchReport`."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from mlink.eval.bench import BenchReport


def print_report(report: BenchReport, console: Console) -> None:
    budgets = sorted({r["budget"] for r in report.rows})
    table = Table(
        title=f"{report.workload}: {report.frames} frames ({report.train_frames} train); "
        f"running every model costs {report.full_cost_ms:.2f} ms/frame"
    )
    table.add_column("method")
    for b in budgets:
        table.add_column(f"budget {b / report.full_cost_ms:.0%}\nacc / saved", justify="right")
    methods = list(dict.fromkeys(r["method"] for r in report.rows))
    best = {
        b: max(
            (r["accuracy"] for r in report.rows if r["budget"] == b and r["feasible"]), default=None
        )
        for b in budgets
    }
    for method in methods:
        cells = []
        for b in budgets:
            row = next((r for r in report.rows if r["method"] == method and r["budget"] == b), None)
            if row is None:
                cells.append("-")
                continue
            if not row["feasible"]:
                cells.append("infeasible")
                continue
            text = f"{row['accuracy']:.1%} / {row['compute_saved']:.1%}"
            if row["cost_ms"] > b * (1 + 1e-6):
                text += " (over budget)"
            cells.append(f"[bold]{text}[/bold]" if row["accuracy"] == best[b] else text)
        table.add_row(method, *cells)
    console.print(table)
    ratios = Table(title="link agreement vs share of each stream used for training")
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
    console.print(
        f"ensembles: {report.ensembles.get('winner')} wins "
        f"(fusion - weighted accuracy per budget: "
        f"{[round(d, 4) for d in report.ensembles.get('fusion_minus_weighted_accuracy', [])]}); "
        f"a link costs {report.link_cost.get('mean_ms_per_link', 0):.4f} ms/frame on average"
    )
