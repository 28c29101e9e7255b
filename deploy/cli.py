"""The ``mlink`` command line: thin wrappers over :mod:`mlink.deploy.runner` and friends."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

app = typer.Typer(
    help="MLink-stream: run many black-box models cheaper by synthesizing some through links.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)
console = Console()
STATUS_MARK = {"executed": "run", "synthesized": "link", "missing": "?"}

ConfigArg = Annotated[Path, typer.Argument(help="pipeline config (YAML)", exists=True)]
BrokerOpt = Annotated[
    str | None, typer.Option("--broker", help="bootstrap host:port (overrides the config)")
]


def _config(path: Path, broker: str | None = None):
    from mlink.deploy.config import ConfigError, load_config, with_broker

    try:
        config = load_config(path)
    except ConfigError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None
    return with_broker(config, broker) if broker else config


def _need_broker(config) -> str:
    if not config.broker:
        console.print(
            "[red]no broker: pass --broker host:port, set MLINK_BROKER, or `broker:` in the "
            "config (`mlink broker` starts an embedded one)[/red]"
        )
        raise typer.Exit(2)
    return config.broker


@app.command()
def demo(
    offline: Annotated[
        bool, typer.Option(help="the offline digits demo of links and selection only")
    ] = False,
    budget_fraction: Annotated[
        float, typer.Option(help="offline demo: budget as a share of running every model")
    ] = 1 / 3,
) -> None:
    """The main job: the streaming pipeline on the embedded broker with the real video workload
    (``--offline``: links and selection on the digits workload, no broker)."""
    if offline:
        from mlink.eval.demo import run_demo

        run_demo(budget_fraction=budget_fraction)
        return
    from mlink.eval.demo import run_streaming_demo

    run_streaming_demo(console=console)


@app.command()
def broker(
    port: Annotated[int, typer.Option(help="port on 127.0.0.1; 0 picks a free one")] = 0,
) -> None:
    """Start the embedded Tansu broker on loopback and print its bootstrap URL (Ctrl-C stops)."""
    from mlink.deploy.broker import EmbeddedBroker

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with EmbeddedBroker(port=port) as embedded:
        typer.echo(f"broker ready: bootstrap {embedded.bootstrap} (faust: {embedded.url})")
        typer.echo("Ctrl-C to stop")
        with contextlib.suppress(KeyboardInterrupt):
            stop.wait()
    typer.echo("broker stopped")


@app.command()
def run(
    config_path: ConfigArg,
    broker: BrokerOpt = None,
    workers: Annotated[int | None, typer.Option(help="worker processes")] = None,
    timeout: Annotated[float, typer.Option(help="seconds to wait for all results")] = 900.0,
    compare: Annotated[
        bool, typer.Option(help="compare with a full run of every model (cached)")
    ] = True,
    as_json: Annotated[bool, typer.Option("--json", help="print the summary as JSON")] = False,
) -> None:
    """Run the whole pipeline over the config's source: broker if needed, topics, workers,
    source; print what it saved and kept."""
    from mlink.eval.run import print_summary, run_and_summarize

    config = _config(config_path, broker)
    summary = run_and_summarize(config, config_path, workers, timeout, compare, console)
    if as_json:
        print(json.dumps(summary, default=str))
    else:
        print_summary(summary, console)


@app.command()
def bench(
    config_path: ConfigArg,
    budget_fractions: Annotated[
        str | None,
        typer.Option(help="budgets as shares of the full cost, e.g. 0.2,0.33,0.5 (default)"),
    ] = None,
    use_config_budget: Annotated[
        bool, typer.Option("--config-budget", help="only the config's own budget")
    ] = False,
    train_fraction: Annotated[float, typer.Option(help="share of each stream that trains")] = 0.1,
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
    plot_path: Annotated[
        Path | None, typer.Option("--plot", help="write accuracy vs compute saved (PNG)")
    ] = None,
) -> None:
    """The paper's Table 4 on this config's models and data, offline: Standalone, frame
    filtering, multi-task CNN, the paper's greedy MLink and ours, at several budgets."""
    from mlink.eval.bench import DEFAULT_FRACTIONS, plot, run_bench, to_json
    from mlink.eval.bench_table import print_report

    config = _config(config_path)
    if use_config_budget:
        fractions = None
    elif budget_fractions:
        fractions = [float(f) for f in budget_fractions.split(",")]
    else:
        fractions = list(DEFAULT_FRACTIONS)
    log = (lambda _msg: None) if as_json else console.print
    report = run_bench(config, fractions, train_fraction, progress=not as_json, log=log)
    if plot_path is not None:
        plot(report, plot_path)
    if as_json:
        print(to_json(report))
    else:
        print_report(report, console)
        if plot_path is not None:
            console.print(f"plot written to {plot_path}")


@app.command()
def worker(config_path: ConfigArg, broker: BrokerOpt = None) -> None:
    """Run one faust worker process of the pipeline (start more to scale out)."""
    config = _config(config_path, broker)
    bootstrap = _need_broker(config)
    os.environ["MLINK_CONFIG"] = str(config_path.resolve())
    os.environ["MLINK_BROKER"] = bootstrap
    from mlink.deploy.runner import worker_argv
    from mlink.deploy.topics_setup import create_pipeline_topics

    create_pipeline_topics(config, bootstrap)
    os.execv(sys.executable, worker_argv())


@app.command()
def produce(
    config_path: ConfigArg,
    broker: BrokerOpt = None,
    limit: Annotated[int | None, typer.Option(help="stop after this many frames")] = None,
) -> None:
    """Push the config's source (videos, images, factory) to the frames topic."""
    from mlink.deploy.source import produce_source
    from mlink.deploy.topics_setup import create_pipeline_topics

    config = _config(config_path, broker)
    create_pipeline_topics(config, _need_broker(config))
    count = produce_source(config, limit=limit)
    console.print(f"produced {count} frames to {config.topics.names().frames}")


@app.command()
def tail(
    config_path: ConfigArg,
    broker: BrokerOpt = None,
    count: Annotated[int | None, typer.Option(help="stop after this many results")] = None,
) -> None:
    """Print results as they arrive, one line per frame."""
    from mlink.deploy.runner import ResultCollector

    config = _config(config_path, broker)
    collector = ResultCollector(_need_broker(config), config.topics.names().results)
    shown: set[str] = set()
    try:
        while count is None or len(shown) < count:
            for fid, result in list(collector.results.items()):
                if fid in shown:
                    continue
                shown.add(fid)
                parts = [f"{r.model}={STATUS_MARK[r.status]}" for r in result.results]
                flag = " DEGRADED" if result.degraded else ""
                console.print(f"{fid} epoch={result.epoch}{flag} " + " ".join(parts))
            time.sleep(0.2)
    except KeyboardInterrupt:
        pass
    finally:
        collector.close()


@app.command()
def status(config_path: ConfigArg, broker: BrokerOpt = None) -> None:
    """Active set, epoch, agreement, link versions and consumer lag of a running pipeline."""
    from mlink.deploy.runner import status as pipeline_status

    config = _config(config_path, broker)
    console.print_json(json.dumps(pipeline_status(_need_broker(config), config), default=str))


@app.command()
def budget(
    config_path: ConfigArg,
    broker: BrokerOpt = None,
    ms: Annotated[float | None, typer.Option(help="per-frame compute budget")] = None,
    memory_mb: Annotated[float | None, typer.Option("--memory-mb", help="memory budget")] = None,
    fraction: Annotated[
        float | None, typer.Option(help="ms budget as a share of running every model")
    ] = None,
) -> None:
    """Change the budget of a running pipeline; workers switch without a restart."""
    from mlink.deploy.runner import set_budget

    config = _config(config_path, broker)
    limits = {k: v for k, v in (("ms", ms), ("memory_mb", memory_mb), ("fraction", fraction)) if v}
    set_budget(_need_broker(config), config, limits)
    console.print(f"budget {limits} published to {config.topics.names().control}")


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("kafka").setLevel(logging.ERROR)  # kafka-python warns about its own loop
    app()


if __name__ == "__main__":
    main()
