"""`mlink budget` checks what it is asked before publishing anything (no broker needed to fail)."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from mlink.deploy.cli import app
from tests.test_pipeline_e2e import FAST_MODELS, write_config


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--target-for", "nope=0.9"], "no model 'nope'"),
        (["--target-for", "ge5_forest"], "MODEL=VALUE"),
        (["--target", "1.5"], "target_agreement"),
        (["--ms", "0"], "must be a finite number > 0, got 0"),  # not "at least one"
        ([], "at least one"),
        (["--ms", "5", "--fraction", "0.5"], "both 'ms' and 'fraction'"),
        # the config declares no model's memory: the controller would plan every one at 0 MB
        (["--memory-mb", "100"], "memory_mb needs cost.memory_mb on every model"),
    ],
)
def test_bad_budgets_are_refused_with_the_reason(tmp_path: Path, args: list[str], says: str):
    path, _ = write_config(
        tmp_path, "cli", FAST_MODELS, partitions=1, warmup_frames=8, output_timeout_s=5.0
    )
    result = CliRunner().invoke(app, ["budget", str(path), "--broker", "127.0.0.1:1", *args])
    assert result.exit_code != 0
    assert says in result.output, result.output


def test_an_unreachable_broker_is_named_not_a_traceback(monkeypatch, capsys) -> None:
    from kafka.errors import KafkaTimeoutError

    from mlink.deploy import cli

    def down() -> None:
        raise KafkaTimeoutError("Unable to bootstrap from [127.0.0.1:1]")

    monkeypatch.setattr(cli, "app", down)
    with pytest.raises(SystemExit) as ended:
        cli.main()
    assert ended.value.code == 2
    said = capsys.readouterr()
    assert "Is the broker up and reachable" in " ".join(said.err.split())  # errors: stderr
    assert not said.out


def budget_said(broker, tmp_path: Path, *options: str) -> str:
    """`mlink budget` on a pipeline whose topics exist and no worker runs: what it printed,
    after it exited 0."""
    from mlink.deploy.topics_setup import create_pipeline_topics

    path, config = write_config(
        tmp_path, "cli", FAST_MODELS, partitions=1, warmup_frames=8, output_timeout_s=5.0
    )
    create_pipeline_topics(config, broker.bootstrap)
    result = CliRunner().invoke(app, ["budget", str(path), "--broker", broker.bootstrap, *options])
    assert result.exit_code == 0, result.output
    return " ".join(result.output.split())


@pytest.mark.broker
def test_a_budget_nobody_plans_says_why(broker, tmp_path: Path) -> None:
    """It said "once a worker runs and the first links are trained" whatever held it up (a
    helper's audit: a worker ran with links, and its controller had failed on the request)."""
    said = budget_said(broker, tmp_path, "--fraction", "0.5", "--wait", "1")
    assert "no plan for it yet after 1 s: no worker of this pipeline is running" in said


@pytest.mark.broker
def test_a_target_on_the_papers_links_says_it_is_not_held_to_the_probes(
    broker, tmp_path: Path
) -> None:
    """Targets re-plan on live probes only with stream links; a user asked for 0.95 on one
    model and got 80% live with no word of it (a new user's audit, stop 45)."""
    said = budget_said(broker, tmp_path, "--target", "0.95", "--wait", "0")
    assert "held to the live probes only with `links.stream: true`" in said
