"""What every ``mlink`` command shares: the Typer app, the console, and reading a config."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.text import Text

__all__ = ["BrokerOpt", "ConfigArg", "app", "console", "errors", "load_cli_config", "need_broker"]

app = typer.Typer(
    help="MLink-stream: run many black-box models cheaper by synthesizing some through links.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
    rich_markup_mode="markdown",  # docstrings wrap lines; markdown joins them, rich keeps them
)
console = Console()
#: What failed goes to stderr, so `mlink status --json | jq` and scripts reading stdout see only
#: the answer, and a shell redirect of stdout still shows the error.
errors = Console(stderr=True)

ConfigArg = Annotated[Path, typer.Argument(help="pipeline config (YAML)", exists=True)]
BrokerOpt = Annotated[
    str | None, typer.Option("--broker", help="bootstrap host:port (overrides the config)")
]


def load_cli_config(path: Path, broker: str | None = None):
    from mlink.deploy.config import ConfigError, load_config, with_broker

    try:
        config = load_config(path)
        return with_broker(config, broker) if broker else config
    except ConfigError as exc:
        errors.print(Text(str(exc), style="red"))
        raise typer.Exit(2) from None


def need_broker(config) -> str:
    if not config.broker:
        errors.print(
            "[red]no broker: pass --broker host:port, set MLINK_BROKER, or `broker:` in the "
            "config (`mlink broker` starts an embedded one)[/red]"
        )
        raise typer.Exit(2)
    return config.broker
