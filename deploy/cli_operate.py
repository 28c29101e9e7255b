"""``mlink`` commands on a running pipeline: follow its results, read its status, change its
budget, pin its links, restate its control log. Registered on the app by :mod:`mlink.deploy.cli`."""

from __future__ import annotations

import contextlib
import json
import time
from typing import Annotated

import typer
from rich.text import Text

from mlink.deploy.cli_common import (
    BrokerOpt,
    ConfigArg,
    console,
    errors,
    load_cli_config,
    need_broker,
)

__all__ = ["budget", "exporter", "links", "repair_group", "resign", "status", "tail"]


def tail(
    config_path: ConfigArg,
    broker: BrokerOpt = None,
    count: Annotated[int | None, typer.Option(help="stop after this many results", min=1)] = None,
    from_beginning: Annotated[
        bool,
        typer.Option("--from-beginning", help="replay the results topic from its start"),
    ] = False,
) -> None:
    """Print results as they arrive, one line per frame (new ones only, like tail -f, unless
    --from-beginning). Ctrl-C stops.

    On the embedded (Tansu) broker a tail may begin with a few results from just before it
    started: Tansu reports the end of a batch early (docs/broker.md)."""
    from mlink.deploy.tail import ResultTail, result_line

    config = load_cli_config(config_path, broker)
    follower = ResultTail(
        need_broker(config),
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


def status(
    config_path: ConfigArg,
    broker: BrokerOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="print every field as JSON")] = False,
) -> None:
    """Each model's plan, predicted and live agreement, link versions and consumer lag of a
    running pipeline."""
    from mlink.deploy.pipeline_status import status as pipeline_status
    from mlink.deploy.status_view import render_status

    config = load_cli_config(config_path, broker)
    report = pipeline_status(need_broker(config), config)
    if as_json:
        print(json.dumps(report, default=str))
    else:
        render_status(report, console)


def exporter(
    config_path: ConfigArg,
    broker: BrokerOpt = None,
    port: Annotated[int, typer.Option(help="HTTP port for Prometheus (0: any free one)")] = 9400,
    every: Annotated[
        float, typer.Option(help="seconds between looks at the broker", min=1.0)
    ] = 30.0,
) -> None:
    """Serve the pipeline's consumer lag, live workers and dead letters for Prometheus, read
    from the broker: there when no worker is (each worker exports only its own). Ctrl-C or
    SIGTERM stops it."""
    from mlink.deploy.status_exporter import serve

    config = load_cli_config(config_path, broker)
    with contextlib.suppress(KeyboardInterrupt):
        serve(need_broker(config), config, port, every_s=every)


def repair_group(
    config_path: ConfigArg,
    broker: BrokerOpt = None,
    force: Annotated[
        bool,
        typer.Option("--force", help="delete the group with members in (see above)"),
    ] = False,
) -> None:
    """Delete the pipeline's consumer group and restore its committed offsets: the remedy for
    a group that never settles on the embedded broker (docs/broker.md), without the
    duplicates of a bare delete. Stop the workers first and start them after; a group with
    members is refused without --force, which risks the duplicates."""
    from mlink.deploy.group_repair import RepairRefused
    from mlink.deploy.group_repair import repair_group as repair

    config = load_cli_config(config_path, broker)
    try:
        done = repair(need_broker(config), config, force=force, say=console.print)
    except RepairRefused as exc:
        errors.print(Text(f"not repaired: {exc}", style="yellow"))
        raise typer.Exit(2) from None
    except RuntimeError as exc:
        errors.print(Text(str(exc), style="red"))
        raise typer.Exit(1) from None
    for (topic, partition), offset in sorted(done.offsets.items()):
        console.print(Text(f"  {topic}[{partition}] at {offset}"))


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
        typer.Option(
            help="accuracy target: the cheapest plan whose models all reach it (with --ms or "
            "--fraction: the most accurate plan within it that meets the target)"
        ),
    ] = None,
    target_for: Annotated[
        list[str] | None,
        typer.Option("--target-for", help="a per-model target, MODEL=VALUE (repeatable)"),
    ] = None,
    wait: Annotated[
        float,
        typer.Option(help="seconds to wait for the controller's plan or refusal (0: do not)"),
    ] = 30.0,
) -> None:
    """Change the budget of a running pipeline; workers switch without a restart. Waits for
    the controller's answer: the plan made for it, or why no plan meets it (exit 2)."""
    from mlink.deploy.pipeline_status import why_no_plan
    from mlink.deploy.runner import set_budget, wait_for_budget
    from mlink.linkstore.targets import budget_fit_problem
    from mlink.topics.control import TARGET_PREFIX

    config = load_cli_config(config_path, broker)
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
    problem = budget_fit_problem(limits, config.model_costs())
    if problem or not limits:
        raise typer.BadParameter(problem or "give at least one of the budget options")
    bootstrap = need_broker(config)
    if any(k.startswith("target_agreement") for k in limits) and not config.links.stream:
        errors.print(
            Text(
                "note: targets are held to the live probes only with `links.stream: true`; on "
                "this config (the paper's links) the controller plans once for them from the "
                "warm-up's estimates, and `mlink status` flags a model whose probes fall below "
                "(!) without turning it back on",
                style="yellow",
            )
        )
    sent_at = time.time()
    set_budget(bootstrap, config, limits)
    console.print(f"budget {limits} published to {config.topics.names().control}")
    answer, state = wait_for_budget(bootstrap, config, limits, wait) if wait > 0 else (None, None)
    if answer is None:
        if wait > 0:
            why = why_no_plan(bootstrap, config, sent_at)
            console.print(Text(f"no plan for it yet after {wait:g} s: {why}"))
        return
    outcome, detail = answer
    if outcome == "refused":
        errors.print(Text(f"refused, the budget in force stays: {detail}", style="red"))
        raise typer.Exit(2)
    console.print(f"planned at {detail}")
    _say_plan(state)


def _say_plan(state) -> None:
    """The new plan's prediction per model: a target for one model can leave another far
    below, which went unseen until `mlink status` (a new user's audit, stop 45)."""
    from mlink.operators.stream_decision import model_shares

    predicted = model_shares(state.plan_extra.get("predicted"))
    if predicted:
        shown = ", ".join(
            f"{m} {'runs' if m in state.active else f'{100 * v:.1f}%'}"
            for m, v in sorted(predicted.items())
        )
        console.print(Text(f"predicted agreement: {shown}"))


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

    config = load_cli_config(config_path, broker)
    if sum((pin is not None, rollback, unpin)) > 1:
        raise typer.BadParameter("give one of --pin, --rollback and --unpin")
    bootstrap = need_broker(config)
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
        errors.print(Text(str(exc), style="red"))
        raise typer.Exit(2) from None
    state, _ = read_control(bootstrap, config)
    rows = link_rows(state, store)
    if not rows:
        console.print(f"the link store {store.root} holds no versions yet")
    else:
        render_links(rows, console)


def resign(
    config_path: ConfigArg,
    broker: BrokerOpt = None,
    from_unsigned: Annotated[
        bool,
        typer.Option(
            "--from-unsigned",
            help="the log was written without signing, which is being turned on: read it "
            "unverified and restate it signed with the key",
        ),
    ] = False,
) -> None:
    """Publish the control state in force again, signed with the first key of
    MLINK_SIGNING_KEY: run it after deploying `new,old` and before deploying `new`, so that
    workers that restart later still find the plan, the links and the budget. To turn signing
    on, run it with `--from-unsigned` and the new key before the workers get the key."""
    from mlink.deploy.key_rotation import restate_control

    config = load_cli_config(config_path, broker)
    try:
        messages = restate_control(need_broker(config), config, from_unsigned)
    except ValueError as exc:
        errors.print(Text(str(exc), style="red"))
        raise typer.Exit(2) from None
    for message in messages:
        console.print(f"restated {message.kind} (epoch {message.epoch})")
    if not messages:
        console.print("nothing to restate: the control topic holds no plan, links or budget")
