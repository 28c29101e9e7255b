"""The ``mlink`` command line: thin wrappers over :mod:`mlink.deploy.runner` and friends."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.text import Text

from mlink.eval.bench_cli import bench as eval_bench

app = typer.Typer(
    help="MLink-stream: run many black-box models cheaper by synthesizing some through links.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
    rich_markup_mode="markdown",  # docstrings wrap lines; markdown joins them, rich keeps them
)
console = Console()

ConfigArg = Annotated[Path, typer.Argument(help="pipeline config (YAML)", exists=True)]
BrokerOpt = Annotated[
    str | None, typer.Option("--broker", help="bootstrap host:port (overrides the config)")
]


def _config(path: Path, broker: str | None = None):
    from mlink.deploy.config import ConfigError, load_config, with_broker

    try:
        config = load_config(path)
        return with_broker(config, broker) if broker else config
    except ConfigError as exc:
        console.print(Text(str(exc), style="red"))
        raise typer.Exit(2) from None


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
    rate: Annotated[
        float | None,
        typer.Option(help="frames/s, overriding source.rate; 0 sends every frame at once"),
    ] = None,
) -> None:
    """Run the whole pipeline over the config's source: broker if needed, topics, workers,
    source; print what it saved and kept."""
    from mlink.eval.run import json_safe, print_summary, run_and_summarize

    config = _config(config_path, broker)
    if rate is not None:  # 0: the whole source at once, as a topic looks after downtime
        source = config.source.model_copy(update={"rate": rate or None})
        config = config.model_copy(update={"source": source})
    progress = Console(stderr=True) if as_json else console  # stdout stays one JSON object
    summary = run_and_summarize(config, config_path, workers, timeout, compare, progress)
    if as_json:  # strict JSON: a figure with no frames is null, not NaN
        print(json.dumps(json_safe(summary), default=str, allow_nan=False))
    else:
        print_summary(summary, console)


# `mlink bench` is the evaluation package's command (the CLI is the one place that reaches eval/;
# the module is light to import, the bench itself loads lazily).
app.command("bench")(eval_bench)


@app.command()
def check(
    config_path: ConfigArg,
    frames: Annotated[int, typer.Option(help="source frames to call every model on", min=1)] = 3,
) -> None:
    """Will this config work? Load it, build every model and call it on the source's first
    frames, time the calls and judge the budget on them; no broker. Exit 2 names what to fix."""
    from mlink.eval.config_check import check_config, render_check

    report = check_config(_config(config_path), frames)
    render_check(report, console)
    if report.problems:
        raise typer.Exit(2)


@app.command()
def worker(config_path: ConfigArg, broker: BrokerOpt = None) -> None:
    """Run one faust worker process of the pipeline (start more to scale out)."""
    config = _config(config_path, broker)
    bootstrap = _need_broker(config)
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

    config = _config(config_path, broker)
    create_pipeline_topics(config, _need_broker(config))
    count = produce_source(config, limit=limit)
    console.print(f"produced {count} frames to {config.topics.names().frames}")


@app.command()
def tail(
    config_path: ConfigArg,
    broker: BrokerOpt = None,
    count: Annotated[int | None, typer.Option(help="stop after this many results")] = None,
    from_beginning: Annotated[
        bool,
        typer.Option("--from-beginning", help="replay the results topic from its start"),
    ] = False,
) -> None:
    """Print results as they arrive, one line per frame (new ones only, like tail -f, unless
    --from-beginning). Ctrl-C stops."""
    from mlink.deploy.tail import ResultTail, result_line

    config = _config(config_path, broker)
    follower = ResultTail(
        _need_broker(config),
        config.topics.names().results,
        from_beginning=from_beginning,
        client=config.consumer_kwargs(),
    )
    shown = 0
    try:
        for result in follower.follow():
            console.print(Text(result_line(result)))  # ids are data: no markup, no emoji
            shown += 1
            if count is not None and shown >= count:
                break
    except KeyboardInterrupt:
        pass
    finally:
        follower.close()


@app.command()
def status(
    config_path: ConfigArg,
    broker: BrokerOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="print every field as JSON")] = False,
) -> None:
    """Each model's plan, predicted and live agreement, link versions and consumer lag of a
    running pipeline."""
    from mlink.deploy.pipeline_status import status as pipeline_status
    from mlink.deploy.status_view import render_status

    config = _config(config_path, broker)
    report = pipeline_status(_need_broker(config), config)
    if as_json:
        print(json.dumps(report, default=str))
    else:
        render_status(report, console)


@app.command()
def budget(
    config_path: ConfigArg,
    broker: BrokerOpt = None,
    ms: Annotated[float | None, typer.Option(help="per-frame compute budget")] = None,
    memory_mb: Annotated[float | None, typer.Option("--memory-mb", help="memory budget")] = None,
    fraction: Annotated[
        float | None, typer.Option(help="ms budget as a share of running every model")
    ] = None,
    target: Annotated[
        float | None,
        typer.Option(help="accuracy target: the cheapest plan whose models all reach it"),
    ] = None,
    target_for: Annotated[
        list[str] | None,
        typer.Option("--target-for", help="a per-model target, MODEL=VALUE (repeatable)"),
    ] = None,
) -> None:
    """Change the budget of a running pipeline; workers switch without a restart."""
    from mlink.deploy.runner import set_budget
    from mlink.linkstore.streamplan import agreement_targets
    from mlink.linkstore.targets import target_count_problem
    from mlink.topics.control import TARGET_PREFIX, budget_problem

    config = _config(config_path, broker)
    limits = {
        k: v
        for k, v in (
            ("ms", ms),
            ("memory_mb", memory_mb),
            ("fraction", fraction),
            ("target_agreement", target),
        )
        if v is not None  # a 0 is a value to refuse with its reason, not an option left out
    }
    for item in target_for or ():
        model, _, value = item.partition("=")
        if value and model not in config.model_names:
            raise typer.BadParameter(
                f"--target-for {item!r}: no model {model!r}; the config's models are "
                f"{', '.join(config.model_names)}"
            )
        try:
            limits[f"{TARGET_PREFIX}{model}"] = float(value)
        except ValueError:
            raise typer.BadParameter(
                f"--target-for {item!r}: give MODEL=VALUE, e.g. eyes=0.9"
            ) from None
    problem = budget_problem(limits, config.model_names) or target_count_problem(
        bool(agreement_targets(limits, config.model_names)), len(config.model_names)
    )
    if problem or not limits:
        raise typer.BadParameter(problem or "give at least one of the budget options")
    set_budget(_need_broker(config), config, limits)
    console.print(f"budget {limits} published to {config.topics.names().control}")


@app.command()
def links(
    config_path: ConfigArg,
    broker: BrokerOpt = None,
    pin: Annotated[
        int | None, typer.Option(help="plan from this version until --unpin", min=1)
    ] = None,
    rollback: Annotated[
        bool, typer.Option("--rollback", help="pin the newest version older than the one in force")
    ] = False,
    unpin: Annotated[
        bool, typer.Option("--unpin", help="plan from the newest version again")
    ] = False,
) -> None:
    """The link versions in the store and which one is in force; pin one (or roll back) when
    a retrain made things worse, without a restart."""
    from mlink.deploy.link_pins import (
        PinError,
        existing_store,
        link_rows,
        pin_links,
        unpin_links,
    )
    from mlink.deploy.runner import read_control
    from mlink.deploy.status_view import render_links

    config = _config(config_path, broker)
    if sum((pin is not None, rollback, unpin)) > 1:
        raise typer.BadParameter("give one of --pin, --rollback and --unpin")
    bootstrap = _need_broker(config)
    try:
        if unpin:
            was = unpin_links(bootstrap, config)
            console.print(
                "links were not pinned" if was is None else f"unpinned v{was}: planning from "
                "the newest version again"
            )  # fmt: skip
            return
        if pin is not None or rollback:
            version = pin_links(bootstrap, config, pin)
            console.print(f"pinned v{version}: the controller plans from it until --unpin")
            return
        store = existing_store(config.links.store)
    except PinError as exc:
        console.print(Text(str(exc), style="red"))
        raise typer.Exit(2) from None
    state, _ = read_control(bootstrap, config)
    rows = link_rows(state, store)
    if not rows:
        console.print(f"the link store {store.root} holds no versions yet")
    else:
        render_links(rows, console)


@app.command()
def resign(config_path: ConfigArg, broker: BrokerOpt = None) -> None:
    """Publish the control state in force again, signed with the first key of
    MLINK_SIGNING_KEY: run it after deploying `new,old` and before deploying `new`, so that
    workers that restart later still find the plan, the links and the budget."""
    from mlink.deploy.key_rotation import restate_control

    config = _config(config_path, broker)
    try:
        messages = restate_control(_need_broker(config), config)
    except ValueError as exc:
        console.print(Text(str(exc), style="red"))
        raise typer.Exit(2) from None
    for message in messages:
        console.print(f"restated {message.kind} (epoch {message.epoch})")
    if not messages:
        console.print("nothing to restate: the control topic holds no plan, links or budget")


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
    logging.getLogger("kafka").setLevel(logging.ERROR)  # kafka-python warns about its own loop
    logging.getLogger("kafka.cluster").addFilter(_not_a_cancelled_refresh)
    try:
        app()
    except KafkaError as exc:  # an unreachable broker, mostly: say so instead of a traceback
        console.print(
            Text(
                f"Kafka error: {exc}. Is the broker up and reachable at the address given by "
                "--broker, MLINK_BROKER or the config's `broker:`? (Leave them all out and "
                "`mlink run` starts an embedded broker.)",
                style="red",
            )
        )
        raise SystemExit(2) from None
    except (ConfigError, ModelRunError, FileNotFoundError) as exc:  # the user's to fix
        console.print(Text(str(exc), style="red"))
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
