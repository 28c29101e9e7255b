"""The ``bench`` command with every option: ``python -m mlink.eval.bench_cli CONFIG [options]``.

Light to import (typer only; the bench itself loads lazily), so ``mlink``'s CLI can mount it as its
``bench`` command: ``app.command("bench")(mlink.eval.bench_cli.bench)``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.text import Text

__all__ = ["app", "bench"]

app = typer.Typer(add_completion=False, pretty_exceptions_show_locals=False)


def bench(
    config_path: Annotated[Path, typer.Argument(help="pipeline config (YAML)", exists=True)],
    budget_fractions: Annotated[
        str | None,
        typer.Option(help="budgets as shares of the full cost, e.g. 0.2,0.33,0.5 (default)"),
    ] = None,
    use_config_budget: Annotated[
        bool, typer.Option("--config-budget", help="only the config's own budget")
    ] = False,
    train_fraction: Annotated[float, typer.Option(help="share of each stream that trains")] = 0.1,
    seeds: Annotated[
        int, typer.Option(help="runs with seeds 0..N-1; cells show mean ± spread (sample std)")
    ] = 1,
    order: Annotated[
        str,
        typer.Option(
            help="stream order: file, shuffled (within each stream, by the seed), or auto "
            "(shuffled when the source's frames are independent samples, e.g. digits)"
        ),
    ] = "auto",
    costs: Annotated[
        str,
        typer.Option(
            help="model cost table: now (re-timed in this run on 40 frames), cached (measured "
            "when the outputs were computed), declared (in the config), or a JSON file: a "
            "`mlink run --json` summary (the costs that live run measured) or {model: ms}"
        ),
    ] = "now",
    selection: Annotated[
        str,
        typer.Option(
            help="how MLink scores plans: mixed (default: the mean of crossfit and streams, or "
            "crossfit with one stream), crossfit (contiguous blocks per stream), streams (one "
            "fold per stream), holdout, or validation (the link set's own validation split, "
            "which also trained the ensembles)"
        ),
    ] = "mixed",
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
    plot_path: Annotated[
        Path | None, typer.Option("--plot", help="write accuracy vs compute saved (PNG)")
    ] = None,
) -> None:
    """The paper's Table 4 on this config's models and data, offline: Standalone, frame
    filtering, multi-task CNN, the paper's greedy MLink and ours, reuse and temporal methods, at
    several budgets."""
    from mlink.deploy.config import ConfigError, load_config
    from mlink.eval.bench import DEFAULT_FRACTIONS, plot, run_bench, to_json
    from mlink.eval.bench_table import print_report
    from mlink.linkstore.crossfit import SCHEMES, TooFewSamples

    console = Console()
    errors = Console(stderr=True)  # what failed: stdout may be the --json report
    choices = {
        "order": (order, ("auto", "file", "shuffled")),
        "selection": (selection, SCHEMES),
    }
    if costs not in ("now", "cached", "declared") and not Path(costs).is_file():
        raise typer.BadParameter(f"--costs {costs!r}: choose now, cached, declared or a JSON file")
    for name, (value, allowed) in choices.items():
        if value not in allowed:
            raise typer.BadParameter(f"--{name} {value!r}: choose one of {', '.join(allowed)}")
    try:
        config = load_config(config_path)
    except ConfigError as exc:
        errors.print(Text(str(exc), style="red"))  # a path may hold brackets: no markup
        raise typer.Exit(2) from None
    if use_config_budget:
        fractions = None
    elif budget_fractions:
        fractions = [float(f) for f in budget_fractions.split(",")]
    else:
        fractions = list(DEFAULT_FRACTIONS)
    try:
        report = run_bench(
            config,
            fractions,
            train_fraction,
            progress=not as_json,
            log=(lambda _msg: None) if as_json else console.print,
            order=order,  # type: ignore[arg-type]
            seeds=seeds,
            costs=costs,  # type: ignore[arg-type]
            scheme=selection,  # type: ignore[arg-type]
        )
    except TooFewSamples as exc:  # a short source: say which knobs give the links more frames
        errors.print(
            f"[red]too few training frames: {exc.args[0].split(';')[0]}. The links train on "
            f"the first {train_fraction:.0%} of each stream: give a larger --train-fraction "
            "or a longer source.[/red]"
        )
        raise typer.Exit(2) from None
    if plot_path is not None:
        plot(report, plot_path)
    if as_json:
        print(to_json(report))
    else:
        print_report(report, console)
        if plot_path is not None:
            console.print(f"plot written to {plot_path}")


app.command()(bench)

if __name__ == "__main__":
    app()
