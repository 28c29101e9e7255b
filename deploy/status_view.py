"""``mlink status`` for people: each model's plan, what the controller predicts for it and what
the probes measured, and the few lines an operator acts on (a re-plan, a refused target, lag).

The dict it reads is :func:`mlink.deploy.pipeline_status.status` (``mlink status --json`` prints it
whole); this module only lays it out, so it is tested on constructed dicts without a broker.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from mlink.deploy.group_members import SETTLED, UNKNOWN
from mlink.deploy.link_pins import LinkRow
from mlink.linkstore.liveguard import below_forecast
from mlink.operators.stream_decision import Z, fragile_reason

__all__ = ["percent", "render_links", "render_status"]

_COST_TABLES = {  # the controller's one-word cost_table, for people
    "measured": "measured live (each model's trimmed mean ms on frames where every model ran)",
    "declared": "declared in the config (cost.ms of every model)",
    "mixed": "declared in the config for some models, measured live for the rest",
}


def percent(value: Any) -> str:
    """A share as people read it in every summary we print: ``-`` when there is none."""
    if value is None or value != value:  # None or NaN: no frames to measure on
        return "-"
    return f"{float(value):.1%}"


def _other_models(status: Mapping[str, Any]) -> str | None:
    """How the models the plan's link version was trained for differ from this config's."""
    return (status.get("linkstore") or {}).get("in_force_for_other_models")


def _in_force_missing(status: Mapping[str, Any]) -> bool:
    """Whether the link store lacks the plan's link version (pruned by a trainer on another
    config, or lost)."""
    store = status.get("linkstore") or {}
    return bool(store.get("in_force_missing")) and not store.get("missing")


def _missing_links(status: Mapping[str, Any]) -> str:
    """The plan's link version is not in the store: what this config's workers do, and what
    ends it. Status showed the plan's "synthesized by links" rows with nothing else (a helper's
    rollout audit, stop 45)."""
    held = ", ".join(
        f"v{v['version']}" for v in (status.get("linkstore") or {}).get("versions", [])
    )
    line = (
        f"link version {status.get('link_version')} of the plan in force is not in the link "
        f"store (it holds {held or 'no version'}; it was pruned or lost): a worker of this "
        "config that had not loaded it runs every model on the plan's frames, not the plan "
        "below. "
    )
    if status.get("refused_plans"):
        return line + (
            "The controller runs on a worker with other models (it made the plans this config "
            "refuses, below) and learns links only for those: restart every worker on one config"
        )
    return line + (
        "The controller learns the links again once it has been missing links.relearn_after_s "
        "(unless that is 0)"
    )


def _mixed(status: Mapping[str, Any]) -> str:
    """What this config's workers do with the plans while workers on another config share the
    group, as far as this config's status knows. It said "each side refuses the other's plans"
    to a worker left on the old config that had accepted the plan and found only its links
    unusable (a helper's rollout audit, stop 45)."""
    if status.get("refused_plans"):
        ours = "this config refuses the pipeline's newest plan (below)"
    elif _other_models(status):
        ours = (
            "this config's workers accept the plan in force but cannot use its links, trained "
            "for other models: they run every model"
        )
    elif _in_force_missing(status):
        ours = "this config's workers accept the plan in force; its links are not in the store"
    else:
        ours = "this config's workers accept the plan in force"
    return f"{ours}; `mlink status` with the other config says what its workers do"


def _plan_of(model: str, status: Mapping[str, Any], active: set[str] | None) -> str:
    if _other_models(status):
        return "runs (links for other models)"
    schedule = status.get("schedule") or {}
    if model in schedule:
        return str(schedule[model])
    if active is None:
        return "runs (plans refused)" if status.get("refused_plans") else "runs (warm-up)"
    return "runs on every frame" if model in active else "synthesized by links"


def _say(console: Console, text: str, style: str = "") -> None:
    """Print as plain text: reasons, model names and budget keys come from records and configs,
    and rich would read ``[...]`` as markup and ``:eyes:`` as an emoji."""
    console.print(Text(text, style=style))


def _clearly_below(live: Any, probes: Any, predicted: Any, min_probes: float = 2) -> bool:
    """Whether the probes' agreement is below the prediction even at its upper confidence
    bound (the controller's test for an accuracy target, here against the forecast)."""
    if live is None or probes is None or predicted is None:
        return False
    return below_forecast(float(live), float(probes), float(predicted), Z, min_probes)


def _models(status: Mapping[str, Any]) -> list[str]:
    names: set[str] = set(status.get("models") or ())
    for key in ("predicted_agreement", "live_agreement", "schedule"):
        names.update(status.get(key) or {})
    if isinstance(status.get("active"), list):
        names.update(status["active"])
    return sorted(names)


def _pin_line(status: Mapping[str, Any]) -> str:
    pinned, in_force = status["pinned_links"], status.get("link_version")
    line = f"links pinned to v{pinned} (mlink links --unpin follows the newest again)"
    if status.get("latest_links") not in (None, pinned):
        line += f"; the newest is v{status['latest_links']}"
    if in_force is None:
        line += "; no links are in force until the controller re-plans"
    elif in_force != pinned:
        line += f"; v{in_force} is in force until the controller re-plans"
    return line


def render_status(status: Mapping[str, Any], console: Console) -> None:
    """Print a status dict: a header, one row per model, then re-plans, versions and lag."""
    active = set(status["active"]) if isinstance(status.get("active"), list) else None
    cost = (status.get("plan_cost") or {}).get("ms")
    version = f"link version {status.get('link_version')}"
    if _in_force_missing(status):
        version += " (not in the link store)"
    elif status.get("latest_quick") and status.get("link_version") == status.get("latest_links"):
        version += " (quick first links; the full ones follow)"
    header = [f"epoch {status.get('epoch')}", version]
    budget_ms = status.get("budget_ms")
    header.append(
        f"budget {status.get('budget') or 'none'}"
        + ("" if budget_ms is None else f" = {float(budget_ms):.1f} ms/frame")
    )
    if cost is not None:
        header.append(f"plan {cost:.1f} ms/frame")
    _say(console, " · ".join(header))
    if status.get("cost_table"):
        table = status["cost_table"]
        _say(console, f"model costs: {_COST_TABLES.get(table, table)}")
    if status.get("model_ms"):
        priced = ", ".join(f"{m} {float(v):.1f}" for m, v in sorted(status["model_ms"].items()))
        _say(console, f"ms per call the plan was priced on: {priced}")
    if change := _other_models(status):
        _say(
            console,
            f"every model runs on this config's workers: the plan's link version "
            f"{status.get('link_version')} was trained for other models ({change}), so the "
            "controller runs on a worker with another config (a rolling restart); it relearns "
            "once it runs on one with this config's models",
            "yellow",
        )
    if _in_force_missing(status):
        _say(console, _missing_links(status), "yellow")
    if active is None and status.get("refused_plans"):  # not a warm-up: see the line below
        _say(
            console, "every model runs: this config refuses the pipeline's plans (below)", "yellow"
        )
    elif active is None:
        _say(console, "warming up: every model runs until the first links are trained")
        _holding_the_warmup(status.get("model_failures") or {}, console)
    if status.get("control_topic"):
        _say(
            console,
            f"no control topic {status['control_topic']}: no worker of this pipeline has "
            "started, or topics.prefix is not the workers'",
            "red",
        )
    if status.get("unverified_control"):
        _say(
            console,
            f"{status['unverified_control']} control records do not verify with "
            "MLINK_SIGNING_KEY and were skipped, as workers skip them (unsigned, or signed "
            "with a key not in the list)",
            "red",
        )
    if isinstance(refused := status.get("budget_refused"), Mapping):
        _say(console, f"budget {refused.get('budget')} refused: {refused.get('reason')}", "red")
    if status.get("infeasible"):
        _say(console, f"no plan meets the budget or targets: {status['infeasible']}", "red")
    if status.get("replan_reason"):
        _say(console, f"re-planned: {status['replan_reason']}", "yellow")
    if status.get("pinned_links") is not None:
        _say(console, _pin_line(status), "yellow")
    if status.get("pin_ended"):
        _say(console, f"pin ended: {status['pin_ended']}", "red")
    if isinstance(status.get("fragile"), Mapping):
        _say(console, f"no room in the budget: {fragile_reason(status['fragile'])}", "yellow")

    counts = status.get("live_counts") or {}
    live = status.get("live_agreement") or {}
    predicted = status.get("predicted_agreement") or {}
    synth = status.get("predicted_synthesized") or {}
    table = Table(
        title="per model: its plan; predicted agreement over all frames (runs count 1) and on "
        "synthesized frames, against what the probes measure there",
        box=box.SIMPLE_HEAD,
        show_edge=False,
        pad_edge=False,
    )
    table.add_column("model", no_wrap=True)
    table.add_column("plan")
    for col in ("predicted\nall", "predicted\nsynth.", "live\nsynth.", "probes\n(eff.)"):
        table.add_column(col, justify="right")
    below = []
    other = _other_models(status) is not None  # the plan's figures are not this config's
    for model in _models(status):
        if other:
            table.add_row(Text(model), Text(_plan_of(model, status, active)), *["n/a"] * 4)
            continue
        probes = counts.get(model, status.get("live_probes") if model in live else None)
        low = _clearly_below(live.get(model), probes, synth.get(model))
        if low:
            below.append(model)
        table.add_row(
            Text(model),
            Text(_plan_of(model, status, active)),
            percent(predicted.get(model)),
            percent(synth.get(model)),
            Text(percent(live.get(model)) + (" !" if low else ""), style="yellow" if low else ""),
            "-" if probes is None else f"{float(probes):.1f}",
        )
    console.print(table)
    _failing(status.get("model_failures") or {}, console)
    if below:
        _say(
            console,
            f"! below its prediction beyond probe noise (upper bound at z={Z:g}, the guard's): "
            + ", ".join(below),
            "yellow",
        )
    if other:
        _say(
            console,
            "predicted and live agreement: n/a on this config's workers (they run every model); "
            "the plan's figures are for workers with the models its links were trained for: "
            "`mlink status` with their config shows them",
        )
    else:
        _figures(status, console)
    _store(status.get("linkstore") or {}, console)
    lag = status.get("lag") or {}
    _say(console, "consumer lag: " + (", ".join(f"{t} {n}" for t, n in lag.items()) or "none"))
    _workers(status.get("workers"), status.get("model_set"), _mixed(status), console)
    for other_name, at in sorted((status.get("other_pipelines") or {}).items()):
        _say(
            console,
            f"pipeline {other_name!r} wrote to this pipeline's topics (last at {_clock(at)}): two "
            "pipelines on one topics.prefix answer each other's frames; give each its own",
            "red",
        )
    _refused(status.get("refused_plans"), console)
    _dead_letters(status.get("dead_letters") or {}, console)


def _figures(status: Mapping[str, Any], console: Console) -> None:
    """The plan's predicted and live agreement, all models and synthesized only."""
    _say(
        console,
        f"predicted: {percent(status.get('predicted_accuracy'))} all models, "
        f"{percent(status.get('predicted_synthesized_mean'))} synthesized only",
    )
    if status.get("predicted_promise") is not None:
        _say(
            console,
            f"promised: {percent(status['predicted_promise'])} all models (the plan's forecast "
            "bound: below its estimate, with room for content the warm-up did not show)",
        )
    content = status.get("content_forecast")
    if content is not None:
        unseen = f", {percent(content['unseen'])} of them with content no estimate scored"
        _say(
            console,
            f"content-weighted: {percent(content['value'])} all models, over the latest "
            f"{content['results']} results of this plan (its estimate re-weighted to what the "
            f"active detectors found{unseen if content['unseen'] else ''})",
        )
    _say(
        console,
        f"live on probes: {percent(status.get('live_synthesized_mean'))} synthesized only "
        f"({status.get('live_probes') or 0} probes)",
    )
    if status.get("forecast_with_probes") is not None:
        _say(
            console,
            f"forecast with probes: {percent(status['forecast_with_probes'])} all models "
            "(the plan's forecast bound until probes come in, then its estimate with each "
            "synthesized model rescaled by what its probes saw)",
        )


def _store(store: Mapping[str, Any], console: Console) -> None:
    versions = ", ".join(
        f"v{v['version']} ({v['links']} links, {v.get('samples') or '?'} samples)"
        for v in store.get("versions", [])
    )
    if store.get("missing"):
        _say(
            console,
            f"link store {store.get('root')} does not exist: a relative links.store resolves "
            "against the directory mlink runs in; run status where the workers run, or give "
            "links.store as an absolute path or URL",
            "yellow",
        )
    else:
        _say(
            console,
            f"link store {store.get('root')}: current {store.get('current')}; "
            f"{versions or 'empty'}",
        )


def _holding_the_warmup(failures: Mapping[str, Any], console: Console) -> None:
    """Models that failed on every frame lately: the warm-up cannot end while they do."""
    for model, row in (failures.get("models") or {}).items():
        if row.get("of") and row.get("failed") == row.get("of"):
            _say(
                console,
                f"the warm-up cannot end while {model} fails: it failed on all of the latest "
                f"{row['of']} frames ({row.get('last_error')}). Links are trained only from "
                "frames on which every model ran: fix the model, or take it out of the config",
                "red",
            )


def _failing(failures: Mapping[str, Any], console: Console) -> None:
    """Each count over the frames the model ran on, said as such: a plan runs a model on some
    frames only, and "724/804" after "the latest 2000 results" read as a share of the 2000."""
    models = failures.get("models") or {}
    if models:
        rows = "; ".join(
            f"{m} on {r.get('failed')} of the {r.get('of')} frames it ran on "
            f"({r.get('last_error')})"
            for m, r in models.items()
        )
        _say(
            console,
            f"models that failed in the latest {failures.get('results')} results: {rows}",
            "yellow",
        )


def _clock(at: Any) -> str:
    try:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(at)))
    except (TypeError, ValueError, OverflowError, OSError):
        return "?"


def _workers(
    group: Mapping[str, Any] | None, ours: str | None, sides: str, console: Console
) -> None:
    if group is None:
        _say(console, "live workers: unknown (the broker did not describe the consumer group)")
        return
    count, state = group.get("workers", 0), group.get("state")
    if count:
        _say(
            console,
            f"live workers: {count} (consumer group {group.get('group')}, {state}, as the "
            "broker reports them)",
        )
        if state != SETTLED:
            _say(
                console,
                f"  the group is not settled ({state}): its workers hold no partitions and "
                "answer no frame until it is. A rebalance takes seconds; if this lasts minutes "
                "on the embedded broker, the group never settles (the workers log why): stop "
                "them, run `mlink repair-group CONFIG`, start them (docs/broker.md)",
                "yellow",
            )
        sets = dict(group.get("model_sets") or {})
        others = {k: n for k, n in sets.items() if k not in (ours, UNKNOWN)}
        if sets.get(UNKNOWN):  # not a sign of another config: it does not say
            _say(
                console,
                f"  {sets[UNKNOWN]} of them do not say which models they run (an app of your "
                "own that sets its own Kafka client id, or an older release)",
            )
        if others:
            named = ", ".join(f"{n} on {k}" for k, n in others.items())
            _say(
                console,
                f"  {sets.get(ours, 0)} on this config's models ({ours}), {named}: workers on "
                "another config share the group (a rolling restart under way, or a worker left "
                f"behind); {sides}",
                "yellow",
            )
    else:
        _say(
            console,
            f"live workers: none in consumer group {group.get('group')} ({state}): no worker "
            "of this pipeline is running, or its workers use another name",
            "yellow",
        )


def _refused(refused: Mapping[str, Any] | None, console: Console) -> None:
    if not refused:
        return
    _say(
        console,
        f"this config refuses the pipeline's newest plan (epoch {refused.get('epoch')}; "
        f"{refused.get('count')} plans newer than the one in force refused): "
        f"{refused.get('reason')}. The controller runs on a worker with other models; this "
        "config's workers keep an older plan they can use, or run every model, until it runs "
        "on one of theirs (restart every worker on one config)",
        "yellow",
    )


def _dead_letters(report: Mapping[str, Any], console: Console) -> None:
    count = report.get("count")
    if count is None:
        _say(console, "dead letters: unknown")
        return
    if not count:
        _say(console, "dead letters: none")
        return
    _say(console, f"dead letters: {count} in {report.get('topic')}; the latest:", "red")
    for letter in reversed(report.get("recent") or []):
        reason = str(letter.get("reason", ""))
        reason = reason if len(reason) <= 160 else reason[:157] + "..."
        _say(console, f"  {letter.get('stage')}: {reason}")


def render_links(rows: Sequence[LinkRow], console: Console) -> None:
    """``mlink links``: one row per stored version, oldest first, and what the pipeline does
    with it."""
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, padding=(0, 1))
    table.add_column("v", no_wrap=True)
    table.add_column("", no_wrap=True)  # what it is for the pipeline: the point of the list
    table.add_column("saved (UTC)", overflow="fold")  # what gives way in a narrow terminal
    for column in ("links", "samples", "score"):
        table.add_column(column, no_wrap=True)
    for row in rows:
        notes = [n for n, on in (("in force", row.in_force), ("pinned", row.pinned),
                                 ("newest", row.newest)) if on]  # fmt: skip
        table.add_row(
            f"v{row.version}",
            ", ".join(notes),
            row.created_at[:16].replace("T", " "),
            str(row.links),
            "?" if row.samples is None else str(row.samples),
            "-" if row.mean_val_score is None else f"{row.mean_val_score:.3f}",
            style="bold" if row.in_force else None,
        )
    console.print(table)
