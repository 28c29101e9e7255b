"""The ``mlink`` command line: thin wrappers over :mod:`mlink.deploy.runner` and friends."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import sys
import threading
from typing import Annotated

import typer
from rich.console import Console
from rich.text import Text

from mlink.deploy.cli_common import (
    BrokerOpt,
    ConfigArg,
    app,
    console,
    errors,
    load_cli_config,
    need_broker,
)
from mlink.deploy.cli_operate import (
    budget,
    exporter,
    links,
    repair_group,
    resign,
    status,
    tail,
)
from mlink.eval.bench_cli import bench as eval_bench


@app.command()
def demo(
    offline: Annotated[
        bool, typer.Option(help="the offline digits demo of links and selection only")
    ] = False,
    budget_fraction: Annotated[
        float,
        typer.Option(
            help="offline demo: budget as a share of running every model", show_default="1/3"
        ),
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
    storage: Annotated[
        str,
        typer.Option(
            help="Tansu storage engine: memory://tansu/ (lost on exit) or s3://BUCKET/ "
            "(durable; endpoint and keys from AWS_ENDPOINT, AWS_ACCESS_KEY_ID, ...)"
        ),
    ] = "memory://tansu/",
    cluster_id: Annotated[
        str | None,
        typer.Option(help="cluster id; durable data lives under it (default: mlink for s3://)"),
    ] = None,
) -> None:
    """Start the embedded Tansu broker on loopback and print its bootstrap URL (Ctrl-C stops).

    There is no ``--data DIR``: Tansu 0.6.0 has no local-file storage engine (docs/security.md,
    "Durable broker")."""
    from mlink.deploy.broker import EmbeddedBroker

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    if cluster_id is None and not storage.startswith("memory://"):
        cluster_id = "mlink"
    with EmbeddedBroker(port=port, storage_engine=storage, cluster_id=cluster_id) as embedded:
        typer.echo(f"broker ready: bootstrap {embedded.bootstrap} (faust: {embedded.url})")
        typer.echo("Ctrl-C to stop")
        with contextlib.suppress(KeyboardInterrupt):
            while not stop.wait(1.0):
                if (code := embedded.exit_code) is not None:  # workers would just lose it
                    errors.print(
                        Text(
                            f"the Tansu broker exited by itself with code {code}; its log "
                            f"ends with:\n{embedded.log_tail(2000)}",
                            style="red",
                        )
                    )
                    raise typer.Exit(1)
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
    rate: Annotated[
        float | None,
        typer.Option(help="frames/s, overriding source.rate; 0 sends every frame at once"),
    ] = None,
) -> None:
    """Run the whole pipeline over the config's source: broker if needed, topics, workers,
    source; print what it saved and kept."""
    from mlink.eval.run import json_safe, print_summary, run_and_summarize

    config = load_cli_config(config_path, broker)
    if rate is not None:  # 0: the whole source at once, as a topic looks after downtime
        source = config.source.model_copy(update={"rate": rate or None})
        config = config.model_copy(update={"source": source})
    progress = Console(stderr=True) if as_json else console  # stdout stays one JSON object
    summary = run_and_summarize(config, config_path, workers, timeout, compare, progress)
    if as_json:  # strict JSON: a figure with no frames is null, not NaN
        print(json.dumps(json_safe(summary), default=str, allow_nan=False))
    else:
        print_summary(summary, console)
    if summary.get("interrupted") is not None:  # a signal cut it short: say so to the caller
        raise SystemExit(summary["interrupted"])


# `mlink bench` is the evaluation package's command (the CLI is the one place that reaches eval/;
# the module is light to import, the bench itself loads lazily).
app.command("bench")(eval_bench)


@app.command()
def check(
    config_path: ConfigArg,
    broker: BrokerOpt = None,
    frames: Annotated[int, typer.Option(help="source frames to call every model on", min=1)] = 3,
) -> None:
    """Will this config work? Load it, build every model and call it on the source's first
    frames, time the calls and judge the budget on them. No broker, except for a source topic:
    its first frames are read from the broker, in no consumer group. Exit 2 names what to fix."""
    from mlink.eval.config_check import check_config, render_check

    report = check_config(load_cli_config(config_path, broker), frames)
    render_check(report, console)
    if report.problems:
        raise typer.Exit(2)


@app.command()
def worker(config_path: ConfigArg, broker: BrokerOpt = None) -> None:
    """Run one faust worker process of the pipeline (start more to scale out)."""
    config = load_cli_config(config_path, broker)
    bootstrap = need_broker(config)
    exit_on_store_problem(config)  # the worker builds it at import, where faust hides why it failed
    os.environ["MLINK_CONFIG"] = str(config_path.resolve())
    os.environ["MLINK_BROKER"] = bootstrap
    from mlink.deploy.processes import worker_argv
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

    config = load_cli_config(config_path, broker)
    create_pipeline_topics(config, need_broker(config))
    count = produce_source(config, limit=limit)
    console.print(f"produced {count} frames to {config.topics.names().frames}")


# a running pipeline's (cli_operate)
for command in (tail, status, exporter, budget, links, resign):
    app.command()(command)
app.command("repair-group")(repair_group)


def exit_on_store_problem(config) -> None:
    """Exit 2 naming ``links.store`` when the workers could not open or write it."""
    from mlink.linkstore.store import store_problem

    problem = store_problem(config.links.store)
    if problem:
        errors.print(Text(problem, style="red"))
        raise typer.Exit(2)


def _exit_on_sigterm(signum: int, _frame: object) -> None:
    """SIGTERM (``kill``, ``timeout``, a container stop) unwinds like Ctrl-C: the run's
    ``finally`` blocks stop its workers and its embedded broker. Python's default would end the
    process on the spot and leave them to their death signals."""
    raise SystemExit(128 + signum)


def _not_a_cancelled_refresh(record: logging.LogRecord) -> bool:
    """kafka-python logs a metadata refresh that closing a client cancelled as an ERROR
    ("Metadata refresh: failed Cancelled"); ``mlink status`` printed it on about half its runs,
    though nothing failed."""
    return not record.getMessage().startswith("Metadata refresh: failed Cancelled")


def main() -> None:
    from kafka.errors import KafkaError

    from mlink.deploy.config import ConfigError
    from mlink.eval.outputs import ModelRunError

    signal.signal(signal.SIGTERM, _exit_on_sigterm)  # `mlink broker` sets its own
    # a config names the user's own model factories; the workers (`python -m faust`) find them
    # in the working directory, first, so the command does too: both load the same module
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    # kafka-python logs every refused connection and a socket closed under it at ERROR (11
    # lines and a traceback before `mlink status` says the broker is down, a traceback at exit
    # of `status --json` now and then); the CLI says what failed itself, as a Kafka error
    logging.getLogger("kafka").setLevel(logging.CRITICAL)
    logging.getLogger("kafka.cluster").addFilter(_not_a_cancelled_refresh)
    try:
        app()
    except KafkaError as exc:  # an unreachable broker, mostly: say so instead of a traceback
        errors.print(
            Text(
                f"Kafka error: {exc}. Is the broker up and reachable at the address given by "
                "--broker, MLINK_BROKER or the config's `broker:`? (Leave them all out and "
                "`mlink run` starts an embedded broker.)",
                style="red",
            )
        )
        raise SystemExit(2) from None
    except (ConfigError, ModelRunError, FileNotFoundError) as exc:  # the user's to fix
        errors.print(Text(str(exc), style="red"))
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
