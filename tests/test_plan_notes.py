"""The run summary says what the controller said about its plans (no broker): a budget no
plan met, re-plans, models left below target, lost links, a pin it ended, and the last plan's
lack of room."""

from __future__ import annotations

import dataclasses

from rich.console import Console

from mlink.deploy.runner import RunReport
from mlink.eval.plan_notes import plan_notes
from mlink.eval.run import print_summary, uncompared_summary
from mlink.operators.relearn import relearn_message, unpin_lost_message
from tests.test_control_state import active_set, control

FRAGILE = {"cost_rise": 0.05, "lower_then": 0.8, "lower_now": 0.9, "changes": {"b": "every 2"}}


def test_each_note_names_its_epoch_and_reason_and_plans_made_as_asked_say_nothing() -> None:
    log = [
        control("budget", budget={"ms": 1.0}),
        active_set(1, extra={"infeasible": "the cheapest plan costs 3.0 ms"}),
        active_set(2, extra={"fragile": FRAGILE}),  # not the last plan: said by the next
        active_set(3, extra={"replan_reason": "b agrees 0.7 < 0.9", "targets_unmet": ["b"]}),
        relearn_message(("a", "b"), 4, {"ms": 1.0}, 1, 0, "v1 missing for 60 s"),
        unpin_lost_message(2, 4, "the store has not held pinned version 2"),
        active_set(5, extra={"fragile": FRAGILE}),
        active_set(6),
    ]
    notes = plan_notes(log)
    assert notes == [
        "epoch 1: every model ran, no plan met the budget: the cheapest plan costs 3.0 ms",
        "epoch 3 re-planned: b agrees 0.7 < 0.9",
        "epoch 3: below target within the compute bound: ['b']",
        "epoch 4: v1 missing for 60 s",
        "pin on v2 ended: the store has not held pinned version 2",
    ]
    assert plan_notes(log[:-1])[-1].startswith("epoch 5, no room in the budget: model costs 5%")
    assert plan_notes([active_set(1)]) == []


def test_the_printed_summary_shows_the_notes() -> None:
    report = RunReport(frames=0, results={}, received_at={}, seconds=0.0)
    report.control = [active_set(1, extra={"infeasible": "[b] costs too much"})]
    summary = uncompared_summary(report)
    console = Console(width=200, record=True)
    print_summary(summary, console)
    assert "no plan met the budget: [b] costs too much" in console.export_text()


def test_only_this_runs_plans_once_each_and_an_unreadable_detail_does_not_break_it() -> None:
    """A broker that outlives a run keeps earlier runs' plans; a second controller's duplicate
    and `mlink resign`'s restated plan are no new plans; a forged `fragile` must not end the
    summary of a finished run."""
    earlier = dataclasses.replace(
        active_set(1, extra={"infeasible": "an earlier run's"}), issued_at=0.5
    )
    relearn = relearn_message(("a", "b"), 2, {"ms": 1.0}, 1, 0, "v1 missing")
    log = [
        earlier,
        relearn,
        dataclasses.replace(relearn, extra={**relearn.extra, "replan_reason": "again"}),
        dataclasses.replace(relearn, epoch=3),  # resign restates the plan in force
        dataclasses.replace(
            active_set(4, extra={"fragile": {"cost_rise": "ten", "changes": []}}),
            issued_at=relearn.issued_at,
        ),
    ]
    since = relearn.issued_at - 1.0
    assert plan_notes(log, since=since) == [
        "epoch 2: v1 missing",
        "epoch 4, no room in the budget: no room for costs to rise (the detail of this plan's "
        "record is unreadable)",
    ]
    first = plan_notes(log)[0]
    assert first == "epoch 1: every model ran, no plan met the budget: an earlier run's"
