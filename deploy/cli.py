"""The ``mlink`` command line."""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(
    help="MLink-stream: run many black-box models cheaper by synthesizing some through links.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)


@app.command()
def demo(
    budget_fraction: Annotated[
        float, typer.Option(help="compute budget as a share of running every model")
    ] = 1 / 3,
    train_fraction: Annotated[
        float, typer.Option(help="share of the stream that trains links (paper: 0.1)")
    ] = 0.1,
) -> None:
    """Offline demo on the digits workload: links, the paper's greedy vs exact selection."""
    from mlink.deploy.demo import run_demo

    run_demo(budget_fraction=budget_fraction, train_fraction=train_fraction)


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


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    app()


if __name__ == "__main__":
    main()


__all__ = ["Path", "app", "main"]
